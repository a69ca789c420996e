//! Tails the GitHub Actions runner's `_diag/Worker_*.log` for what the
//! environment cannot tell: step display names, which process started which
//! step, and the step telemetry (stage, start and finish). The format is an
//! internal diagnostic, so every line is parsed defensively and a line that
//! does not parse is skipped, never guessed at.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

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
    #[error("no Worker_*.log in {0}")]
    NoLog(PathBuf),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Incremental reader of the newest Worker log in a `_diag` directory.
pub struct WorkerLog {
    dir: PathBuf,
    file: Option<PathBuf>,
    offset: u64,
    parser: Parser,
}

impl WorkerLog {
    pub fn new(diag_dir: &Path) -> Self {
        Self {
            dir: diag_dir.to_path_buf(),
            file: None,
            offset: 0,
            parser: Parser::default(),
        }
    }

    /// Facts from lines completed since the last poll. Follows the runner's 8 MB roll-over.
    pub fn poll(&mut self) -> Result<Vec<LogFact>, LogError> {
        let newest = newest_log(&self.dir)?;
        if self.file.as_ref() != Some(&newest) {
            if let Some(old) = self.file.take() {
                self.read_from(&old)?; // the tail of the old page
            }
            self.file = Some(newest.clone());
            self.offset = 0;
        }
        self.read_from(&newest)?;
        Ok(self.parser.take())
    }

    fn read_from(&mut self, path: &Path) -> Result<(), LogError> {
        let err = |source| LogError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(err)?;
        file.seek(SeekFrom::Start(self.offset)).map_err(err)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(err)?;
        self.offset += bytes.len() as u64;
        self.parser.feed(&bytes);
        Ok(())
    }
}

fn newest_log(dir: &Path) -> Result<PathBuf, LogError> {
    let entries = std::fs::read_dir(dir).map_err(|source| LogError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    // Names embed a UTC timestamp (Worker_YYYYMMDD-HHMMSS-utc.log), so the greatest is the newest.
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("Worker_") && n.ends_with(".log"))
        })
        .max()
        .ok_or_else(|| LogError::NoLog(dir.to_path_buf()))
}

/// Line-oriented state machine over the log's entries.
#[derive(Debug, Default)]
pub struct Parser {
    partial: Vec<u8>,
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

impl Parser {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(newline) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=newline).collect();
            let text = String::from_utf8_lossy(&line);
            self.line(text.trim_end_matches(['\n', '\r']));
        }
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
}
