//! The pipeline's consumer: decodes, attributes, and writes each event to
//! the output of its job; on each tick, reads the runner's log for step names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::output::JobOutput;
use crate::attribute::github_log::{LogFact, RunnerLogSource, WorkerLog};
use crate::attribute::jobs::LogName;
use crate::attribute::Attributor;
use crate::decode::decode;
use crate::event::{Event, HookStatus, JobRef, TraceStart};
use crate::health::Metrics;
use crate::kind::Kind;
use crate::pipeline::{Batch, Consumer};
use crate::sink::SinkError;

/// Where jobs' events are written.
pub enum Outputs {
    /// One job (run, start): events of any other job are not ours.
    Single { job: String, output: JobOutput },
    /// Every job on the host (daemon): a directory per job under `root`.
    PerJob {
        root: PathBuf,
        header: TraceStart,
        open: HashMap<String, JobOutput>,
        errors: Vec<SinkError>,
    },
}

pub struct Engine {
    pub attributor: Attributor,
    pub outputs: Outputs,
    pub undecodable: u64,
    /// Events of jobs that are not this output's (single mode).
    pub other_jobs: u64,
    runner_logs: Vec<RunnerLog>,
    daemon: Option<DaemonState>,
    scopes: Option<StepScopes>,
    /// Every record committed before this instant has been processed.
    drained_through: Option<Instant>,
}

/// Enforce mode with step-scoped rules: the kernel learns each step's groups from us.
pub struct StepScopes {
    pub scopes: crate::enforce::Scopes,
    pub map: std::sync::Arc<std::sync::Mutex<aya::maps::HashMap<aya::maps::MapData, u32, u32>>>,
    written: HashMap<u32, u32>,
}

/// What the daemon needs to decide that a job ended, and to seal it.
pub struct DaemonState {
    pub tasks: crate::bpf::loader::Tasks,
    pub lost: crate::bpf::loader::Lost,
    pub hooks: Vec<HookStatus>,
    /// After its launcher exits, how long a job's remaining processes may run before it is sealed.
    pub linger: Duration,
    /// A job without a launcher of its own (one seen only in containers, or whose launcher
    /// serves many jobs) ends after this long without a live step root.
    pub idle: Duration,
    ended_since: HashMap<String, Instant>,
    idle_since: HashMap<String, Instant>,
    /// When each job was first seen with nothing left to wait for. The kernel's
    /// view of live processes runs ahead of the records read so far, so the job
    /// is sealed only once a drain that began after this has delivered them.
    quiet_since: HashMap<String, Instant>,
    /// The host-wide undecodable count when each open job began: a record that
    /// cannot be read may be any job's, so it counts against every job open then.
    undecodable_at_open: HashMap<String, u64>,
    /// Sealed jobs' directories, in order.
    pub sealed: Vec<PathBuf>,
    pub seal_errors: Vec<String>,
    pub metrics: Arc<Metrics>,
    /// Sealed trace directories, for signing and upload.
    pub sealed_jobs: Option<mpsc::UnboundedSender<PathBuf>>,
}

impl DaemonState {
    pub fn new(
        tasks: crate::bpf::loader::Tasks,
        lost: crate::bpf::loader::Lost,
        hooks: Vec<HookStatus>,
        linger: Duration,
        idle: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            tasks,
            lost,
            hooks,
            linger,
            idle,
            ended_since: HashMap::new(),
            idle_since: HashMap::new(),
            quiet_since: HashMap::new(),
            undecodable_at_open: HashMap::new(),
            sealed: Vec::new(),
            seal_errors: Vec::new(),
            metrics,
            sealed_jobs: None,
        }
    }
}

/// A GitHub runner's diagnostic log.
struct RunnerLog {
    log: WorkerLog,
    /// Why names are missing, once reading failed.
    failure: Option<String>,
}

impl Engine {
    pub fn new(attributor: Attributor, outputs: Outputs) -> Self {
        Self {
            attributor,
            outputs,
            undecodable: 0,
            other_jobs: 0,
            runner_logs: Vec::new(),
            daemon: None,
            scopes: None,
            drained_through: None,
        }
    }

    #[must_use]
    pub fn with_scopes(
        mut self,
        scopes: crate::enforce::Scopes,
        map: std::sync::Arc<std::sync::Mutex<aya::maps::HashMap<aya::maps::MapData, u32, u32>>>,
    ) -> Self {
        if !scopes.is_empty() {
            self.scopes = Some(StepScopes {
                scopes,
                map,
                written: HashMap::new(),
            });
        }
        self
    }

    /// Tells the kernel which step groups each newly named step is in.
    fn update_step_groups(&mut self) {
        let Some(s) = &mut self.scopes else { return };
        let mut map = s
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (kernel_step, step) in self.attributor.registry.kernel_steps() {
            // The workflow's step id (GITHUB_ACTION) is known at exec; a display name may come later.
            let by_action = step.action.as_deref().map_or(0, |a| {
                s.scopes
                    .groups_of(&crate::policy::StepMatch { id: a, name: None })
            });
            let groups = by_action
                | s.scopes.groups_of(&crate::policy::StepMatch {
                    id: &step.id,
                    name: step.name.as_deref(),
                });
            if s.written.get(&kernel_step) != Some(&groups) {
                if let Err(e) = map.insert(kernel_step, groups, 0) {
                    tracing::error!("cannot scope step {}: {e}", step.id);
                    continue;
                }
                s.written.insert(kernel_step, groups);
            }
        }
    }

    #[must_use]
    pub fn with_daemon(mut self, state: DaemonState) -> Self {
        self.daemon = Some(state);
        self
    }

    /// Reads step names from the log a GitHub runner's Worker has open in its `_diag` directory.
    pub fn follow_runner_log(&mut self, source: RunnerLogSource) {
        if !self.runner_logs.iter().any(|r| *r.log.source() == source) {
            self.runner_logs.push(RunnerLog {
                log: WorkerLog::new(source),
                failure: None,
            });
        }
    }

    /// The attributor, the job and its output, for sealing a single-job session.
    pub fn into_single_job(self) -> Option<(Attributor, String, JobOutput)> {
        match self.outputs {
            Outputs::Single { job, output } => Some((self.attributor, job, output)),
            Outputs::PerJob { .. } => None,
        }
    }

    /// Why step display names may be missing, for the trace.
    pub fn names_unavailable(&self) -> Option<String> {
        self.runner_logs.iter().find_map(|r| r.failure.clone())
    }

    pub fn sealed(&self) -> &[PathBuf] {
        self.daemon.as_ref().map_or(&[], |d| &d.sealed)
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
            Outputs::PerJob {
                root,
                header,
                open,
                errors,
            } => {
                if !open.contains_key(job) {
                    let dir = fresh_dir(root, &job_dir_name(&event.job));
                    let mut h = header.clone();
                    h.job = event.job.clone();
                    match JobOutput::create(&dir, &h) {
                        Ok(out) => {
                            tracing::info!("job {job} started; writing {}", dir.display());
                            open.insert(job.to_string(), out);
                            if let Some(d) = &mut self.daemon {
                                d.metrics.job_started();
                                d.undecodable_at_open
                                    .insert(job.to_string(), self.undecodable);
                            }
                        }
                        Err(e) => {
                            tracing::error!("{}", crate::error::chain(&e));
                            if let Some(d) = &self.daemon {
                                d.metrics.set_output_ok(false);
                            }
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

    /// The daemon's live counters on /metrics.
    fn count(&self, event: &Event) {
        let Some(d) = &self.daemon else { return };
        d.metrics.count_event(event.body.event_kind());
        if matches!(event.body, crate::event::Body::Denied(_)) {
            d.metrics.count_denied();
        }
    }

    fn poll_runner_logs(&mut self) {
        for launcher in self.attributor.registry.drain_new_launchers() {
            if launcher.platform != Some(crate::attribute::platform::Platform::GithubActions) {
                continue;
            }
            // <runner>/bin/Runner.Worker → <runner>/_diag; the Worker may already be gone.
            let from_argv = Path::new(&launcher.program)
                .parent()
                .and_then(Path::parent)
                .map(|root| root.join("_diag"));
            if let Some(diag) = from_argv
                .filter(|_| launcher.program.starts_with('/'))
                .or_else(|| runner_diag(launcher.tgid))
            {
                self.follow_runner_log(RunnerLogSource {
                    diag,
                    worker: launcher.tgid,
                });
            }
        }
        let single_job = match &self.outputs {
            Outputs::Single { job, .. } => Some(job.clone()),
            Outputs::PerJob { .. } => None,
        };
        for runner in &mut self.runner_logs {
            match runner.log.poll() {
                Ok(facts) => {
                    runner.failure = None;
                    let worker = runner.log.source().worker;
                    for (fact, read_ns) in facts {
                        match fact {
                            LogFact::ProcessStarted { pid, display_name } => {
                                self.attributor.registry.display_name(
                                    pid,
                                    LogName {
                                        name: display_name,
                                        worker,
                                        read_ns,
                                    },
                                )
                            }
                            LogFact::Job {
                                display_name: Some(name),
                                ..
                            } => {
                                if let Some(job) = &single_job {
                                    self.attributor.registry.set_job_name(job, &name);
                                }
                            }
                            LogFact::Job { .. } | LogFact::Telemetry(_) => {}
                        }
                    }
                }
                Err(e) => {
                    if runner.failure.is_none() {
                        tracing::warn!("step names unavailable: {}", crate::error::chain(&e));
                    }
                    runner.failure = Some(crate::error::chain(&e));
                }
            }
        }
    }

    /// Daemon: seals every job whose launcher exited (or that went idle) once its processes are gone.
    fn seal_finished(&mut self, stopping: bool) {
        let Some(daemon) = &mut self.daemon else {
            return;
        };
        let Outputs::PerJob { open, .. } = &mut self.outputs else {
            return;
        };
        // Per job: its live processes, and of those its step roots.
        let mut alive: HashMap<String, (u64, u64)> = HashMap::new();
        let live_tags = crate::agent::live_tags(&daemon.tasks);
        for (_, tag) in &live_tags {
            if let Some(job) = self.attributor.registry.job_of(tag) {
                let count = alive.entry(job.to_string()).or_default();
                count.0 += 1;
                count.1 += u64::from(tag.flags & crate::bpf::abi::TAG_STEP_ROOT != 0);
            }
        }
        let now = Instant::now();
        let drained_through = self.drained_through;
        let mut done = Vec::new();
        for job in open.keys() {
            let info = self.attributor.registry.job(job);
            let (live, roots) = alive.get(job).copied().unwrap_or((0, 0));
            // A launcher of one job ends it by exiting; otherwise (a launcher that serves many
            // jobs, or none seen) the job ends once no step of it has run for `idle`: what a
            // step leaves behind (a build daemon) is recorded as still running, not waited for.
            let ended = match info {
                Some(j) if j.has_launcher && !j.launcher_serves_many => j.launcher_exited,
                _ => {
                    roots == 0
                        && now.duration_since(*daemon.idle_since.entry(job.clone()).or_insert(now))
                            >= daemon.idle
                }
            };
            if roots > 0 {
                daemon.idle_since.remove(job);
            }
            if stopping {
                done.push((job.clone(), live, "stopped"));
                continue;
            }
            if !ended {
                continue;
            }
            let since = *daemon.ended_since.entry(job.clone()).or_insert(now);
            if live > 0 && now.duration_since(since) < daemon.linger {
                daemon.quiet_since.remove(job);
                continue;
            }
            let quiet = *daemon.quiet_since.entry(job.clone()).or_insert(now);
            if drained_through.is_some_and(|t| t > quiet) {
                done.push((job.clone(), live, "ok"));
            }
        }
        for (job, live, status) in done {
            let Some(output) = open.remove(&job) else {
                continue;
            };
            daemon.ended_since.remove(&job);
            daemon.idle_since.remove(&job);
            daemon.quiet_since.remove(&job);
            self.attributor.registry.finalize(&job, None);
            let mut totals = self.attributor.totals_base();
            let at_open = daemon.undecodable_at_open.remove(&job).unwrap_or(0);
            totals.undecodable = self.undecodable - at_open;
            crate::agent::read_lost(&daemon.lost, &mut totals);
            let complete = status == "ok"
                && totals.nothing_lost()
                && daemon.hooks.iter().all(|h| h.attached || h.disabled);
            let mut end = super::trace::trace_end(totals, None, live, complete, status);
            end.survivors = crate::agent::survivors(&live_tags, &self.attributor.registry, &job);
            let input = super::seal::SealInput {
                registry: &self.attributor.registry,
                job: &job,
                clock: self.attributor.clock(),
                end,
                hooks: &daemon.hooks,
                exit: None,
            };
            match super::seal::seal(output, input) {
                Ok(sealed) => {
                    let _ = super::report::Report::from_sealed(&sealed).write(&sealed.dir);
                    tracing::info!("job {job} sealed: {}", sealed.log.path.display());
                    daemon.metrics.job_finished();
                    if let Some(post) = &daemon.sealed_jobs {
                        let _ = post.send(sealed.dir.clone());
                    }
                    daemon.sealed.push(sealed.dir);
                }
                Err(e) => {
                    // The live log stays on disk; /metrics shows the output is failing.
                    let e = crate::error::chain(&e);
                    tracing::error!("sealing job {job} failed: {e}");
                    daemon.metrics.set_output_ok(false);
                    daemon.seal_errors.push(format!("{job}: {e}"));
                }
            }
        }
    }

    /// Daemon shutdown: seals every job still open, marked as stopped.
    pub fn seal_all(&mut self) {
        self.seal_finished(true);
    }

    fn flush_outputs(&mut self) {
        match &mut self.outputs {
            Outputs::Single { output, .. } => output.flush(),
            Outputs::PerJob { open, .. } => open.values_mut().for_each(JobOutput::flush),
        }
    }
}

/// `<runner>/_diag` for `<runner>/bin/Runner.Worker`.
pub fn runner_diag(worker: u32) -> Option<PathBuf> {
    let exe = std::fs::read_link(format!("/proc/{worker}/exe")).ok()?;
    let diag = exe.parent()?.parent()?.join("_diag");
    diag.is_dir().then_some(diag)
}

impl Consumer for Engine {
    fn batch(&mut self, batch: Batch) {
        if batch.drained {
            self.drained_through = Some(batch.drain_started);
        }
        for bytes in batch.records {
            match decode(&bytes) {
                Ok(record) => {
                    if let Some((placement, event)) = self.attributor.event(record) {
                        self.count(&event);
                        self.route(&placement.job, &event);
                    }
                }
                Err(e) => {
                    self.undecodable += 1;
                    if let Some(d) = &self.daemon {
                        d.metrics.count_undecodable();
                    }
                    tracing::debug!("undecodable record: {e}");
                }
            }
        }
        self.flush_outputs();
        self.update_step_groups();
        // A Worker may live only briefly: look for its log on records, not only on ticks.
        if self.attributor.registry.has_new_launchers()
            || self.runner_logs.iter().any(|r| !r.log.has_page())
        {
            self.poll_runner_logs();
        }
    }

    fn tick(&mut self) {
        self.poll_runner_logs();
        self.update_step_groups();
        self.seal_finished(false);
        if let Some(d) = &self.daemon {
            d.metrics.heartbeat();
            let mut totals = crate::event::Totals::default();
            crate::agent::read_lost(&d.lost, &mut totals);
            for kind in Kind::ALL {
                d.metrics
                    .set_lost(kind, totals.lost.get(kind.name()).copied().unwrap_or(0));
            }
        }
    }
}

/// A directory not used by an earlier trace: a job seen again after it was sealed gets `-2`, `-3`, ….
fn fresh_dir(root: &Path, name: &str) -> PathBuf {
    let first = root.join(name);
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|n| root.join(format!("{name}-{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// `github-actions-<id>` with anything unsafe in a file name replaced.
pub fn job_dir_name(job: &JobRef) -> String {
    let raw = format!("{}-{}", job.platform, job.id);
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    clean.chars().take(120).collect()
}
