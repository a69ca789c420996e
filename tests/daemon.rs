//! `ciwatch daemon` over two sequential and two concurrent emulated GitHub
//! jobs on one host: four separate, complete traces, each holding only its
//! own job's events.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{emulator, python_as, require_root, step_of, write, Ports, CIWATCH};
use serde_json::Value;

/// A daemon watches the whole host, so two of these tests at once would see each other's jobs.
static ONE_DAEMON_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn start_daemon(state: &Path) -> Daemon {
    start_daemon_with(state, &config_with(state, ""), &[])
}

fn start_daemon_with(state: &Path, config: &Path, extra: &[&str]) -> Daemon {
    let mut child = Command::new(CIWATCH)
        .args(["daemon", "--state-dir"])
        .arg(state)
        .arg("--config")
        .arg(config)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        if line.contains("daemon ready") {
            // Keep draining stderr so the daemon never blocks on a full pipe.
            std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
            return Daemon(child);
        }
        line.clear();
    }
    let status = child.wait();
    panic!("the daemon exited before it was ready: {status:?}");
}

/// A config beside `state` with `extra` sections. The default health port may be
/// taken on a shared host, so the health server listens on a free one.
fn config_with(state: &Path, extra: &str) -> PathBuf {
    let path = state.with_extension("toml");
    write(
        &path,
        &format!("[health]\nlisten = \"127.0.0.1:0\"\n{extra}"),
    );
    path
}

/// One emulated job: its own runner directory, Runner.Worker and ports.
fn job(tmp: &Path, name: &str) -> (Command, Ports) {
    job_with(tmp, name, serde_json::json!({ "scenario": "short" }))
}

fn job_with(tmp: &Path, name: &str, extra: Value) -> (Command, Ports) {
    let root = tmp.join(name).join("runner");
    python_as(&root.join("bin/Runner.Worker"));
    let ports = Ports::new(&["build", "test"]);
    let config = tmp.join(name).join("config.json");
    let mut cfg = serde_json::json!({
        "runner_root": root, "work": tmp.join(name).join("work"), "ports": ports.by_name,
        "results": tmp.join(name).join("results.json"), "await_reader": true,
    });
    cfg.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    write(&config, &cfg.to_string());
    let mut cmd = Command::new(root.join("bin/Runner.Worker"));
    cmd.arg(emulator("github_worker.py")).arg(&config);
    (cmd, ports)
}

fn sealed_traces(state: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(state)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("events.ndjson").exists())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn sequential_and_concurrent_jobs_get_separate_complete_traces() {
    require_root();
    let _serial = ONE_DAEMON_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let _daemon = start_daemon(&state);

    let mut all_ports = Vec::new();
    for name in ["seq1", "seq2"] {
        let (mut cmd, ports) = job(tmp.path(), name);
        assert!(common::spawn(&mut cmd).wait().unwrap().success());
        all_ports.push(ports);
    }
    let (mut a, pa) = job(tmp.path(), "par1");
    let (mut b, pb) = job(tmp.path(), "par2");
    let (mut ca, mut cb) = (common::spawn(&mut a), common::spawn(&mut b));
    assert!(ca.wait().unwrap().success() && cb.wait().unwrap().success());
    all_ports.extend([pa, pb]);

    let deadline = Instant::now() + Duration::from_secs(30);
    while sealed_traces(&state).len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let traces = sealed_traces(&state);
    assert_eq!(traces.len(), 4, "one sealed trace per job: {traces:?}");

    let mut job_ids = Vec::new();
    for trace in &traces {
        let lines: Vec<Value> = std::fs::read_to_string(trace.join("events.ndjson"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let end = lines.last().unwrap();
        assert_eq!(end["type"], "trace_end");
        assert_eq!(end["agent_status"], "ok", "{end}");
        assert_eq!(end["complete"], true, "{end}");
        let job_id = lines[0]["job"]["id"].as_str().unwrap().to_string();
        let connects: Vec<&Value> = lines.iter().filter(|e| e["type"] == "connect").collect();
        // Which emulated job is this? The one whose ports its connects hit.
        let owner = all_ports
            .iter()
            .position(|p| connects.iter().any(|c| c["port"] == p.port("build")))
            .expect("a job's build connect");
        let own: Vec<u16> = ["build", "test"]
            .iter()
            .map(|n| all_ports[owner].port(n))
            .collect();
        for c in &connects {
            let port = u16::try_from(c["port"].as_u64().unwrap()).unwrap();
            assert!(
                own.contains(&port),
                "trace {} holds another job's connect to {port}",
                trace.display()
            );
            let expected = if port == own[0] { "Build" } else { "Test" };
            assert_eq!(step_of(c).1, Some(expected));
            assert_eq!(c["job"]["id"], job_id.as_str());
        }
        assert_eq!(connects.iter().filter(|c| c["port"] == own[1]).count(), 3);
        job_ids.push(job_id);
    }
    job_ids.sort();
    job_ids.dedup();
    assert_eq!(job_ids.len(), 4, "four distinct jobs");

    // Each sealed trace is signed with the node's key (created next to the state directory),
    // and verifies against it.
    let public = tmp.path().join("ciwatch.pub");
    for trace in &traces {
        let envelope = trace.join("attestation.intoto.jsonl");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !envelope.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = Command::new(CIWATCH)
            .args(["verify", "--key"])
            .arg(&public)
            .arg("--envelope")
            .arg(&envelope)
            .arg(trace.join("events.ndjson"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            trace.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn trace_of(state: &Path, port: u16) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for dir in sealed_traces(state) {
            let lines: Vec<Value> = std::fs::read_to_string(dir.join("events.ndjson"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if lines
                .iter()
                .any(|e| e["type"] == "connect" && e["port"] == port)
            {
                return lines;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no sealed trace holds a connect to {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn a_worker_that_dies_mid_step_and_a_missing_diag_log_degrade_visibly() {
    require_root();
    let _serial = ONE_DAEMON_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // The orphaned step outlives its Worker: a linger longer than the test keeps a
    // loaded machine's slow step from being cut off by the timer (which is not what
    // this test is about).
    let config = config_with(&state, "[run]\nlinger_ms = 60000\n");
    let _daemon = start_daemon_with(&state, &config, &[]);

    let (mut orphan, op) = job_with(
        tmp.path(),
        "orphan",
        serde_json::json!({ "scenario": "orphan" }),
    );
    assert!(common::spawn(&mut orphan).wait().unwrap().success());
    let lines = trace_of(&state, op.port("build"));
    let hit = lines
        .iter()
        .find(|e| e["type"] == "connect" && e["port"] == op.port("build"))
        .unwrap();
    assert_eq!(
        step_of(hit).1,
        Some("Orphan"),
        "the step outlived its Worker and kept its attribution: {}",
        lines[0]
    );
    assert_eq!(lines[0]["job"]["launcher_exited"], true);

    let (mut blind, bp) = job_with(
        tmp.path(),
        "blind",
        serde_json::json!({ "scenario": "short", "no_diag": true }),
    );
    assert!(common::spawn(&mut blind).wait().unwrap().success());
    let lines = trace_of(&state, bp.port("build"));
    let hit = lines
        .iter()
        .find(|e| e["type"] == "connect" && e["port"] == bp.port("build"))
        .unwrap();
    let (id, name, _) = step_of(hit);
    assert_eq!(name, None, "no name is guessed without the runner's log");
    assert_eq!(id.len(), 36, "the step keeps its file-command GUID: {id}");
    let step = lines[0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap();
    assert!(
        step["degraded"][0]
            .as_str()
            .unwrap()
            .starts_with("no display name"),
        "{step}"
    );
    let summary = std::fs::read_to_string(
        sealed_traces(&state)
            .iter()
            .find(|d| {
                std::fs::read_to_string(d.join("events.ndjson"))
                    .unwrap()
                    .contains(id)
            })
            .unwrap()
            .join("summary.md"),
    )
    .unwrap();
    assert!(summary.contains("no display name"), "{summary}");
}

/// One sample of the daemon's /metrics, read over plain HTTP.
fn metric(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: ciwatch\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn metrics_count_denials_undecodable_records_and_pending_uploads() {
    require_root();
    let _serial = ONE_DAEMON_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let store = tmp.path().join("store");
    let port = {
        let free = Ports::new(&["health"]);
        free.port("health")
    };
    let config = tmp.path().join("daemon.toml");
    write(
        &config,
        &format!(
            "[health]\nlisten = \"127.0.0.1:{port}\"\n[output]\nurl = \"file://{}\"\n",
            store.display()
        ),
    );
    // The node policy allows one port nothing listens on: every job connect is denied.
    let daemon = start_daemon_with(
        &state,
        &config,
        &[
            "--mode",
            "enforce",
            "--no-default-allow",
            "--allow",
            "127.0.0.1:9",
        ],
    );
    // The store goes away under the daemon: every upload from now on fails and stays pending.
    std::fs::remove_dir_all(&store).unwrap();
    write(&store, "not a directory");

    // A step of the job writes a record no decoder can read into the daemon's ring buffer.
    let inject = format!(
        "python3 {} {}",
        emulator("inject_record.py").display(),
        daemon.0.id()
    );
    let (mut cmd, ports) = job_with(
        tmp.path(),
        "denied",
        serde_json::json!({ "scenario": "short", "first_step": inject }),
    );
    common::spawn(&mut cmd).wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let sealed = sealed_traces(&state).into_iter().find_map(|dir| {
            let text = std::fs::read_to_string(dir.join("events.ndjson")).ok()?;
            text.contains(&format!("\"port\":{}", ports.port("build")))
                .then(|| {
                    text.lines()
                        .map(|l| serde_json::from_str(l).unwrap())
                        .collect::<Vec<Value>>()
                })
        });
        if let Some(lines) = sealed {
            break lines;
        }
        assert!(Instant::now() < deadline, "the job was not sealed");
        std::thread::sleep(Duration::from_millis(100));
    };
    let denied = lines.iter().filter(|e| e["type"] == "denied").count();
    assert!(denied >= 1, "the unlisted connects were denied");
    let end = lines.last().unwrap();
    assert_eq!(end["undecodable"], 1, "{end}");
    assert_eq!(
        end["complete"], false,
        "a record nobody could read may be this job's: {end}"
    );

    // Each counter equals what the signed log holds; the upload is retried, never dropped.
    let expected = [
        ("ciwatch_denied_total", denied as f64),
        ("ciwatch_undecodable_total", 1.0),
        ("ciwatch_uploads_pending", 1.0),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read: Vec<Option<f64>> = expected.iter().map(|(n, _)| metric(port, n)).collect();
        if expected
            .iter()
            .zip(&read)
            .all(|((_, want), got)| *got == Some(*want))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics on 127.0.0.1:{port}: wanted {expected:?}, read {read:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every directory under the state directory, sealed or not, with the text of its log.
fn all_logs(state: &Path) -> Vec<(PathBuf, bool, String)> {
    let mut logs: Vec<(PathBuf, bool, String)> = std::fs::read_dir(state)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .filter_map(|dir| {
            let sealed = dir.join("events.ndjson");
            let live = dir.join("events.ndjson.partial");
            let (is_sealed, text) = match std::fs::read_to_string(&sealed) {
                Ok(t) => (true, t),
                Err(_) => (false, std::fs::read_to_string(&live).ok()?),
            };
            Some((dir, is_sealed, text))
        })
        .collect();
    logs.sort();
    logs
}

/// The kernel learns that a job's processes are gone before the daemon has read
/// their last records. Here the reader drains only every second (no early
/// wakeups), the Worker dies first, and its orphaned step connects and exits
/// between two drains: at the next tick the kernel says the job is over while
/// the connect is still in the ring. The job must still be one sealed trace
/// holding that connect, never sealed early and continued in a second trace.
#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn a_job_whose_last_records_are_still_in_the_ring_is_sealed_once_with_all_of_them() {
    require_root();
    let _serial = ONE_DAEMON_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    // A linger longer than the test keeps the seal waiting for the step, not for a timer.
    let config = config_with(
        &state,
        "[ring]\ndrain_interval_ms = 1000\nwakeup_bytes = 8388608\n[run]\nlinger_ms = 60000\n",
    );
    let _daemon = start_daemon_with(&state, &config, &[]);
    let mut jobs = Vec::new();
    for round in 0..3 {
        let (mut cmd, ports) = job_with(
            tmp.path(),
            &format!("orphan{round}"),
            serde_json::json!({ "scenario": "orphan", "orphan_sleep": 2.5 }),
        );
        assert!(common::spawn(&mut cmd).wait().unwrap().success());
        jobs.push(ports);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let owners = |logs: &[(PathBuf, bool, String)], port: u16| -> Vec<(PathBuf, bool)> {
        logs.iter()
            .filter(|(_, _, text)| text.contains(&format!("\"port\":{port}")))
            .map(|(dir, sealed, _)| (dir.clone(), *sealed))
            .collect()
    };
    loop {
        let logs = all_logs(&state);
        let sealed_with_connect = jobs
            .iter()
            .filter(|p| {
                owners(&logs, p.port("build"))
                    .iter()
                    .any(|(_, sealed)| *sealed)
            })
            .count();
        if sealed_with_connect == jobs.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "each orphaned step's connect is in a sealed trace: {:?}",
            logs.iter().map(|(d, s, _)| (d, s)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = all_logs(&state);
    for ports in &jobs {
        let found = owners(&logs, ports.port("build"));
        assert_eq!(found.len(), 1, "one trace holds the connect: {found:?}");
    }
    assert_eq!(
        logs.len(),
        jobs.len(),
        "one trace per job, none split in two: {:?}",
        logs.iter().map(|(d, s, _)| (d, s)).collect::<Vec<_>>()
    );
}
