//! Enforce mode on the real kernel, loopback only: allowed egress connects,
//! everything else gets EPERM and a `denied` event; IPv6 and UDP alike; names
//! through a private hosts file; processes outside the job are never touched.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::net::{TcpListener, UdpSocket};
use std::process::Command;

use common::{py, require_root, write, Trace, CIWATCH};
use serde_json::Value;

/// Connects to each (host, port) in turn; prints `ok` or the errno per line.
fn connect_all(targets: &[(&str, u16)]) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|(h, p)| format!("({h:?}, {p})"))
        .collect();
    format!(
        "import socket, errno\n\
         for host, port in [{}]:\n\
         \x20   s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)\n\
         \x20   try:\n\
         \x20       s.connect((host, port)); print('ok')\n\
         \x20   except OSError as e:\n\
         \x20       print(errno.errorcode[e.errno])\n",
        list.join(", ")
    )
}

fn run_py(extra: &[&str], code: &str) -> Trace {
    Trace::run(
        extra,
        &py(code).iter().map(String::as_str).collect::<Vec<_>>(),
    )
}

fn stdout(t: &Trace) -> Vec<String> {
    String::from_utf8_lossy(&t.output.stdout)
        .lines()
        .map(String::from)
        .collect()
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn allowed_egress_connects_and_the_rest_gets_eperm() {
    require_root();
    let ok4 = TcpListener::bind("127.0.0.1:0").unwrap();
    let denied4 = TcpListener::bind("127.0.0.2:0").unwrap();
    let (p_ok, p_denied) = (
        ok4.local_addr().unwrap().port(),
        denied4.local_addr().unwrap().port(),
    );
    let allow = format!("127.0.0.1:{p_ok}");
    let t = run_py(
        &["--mode", "enforce", "--no-default-allow", "--allow", &allow],
        &connect_all(&[("127.0.0.1", p_ok), ("127.0.0.2", p_denied)]),
    );
    assert_eq!(stdout(&t), ["ok", "EPERM"], "{}", t.stderr());
    let denied = t.events("denied");
    assert_eq!(denied.len(), 1, "{denied:#?}");
    assert_eq!(
        (denied[0]["addr"].as_str(), denied[0]["port"].as_u64()),
        (Some("127.0.0.2"), Some(u64::from(p_denied)))
    );
    assert_eq!(
        denied[0]["step"]["id"], "command",
        "the denial names the step"
    );
    assert_eq!(t.start()["mode"], "enforce");
    assert_eq!(t.start()["policy"]["source"], "--allow");
    assert!(t.summary().contains("## Denied egress"));
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn ipv6_is_enforced_exactly_like_ipv4() {
    require_root();
    let allowed = TcpListener::bind("[::1]:0").unwrap();
    let other = TcpListener::bind("[::1]:0").unwrap();
    let (p_ok, p_no) = (
        allowed.local_addr().unwrap().port(),
        other.local_addr().unwrap().port(),
    );
    let v4 = TcpListener::bind("127.0.0.3:0").unwrap();
    let p_mapped = v4.local_addr().unwrap().port();
    let allow = format!("[::1]:{p_ok}");
    // ::ffff:127.0.0.3 is IPv4 through an IPv6 socket: denied too, by the same rule set.
    let t = run_py(
        &["--mode", "enforce", "--no-default-allow", "--allow", &allow],
        &connect_all(&[("::1", p_ok), ("::1", p_no), ("::ffff:127.0.0.3", p_mapped)]),
    );
    assert_eq!(stdout(&t), ["ok", "EPERM", "EPERM"], "{}", t.stderr());
    let families: Vec<&str> = t
        .events("denied")
        .iter()
        .map(|d| d["family"].as_str().unwrap())
        .collect();
    assert_eq!(families, ["ipv6", "ipv6"]);
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn unconnected_udp_to_a_denied_address_is_refused() {
    require_root();
    let ok = UdpSocket::bind("127.0.0.1:0").unwrap();
    let no = UdpSocket::bind("127.0.0.2:0").unwrap();
    let (p_ok, p_no) = (
        ok.local_addr().unwrap().port(),
        no.local_addr().unwrap().port(),
    );
    let code = format!(
        "import socket, errno\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for addr in [('127.0.0.1', {p_ok}), ('127.0.0.2', {p_no})]:\n\
         \x20   try:\n\
         \x20       s.sendto(b'x', addr); print('ok')\n\
         \x20   except OSError as e:\n\
         \x20       print(errno.errorcode[e.errno])\n"
    );
    let allow = format!("127.0.0.1:{p_ok}/udp");
    let t = run_py(
        &["--mode", "enforce", "--no-default-allow", "--allow", &allow],
        &code,
    );
    assert_eq!(stdout(&t), ["ok", "EPERM"], "{}", t.stderr());
    let denied = t.events("denied");
    assert_eq!(
        (denied[0]["protocol"].as_str(), denied[0]["source"].as_str()),
        (Some("udp"), Some("cgroup_sendmsg"))
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn processes_outside_the_job_are_never_enforced() {
    require_root();
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("trace");
    let mut job = Command::new(CIWATCH)
        .args([
            "run",
            "--quiet",
            "--mode",
            "enforce",
            "--allow",
            "127.0.0.1:1",
            "--out",
        ])
        .arg(&out)
        .args(["--", "sleep", "1.5"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    // While the job is enforced, a process of the host reaches what the job may not.
    let outside = Command::new("python3")
        .args(["-c", &connect_all(&[("127.0.0.2", port)])])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&outside.stdout).trim(), "ok");
    assert!(job.wait().unwrap().success());
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn names_allowed_by_rule_connect_on_the_first_try_and_others_do_not() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    // 1,000 names, each resolved once: the first connect right after each lookup must pass.
    let mut hosts = String::from("127.0.0.3 allowed.test\n127.0.0.4 blocked.test\n");
    for i in 0..1000 {
        hosts.push_str(&format!(
            "127.9.{}.{} n{i}.fresh.test\n",
            i / 250,
            i % 250 + 1
        ));
    }
    write(&tmp.path().join("hosts"), &hosts);
    let code = "import socket, errno\n\
        def attempt(name, port):\n\
        \x20   s = socket.socket()\n\
        \x20   try:\n\
        \x20       s.connect((name, port)); return 'ok'\n\
        \x20   except OSError as e:\n\
        \x20       return errno.errorcode[e.errno]\n\
        print(attempt('allowed.test', 9))\n\
        print(attempt('blocked.test', 9))\n\
        print(attempt('ALLOWED.Test', 9))\n\
        results = [attempt(f'n{i}.fresh.test', 9) for i in range(1000)]\n\
        print('EPERM after lookup:', results.count('EPERM'))\n";
    let script = tmp.path().join("probe.py");
    write(&script, code);
    let inner = format!(
        "mount --bind {} /etc/hosts && exec python3 {}",
        tmp.path().join("hosts").display(),
        script.display()
    );
    let t = Trace::run(
        &[
            "--mode",
            "enforce",
            "--no-default-allow",
            "--allow",
            "allowed.test:9",
            "--allow",
            "*.fresh.test:9",
        ],
        &["unshare", "-m", "sh", "-c", &inner],
    );
    let lines = stdout(&t);
    // Nothing listens on port 9: an allowed connect is refused by the peer, a denied one by ciwatch.
    assert_eq!(
        lines[0],
        "ECONNREFUSED",
        "allowed.test is allowed: {}",
        t.stderr()
    );
    assert_eq!(lines[1], "EPERM", "blocked.test is not");
    assert_eq!(
        lines[2], "ECONNREFUSED",
        "rules match names case-insensitively, like DNS"
    );
    assert_eq!(
        lines[3], "EPERM after lookup: 0",
        "no first connect after an allowed lookup was denied"
    );
    let listed = |host: &str| {
        t.events("dns")
            .iter()
            .find(|d| d["host"] == host)
            .map(|d| d["listed"].clone())
    };
    assert_eq!(listed("allowed.test"), Some(Value::Bool(true)));
    assert_eq!(listed("ALLOWED.Test"), Some(Value::Bool(true)));
    assert_eq!(listed("n7.fresh.test"), Some(Value::Bool(true)));
    assert_eq!(
        listed("blocked.test"),
        Some(Value::Bool(false)),
        "an unlisted lookup is reported as such"
    );
    assert!(t.summary().contains("| blocked.test (unlisted) |"));
    let denied = t.events("denied");
    assert!(
        denied.iter().all(|d| d["addr"] == "127.0.0.4"),
        "{denied:#?}"
    );
    assert_eq!(
        denied[0]["hosts"][0], "blocked.test",
        "the denial names the host the job resolved"
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn an_empty_allowlist_fails_closed_and_the_observe_fallback_is_recorded() {
    require_root();
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(CIWATCH)
        .args(["run", "--quiet", "--mode", "enforce", "--out"])
        .arg(out.path())
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(
        err.contains("empty allowlist") && err.contains("--on-policy-error observe"),
        "{err}"
    );
    assert!(!out.path().join("events.ndjson").exists());

    let bad = Command::new(CIWATCH)
        .args([
            "run",
            "--quiet",
            "--mode",
            "enforce",
            "--allow",
            "10.0.0.1/8",
            "--out",
        ])
        .arg(out.path())
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("host bits are set"));

    let t = Trace::run(
        &["--mode", "enforce", "--on-policy-error", "observe"],
        &["true"],
    );
    let start: &Value = t.start();
    assert_eq!(start["mode"], "observe");
    assert_eq!(start["requested_mode"], "enforce");
    assert!(start["mode_fallback"]
        .as_str()
        .unwrap()
        .contains("empty allowlist"));
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn per_step_scoping_allows_a_destination_in_one_step_and_denies_it_in_another() {
    require_root();
    use common::{emulator, python_as};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runner");
    python_as(&root.join("bin/Runner.Worker"));
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = target.local_addr().unwrap().port();
    // Both steps connect to the same destination and ask the resolver for the same name; the rules
    // name the Build step by a glob over its workflow `id:`. Test carries `DRONE_STEP_NAME=build`
    // and Azure's step variables (as `>> $GITHUB_ENV` would put them there): only GitHub's count.
    const RESOLVER: &str = "127.53.0.3";
    let server = DnsServer::start(RESOLVER, tmp.path().join("questions.log"));
    let policy = tmp.path().join("policy.yml");
    write(
        &policy,
        &format!(
            "version: 1\nmode: enforce\ndefaults:\n  loopback: false\n  resolver: false\ndns:\n  refuse-unlisted: true\n\
             allow:\n  - {RESOLVER}:53/udp\n  - host: 127.0.0.1\n    port: {port}\n    steps: [\"b?il*\"]\n\
             \x20 - host: scoped.test\n    steps: [\"b?il*\"]\n"
        ),
    );
    let probe = tmp.path().join("probe.py");
    write(
        &probe,
        &format!("{DNS_QUERY_PY}import sys\nRESOLVER = {RESOLVER:?}\nprint(sys.argv[1], udp(['scoped', 'test']))\n"),
    );
    let dns_results = tmp.path().join("dns-results.txt");
    let out = tmp.path().join("trace");
    let config = tmp.path().join("config.json");
    write(
        &config,
        &serde_json::json!({
            "scenario": "scoped", "runner_root": root, "work": tmp.path().join("work"), "out": out, "ciwatch": CIWATCH,
            "policy": policy, "ports": {"build": port, "test": port}, "results": tmp.path().join("results.json"),
            "dns_probe": probe, "dns_results": dns_results,
        })
        .to_string(),
    );
    let status = common::spawn(
        Command::new(root.join("bin/Runner.Worker"))
            .arg(emulator("github_worker.py"))
            .arg(&config),
    )
    .wait()
    .unwrap();
    assert!(status.success());
    let log = std::fs::read_to_string(out.join("events.ndjson")).unwrap_or_else(|e| {
        panic!(
            "{e}: {}",
            std::fs::read_to_string(out.join("agent.log")).unwrap_or_default()
        )
    });
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let denied: Vec<&Value> = lines.iter().filter(|e| e["type"] == "denied").collect();
    assert!(!denied.is_empty(), "the Test step was not denied");
    assert!(
        denied.iter().all(|d| d["step"]["name"] == "Test"),
        "{denied:#?}"
    );
    let build_ok = lines
        .iter()
        .filter(|e| e["type"] == "connect" && e["step"]["name"] == "Build" && e["port"] == port)
        .count();
    assert_eq!(
        build_ok, 10,
        "each of the 10 Build steps connected on its first instruction"
    );
    assert_eq!(lines[0]["mode"], "enforce");
    assert!(lines[0]["policy"]["sha256"].as_str().unwrap().len() == 64);

    // The same holds for lookups: the name is answered in Build, refused in Test.
    let outcomes = std::fs::read_to_string(&dns_results).unwrap();
    let mut expected = vec!["build answer"; 10];
    expected.push("test EPERM");
    assert_eq!(outcomes.lines().collect::<Vec<_>>(), expected);
    assert_eq!(server.questions(), vec!["scoped|test"; 10]);
    let refused: Vec<&Value> = lines
        .iter()
        .filter(|e| e["type"] == "dns_refused")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0]["host"], "scoped.test");
    assert_eq!(refused[0]["step"]["name"], "Test");
}

/// A loopback DNS server (tests/emulators/dns_server.py) on port 53 of `addr`; killed on drop.
struct DnsServer {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl DnsServer {
    fn start(addr: &str, log: std::path::PathBuf) -> DnsServer {
        use std::io::BufRead;
        let mut child = common::spawn(
            Command::new("python3")
                .arg(common::emulator("dns_server.py"))
                .arg(addr)
                .arg(&log)
                .stdout(std::process::Stdio::piped()),
        );
        let mut ready = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(
            ready.trim(),
            "ready",
            "the DNS server did not start on {addr}:53"
        );
        DnsServer { child, log }
    }

    /// The question names it received, labels joined by `|`.
    fn questions(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Python helpers for the DNS tests: `query` builds a question from a list of labels, `udp` and `tcp`
/// send it to `RESOLVER` (which the caller defines) and return the outcome, `lookup` uses getaddrinfo.
const DNS_QUERY_PY: &str = "import socket, struct, errno\n\
    def query(labels, qtype=1):\n\
    \x20   name = b''.join(bytes([len(l)]) + l.encode() for l in labels) + b'\\0'\n\
    \x20   return struct.pack('!6H', 0x1234, 0x0100, 1, 0, 0, 0) + name + struct.pack('!HH', qtype, 1)\n\
    def udp(labels, connected=False):\n\
    \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n\
    \x20   try:\n\
    \x20       if connected:\n\
    \x20           s.connect((RESOLVER, 53)); s.send(query(labels))\n\
    \x20       else:\n\
    \x20           s.sendto(query(labels), (RESOLVER, 53))\n\
    \x20       return 'answer' if s.recv(512) else 'empty'\n\
    \x20   except OSError as e:\n\
    \x20       return errno.errorcode.get(e.errno, str(e))\n\
    def tcp(labels):\n\
    \x20   s = socket.create_connection((RESOLVER, 53)); s.settimeout(1.5)\n\
    \x20   q = query(labels)\n\
    \x20   try:\n\
    \x20       s.sendall(struct.pack('!H', len(q)) + q)\n\
    \x20       return 'answer' if s.recv(512) else 'closed'\n\
    \x20   except socket.timeout:\n\
    \x20       return 'no answer'\n\
    \x20   except OSError as e:\n\
    \x20       return errno.errorcode.get(e.errno, str(e))\n\
    def lookup(name):\n\
    \x20   try:\n\
    \x20       return socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]\n\
    \x20   except socket.gaierror:\n\
    \x20       return 'failed'\n";

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn unlisted_dns_queries_never_leave_the_host_whatever_sends_them() {
    require_root();
    const RESOLVER: &str = "127.53.0.1";
    let tmp = tempfile::tempdir().unwrap();
    let server = DnsServer::start(RESOLVER, tmp.path().join("questions.log"));
    write(
        &tmp.path().join("resolv.conf"),
        &format!("nameserver {RESOLVER}\noptions attempts:1 timeout:1\n"),
    );
    write(&tmp.path().join("hosts"), "127.0.0.1 localhost\n");
    let policy = tmp.path().join("policy.yml");
    write(
        &policy,
        "version: 1\nmode: enforce\ndns:\n  refuse-unlisted: true\nallow:\n  - allowed.test\n  - \"*.ok.test\"\n",
    );
    let probe = format!(
        "{DNS_QUERY_PY}RESOLVER = {RESOLVER:?}\n\
         print(lookup('allowed.test'))\n\
         print(lookup('x.ok.test'))\n\
         print(lookup('blocked.test'))\n\
         print(lookup('ok.test'))\n\
         print(udp(['allowed', 'test']))\n\
         print(udp(['BLOCKED', 'Test']))\n\
         print(udp(['blocked', 'test'], connected=True))\n\
         print(udp(['allowed.test']))\n\
         print(tcp(['allowed', 'test']))\n\
         print(tcp(['blocked', 'test']))\n"
    );
    let script = tmp.path().join("probe.py");
    write(&script, &probe);
    let inner = format!(
        "mount --bind {dir}/resolv.conf /etc/resolv.conf && mount --bind {dir}/hosts /etc/hosts && exec python3 {script}",
        dir = tmp.path().display(),
        script = script.display()
    );
    let t = Trace::run(
        &["--mode", "enforce", "--policy", policy.to_str().unwrap()],
        &["unshare", "-m", "sh", "-c", &inner],
    );
    let lines = stdout(&t);
    assert_eq!(
        lines,
        [
            "127.0.0.9", // an exact rule
            "127.0.0.9", // a wildcard rule
            "failed",    // unlisted: getaddrinfo's queries were dropped
            "failed",    // `*.ok.test` never lists ok.test itself
            "answer",    // a hand-made query for a listed name
            "EPERM",     // case does not hide a name
            "EPERM",     // a connected UDP socket is judged like sendto
            "EPERM",     // a dot inside one label is unreadable, so refused
            "answer",    // DNS over TCP, listed
            "no answer", // DNS over TCP, unlisted: the segment never leaves
        ],
        "{}",
        t.stderr()
    );
    let questions = server.questions();
    assert!(
        questions.contains(&"allowed|test".to_string()),
        "{questions:?}"
    );
    assert!(
        questions.contains(&"x|ok|test".to_string()),
        "{questions:?}"
    );
    assert!(
        questions
            .iter()
            .all(|q| !q.to_lowercase().contains("blocked")
                && q != "ok|test"
                && q != "allowed.test"),
        "a refused query reached the server: {questions:?}"
    );

    let refused = t.events("dns_refused");
    let hosts: std::collections::BTreeSet<(&str, &str, &str)> = refused
        .iter()
        .map(|e| {
            (
                e["host"].as_str().unwrap(),
                e["reason"].as_str().unwrap(),
                e["protocol"].as_str().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("blocked.test", "unlisted", "udp"),
        ("ok.test", "unlisted", "udp"),
        ("blocked.test", "unlisted", "tcp"),
        ("allowed", "unreadable", "udp"), // read up to the dot inside the label
    ] {
        assert!(hosts.contains(&expected), "{expected:?} not in {hosts:?}");
    }
    assert!(refused
        .iter()
        .all(|e| e["resolver"] == RESOLVER && e["port"] == 53 && e["step"]["id"] == "command"));
    let hook = t.start()["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hook"] == "dns_refusal")
        .cloned()
        .unwrap_or_default();
    assert_eq!(hook["implementation"], "cgroup_skb/egress", "{hook:#?}");
    let summary = t.summary();
    assert!(
        summary.contains("## Refused DNS lookups")
            && summary.contains("| blocked.test | unlisted |"),
        "{summary}"
    );

    // The same unlisted query from outside the job is answered.
    let outside = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "{DNS_QUERY_PY}RESOLVER = {RESOLVER:?}\nprint(udp(['blocked', 'test']))\n"
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&outside.stdout).trim(), "answer");
}

/// Fills the kernel's process map (`lineage.max_processes = 16`) with 20 sleeping children, then
/// connects and opens a raw socket from a forked child that found no room: it must not slip past
/// the policy untagged. Prints each attempt's outcome, before and after.
fn overflow_then_connect(port: u16) -> String {
    format!(
        "import os, socket, subprocess, errno\n\
         def attempt():\n\
         \x20   out = []\n\
         \x20   try:\n\
         \x20       socket.socket().connect(('127.0.0.1', {port})); out.append('ok')\n\
         \x20   except OSError as e:\n\
         \x20       out.append(errno.errorcode[e.errno])\n\
         \x20   try:\n\
         \x20       socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close(); out.append('ok')\n\
         \x20   except OSError as e:\n\
         \x20       out.append(errno.errorcode[e.errno])\n\
         \x20   return ' '.join(out)\n\
         print(attempt(), flush=True)\n\
         sleepers = [subprocess.Popen(['sleep', '30']) for _ in range(20)]\n\
         r, w = os.pipe()\n\
         pid = os.fork()\n\
         if pid == 0:\n\
         \x20   os.write(w, attempt().encode()); os._exit(0)\n\
         os.waitpid(pid, 0)\n\
         print(os.read(r, 64).decode(), flush=True)\n\
         for s in sleepers: s.kill(); s.wait()\n"
    )
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn a_job_process_the_lineage_map_cannot_hold_is_denied_and_counted() {
    require_root();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    write(&config, "[lineage]\nmax_processes = 16\n");
    let policy = dir.path().join("policy.yml");
    write(
        &policy,
        &format!("version: 1\nmode: enforce\ndefaults:\n  loopback: false\nallow:\n  - 127.0.0.1:{port}/tcp\nsockets: [raw]\n"),
    );
    let config_arg = config.to_str().unwrap();

    let enforced = run_py(
        &["--config", config_arg, "--policy", policy.to_str().unwrap()],
        &overflow_then_connect(port),
    );
    assert_eq!(
        stdout(&enforced),
        ["ok ok", "EPERM EPERM"],
        "an untagged child of the job is refused even what the policy allows: {}",
        enforced.stderr()
    );
    let refused_socket = enforced.events("socket_denied");
    assert!(
        refused_socket.len() == 1 && refused_socket[0]["untracked"] == true,
        "{refused_socket:#?}"
    );
    let untracked: Vec<&Value> = enforced
        .events("denied")
        .into_iter()
        .filter(|d| d["untracked"] == true)
        .collect();
    assert_eq!(untracked.len(), 1, "{:#?}", enforced.events("denied"));
    assert_eq!(untracked[0]["port"].as_u64(), Some(u64::from(port)));
    assert_eq!(untracked[0]["step"]["id"], "command", "logged under its ancestor's step");
    let end = enforced.end();
    assert!(end["untracked"].as_u64().unwrap() >= 5, "{end}");
    assert_eq!(end["complete"], false, "{end}");
    assert!(enforced.summary().contains("job processes were not followed"));

    let observed = run_py(&["--config", config_arg], &overflow_then_connect(port));
    assert_eq!(stdout(&observed), ["ok ok", "ok ok"], "observe never denies");
    let end = observed.end();
    assert!(end["untracked"].as_u64().unwrap() >= 5, "{end}");
    assert_eq!(end["complete"], false, "{end}");
}

/// `ciwatch run --mode enforce` with extra arguments; returns (exit code, stderr).
fn enforce_with(prefix: &[&str], extra: &[&str]) -> (Option<i32>, String) {
    let out_dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(prefix.first().copied().unwrap_or(CIWATCH));
    cmd.args(prefix.iter().skip(1));
    if !prefix.is_empty() {
        cmd.arg(CIWATCH);
    }
    let out = cmd
        .args(["run", "--quiet", "--out"])
        .arg(out_dir.path())
        .args(["--mode", "enforce", "--allow", "127.0.0.1:9"])
        .args(extra)
        .args(["--", "true"])
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn enforce_refuses_to_start_without_every_cgroup_program() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    write(&config, "[hooks]\nconnect = false\n");
    let (code, stderr) = enforce_with(&[], &["--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(79), "{stderr}");
    assert!(
        stderr.contains("enforce mode needs hook `connect`") && stderr.contains("connect = false"),
        "{stderr}"
    );

    // No cgroup v2 hierarchy in the agent's mount namespace: only the syscall tracepoint can
    // attach, which records but cannot deny. Not even --allow-partial starts enforce like that.
    let script = "grep ' cgroup2 ' /proc/self/mounts | cut -d' ' -f2 | xargs -r -n1 umount -l && exec \"$@\"";
    let (code, stderr) = enforce_with(
        &["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"],
        &["--allow-partial"],
    );
    assert_eq!(code, Some(79), "{stderr}");
    assert!(
        stderr.contains("enforce mode needs hook `connect`")
            && stderr.contains("no cgroup v2 hierarchy is mounted"),
        "{stderr}"
    );
}
