//! One recording session, shared by `run`, `start` and `daemon`: the loaded
//! agent feeds the engine through the pipeline until it is stopped, and the
//! stopped engine seals its job (or, for the daemon, every job still open).
//!
//! The subcommands differ only in who is watched (a spawned command, the CI
//! job around `start`, every job on the host) and when recording ends.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::engine::{DaemonState, Engine, Outputs};
use super::output::JobOutput;
use super::seal::{self, SealInput, SealedJob};
use super::trace::{trace_end, trace_start, Ended};
use super::{Agent, AgentError};
use crate::attribute::jobs::Registry;
use crate::attribute::Attributor;
use crate::bpf::abi::TAG_LAUNCHER;
use crate::config::Config;
use crate::enforce::plan::Plan;
use crate::event::JobRef;
use crate::health::Metrics;
use crate::pipeline::{Pipeline, PipelineError};
use crate::sink::SinkError;

/// How often the engine polls runner logs and the daemon looks for ended jobs.
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("cannot write to output directory {path}")]
    OutputDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("internal: the ring buffer was already taken (one session per loaded agent)")]
    RingTaken,
    #[error("internal: a host-wide session has no single job to seal")]
    NotOneJob,
    #[error("cannot start the event pipeline")]
    Pipeline(#[source] std::io::Error),
    #[error(transparent)]
    Drain(#[from] PipelineError),
}

impl SessionError {
    pub fn exit_code(&self) -> u8 {
        use crate::exit;
        match self {
            SessionError::Agent(e) => e.exit_code(),
            SessionError::OutputDir { .. } => exit::OUTPUT_DIR,
            SessionError::Sink(_) => exit::WRITE,
            SessionError::RingTaken
            | SessionError::NotOneJob
            | SessionError::Pipeline(_)
            | SessionError::Drain(_) => exit::INTERNAL,
        }
    }
}

/// Where the session writes.
pub enum Target {
    /// One job (`run`, `start`): its trace directory and the registry's id for it.
    Job { dir: PathBuf, job: String },
    /// Every job on the host (`daemon`): a directory per job under `root`.
    Host { root: PathBuf, host: HostOptions },
}

/// What the daemon adds: when a job counts as ended, and where sealed jobs go.
pub struct HostOptions {
    /// A job seen only in containers ends after this long without live processes.
    pub idle: Duration,
    pub metrics: Arc<Metrics>,
    /// Each sealed trace directory is sent here, for signing and upload.
    pub sealed: mpsc::UnboundedSender<PathBuf>,
}

pub struct SessionOptions<'a> {
    pub config: &'a Config,
    pub plan: &'a Plan,
    /// The jobs and steps known before the first event.
    pub registry: Registry,
    pub target: Target,
    /// The watched command line, for the trace header (redacted there).
    pub command: &'a [Vec<u8>],
    /// GitHub runners' Workers and `_diag` directories to read step names from.
    pub runner_logs: Vec<crate::attribute::github_log::RunnerLogSource>,
    /// What `start --disable-sudo` did, for the trace header.
    pub sudo_disabled: Option<super::sudo::SudoDisabled>,
}

/// A running session: hooks attached, events flowing to the outputs.
pub struct Recorder {
    agent: Agent,
    pipeline: Pipeline<Engine>,
    linger: Duration,
}

impl Recorder {
    pub fn start(mut agent: Agent, opts: SessionOptions<'_>) -> Result<Self, SessionError> {
        let SessionOptions {
            config,
            plan,
            registry,
            target,
            command,
            runner_logs,
            sudo_disabled,
        } = opts;
        let header = Header {
            command,
            sudo_disabled: sudo_disabled.as_ref(),
        };
        let (outputs, daemon) = outputs(&agent, config, plan, &registry, target, &header)?;
        let attributor = Attributor::new(registry, config.capture_args, agent.sensitive.clone());
        let mut engine = Engine::new(attributor, outputs);
        if let Some(scopes) = agent.scopes.take() {
            engine = engine.with_scopes(scopes, agent.probes.allow.step_groups.clone());
        }
        if let Some(daemon) = daemon {
            engine = engine.with_daemon(daemon);
        }
        for source in runner_logs {
            engine.follow_runner_log(source);
        }
        let ring = agent.probes.take_ring().ok_or(SessionError::RingTaken)?;
        let drain = Duration::from_millis(config.ring.drain_interval_ms);
        let pipeline =
            Pipeline::start(ring, drain, TICK, engine).map_err(SessionError::Pipeline)?;
        Ok(Self {
            agent,
            pipeline,
            linger: Duration::from_millis(config.run.linger_ms),
        })
    }

    /// The agent, to put processes into the job once recording runs.
    pub fn agent_mut(&mut self) -> &mut Agent {
        &mut self.agent
    }

    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// Keeps recording while the job's processes (daemons it started) live, up
    /// to the configured linger; returns how many still run. Step launchers
    /// that outlive the job do not count.
    pub async fn linger(&self) -> u64 {
        let start = Instant::now();
        loop {
            let alive = self
                .agent
                .live_tags()
                .iter()
                .filter(|(_, t)| t.flags & TAG_LAUNCHER == 0)
                .count() as u64;
            if alive == 0 || start.elapsed() >= self.linger {
                return alive;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Drains what the kernel has queued and stops the pipeline.
    pub async fn stop(self) -> Result<Stopped, SessionError> {
        let engine = self.pipeline.finish().await?;
        super::trace::log_own_usage();
        Ok(Stopped {
            agent: self.agent,
            engine,
        })
    }
}

/// A stopped session, ready to seal.
pub struct Stopped {
    agent: Agent,
    engine: Engine,
}

impl Stopped {
    /// Seals the one job of `run` or `start`.
    pub fn seal_job(
        self,
        ended: Option<Ended>,
        still_running: u64,
    ) -> Result<SealedJob, SessionError> {
        let hooks = &self.agent.probes.hooks;
        let mut totals = self.engine.attributor.totals_base();
        totals.undecodable = self.engine.undecodable;
        totals.unattributed += self.engine.other_jobs;
        self.agent.lost(&mut totals);
        let complete = totals.nothing_lost()
            && hooks.iter().all(|h| h.attached || h.disabled);
        let names_unavailable = self.engine.names_unavailable();
        let (mut attributor, job, output) = self
            .engine
            .into_single_job()
            .ok_or(SessionError::NotOneJob)?;
        attributor
            .registry
            .finalize(&job, names_unavailable.as_deref());
        let mut end = trace_end(totals, ended, still_running, complete, "ok");
        end.survivors = super::survivors(&self.agent.live_tags(), &attributor.registry, &job);
        Ok(seal::seal(
            output,
            SealInput {
                registry: &attributor.registry,
                job: &job,
                clock: attributor.clock(),
                end,
                hooks,
                exit: ended.map(Ended::describe),
            },
        )?)
    }

    /// Daemon shutdown: seals every job still open, marked as stopped.
    pub fn seal_open_jobs(mut self) {
        self.engine.seal_all();
    }
}

/// What the `trace_start` header says besides the agent, config and plan.
struct Header<'a> {
    command: &'a [Vec<u8>],
    sudo_disabled: Option<&'a super::sudo::SudoDisabled>,
}

/// Where events go, with the `trace_start` every trace begins with; the daemon's state for a host.
fn outputs(
    agent: &Agent,
    config: &Config,
    plan: &Plan,
    registry: &Registry,
    target: Target,
    extra: &Header<'_>,
) -> Result<(Outputs, Option<DaemonState>), SessionError> {
    let start =
        |job: &JobRef| trace_start(agent, config, plan, job, extra.command, extra.sudo_disabled);
    Ok(match target {
        Target::Job { dir, job } => {
            let header = start(&job_ref(registry, &job));
            let output = create_output(&dir, &header)?;
            (Outputs::Single { job, output }, None)
        }
        Target::Host { root, host } => {
            // Each job's trace gets its own identity when its first event arrives.
            let unknown = JobRef {
                platform: "none".into(),
                id: String::new(),
            };
            let header = start(&unknown);
            let outputs = Outputs::PerJob {
                root,
                header,
                open: HashMap::new(),
                errors: Vec::new(),
            };
            (outputs, Some(daemon_state(agent, config, host)))
        }
    })
}

fn daemon_state(agent: &Agent, config: &Config, host: HostOptions) -> DaemonState {
    let mut state = DaemonState::new(
        agent.probes.tasks.clone(),
        agent.probes.lost.clone(),
        agent.probes.hooks.clone(),
        Duration::from_millis(config.run.linger_ms),
        host.idle,
        host.metrics,
    );
    state.sealed_jobs = Some(host.sealed);
    state
}

fn job_ref(registry: &Registry, job: &str) -> JobRef {
    JobRef {
        platform: registry
            .job(job)
            .map_or("none", |j| j.identity.platform.name())
            .to_string(),
        id: job.to_string(),
    }
}

fn create_output(dir: &Path, header: &crate::event::TraceStart) -> Result<JobOutput, SessionError> {
    JobOutput::create(dir, header).map_err(|e| match e {
        SinkError::Create { source, .. } | SinkError::Write { source, .. } => {
            SessionError::OutputDir {
                path: dir.display().to_string(),
                source,
            }
        }
        other => SessionError::Sink(other),
    })
}
