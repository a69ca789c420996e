//! Runs the real `ciwatch` binary over small jobs and reads back what it wrote.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const CIWATCH: &str = env!("CARGO_BIN_EXE_ciwatch");

/// Privileged tests need root. Outside CI they skip with a message; under CI=true they fail.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("this test loads BPF programs and needs root; CI is set, so it fails instead of skipping");
    }
    eprintln!("skipped: needs root to load BPF programs (run with sudo, or set CI=true to make this a failure)");
    false
}

pub struct Trace {
    pub dir: tempfile::TempDir,
    pub output: Output,
    pub lines: Vec<Value>,
}

impl Trace {
    /// `ciwatch run --out <tmp> [extra] -- cmd...`; panics with ciwatch's stderr if it wrote no log.
    pub fn run(extra: &[&str], cmd: &[&str]) -> Trace {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = Command::new(CIWATCH)
            .arg("run")
            .arg("--quiet")
            .arg("--out")
            .arg(dir.path())
            .args(extra)
            .arg("--")
            .args(cmd)
            .output()
            .expect("spawn ciwatch");
        let log = dir.path().join("events.ndjson");
        let text = std::fs::read_to_string(&log).unwrap_or_else(|e| {
            panic!("no {} ({e}); ciwatch stderr:\n{}", log.display(), String::from_utf8_lossy(&output.stderr))
        });
        let lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}")))
            .collect();
        Trace { dir, output, lines }
    }

    pub fn sh(script: &str) -> Trace {
        Trace::run(&[], &["sh", "-c", script])
    }

    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn events(&self, kind: &str) -> Vec<&Value> {
        self.lines.iter().filter(|l| l["type"] == kind).collect()
    }

    pub fn start(&self) -> &Value {
        let first = self.lines.first().expect("empty log");
        assert_eq!(first["type"], "trace_start");
        first
    }

    pub fn end(&self) -> &Value {
        let last = self.lines.last().expect("empty log");
        assert_eq!(last["type"], "trace_end", "last line is not trace_end: {last}");
        last
    }

    pub fn summary(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("summary.md")).expect("summary.md")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A python3 one-off, so tests can make exact socket calls.
pub fn py(code: &str) -> Vec<String> {
    vec!["python3".into(), "-c".into(), code.into()]
}

pub fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}
