//! One test per hook, as root on the real kernel, asserting the exact fields
//! of the events in the NDJSON log.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::net::{TcpListener, UdpSocket};

use common::{py, require_root, write, Trace};
use serde_json::Value;

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn exec_records_filename_argv_and_lineage() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("pid");
    let script = format!(
        "echo $$ > {}; /bin/echo ciwatch-exec-marker 42",
        pidfile.display()
    );
    let t = Trace::sh(&script);
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    let sh_pid: u64 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let echo = t
        .events("exec")
        .into_iter()
        .find(|e| e["filename"] == "/bin/echo")
        .unwrap_or_else(|| panic!("no exec of /bin/echo in {:#?}", t.events("exec")));
    assert_eq!(
        echo["argv"],
        serde_json::json!(["/bin/echo", "ciwatch-exec-marker", "42"])
    );
    assert_eq!(echo["argv_truncated"], false);
    assert_eq!(echo["ppid"], sh_pid, "echo's parent is the shell");
    assert_eq!(echo["proc"]["comm"], "echo");
    assert_eq!(echo["proc"]["uid"], 0);
    assert!(echo["proc"]["start_ns"].as_u64().unwrap() > 0);
    assert!(echo["proc"]["cgroup_id"].as_u64().unwrap() > 0);
    assert!(echo["parent_start_ns"].as_u64().unwrap() > 0);

    let sh = t
        .events("exec")
        .into_iter()
        .find(|e| e["proc"]["tgid"] == sh_pid)
        .expect("exec of the shell itself");
    assert_eq!(sh["argv"][0], "sh");
    assert_eq!(
        sh["proc"]["start_ns"],
        t.events("exit")
            .iter()
            .find(|e| e["proc"]["tgid"] == sh_pid)
            .unwrap()["proc"]["start_ns"]
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn long_argv_is_truncated_and_flagged() {
    require_root();
    let long = "x".repeat(3000);
    let t = Trace::run(&[], &["/bin/true", &long]);
    let exec = t
        .events("exec")
        .into_iter()
        .find(|e| e["filename"] == "/bin/true")
        .expect("exec");
    assert_eq!(exec["argv_truncated"], true);
    let kept = exec["argv"][1].as_str().unwrap();
    assert!(
        kept.len() < 1024 && kept.chars().all(|c| c == 'x'),
        "partial argument kept: {}",
        kept.len()
    );
}

fn connects(t: &Trace, addr: &str, port: u16) -> Vec<Value> {
    t.events("connect")
        .into_iter()
        .filter(|e| e["addr"] == addr && e["port"] == port)
        .cloned()
        .collect()
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn connect_tcp_v4_v6_udp_and_unconnected_sendto_once_each() {
    require_root();
    let tcp4 = TcpListener::bind("127.0.0.2:0").unwrap();
    let tcp6 = TcpListener::bind("[::1]:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (p4, p6, pu) = (
        tcp4.local_addr().unwrap().port(),
        tcp6.local_addr().unwrap().port(),
        udp.local_addr().unwrap().port(),
    );
    let code = format!(
        "import socket\n\
         a = socket.create_connection(('127.0.0.2', {p4}))\n\
         b = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); b.connect(('::1', {p6}))\n\
         c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.connect(('127.0.0.1', {pu})); c.send(b'x')\n\
         d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for _ in range(3): d.sendto(b'y', ('127.0.0.1', {pu}))\n"
    );
    let t = Trace::run(
        &[],
        &py(&code).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(t.code(), Some(0), "{}", t.stderr());

    let v4 = connects(&t, "127.0.0.2", p4);
    assert_eq!(v4.len(), 1, "one event per logical TCP connect: {v4:#?}");
    assert_eq!(
        (
            v4[0]["family"].as_str(),
            v4[0]["protocol"].as_str(),
            v4[0]["source"].as_str()
        ),
        (Some("ipv4"), Some("tcp"), Some("syscall"))
    );
    assert_eq!(v4[0]["proc"]["comm"], "python3");

    let v6 = connects(&t, "::1", p6);
    assert_eq!(v6.len(), 1, "{v6:#?}");
    assert_eq!(
        (v6[0]["family"].as_str(), v6[0]["protocol"].as_str()),
        (Some("ipv6"), Some("tcp"))
    );

    let udp_events = connects(&t, "127.0.0.1", pu);
    let by_source = |s: &str| udp_events.iter().filter(|e| e["source"] == s).count();
    assert_eq!(by_source("syscall"), 1, "the UDP connect: {udp_events:#?}");
    assert_eq!(
        by_source("cgroup_sendmsg"),
        1,
        "three sendto on one socket are one event: {udp_events:#?}"
    );
    assert!(udp_events.iter().all(|e| e["protocol"] == "udp"));
    assert_eq!(udp_events.len(), 2);
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn sensitive_opens_are_reported_and_ordinary_ones_are_not() {
    require_root();
    let home = tempfile::tempdir().unwrap();
    let creds = home.path().join(".aws/credentials");
    let notes = home.path().join(".aws/notes.txt");
    let plain = home.path().join("README");
    write(&creds, "[default]\naws_access_key_id=AKIAEXAMPLE\n");
    write(&notes, "nothing secret\n");
    write(&plain, "hello\n");
    let aws_dir = home.path().join(".aws");
    let script = format!(
        "cat {creds} {notes} {plain} >/dev/null; cd {dir} && cat credentials >/dev/null; echo hi > {dir}/credentials",
        creds = creds.display(),
        notes = notes.display(),
        plain = plain.display(),
        dir = aws_dir.display()
    );
    let t = Trace::sh(&script);
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    let files = t.events("file");
    let creds_str = creds.to_str().unwrap();
    assert!(
        files.iter().all(|f| f["path"] == creds_str),
        "only the credentials file is reported: {files:#?}"
    );
    assert_eq!(
        files.len(),
        3,
        "absolute read, relative read, write: {files:#?}"
    );
    assert_eq!(files[0]["access"], "read");
    assert_eq!(files[0]["rule"], "**/.aws/credentials");
    assert_eq!(files[0]["proc"]["comm"], "cat");
    assert!(
        files[0]["hook"]
            .as_str()
            .unwrap()
            .contains("security_file_open")
            || files[0]["hook"]
                .as_str()
                .unwrap()
                .starts_with("tracepoint/syscalls/sys_enter_open")
    );
    assert_eq!(
        files[1]["raw_path"], "credentials",
        "the relative path as passed, resolved against the cwd"
    );
    assert_eq!(files[2]["access"], "write");
    assert!(
        t.end()["file_filtered"].as_u64().unwrap() >= 1,
        "notes.txt passed the kernel's .aws filter and was dropped in userspace"
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn proc_environ_of_another_process_is_sensitive_but_own_is_not() {
    require_root();
    let t = Trace::sh(
        "sleep 5 & cat /proc/$!/environ > /dev/null; cat /proc/self/environ > /dev/null; kill $!",
    );
    let files = t.events("file");
    assert_eq!(files.len(), 1, "{files:#?}");
    assert_eq!(files[0]["rule"], "/proc/*/environ");
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn dns_lookup_of_localhost_and_a_private_hosts_entry() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let hosts = tmp.path().join("hosts");
    write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.7 ciwatch-test.internal\n",
    );
    let script = format!(
        "python3 -c 'import socket; socket.getaddrinfo(\"localhost\", 80)' && \
         unshare -m sh -c 'mount --bind {hosts} /etc/hosts && python3 -c \"import socket; socket.getaddrinfo(\\\"ciwatch-test.internal\\\", 443, socket.AF_INET)\"'",
        hosts = hosts.display()
    );
    let t = Trace::sh(&script);
    assert_eq!(t.code(), Some(0), "{}", t.stderr());
    let dns = t.events("dns");
    let local = dns
        .iter()
        .find(|d| d["host"] == "localhost")
        .unwrap_or_else(|| panic!("no localhost lookup: {dns:#?}"));
    assert_eq!(local["ret"], 0);
    assert!(local["addrs"]
        .as_array()
        .unwrap()
        .contains(&Value::from("127.0.0.1")));
    let private = dns
        .iter()
        .find(|d| d["host"] == "ciwatch-test.internal")
        .expect("private hosts lookup");
    assert_eq!(private["addrs"], serde_json::json!(["127.0.0.7"]));
    assert_eq!(private["proc"]["comm"], "python3");
    assert!(private["latency_us"].as_u64().is_some());
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn connect_is_named_by_the_jobs_own_lookup() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!("import socket; socket.create_connection(('localhost', {port}))");
    let t = Trace::run(
        &[],
        &py(&code).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let hits: Vec<Value> = t
        .events("connect")
        .into_iter()
        .filter(|e| e["port"] == port)
        .cloned()
        .collect();
    assert!(!hits.is_empty(), "{}", t.stderr());
    assert!(
        hits.iter().any(|e| e["hosts"][0] == "localhost"),
        "{hits:#?}"
    );
    assert!(t.summary().contains("localhost"));
}
