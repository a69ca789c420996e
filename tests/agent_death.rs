//! Enforcement outlives the agent: in an emulated GitHub job under enforce, a
//! step kills the agent with SIGKILL. The later steps must stay under the same
//! verdicts until `ciwatch finish`, which reports the death, counts the
//! denials of the recovered log and signs them, and leaves nothing attached.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{emulator, python_as, require_root, write, Ports, CIWATCH};
use serde_json::Value;

fn json_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

fn bpftool(args: &[&str]) -> std::process::Output {
    Command::new("bpftool")
        .args(args)
        .output()
        .expect("bpftool")
}

fn link_ids() -> BTreeSet<u64> {
    let out = bpftool(&["-j", "link", "show"]);
    let links: Value = serde_json::from_slice(&out.stdout).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn a_killed_agent_leaves_the_job_enforced_until_finish_records_the_end() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runner");
    python_as(&root.join("bin/Runner.Worker"));
    let ports = Ports::new(&["allowed", "unlisted"]);
    let policy = tmp.path().join("policy.yml");
    write(
        &policy,
        &format!(
            "version: 1\nmode: enforce\ndefaults:\n  loopback: false\n  resolver: false\nallow:\n  - 127.0.0.1:{}/tcp\n",
            ports.port("allowed")
        ),
    );
    let keys = tmp.path().join("keys");
    let keygen = Command::new(CIWATCH)
        .args(["keygen", "--out-dir"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let (out, outcomes, results) = (
        tmp.path().join("trace"),
        tmp.path().join("outcomes.txt"),
        tmp.path().join("results.json"),
    );
    write(
        &tmp.path().join("config.json"),
        &serde_json::json!({
            "scenario": "kill_agent", "runner_root": root, "work": tmp.path().join("work"), "out": out,
            "ciwatch": CIWATCH, "policy": policy, "signing_key": keys.join("ciwatch.key"),
            "ports": ports.by_name, "results": results, "outcomes": outcomes,
            "connect_probe": emulator("connect_probe.py"), "kill_agent": emulator("kill_agent.py"),
        })
        .to_string(),
    );
    let status = common::spawn(
        Command::new(root.join("bin/Runner.Worker"))
            .arg(emulator("github_worker.py"))
            .arg(tmp.path().join("config.json")),
    )
    .wait()
    .unwrap();
    let agent_log = || std::fs::read_to_string(out.join("agent.log")).unwrap_or_default();
    assert!(status.success(), "{}", agent_log());
    let results = json_file(&results);
    assert_eq!(results["kill_code"], 0, "the step could not kill the agent");

    // The steps after the kill got the verdicts the steps before it got.
    let seen = std::fs::read_to_string(&outcomes).unwrap();
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        [
            "before-unlisted EPERM",
            "before-allowed ok",
            "after-unlisted EPERM",
            "after-allowed ok"
        ],
        "{}",
        agent_log()
    );

    // finish reports the death, and counts what the dead agent's log and hooks hold.
    assert_eq!(results["finish_code"], 80, "finish exits with AGENT_DIED");
    let report = json_file(&tmp.path().join("trace.finish.json"));
    assert_eq!(report["agent_died"], true);
    assert_eq!(
        report["denied"], 1,
        "the denial logged before the kill: {report:#}"
    );
    let denied = &report["denied_events"][0];
    assert_eq!(denied["port"], ports.port("unlisted"), "{report:#}");
    // A recovered log keeps steps as first written: the step's id, named once sealed.
    assert_eq!(
        denied["steps"].as_array().map(Vec::len),
        Some(1),
        "{report:#}"
    );
    assert!(report["lost"].as_u64().unwrap() >= 1, "{report:#}");

    let log = std::fs::read_to_string(out.join("events.ndjson")).unwrap();
    let end: Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(end["agent_status"], "died");
    assert_eq!(end["events"]["denied"], 1, "{end:#}");
    assert_eq!(
        end["lost"]["denied"], 1,
        "the denial after the kill, queued but never read, is counted: {end:#}"
    );

    // The signed statement carries both counts.
    let envelope = std::fs::read_to_string(out.join("attestation.intoto.jsonl")).unwrap();
    let envelope = ciwatch::attest::dsse::Envelope::parse(envelope.trim()).unwrap();
    let statement: Value = serde_json::from_slice(&envelope.payload_bytes().unwrap()).unwrap();
    let predicate = &statement["predicate"];
    assert_eq!(predicate["eventLog"]["agentStatus"], "died");
    assert_eq!(predicate["counts"]["events"]["denied"], 1, "{predicate:#}");
    assert_eq!(predicate["counts"]["lost"]["denied"], 1, "{predicate:#}");

    // Every hook was pinned while the agent lived; after finish nothing of it is left.
    let links = results["agent_links"].as_array().unwrap();
    let pinned: Vec<&str> = links
        .iter()
        .flat_map(|l| l["pinned"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    for program in [
        "connect4_cg",
        "sendmsg6_cg",
        "sock_create_cg",
        "fork_btf",
        "exit_btf",
        "exec_tp",
    ] {
        assert!(
            pinned.iter().any(|p| p.ends_with(program)),
            "{program} was not pinned: {links:#?}"
        );
    }
    let pin_dir = Path::new(pinned[0]).parent().unwrap();
    assert!(
        pin_dir.starts_with("/sys/fs/bpf/ciwatch"),
        "{}",
        pin_dir.display()
    );
    assert!(!pin_dir.exists(), "{} is left", pin_dir.display());
    let left = link_ids();
    for link in links {
        assert!(
            !left.contains(&link["id"].as_u64().unwrap()),
            "link {link} is left"
        );
    }
    // A program goes once the kernel has freed its last link, after an RCU grace period.
    let progs: Vec<String> = results["agent_progs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap().to_string())
        .collect();
    assert!(!progs.is_empty());
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &progs {
        while bpftool(&["prog", "show", "id", id]).status.success() {
            assert!(Instant::now() < deadline, "program {id} is still loaded");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
