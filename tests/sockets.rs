//! Raw, packet and ping sockets on the real kernel. Their traffic passes no
//! connect or sendmsg hook, so enforce refuses to open them unless the
//! policy's `sockets:` allows them, and every mode records them. Each job runs
//! in a network namespace of its own (loopback only), where it can allow ping
//! sockets without touching the host's `net.ipv4.ping_group_range`.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::{require_root, write, Trace, CIWATCH};
use serde_json::Value;

/// Opens each socket and prints `<name> ok` or `<name> <errno>`; then, where a
/// ping socket opens, sends one echo request to 127.0.0.1 and waits for the reply.
const PROBE: &str = "import socket, errno\n\
    from socket import AF_INET, AF_INET6, SOCK_DGRAM, SOCK_RAW, IPPROTO_ICMP, IPPROTO_ICMPV6\n\
    def attempt(name, *args):\n\
    \x20   try:\n\
    \x20       socket.socket(*args).close(); return name + ' ok'\n\
    \x20   except OSError as e:\n\
    \x20       return name + ' ' + errno.errorcode[e.errno]\n\
    for name, args in [('ping', (AF_INET, SOCK_DGRAM, IPPROTO_ICMP)), ('ping6', (AF_INET6, SOCK_DGRAM, IPPROTO_ICMPV6)),\n\
    \x20                  ('raw', (AF_INET, SOCK_RAW, IPPROTO_ICMP)), ('raw6', (AF_INET6, SOCK_RAW, IPPROTO_ICMPV6)),\n\
    \x20                  ('udp', (AF_INET, SOCK_DGRAM))]:\n\
    \x20   print(attempt(name, *args), flush=True)\n\
    try:\n\
    \x20   s = socket.socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP); s.settimeout(2)\n\
    \x20   s.sendto(b'\\x08\\x00\\x00\\x00\\x00\\x01\\x00\\x01', ('127.0.0.1', 0))\n\
    \x20   print('echo reply' if s.recv(64)[0] == 0 else 'echo other', flush=True)\n\
    except OSError as e:\n\
    \x20   print('echo', errno.errorcode.get(e.errno, str(e)), flush=True)\n";

/// A packet socket, opened by a process of its own: enforce kills the process that asks for one.
const PACKET: &str =
    "import socket\nsocket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)).close()\n";

/// The probes in a new network namespace with ping sockets allowed for every group.
fn job(dir: &Path) -> Vec<String> {
    write(&dir.join("probe.py"), PROBE);
    write(&dir.join("packet.py"), PACKET);
    let inner = format!(
        "ip link set lo up && echo '0 2147483647' > /proc/sys/net/ipv4/ping_group_range && \
         python3 {dir}/probe.py; python3 {dir}/packet.py 2>/dev/null; echo \"packet exit $?\"",
        dir = dir.display()
    );
    ["unshare", "-n", "sh", "-c", &inner]
        .map(String::from)
        .to_vec()
}

fn run(extra: &[&str]) -> Trace {
    let tmp = tempfile::tempdir().unwrap();
    let cmd = job(tmp.path());
    Trace::run(extra, &cmd.iter().map(String::as_str).collect::<Vec<_>>())
}

fn stdout(t: &Trace) -> Vec<String> {
    String::from_utf8_lossy(&t.output.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// (class, family, refusal) of each record of `kind`.
fn sockets(t: &Trace, kind: &str) -> BTreeSet<(String, String, String)> {
    let field = |e: &Value, k: &str| e[k].as_str().unwrap_or("-").to_string();
    t.events(kind)
        .iter()
        .map(|e| (field(e, "class"), field(e, "family"), field(e, "refusal")))
        .collect()
}

fn set(items: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    items
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn enforce_refuses_the_jobs_ping_raw_and_packet_sockets() {
    require_root();
    let t = run(&["--mode", "enforce", "--allow", "127.0.0.1"]);
    assert_eq!(
        stdout(&t),
        [
            "ping EPERM",
            "ping6 EPERM",
            "raw EPERM",
            "raw6 EPERM",
            "udp ok", // the sock_addr hooks judge it; opening it is not refused
            "echo EPERM",
            "packet exit 137", // SIGKILL before socket() returned
        ],
        "{}",
        t.stderr()
    );
    assert_eq!(
        sockets(&t, "socket_denied"),
        set(&[
            ("ping", "ipv4", "eperm"),
            ("ping", "ipv6", "eperm"),
            ("raw", "ipv4", "eperm"),
            ("raw", "ipv6", "eperm"),
            ("packet", "packet", "killed"),
        ])
    );
    assert!(t.events("socket").is_empty(), "nothing was allowed");
    let denied = t.events("socket_denied");
    assert!(
        denied
            .iter()
            .all(|e| e["step"]["id"] == "command" && e["proc"]["comm"] == "python3"),
        "{denied:#?}"
    );
    let packet = denied.iter().find(|e| e["class"] == "packet").unwrap();
    assert_eq!(
        (&packet["protocol_number"], &packet["source"]),
        (&Value::from(3), &Value::from("syscall")),
        "ETH_P_ALL, in host order"
    );
    let hook = t.start()["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hook"] == "socket")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        hook["implementation"], "cgroup/sock_create + tracepoint/syscalls/sys_enter_socket",
        "{hook:#?}"
    );
    assert_eq!(
        t.end()["events"]["socket_denied"],
        6,
        "five from the probe (its echo opens a second ping socket), one packet socket"
    );
    let summary = t.summary();
    assert!(
        summary.contains("## Denied sockets")
            && summary.contains("| packet | packet | 3 | killed |")
            && summary.contains("| raw | ipv6 | 58 | eperm |"),
        "{summary}"
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn the_policy_allows_the_sockets_it_lists_in_the_steps_it_names() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let policy = tmp.path().join("policy.yml");
    // Raw sockets only in a step that is not this one: refused here.
    write(
        &policy,
        "version: 1\nmode: enforce\nallow:\n  - 127.0.0.1\nsockets:\n  - ping\n  - packet\n  - class: raw\n    steps: [Traceroute]\n",
    );
    let t = run(&["--mode", "enforce", "--policy", policy.to_str().unwrap()]);
    assert_eq!(
        stdout(&t),
        [
            "ping ok",
            "ping6 ok",
            "raw EPERM",
            "raw6 EPERM",
            "udp ok",
            "echo reply",
            "packet exit 0",
        ],
        "{}",
        t.stderr()
    );
    assert_eq!(
        sockets(&t, "socket"),
        set(&[
            ("ping", "ipv4", "-"),
            ("ping", "ipv6", "-"),
            ("packet", "packet", "-"),
        ])
    );
    assert_eq!(
        sockets(&t, "socket_denied"),
        set(&[("raw", "ipv4", "eperm"), ("raw", "ipv6", "eperm")])
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn observe_records_the_sockets_and_refuses_none() {
    require_root();
    let t = run(&["--mode", "observe"]);
    assert_eq!(
        stdout(&t),
        [
            "ping ok",
            "ping6 ok",
            "raw ok",
            "raw6 ok",
            "udp ok",
            "echo reply",
            "packet exit 0",
        ],
        "{}",
        t.stderr()
    );
    assert_eq!(
        sockets(&t, "socket"),
        set(&[
            ("ping", "ipv4", "-"),
            ("ping", "ipv6", "-"),
            ("raw", "ipv4", "-"),
            ("raw", "ipv6", "-"),
            ("packet", "packet", "-"),
        ])
    );
    assert!(t.events("socket_denied").is_empty());
    let udp = t
        .events("socket")
        .iter()
        .filter(|e| e["socket_type"] == "dgram" && e["class"] != "ping")
        .count();
    assert_eq!(udp, 0, "ordinary sockets are not socket records");
    assert!(
        t.summary().contains("| raw | ipv4 | 1 |"),
        "{}",
        t.summary()
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn processes_outside_the_job_keep_their_raw_and_packet_sockets() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("trace");
    let mut job = Command::new(CIWATCH)
        .args([
            "run",
            "--quiet",
            "--mode",
            "enforce",
            "--allow",
            "127.0.0.1",
            "--out",
        ])
        .arg(&out)
        .args(["--", "sleep", "1.5"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let outside = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "{PACKET}s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)\nprint('ok')\n"
        ))
        .output()
        .unwrap();
    assert_eq!(
        (
            outside.status.code(),
            String::from_utf8_lossy(&outside.stdout).trim()
        ),
        (Some(0), "ok"),
        "{}",
        String::from_utf8_lossy(&outside.stderr)
    );
    assert!(job.wait().unwrap().success());
}
