//! Bad input gets a clear message and a distinct exit code, with nothing half-written.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::process::Command;

use common::{require_root, write, Trace, CIWATCH};

fn ciwatch(args: &[&str]) -> (Option<i32>, String, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(CIWATCH)
        .arg("run")
        .arg("--quiet")
        .arg("--out")
        .arg(out.path())
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        out,
    )
}

fn no_log_written(dir: &std::path::Path) {
    assert!(
        !dir.join("events.ndjson").exists(),
        "no log may be written on a setup failure"
    );
}

#[test]
fn command_not_found_exits_127_before_loading_anything() {
    let (code, err, out) = ciwatch(&["--", "definitely-not-a-command-ciwatch"]);
    assert_eq!(code, Some(127), "{err}");
    assert!(
        err.contains("definitely-not-a-command-ciwatch: command not found"),
        "{err}"
    );
    no_log_written(out.path());
}

#[test]
fn command_not_executable_exits_126() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("not-exec.sh");
    write(&script, "#!/bin/sh\n");
    let (code, err, _) = ciwatch(&["--", script.to_str().unwrap()]);
    assert_eq!(code, Some(126), "{err}");
    assert!(err.contains("not executable"), "{err}");
}

#[test]
fn malformed_config_names_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.toml");
    write(
        &config,
        "capture_args = \"redacted\"\n[ring]\nsize_bytes = \"big\"\n",
    );
    let (code, err, out) = ciwatch(&["--config", config.to_str().unwrap(), "--", "true"]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("bad.toml") && err.contains("line 3"), "{err}");
    no_log_written(out.path());
}

#[test]
fn config_that_is_not_utf8_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("latin1.toml");
    std::fs::write(&config, b"capture_args = \"full\" # caf\xe9\n").unwrap();
    let (code, err, _) = ciwatch(&["--config", config.to_str().unwrap(), "--", "true"]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("not valid UTF-8"), "{err}");
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn without_capabilities_the_missing_ones_are_named() {
    require_root();
    // Drop to an unprivileged user, the way a misconfigured runner would run ciwatch.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            CIWATCH,
            "run",
            "--out",
            "/tmp",
            "--",
            "true",
        ])
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_PERFMON"),
        "{err}"
    );
    assert!(
        err.contains("sudo") || err.contains("setcap"),
        "says what to do: {err}"
    );
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn missing_btf_is_a_clear_error() {
    require_root();
    let (code, err, out) = ciwatch(&["--btf", "/nonexistent/vmlinux", "--", "true"]);
    assert_eq!(code, Some(71), "{err}");
    assert!(
        err.contains("BTF") && err.contains("CONFIG_DEBUG_INFO_BTF"),
        "{err}"
    );
    no_log_written(out.path());
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn unwritable_output_directory_exits_73() {
    require_root();
    let o = Command::new(CIWATCH)
        .args([
            "run",
            "--quiet",
            "--out",
            "/proc/version/ciwatch",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(73), "{err}");
    assert!(err.contains("/proc/version/ciwatch"), "{err}");
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn unmounted_tracefs_is_mounted_by_ciwatch() {
    require_root();
    // In a private mount namespace, take tracefs away and let ciwatch put it back.
    let out = tempfile::tempdir().unwrap();
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; \
         test ! -e /sys/kernel/tracing/events || exit 99; \
         exec {CIWATCH} run --quiet --out {} -- true",
        out.path().display()
    );
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("CIWATCH_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("mounted tracefs"), "{err}");
    assert!(out.path().join("events.ndjson").exists());
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn argv_that_is_not_utf8_is_stored_losslessly() {
    require_root();
    use std::os::unix::ffi::OsStrExt;
    let weird = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(CIWATCH)
        .arg("run")
        .arg("--quiet")
        .arg("--out")
        .arg(out.path())
        .args(["--", "/bin/echo"])
        .arg(weird)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let log = std::fs::read_to_string(out.path().join("events.ndjson")).unwrap();
    let exec: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["type"] == "exec")
        .unwrap();
    assert_eq!(exec["argv"][1], serde_json::json!({"base64": "Y2Fm6Q=="}));
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn the_exit_code_of_the_command_is_passed_through() {
    require_root();
    let t = Trace::sh("exit 7");
    assert_eq!(t.code(), Some(7));
    assert_eq!(t.end()["exit_code"], 7);
    let killed = Trace::sh("kill -TERM $$");
    assert_eq!(killed.code(), Some(128 + 15));
    assert_eq!(killed.end()["exit_signal"], 15);
}

#[test]
#[ignore = "needs root: loads BPF programs (scripts/test runs it)"]
fn check_reports_each_hook_and_the_fallbacks_it_skipped() {
    require_root();
    let o = Command::new(CIWATCH)
        .args(["check", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let hooks = report["hooks"].as_array().unwrap();
    let names: Vec<&str> = hooks.iter().map(|h| h["hook"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "lineage",
            "exec",
            "connect",
            "file",
            "dns",
            "socket",
            "dns_refusal"
        ]
    );
    assert!(hooks.iter().all(|h| h["attached"] == true));
    assert_eq!(
        hooks[5]["implementation"],
        "cgroup/sock_create + tracepoint/syscalls/sys_enter_socket"
    );
    assert_eq!(hooks[6]["implementation"], "cgroup_skb/egress");
    let file = &hooks[3];
    let kernel_hook = file["implementation"].as_str().unwrap();
    if kernel_hook.starts_with("tracepoint/") {
        // This kernel has no kprobes and refuses fentry: both are reported as skipped, with reasons.
        let skipped: Vec<&str> = file["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["implementation"].as_str().unwrap())
            .collect();
        assert_eq!(
            skipped,
            ["kprobe/security_file_open", "fentry/security_file_open"]
        );
        assert!(file["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| !s["reason"].as_str().unwrap().is_empty()));
    }
}
