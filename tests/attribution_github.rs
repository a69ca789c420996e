//! Step attribution on an emulated GitHub Actions job: a process exec'd as
//! Runner.Worker runs steps the way actions/runner does (argv forms, script
//! files, per-step file-command GUIDs, _diag/Worker_*.log), and every event
//! must land in the step that caused it.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{emulator, python_as, require_root, step_of, write, Ports, Shim, CIWATCH};
use serde_json::Value;

const ACTION_JS: &str = "const net = require('net');\n\
const s = net.connect(Number(process.env.INPUT_PORT), '127.0.0.1', () => s.destroy());\n\
s.on('error', (e) => { console.error(e); process.exit(1); });\n";

fn runner_layout(root: &Path, work: &Path) {
    python_as(&root.join("bin/Runner.Worker"));
    python_as(&root.join("bin/docker"));
    write(
        &root.join("bin/hashFiles"),
        "// hashFiles() helper: reads files, no network\n",
    );
    let node_dir = root.join("externals/node20/bin");
    std::fs::create_dir_all(&node_dir).unwrap();
    std::os::unix::fs::symlink("/usr/bin/node", node_dir.join("node")).unwrap();
    write(&work.join("_actions/acme/tool/v1/dist/index.js"), ACTION_JS);
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn every_event_lands_in_the_step_that_caused_it() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let (root, work, out) = (
        tmp.path().join("runner"),
        tmp.path().join("work"),
        tmp.path().join("trace"),
    );
    runner_layout(&root, &work);
    let shim = Shim::start(tmp.path());
    let ports = Ports::new(&[
        "pre",
        "main",
        "build",
        "bg_a",
        "bg_b",
        "daemon",
        "env_i",
        "container",
        "post",
    ]);
    let decoy = tmp.path().join("home/.aws/credentials");
    write(&decoy, "[default]\n");
    let config = tmp.path().join("config.json");
    let results = tmp.path().join("results.json");
    write(
        &config,
        &serde_json::json!({
            "runner_root": root, "work": work, "out": out, "ciwatch": CIWATCH, "ports": ports.by_name,
            "shim_fifo": shim.fifo, "decoy": decoy, "results": results,
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
    assert!(status.success(), "the emulated job failed");
    let start: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("trace.start.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(start["platform"], "github-actions");
    assert_eq!(start["launcher"]["comm"], "Runner.Worker");

    let log = std::fs::read_to_string(out.join("events.ndjson")).expect("sealed events.ndjson");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let header = &lines[0];
    assert_eq!(header["job"]["platform"], "github-actions");
    let step_names: Vec<&str> = header["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for expected in [
        "Pre Run acme/tool@v1",
        "Run acme/tool@v1",
        "Build",
        "Serve A",
        "Serve B",
        "Start daemon",
        "Scrubbed env",
        "Quick",
        "Run in container",
        "Post Run acme/tool@v1",
    ] {
        assert!(
            step_names.contains(&expected),
            "step {expected:?} missing from the header: {step_names:?}"
        );
    }

    // Each port is one step's traffic; every connect to it must carry that step.
    let expect = [
        ("pre", "Pre Run acme/tool@v1", "pre"),
        ("main", "Run acme/tool@v1", "main"),
        ("build", "Build", "main"),
        ("bg_a", "Serve A", "main"),
        ("bg_b", "Serve B", "main"),
        ("daemon", "Start daemon", "main"),
        ("env_i", "Scrubbed env", "main"),
        ("container", "Run in container", "main"),
        ("post", "Post Run acme/tool@v1", "post"),
    ];
    let mut checked = 0;
    for (port_name, step, stage) in expect {
        let port = ports.port(port_name);
        let hits: Vec<&Value> = lines
            .iter()
            .filter(|e| e["type"] == "connect" && e["port"] == port)
            .collect();
        assert!(
            !hits.is_empty(),
            "no connect to {port_name} ({port}) was recorded"
        );
        for e in &hits {
            let (_, name, got_stage) = step_of(e);
            assert_eq!(
                (name, got_stage),
                (Some(step), Some(stage)),
                "connect to {port_name} misattributed: {e}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= ports.len() + 6,
        "background steps connected several times each"
    );

    let quick = lines
        .iter()
        .find(|e| e["type"] == "exec" && e["filename"] == "/bin/true")
        .expect("the 1 ms step's exec");
    assert_eq!(step_of(quick).1, Some("Quick"));
    let container = lines
        .iter()
        .find(|e| e["type"] == "connect" && e["port"] == ports.port("container"))
        .unwrap();
    let build = lines
        .iter()
        .find(|e| e["type"] == "connect" && e["port"] == ports.port("build"))
        .unwrap();
    assert_ne!(
        container["proc"]["cgroup_id"], build["proc"]["cgroup_id"],
        "the container step ran in another cgroup"
    );
    let hash_files = lines
        .iter()
        .find(|e| {
            e["type"] == "exec"
                && e["argv"][1]
                    .as_str()
                    .is_some_and(|a| a.ends_with("/hashFiles"))
        })
        .expect("hashFiles exec");
    assert_eq!(step_of(hash_files).1, Some("runner-internal (hashFiles)"));
    let decoy_read = lines
        .iter()
        .find(|e| e["type"] == "file")
        .expect("the decoy credential read");
    assert_eq!(step_of(decoy_read).1, Some("Build"));
    assert!(
        !log.contains("secret-runtime-token-must-not-leak"),
        "a step's environment leaked into the log"
    );

    let finish: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("trace.finish.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(finish["agent_died"], false);
    // Without an OIDC token, finish's `auto` signs with the local key, and says how to verify.
    assert_eq!(finish["signing"]["method"], "key");
    let verify = finish["signing"]["verify_command"].as_str().unwrap();
    let args: Vec<&str> = verify.split_whitespace().skip(1).collect();
    let verified = Command::new(CIWATCH).args(&args).output().unwrap();
    assert!(
        verified.status.success(),
        "{verify}: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let build_row = finish["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "Build")
        .unwrap();
    assert!(
        build_row["connects"].as_u64().unwrap() >= 1
            && build_row["files"] == 1
            && build_row["dns"].as_u64().unwrap() >= 1
    );
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        summary.contains("| Build |") && summary.contains("Pre Run acme/tool@v1 (pre)"),
        "{summary}"
    );
}
