//! Runs the real `ciwatch` binary over small jobs and reads back what it wrote.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub const CIWATCH: &str = env!("CARGO_BIN_EXE_ciwatch");

/// Privileged tests are `#[ignore]`d with the reason, so a plain `cargo test`
/// lists them as ignored rather than passing them; run with `--include-ignored`
/// (scripts/test does), they must be root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads BPF programs and needs root: run it with sudo (scripts/test does)"
    );
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
            panic!(
                "no {} ({e}); ciwatch stderr:\n{}",
                log.display(),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        let lines = text
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad NDJSON line {l:?}: {e}"))
            })
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
        assert_eq!(
            last["type"], "trace_end",
            "last line is not trace_end: {last}"
        );
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

/// The cgroup v2 mount, from mountinfo (hybrid hosts mount it at /sys/fs/cgroup/unified).
pub fn cgroup2_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split(' ').next()? == "cgroup2")
                .then(|| PathBuf::from(left.split(' ').nth(4).unwrap()))
        })
        .expect("a cgroup v2 mount")
}

/// A copy of the Python interpreter under another name, so its task name (comm) is that name.
pub fn python_as(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Debian's interpreter, not a version manager's shim script (whose comm would be its shell).
    std::fs::copy("/usr/bin/python3", path)
        .expect("copy /usr/bin/python3 (Debian's python3, scripts/install-prereqs installs it)");
}

/// Spawns, retrying while a just-written executable is still open for writing in a
/// child another test thread forked (ETXTBSY) until that child execs.
pub fn spawn(cmd: &mut Command) -> std::process::Child {
    for _ in 0..50 {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other.expect("spawn"),
        }
    }
    panic!("executable stayed busy (ETXTBSY)");
}

pub fn emulator(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/emulators")
        .join(name)
}

/// Loopback listeners whose ports tag the traffic of each step.
pub struct Ports {
    listeners: Vec<std::net::TcpListener>,
    pub by_name: std::collections::BTreeMap<String, u16>,
}

impl Ports {
    pub fn new(names: &[&str]) -> Ports {
        let mut listeners = Vec::new();
        let mut by_name = std::collections::BTreeMap::new();
        for name in names {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            by_name.insert(name.to_string(), l.local_addr().unwrap().port());
            listeners.push(l);
        }
        Ports { listeners, by_name }
    }

    pub fn port(&self, name: &str) -> u16 {
        self.by_name[name]
    }

    pub fn len(&self) -> usize {
        self.listeners.len()
    }
}

/// A fake container runtime (tests/emulators/shim.py) exec'd as containerd-shim-runc-v2, outside any runner's tree.
pub struct Shim {
    pub fifo: PathBuf,
    cgroup: PathBuf,
    child: std::process::Child,
}

impl Shim {
    pub fn start(dir: &Path) -> Shim {
        let bin = dir.join("shim/containerd-shim-runc-v2");
        python_as(&bin);
        let fifo = dir.join("shim/requests");
        let cgroup = cgroup2_root().join(format!("ciwatch-test-{}", std::process::id()));
        std::fs::create_dir_all(&cgroup).unwrap();
        let child = spawn(
            Command::new(&bin)
                .arg(emulator("shim.py"))
                .arg(&fifo)
                .arg(&cgroup),
        );
        for _ in 0..100 {
            if fifo.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Shim {
            fifo,
            cgroup,
            child,
        }
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(entries) = std::fs::read_dir(&self.cgroup) {
            for e in entries.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// Events of a sealed log, keyed for attribution checks.
pub fn step_of(event: &Value) -> (&str, Option<&str>, Option<&str>) {
    (
        event["step"]["id"].as_str().unwrap_or(""),
        event["step"]["name"].as_str(),
        event["step"]["stage"].as_str(),
    )
}
