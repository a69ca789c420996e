//! `ciwatch daemon` over two sequential and two concurrent emulated GitHub
//! jobs on one host: four separate, complete traces, each holding only its
//! own job's events.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{emulator, python_as, require_root, step_of, write, Ports, CIWATCH};
use serde_json::Value;

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

fn start_daemon(state: &Path) -> Daemon {
    let mut child = Command::new(CIWATCH)
        .args(["daemon", "--state-dir"])
        .arg(state)
        .arg("--config")
        .arg(no_health_config(state))
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
    panic!("the daemon exited before it was ready");
}

/// The default health port may be taken on a shared host; this test reads traces, not metrics.
fn no_health_config(state: &Path) -> PathBuf {
    let path = state.with_extension("toml");
    write(&path, "[health]\nlisten = \"127.0.0.1:0\"\n");
    path
}

/// One emulated job: its own runner directory, Runner.Worker and ports.
fn job(tmp: &Path, name: &str) -> (Command, Ports) {
    let root = tmp.join(name).join("runner");
    python_as(&root.join("bin/Runner.Worker"));
    let ports = Ports::new(&["build", "test"]);
    let config = tmp.join(name).join("config.json");
    write(
        &config,
        &serde_json::json!({
            "scenario": "short", "runner_root": root, "work": tmp.join(name).join("work"), "ports": ports.by_name,
            "results": tmp.join(name).join("results.json"),
        })
        .to_string(),
    );
    let mut cmd = Command::new(root.join("bin/Runner.Worker"));
    cmd.arg(emulator("github_worker.py")).arg(&config);
    (cmd, ports)
}

fn sealed_traces(state: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(state)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.join("events.ndjson").exists()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

#[test]
fn sequential_and_concurrent_jobs_get_separate_complete_traces() {
    if !require_root() {
        return;
    }
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
        let lines: Vec<Value> = std::fs::read_to_string(trace.join("events.ndjson")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let end = lines.last().unwrap();
        assert_eq!(end["type"], "trace_end");
        assert_eq!(end["agent_status"], "ok", "{end}");
        assert_eq!(end["complete"], true, "{end}");
        let job_id = lines[0]["job"]["id"].as_str().unwrap().to_string();
        let connects: Vec<&Value> = lines.iter().filter(|e| e["type"] == "connect").collect();
        // Which emulated job is this? The one whose ports its connects hit.
        let owner = all_ports.iter().position(|p| connects.iter().any(|c| c["port"] == p.port("build"))).expect("a job's build connect");
        let own: Vec<u16> = ["build", "test"].iter().map(|n| all_ports[owner].port(n)).collect();
        for c in &connects {
            let port = c["port"].as_u64().unwrap() as u16;
            assert!(own.contains(&port), "trace {} holds another job's connect to {port}", trace.display());
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
}
