//! What belongs to the watched job: its whole tree, daemons included, and
//! nothing else on the host. Also the lost-event accounting under a flood.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::{require_root, write, Trace};

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn processes_outside_the_job_are_never_recorded() {
    require_root();
    let inside = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let outside = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret = tempfile::tempdir().unwrap();
    let creds = secret.path().join(".aws/credentials");
    write(&creds, "x");
    let outsider_code = format!(
        "import socket, time\n\
         for _ in range(20):\n\
         \x20   s = socket.socket(); s.connect_ex(('127.0.0.1', {outside})); s.close()\n\
         \x20   open('{creds}').read(); socket.getaddrinfo('outsider.invalid', 80) if False else None\n\
         \x20   time.sleep(0.05)\n",
        creds = creds.display()
    );
    let mut outsider = Command::new("python3")
        .args(["-c", &outsider_code])
        .spawn()
        .unwrap();
    let job = format!("python3 -c \"import socket,time; s=socket.socket(); s.connect_ex(('127.0.0.1', {inside})); time.sleep(0.8)\"");
    let t = Trace::sh(&job);
    outsider.wait().unwrap();

    assert!(
        t.events("connect").iter().any(|e| e["port"] == inside),
        "the job's own connect is recorded"
    );
    let leaked: Vec<_> = t
        .lines
        .iter()
        .filter(|e| e["proc"]["tgid"] == outsider.id() || e["port"] == outside)
        .collect();
    assert!(
        leaked.is_empty(),
        "events of a process outside the job leaked in: {leaked:#?}"
    );
    assert!(
        t.events("file").is_empty(),
        "the outsider's credential reads are not the job's"
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn a_double_forked_daemon_is_still_recorded() {
    require_root();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The daemon setsid()s, outlives its parents and connects after the job's main process exited.
    let script = format!(
        "(setsid python3 -c \"import socket,time; time.sleep(0.4); socket.socket().connect_ex(('127.0.0.1', {port}))\" &) ; exit 0"
    );
    let t = Trace::sh(&script);
    assert_eq!(t.code(), Some(0));
    let hit = t
        .events("connect")
        .into_iter()
        .find(|e| e["port"] == port)
        .unwrap_or_else(|| panic!("daemon connect missing; {}", t.stderr()));
    assert_eq!(hit["proc"]["comm"], "python3");
    assert_eq!(
        t.end()["still_running"],
        0,
        "the run lingered until the daemon exited"
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn what_the_job_leaves_running_is_named_with_its_step() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    write(&config, "[run]\nlinger_ms = 200\n");
    let marker = dir.path().join("survivor.pid");
    // A build daemon that outlives the job: sealed as a survivor, not waited for.
    let script = format!(
        "setsid sh -c 'echo $$ > {m}; exec sleep 30' </dev/null >/dev/null 2>&1 & while [ ! -s {m} ]; do sleep 0.01; done",
        m = marker.display()
    );
    let t = Trace::run(
        &["--config", config.to_str().unwrap()],
        &["sh", "-c", &script],
    );
    let pid: u32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
    // SAFETY: the survivor is this test's own grandchild, identified by the pid it wrote.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let end = t.end();
    assert_eq!(end["still_running"], 1, "{end}");
    assert_eq!(end["survivors"][0]["tgid"], pid, "{end}");
    assert_eq!(end["survivors"][0]["comm"], "sleep", "{end}");
    assert_eq!(end["survivors"][0]["step"], "command", "{end}");
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn a_flood_into_a_tiny_ring_counts_lost_events() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tiny.toml");
    write(
        &config,
        "[ring]\nsize_bytes = 4096\ndrain_interval_ms = 200\n",
    );
    let t = Trace::run(
        &["--config", config.to_str().unwrap()],
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 400 ]; do /bin/true; i=$((i+1)); done",
        ],
    );
    assert_eq!(
        t.code(),
        Some(0),
        "the command's exit code, not a crash: {}",
        t.stderr()
    );
    let end = t.end();
    assert!(
        end["lost_total"].as_u64().unwrap() > 0,
        "a 4 KiB ring cannot hold 400 execs: {end}"
    );
    assert!(end["lost"]["exec"].as_u64().unwrap() > 0 || end["lost"]["fork"].as_u64().unwrap() > 0);
    assert_eq!(end["complete"], false);
    assert!(
        t.summary().contains("events were lost"),
        "the summary says so"
    );
}
