//! Enforce mode on the real kernel, loopback only: allowed egress connects,
//! everything else gets EPERM and a `denied` event; IPv6 and UDP alike; names
//! through a private hosts file; processes outside the job are never touched.

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
fn allowed_egress_connects_and_the_rest_gets_eperm() {
    if !require_root() {
        return;
    }
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
fn ipv6_is_enforced_exactly_like_ipv4() {
    if !require_root() {
        return;
    }
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
fn unconnected_udp_to_a_denied_address_is_refused() {
    if !require_root() {
        return;
    }
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
fn processes_outside_the_job_are_never_enforced() {
    if !require_root() {
        return;
    }
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
fn names_allowed_by_rule_connect_on_the_first_try_and_others_do_not() {
    if !require_root() {
        return;
    }
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
        lines[2], "EPERM after lookup: 0",
        "no first connect after an allowed lookup was denied"
    );
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
fn an_empty_allowlist_fails_closed_and_the_observe_fallback_is_recorded() {
    if !require_root() {
        return;
    }
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
fn per_step_scoping_allows_a_destination_in_one_step_and_denies_it_in_another() {
    if !require_root() {
        return;
    }
    use common::{emulator, python_as};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runner");
    python_as(&root.join("bin/Runner.Worker"));
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = target.local_addr().unwrap().port();
    // Both steps connect to the same destination; the rule names the Build step by its workflow `id:`.
    let policy = tmp.path().join("policy.yml");
    write(&policy, &format!("version: 1\nmode: enforce\ndefaults:\n  loopback: false\n  resolver: false\nallow:\n  - host: 127.0.0.1\n    port: {port}\n    steps: [build]\n"));
    let out = tmp.path().join("trace");
    let config = tmp.path().join("config.json");
    write(
        &config,
        &serde_json::json!({
            "scenario": "scoped", "runner_root": root, "work": tmp.path().join("work"), "out": out, "ciwatch": CIWATCH,
            "policy": policy, "ports": {"build": port, "test": port}, "results": tmp.path().join("results.json"),
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
        .filter(|e| e["type"] == "connect" && e["step"]["name"] == "Build")
        .count();
    assert!(build_ok >= 1, "the Build step connected");
    assert_eq!(lines[0]["mode"], "enforce");
    assert!(lines[0]["policy"]["sha256"].as_str().unwrap().len() == 64);
}
