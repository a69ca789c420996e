//! The pipeline's consumer: decodes, attributes, and writes each event to
//! the output of its job; on each tick, reads the runner's log for step names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::output::JobOutput;
use crate::attribute::github_log::{LogFact, WorkerLog};
use crate::attribute::Attributor;
use crate::decode::decode;
use crate::event::{Event, JobRef, TraceStart};
use crate::pipeline::Consumer;
use crate::sink::SinkError;

/// Where jobs' events are written.
pub enum Outputs {
    /// One job (run, start): events of any other job are not ours.
    Single { job: String, output: JobOutput },
    /// Every job on the host (daemon): a directory per job under `root`.
    PerJob { root: PathBuf, header: TraceStart, open: HashMap<String, JobOutput>, errors: Vec<SinkError> },
}

pub struct Engine {
    pub attributor: Attributor,
    pub outputs: Outputs,
    pub undecodable: u64,
    /// Events of jobs that are not this output's (single mode).
    pub other_jobs: u64,
    runner_log: Option<RunnerLog>,
}

/// The GitHub runner's diagnostic log, when one was found.
struct RunnerLog {
    log: WorkerLog,
    /// Why names are missing, once reading failed.
    failure: Option<String>,
}

impl Engine {
    pub fn new(attributor: Attributor, outputs: Outputs) -> Self {
        Self { attributor, outputs, undecodable: 0, other_jobs: 0, runner_log: None }
    }

    /// Reads step names and stages from a GitHub runner's `_diag` directory.
    pub fn follow_runner_log(&mut self, diag: &Path) {
        self.runner_log = Some(RunnerLog { log: WorkerLog::new(diag), failure: None });
    }

    /// Why step display names may be missing, for the trace.
    pub fn names_unavailable(&self) -> Option<String> {
        match &self.runner_log {
            None => None,
            Some(r) => r.failure.clone(),
        }
    }

    fn route(&mut self, job: &str, event: &Event) {
        match &mut self.outputs {
            Outputs::Single { job: ours, output } => {
                if ours == job {
                    output.write(event);
                } else {
                    self.other_jobs += 1;
                }
            }
            Outputs::PerJob { root, header, open, errors } => {
                if !open.contains_key(job) {
                    let dir = root.join(job_dir_name(&event.job));
                    let mut h = header.clone();
                    h.job = event.job.clone();
                    match JobOutput::create(&dir, &h) {
                        Ok(out) => {
                            tracing::info!("job {job} started; writing {}", dir.display());
                            open.insert(job.to_string(), out);
                        }
                        Err(e) => {
                            tracing::error!("{e}");
                            errors.push(e);
                            return;
                        }
                    }
                }
                if let Some(out) = open.get_mut(job) {
                    out.write(event);
                }
            }
        }
    }

    fn poll_runner_log(&mut self) {
        let Some(runner) = &mut self.runner_log else { return };
        match runner.log.poll() {
            Ok(facts) => {
                runner.failure = None;
                for fact in facts {
                    match fact {
                        LogFact::ProcessStarted { pid, display_name } => self.attributor.registry.display_name(pid, &display_name),
                        LogFact::Job { display_name, .. } => {
                            if let (Some(name), Outputs::Single { job, .. }) = (display_name, &self.outputs) {
                                self.attributor.registry.set_job_name(job, &name);
                            }
                        }
                        LogFact::Telemetry(_) => {}
                    }
                }
            }
            Err(e) => {
                if runner.failure.is_none() {
                    tracing::warn!("step names unavailable: {e}");
                }
                runner.failure = Some(e.to_string());
            }
        }
    }
}

impl Consumer for Engine {
    fn batch(&mut self, records: Vec<Vec<u8>>) {
        for bytes in records {
            match decode(&bytes) {
                Ok(record) => {
                    if let Some((placement, event)) = self.attributor.event(record) {
                        self.route(&placement.job, &event);
                    }
                }
                Err(e) => {
                    self.undecodable += 1;
                    tracing::debug!("undecodable record: {e}");
                }
            }
        }
    }

    fn tick(&mut self) {
        self.poll_runner_log();
    }
}

/// `github-actions-<id>` with anything unsafe in a file name replaced.
pub fn job_dir_name(job: &JobRef) -> String {
    let raw = format!("{}-{}", job.platform, job.id);
    let clean: String = raw.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    clean.chars().take(120).collect()
}
