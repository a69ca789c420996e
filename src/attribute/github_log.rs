//! Tails the GitHub Actions runner's `_diag/Worker_*.log` for what the
//! environment cannot tell: step display names, which process started which
//! step, and the step telemetry (stage, start and finish). The format is an
//! internal diagnostic, so every line is parsed defensively and a line that
//! does not parse is skipped, never guessed at.

use std::fs::File;
use std::path::PathBuf;

use serde::Deserialize;

/// What one log entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFact {
    /// `Process started with process id N`, under the step being processed.
    ProcessStarted { pid: u32, display_name: String },
    /// `Publish step telemetry for current step {…}.`
    Telemetry(StepTelemetry),
    /// `Job message:` with its display name.
    Job {
        display_name: Option<String>,
        job_id: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepTelemetry {
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub step_id: Option<String>,
    #[serde(default)]
    pub step_context_name: Option<String>,
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub start_time: Option<String>,
    #[serde(default)]
    pub finish_time: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the runner's Worker (pid {worker}) has no Worker_*.log of {dir} open")]
    NotOpen { worker: u32, dir: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A runner's `_diag` directory and the Worker process whose log in it is followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerLogSource {
    pub diag: PathBuf,
    pub worker: u32,
}

/// At most this much of the log is read per poll, so a huge file cannot stall the engine.
const READ_PER_POLL: usize = 1 << 20;
/// The runner starts a new page every 8 MB: an unread backlog larger than this was not
/// written by the runner alone, and is skipped rather than read.
const MAX_BACKLOG: u64 = 16 << 20;

/// Incremental reader of the `Worker_*.log` that the Worker process itself has open.
///
/// The directory is writable by the job, so its file names mean nothing: the
/// page followed is the one behind the Worker's own file descriptor, opened
/// through `/proc/<worker>/fd/N` (the same inode, whatever was renamed or
/// planted since). Reads are bounded per poll, and a backlog no runner could
/// have written is skipped and counted.
pub struct WorkerLog {
    source: RunnerLogSource,
    page: Option<Page>,
    parser: Parser,
    /// Bytes skipped because the log grew faster than a runner writes it.
    pub skipped_bytes: u64,
}

struct Page {
    /// The path the Worker's descriptor names; a new one is the runner's next page.
    path: PathBuf,
    file: File,
    offset: u64,
}

impl WorkerLog {
    pub fn new(source: RunnerLogSource) -> Self {
        Self {
            source,
            page: None,
            parser: Parser::default(),
            skipped_bytes: 0,
        }
    }

    pub fn source(&self) -> &RunnerLogSource {
        &self.source
    }

    /// Whether the Worker's page was found: until then it must be looked for while the Worker lives.
    pub fn has_page(&self) -> bool {
        self.page.is_some()
    }

    /// Facts from lines completed since the last poll, each with the boot-clock
    /// time it was read. Follows the runner to its next page; once the Worker is
    /// gone, reads the page it had open to the end.
    pub fn poll(&mut self) -> Result<Vec<(LogFact, u64)>, LogError> {
        if let Some((fd, path)) = open_page(&self.source) {
            if self.page.as_ref().map(|p| &p.path) != Some(&path) {
                if let Some(mut old) = self.page.take() {
                    self.read(&mut old)?; // the tail of the old page
                }
                let file = File::open(&fd).map_err(|source| LogError::Read {
                    path: path.clone(),
                    source,
                })?;
                self.page = Some(Page {
                    path,
                    file,
                    offset: 0,
                });
            }
        }
        let Some(mut page) = self.page.take() else {
            return Err(LogError::NotOpen {
                worker: self.source.worker,
                dir: self.source.diag.clone(),
            });
        };
        let read = self.read(&mut page);
        self.page = Some(page);
        read?;
        let now = crate::attribute::clock::boottime_ns();
        Ok(self.parser.take().into_iter().map(|f| (f, now)).collect())
    }

    fn read(&mut self, page: &mut Page) -> Result<(), LogError> {
        use std::os::unix::fs::FileExt;
        let err = |source| LogError::Read {
            path: page.path.clone(),
            source,
        };
        let len = page.file.metadata().map_err(err)?.len();
        if len.saturating_sub(page.offset) > MAX_BACKLOG {
            let mut last = [0u8; 1];
            page.file.read_exact_at(&mut last, len - 1).map_err(err)?;
            tracing::warn!(
                "{} grew by {} bytes at once, more than the runner writes: skipped",
                page.path.display(),
                len - page.offset
            );
            self.skipped_bytes += len - page.offset;
            page.offset = len;
            self.parser.resync(last[0] == b'\n');
            return Ok(());
        }
        let mut buf = vec![0u8; READ_PER_POLL];
        let mut budget = READ_PER_POLL;
        while budget > 0 {
            let n = page.file.read_at(&mut buf[..budget], page.offset).map_err(err)?;
            if n == 0 {
                break;
            }
            page.offset += n as u64;
            budget -= n;
            self.parser.feed(&buf[..n]);
        }
        Ok(())
    }
}

/// The Worker's open descriptor of a `Worker_*.log` in its `_diag`, as (`/proc/PID/fd/N`, the path it names).
fn open_page(source: &RunnerLogSource) -> Option<(PathBuf, PathBuf)> {
    let fds = PathBuf::from(format!("/proc/{}/fd", source.worker));
    std::fs::read_dir(&fds).ok()?.flatten().find_map(|entry| {
        let target = std::fs::read_link(entry.path()).ok()?;
        let is_page = target.parent() == Some(source.diag.as_path())
            && target
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("Worker_") && n.ends_with(".log"));
        is_page.then(|| (entry.path(), target))
    })
}

/// Line-oriented state machine over the log's entries.
#[derive(Debug, Default)]
pub struct Parser {
    partial: Vec<u8>,
    /// Inside a line that is being skipped (too long, or cut by a skip).
    discarding: bool,
    current_step: Option<String>,
    json: Option<Pending>,
    facts: Vec<LogFact>,
    /// Lines that looked like an entry we use but did not parse.
    pub skipped: u64,
}

#[derive(Debug)]
enum Pending {
    Telemetry(String),
    Job(String),
}

/// Upper bound of a multi-line JSON block, so garbage cannot grow memory.
const MAX_JSON: usize = 4 << 20;
/// Longest line read; the runner's own are far shorter, so a longer one is skipped whole.
const MAX_LINE: usize = 64 << 10;

impl Parser {
    pub fn feed(&mut self, bytes: &[u8]) {
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            let ends_line = piece.last() == Some(&b'\n');
            if self.discarding {
                self.discarding = !ends_line;
                continue;
            }
            self.partial.extend_from_slice(piece);
            if self.partial.len() > MAX_LINE {
                self.partial.clear();
                self.discarding = !ends_line;
                self.skipped += 1;
            } else if ends_line {
                let line = std::mem::take(&mut self.partial);
                let text = String::from_utf8_lossy(&line);
                self.line(text.trim_end_matches(['\n', '\r']));
            }
        }
    }

    /// After bytes were skipped: drop what was pending, and the rest of a line the skip cut.
    fn resync(&mut self, at_line_start: bool) {
        self.partial.clear();
        self.json = None;
        self.discarding = !at_line_start;
    }

    pub fn take(&mut self) -> Vec<LogFact> {
        std::mem::take(&mut self.facts)
    }

    fn line(&mut self, line: &str) {
        let entry = split_entry(line);
        if let Some(pending) = self.json.take() {
            match (pending, entry) {
                // A new entry ends a job message's JSON.
                (Pending::Job(json), Some(_)) => self.finish_job(&json),
                (Pending::Job(mut json), None) => {
                    if json.len() < MAX_JSON {
                        json.push_str(line);
                        json.push('\n');
                    }
                    self.json = Some(Pending::Job(json));
                    return;
                }
                (Pending::Telemetry(mut json), None) => {
                    json.push_str(line);
                    json.push('\n');
                    if line.trim_end().ends_with("}.") || json.len() > MAX_JSON {
                        self.finish_telemetry(&json);
                    } else {
                        self.json = Some(Pending::Telemetry(json));
                    }
                    return;
                }
                (Pending::Telemetry(_), Some(_)) => self.skipped += 1,
            }
        }
        if let Some(message) = entry {
            self.message(message);
        }
    }

    fn message(&mut self, message: &str) {
        if let Some(name) = quoted_after(message, "Processing step: DisplayName=")
            .or_else(|| quoted_after(message, "Processing embedded step: DisplayName="))
        {
            self.current_step = Some(name);
        } else if let Some(rest) = message.strip_prefix("Process started with process id ") {
            let pid = rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|p| p.parse().ok());
            match (pid, &self.current_step) {
                (Some(pid), Some(name)) => self.facts.push(LogFact::ProcessStarted {
                    pid,
                    display_name: name.clone(),
                }),
                (None, _) => self.skipped += 1,
                (Some(_), None) => {}
            }
        } else if let Some(rest) = message.strip_prefix("Publish step telemetry for current step ")
        {
            let rest = rest.to_string();
            if rest.trim_end().ends_with("}.") {
                self.finish_telemetry(&rest);
            } else {
                self.json = Some(Pending::Telemetry(rest + "\n"));
            }
        } else if message.starts_with("Job message:") {
            let rest = message.trim_start_matches("Job message:").to_string();
            self.json = Some(Pending::Job(rest));
        }
    }

    fn finish_telemetry(&mut self, json: &str) {
        let body = json.trim().trim_end_matches('.');
        match serde_json::from_str::<StepTelemetry>(body) {
            Ok(t) => self.facts.push(LogFact::Telemetry(t)),
            Err(_) => self.skipped += 1,
        }
    }

    fn finish_job(&mut self, json: &str) {
        match serde_json::from_str::<serde_json::Value>(json.trim()) {
            Ok(v) => self.facts.push(LogFact::Job {
                display_name: v["jobDisplayName"].as_str().map(String::from),
                job_id: v["jobId"].as_str().map(String::from),
            }),
            Err(_) => self.skipped += 1,
        }
    }
}

/// The message of `[2026-11-26 08:00:00Z INFO Source] message`, if the line is an entry.
fn split_entry(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('[')?;
    let close = rest.find("] ")?;
    let header = &rest[..close];
    // The header starts with a date: "YYYY-MM-DD".
    let date_like = header.len() > 10
        && header.as_bytes()[4] == b'-'
        && header.as_bytes()[..4].iter().all(u8::is_ascii_digit);
    date_like.then(|| &rest[close + 2..])
}

/// The single-quoted value after `prefix` (`DisplayName='Run tests'`).
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('\'')?;
    let end = rest.rfind('\'')?;
    Some(rest[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
[2026-11-26 08:00:00Z INFO Worker] Job message:
 {
  \"jobId\": \"b1c2\",
  \"jobDisplayName\": \"build (ubuntu)\"
}
[2026-11-26 08:00:01Z INFO StepsRunner] Processing step: DisplayName='Run make'
[2026-11-26 08:00:01Z INFO ProcessInvokerWrapper] Starting process:
[2026-11-26 08:00:01Z INFO ProcessInvokerWrapper] Process started with process id 4242, waiting for process exit.
[2026-11-26 08:00:05Z INFO ExecutionContext] Publish step telemetry for current step {
  \"action\": \"Run make\",
  \"type\": \"run\",
  \"stage\": \"Main\",
  \"stepId\": \"5e1f\",
  \"stepContextName\": \"__run\",
  \"result\": \"succeeded\",
  \"startTime\": \"2026-11-26T08:00:01Z\",
  \"finishTime\": \"2026-11-26T08:00:05Z\"
}.
";

    #[test]
    fn parses_job_pids_and_telemetry() {
        let mut p = Parser::default();
        p.feed(LOG.as_bytes());
        let facts = p.take();
        assert_eq!(
            facts[0],
            LogFact::Job {
                display_name: Some("build (ubuntu)".into()),
                job_id: Some("b1c2".into())
            }
        );
        assert_eq!(
            facts[1],
            LogFact::ProcessStarted {
                pid: 4242,
                display_name: "Run make".into()
            }
        );
        let LogFact::Telemetry(t) = &facts[2] else {
            panic!("{facts:?}")
        };
        assert_eq!(
            (t.stage.as_deref(), t.step_context_name.as_deref()),
            (Some("Main"), Some("__run"))
        );
    }

    #[test]
    fn partial_lines_wait_for_their_end() {
        let mut p = Parser::default();
        p.feed(b"[2026-11-26 08:00:01Z INFO StepsRunner] Processing step: DisplayName='A'\n[2026-11-26 08:00:01Z INFO P] Process started with proc");
        assert!(p.take().is_empty());
        p.feed(b"ess id 7, waiting for process exit.\n");
        assert_eq!(
            p.take(),
            vec![LogFact::ProcessStarted {
                pid: 7,
                display_name: "A".into()
            }]
        );
    }

    #[test]
    fn garbled_lines_are_skipped_not_guessed() {
        let mut p = Parser::default();
        p.feed(b"\xff\xfe garbage\n[2026-11-26 08:00:01Z INFO StepsRunner] Processing step: DisplayName='B'\n");
        p.feed(b"[2026-11-26 08:00:02Z INFO P] Process started with process id x, waiting\n");
        p.feed(b"[2026-11-26 08:00:03Z INFO E] Publish step telemetry for current step {\"stage\": }.\n");
        assert!(p.take().is_empty());
        assert_eq!(p.skipped, 2);
    }

    const STEP_A: &[u8] = b"[2026-11-26 08:00:01Z INFO StepsRunner] Processing step: DisplayName='A'\n\
        [2026-11-26 08:00:01Z INFO P] Process started with process id 7, waiting for process exit.\n";

    fn names(facts: &[(LogFact, u64)]) -> Vec<(u32, &str)> {
        facts
            .iter()
            .filter_map(|(f, _)| match f {
                LogFact::ProcessStarted { pid, display_name } => Some((*pid, display_name.as_str())),
                _ => None,
            })
            .collect()
    }

    /// This test process plays the Worker: it holds its log open, as the runner does.
    fn worker_with_log(diag: &std::path::Path, name: &str) -> File {
        std::fs::create_dir_all(diag).unwrap();
        let path = diag.join(name);
        std::fs::write(&path, STEP_A).unwrap();
        File::open(&path).unwrap()
    }

    #[test]
    fn only_the_log_the_worker_has_open_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let diag = tmp.path().join("_diag");
        let _held = worker_with_log(&diag, "Worker_20261126-080000-utc.log");
        // Planted by the job: sorts after the real page, and lies.
        std::fs::write(
            diag.join("Worker_zzzz.log"),
            b"[2026-11-26 08:00:01Z INFO S] Processing step: DisplayName='Publish'\n\
              [2026-11-26 08:00:01Z INFO P] Process started with process id 8, waiting.\n",
        )
        .unwrap();
        let mut log = WorkerLog::new(RunnerLogSource {
            diag: diag.clone(),
            worker: std::process::id(),
        });
        assert_eq!(names(&log.poll().unwrap()), [(7, "A")]);
    }

    #[test]
    fn a_worker_without_an_open_log_gives_no_names() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("Worker_1.log"), STEP_A).unwrap();
        let mut log = WorkerLog::new(RunnerLogSource {
            diag: tmp.path().to_path_buf(),
            worker: std::process::id(),
        });
        let e = log.poll().unwrap_err();
        assert!(e.to_string().contains("has no Worker_*.log"), "{e}");
    }

    #[test]
    fn a_log_grown_beyond_what_a_runner_writes_is_skipped_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        let diag = tmp.path().join("_diag");
        let held = worker_with_log(&diag, "Worker_1.log");
        let mut log = WorkerLog::new(RunnerLogSource {
            diag: diag.clone(),
            worker: std::process::id(),
        });
        assert_eq!(names(&log.poll().unwrap()).len(), 1);
        // `truncate -s 64G`: sparse, so this costs no disk.
        let path = diag.join("Worker_1.log");
        let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        writer.set_len(64 << 30).unwrap();
        assert!(log.poll().unwrap().is_empty());
        assert_eq!(log.skipped_bytes, (64 << 30) - STEP_A.len() as u64);
        // The runner's next lines, appended after the hole, are read again.
        use std::io::Write;
        let mut append = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        append
            .write_all(b"\n[2026-11-26 08:00:02Z INFO S] Processing step: DisplayName='B'\n\
                [2026-11-26 08:00:02Z INFO P] Process started with process id 9, waiting.\n")
            .unwrap();
        assert_eq!(names(&log.poll().unwrap()), [(9, "B")]);
        drop(held);
    }

    #[test]
    fn an_endless_line_is_skipped_whole_and_memory_stays_bounded() {
        let mut p = Parser::default();
        let junk = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            p.feed(&junk);
            assert!(p.partial.len() <= MAX_LINE);
        }
        p.feed(b" still junk\n");
        p.feed(STEP_A);
        assert_eq!(p.skipped, 1);
        assert_eq!(
            p.take(),
            vec![LogFact::ProcessStarted {
                pid: 7,
                display_name: "A".into()
            }]
        );
    }
}
