//! Learn mode inside a job: `ciwatch start --mode learn` then `finish` propose
//! the policy that would have allowed the job, and diff it against the policy
//! in force. The one non-loopback connect runs in an empty network namespace,
//! so it is recorded (the tracepoint sees the attempt) but nothing leaves the host.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::process::Command;

use common::{require_root, write, CIWATCH};
use serde_json::Value;

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn learn_mode_finish_proposes_a_policy_and_diffs_it() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("trace");
    let policy = tmp.path().join("policy.yml");
    write(
        &policy,
        "version: 1\nmode: learn\nallow:\n  - example.org:443\n",
    );
    let script = format!(
        "set -e\n\
         {CIWATCH} start --out {out} --mode learn --policy {policy} --sign none > /dev/null\n\
         unshare -n python3 -c \"import socket\ntry: socket.create_connection(('192.0.2.7', 8443), 0.5)\nexcept OSError: pass\"\n\
         {CIWATCH} finish --out {out} --json > {out}.finish.json\n",
        out = out.display(),
        policy = policy.display()
    );
    let status = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("GITLAB_CI", "true")
        .env("CI_SERVER_URL", "https://gitlab.example")
        .env("CI_JOB_ID", "4242")
        .env("CI_JOB_NAME", "learn")
        .status()
        .unwrap();
    assert!(status.success(), "the emulated job failed");

    let report: Value =
        serde_json::from_slice(&std::fs::read(format!("{}.finish.json", out.display())).unwrap())
            .unwrap();
    let proposed = report["proposed_policy"]
        .as_str()
        .expect("a proposal in learn mode");
    assert!(proposed.contains("- \"192.0.2.7:8443/tcp\""), "{proposed}");
    assert!(proposed.contains("WARNING: 1 job is too few"), "{proposed}");
    assert_eq!(
        std::fs::read_to_string(out.join("policy.proposed.yml")).unwrap(),
        proposed
    );
    let diff = report["policy_diff"]
        .as_str()
        .expect("a diff against the policy in force");
    assert!(diff.contains("+ 192.0.2.7:8443/tcp"), "{diff}");
    assert!(diff.contains("- example.org:443"), "{diff}");
    ciwatch::policy::parse(proposed.as_bytes(), "proposal")
        .expect("the proposal is a valid policy");
}
