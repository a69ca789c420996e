//! `ciwatch run -- CMD`: watch one command's whole process tree and write
//! its event log and summary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent::engine::{Engine, Outputs};
use crate::agent::output::JobOutput;
use crate::agent::seal::{self, SealInput, SealedJob};
use crate::agent::{Agent, AgentError};
use crate::attest::{self, AttestError, SignMode};
use crate::attribute::env::StepEnv;
use crate::attribute::jobs::Registry;
use crate::attribute::platform::{self, JobIdentity, Platform, StepIdentity};
use crate::attribute::Attributor;
use crate::bpf::abi::{self, Tag};
use crate::cli::signals::Signals;
use crate::cli::spawn::{self, Ended, SpawnError};
use crate::config::{Config, ConfigError};
use crate::enforce::plan::{plan, ModeArgs, Plan, PlanError};
use crate::event::{rfc3339, Agent as AgentInfo, JobRef, Totals, TraceEnd, TraceStart, SCHEMA};
use crate::pipeline::{Pipeline, PipelineError};
use crate::sink::SinkError;
use crate::text::Text;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Directory for events.ndjson and summary.md.
    #[arg(long, value_name = "DIR", default_value = "ciwatch-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub agent: super::agent_args::AgentArgs,
    /// Do not print the summary to the terminal.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub policy: ModeArgs,
    /// How the sealed trace is signed (default for `run`: --sign key).
    #[command(flatten)]
    pub signing: super::signing::SigningArgs,
    /// The command to watch.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("cannot write to output directory {path}: {source}")]
    OutputDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the event pipeline: {0}")]
    Pipeline(std::io::Error),
    #[error("waiting for the command failed: {0}")]
    Wait(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Drain(#[from] PipelineError),
    #[error(transparent)]
    SigningKey(AttestError),
}

impl RunError {
    fn exit_code(&self) -> u8 {
        use crate::exit;
        match self {
            RunError::Config(_) => exit::CONFIG,
            RunError::Spawn(e) => e.exit_code(),
            RunError::Agent(e) => e.exit_code(),
            RunError::Plan(_) | RunError::SigningKey(_) => exit::CONFIG,
            RunError::OutputDir { .. } => exit::OUTPUT_DIR,
            RunError::Sink(_) => exit::WRITE,
            RunError::Signals(_)
            | RunError::Pipeline(_)
            | RunError::Wait(_)
            | RunError::Drain(_) => exit::INTERNAL,
        }
    }
}

pub async fn execute(args: RunArgs) -> u8 {
    match run(args).await {
        Ok(code) => code,
        Err(e) => super::fail(e.exit_code(), &e),
    }
}

/// The watched command is job 1, step 1; the kernel numbers the rest.
const JOB: u32 = 1;
const STEP: u32 = 1;

async fn run(args: RunArgs) -> Result<u8, RunError> {
    let config = args.agent.load_config()?;
    let config_name = args.agent.config_name();
    let plan = plan(&args.policy, config.mode)?;
    let prepared = spawn::prepare(&args.command)?;
    let mut agent = Agent::load(
        &config,
        &config_name,
        args.agent.btf.as_deref(),
        !args.agent.allow_partial,
        plan.enforcement(),
    )?;
    // A missing or malformed signing key fails before the job runs, not after
    // (but after the privilege checks, whose message is the more useful one).
    let mut sign_opts = args.signing.options(SignMode::Key);
    if let Some(key) = attest::prepare_key(&sign_opts).map_err(RunError::SigningKey)? {
        if key.created {
            eprintln!(
                "ciwatch: created signing key {} (key id {})",
                key.private_path.display(),
                key.key_id
            );
        }
    }
    let scopes = if plan.enforce() {
        Some(agent.install_policy(&plan)?)
    } else {
        None
    };
    let signals = Signals::install().map_err(RunError::Signals)?;

    let (registry, job) = job_registry(&args.command);
    let header = trace_start(
        &agent,
        &config,
        &plan,
        &job_ref(&registry, &job),
        &args.command,
    );
    let output = create_output(&args.out, &header)?;
    let attributor = Attributor::new(registry, config.capture_args, agent.sensitive.clone());
    let mut engine = Engine::new(
        attributor,
        Outputs::Single {
            job: job.clone(),
            output,
        },
    );
    if let Some(scopes) = scopes {
        engine = engine.with_scopes(scopes, agent.probes.allow.step_groups.clone());
    }
    let ring = agent
        .probes
        .take_ring()
        .ok_or_else(|| RunError::Pipeline(std::io::ErrorKind::Other.into()))?;
    let drain = Duration::from_millis(config.ring.drain_interval_ms);
    let pipeline = Pipeline::start(ring, drain, Duration::from_millis(250), engine)
        .map_err(RunError::Pipeline)?;

    let held = prepared.fork_held()?;
    agent.tag(
        held.pid,
        Tag {
            job: JOB,
            step: STEP,
            flags: abi::TAG_STEP_ROOT,
            _pad: 0,
        },
    )?;
    let pid = held.release()?;
    let ended = signals
        .wait_forwarding(pid)
        .await
        .map_err(|e| RunError::Wait(e.to_string()))?;
    let still_running = linger(&agent, Duration::from_millis(config.run.linger_ms)).await;

    let engine = pipeline.finish().await?;
    let sealed = seal_job(&agent, engine, &job, Some(ended), still_running)?;
    log_own_usage();
    if plan.mode == crate::config::Mode::Learn {
        if let Some((_, diff)) =
            crate::learn::for_job(&sealed.log.path, args.policy.policy.as_deref())
        {
            crate::learn::announce(&sealed.log.path, diff.as_deref());
        }
    }
    sign_opts.expected_log_sha256 = Some(sealed.log.sha256.clone());
    let signed = attest::sign_trace(&args.out, &sign_opts).await;
    let summary = sealed.summary.clone() + &attest::summary_markdown(&signed, &args.out);
    crate::sink::write_atomically(&args.out.join("summary.md"), summary.as_bytes())?;
    if !args.quiet {
        eprintln!("\n{summary}");
        eprintln!(
            "ciwatch: event log {} ({} lines)",
            sealed.log.path.display(),
            sealed.log.lines
        );
    }
    match &signed {
        Ok(outcome) if outcome.method.is_some() => {
            if let Some(fallback) = &outcome.fallback {
                eprintln!(
                    "ciwatch: warning: keyless signing failed ({}); signed with the local key",
                    fallback.reason
                );
            }
            eprintln!(
                "ciwatch: verify with: {}",
                attest::verify_command(outcome, &args.out)
            );
        }
        Ok(_) => {}
        Err(e) => {
            // The trace is on disk, but unsigned: say so loudly and fail.
            eprintln!(
                "ciwatch: error: the trace was NOT signed: {}",
                crate::bpf::loader::chain(e)
            );
            return Ok(crate::exit::SIGNING);
        }
    }
    Ok(ended.shell_code())
}

/// The job this command is: the CI job around it when there is one, else the command itself.
fn job_registry(command: &[OsString]) -> (Registry, String) {
    let mut registry = Registry::new();
    let detection = platform::detect(&StepEnv::of_this_process(), &[], None);
    let identity = detection.job.unwrap_or_else(|| JobIdentity {
        platform: Platform::None,
        id: local_job_id(),
        name: Some(command_line(command)),
        url: None,
        proof: vec![
            "no CI platform detected: the job is the watched command's process tree".into(),
        ],
    });
    let job = registry.register_job(JOB, identity, detection.conflicts);
    let step = StepIdentity {
        key: Some("command".into()),
        name: Some(command_line(command)),
        ..Default::default()
    };
    registry.register_step(STEP, &job, step, "lineage");
    (registry, job)
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

pub fn create_output(dir: &Path, header: &TraceStart) -> Result<JobOutput, RunError> {
    JobOutput::create(dir, header).map_err(|e| match e {
        SinkError::Create { source, .. } | SinkError::Write { source, .. } => RunError::OutputDir {
            path: dir.display().to_string(),
            source,
        },
        other => RunError::Sink(other),
    })
}

/// Keeps recording while the command's descendants (daemons) live, up to `limit`.
async fn linger(agent: &Agent, limit: Duration) -> u64 {
    let start = Instant::now();
    loop {
        let alive = agent.live_tags().len() as u64;
        if alive == 0 || start.elapsed() >= limit {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn seal_job(
    agent: &Agent,
    mut engine: Engine,
    job: &str,
    ended: Option<Ended>,
    still_running: u64,
) -> Result<SealedJob, RunError> {
    let mut totals = engine.attributor.totals_base();
    totals.undecodable = engine.undecodable;
    totals.unattributed += engine.other_jobs;
    agent.lost(&mut totals);
    let complete = totals.lost_total == 0
        && totals.undecodable == 0
        && agent.probes.hooks.iter().all(|h| h.attached || h.disabled);
    engine
        .attributor
        .registry
        .finalize(job, engine.names_unavailable().as_deref());
    let end = trace_end(totals, ended, still_running, complete, "ok");
    let crate::agent::engine::Outputs::Single { output, .. } = engine.outputs else {
        unreachable!("run and start write one job")
    };
    let sealed = seal::seal(
        output,
        SealInput {
            registry: &engine.attributor.registry,
            job,
            clock: engine.attributor.clock(),
            end,
            hooks: &agent.probes.hooks,
            exit: ended.map(describe),
        },
    )?;
    Ok(sealed)
}

fn describe(ended: Ended) -> String {
    match ended {
        Ended::Code(c) => format!("exited with code {c}"),
        Ended::Signal(s) => format!("killed by signal {s}"),
    }
}

pub fn trace_start(
    agent: &Agent,
    config: &Config,
    plan: &Plan,
    job: &JobRef,
    command: &[OsString],
) -> TraceStart {
    use std::os::unix::ffi::OsStrExt;
    TraceStart {
        kind: "trace_start",
        schema: SCHEMA,
        time: rfc3339(std::time::SystemTime::now()),
        agent: AgentInfo::this(),
        host: hostname(),
        kernel: agent.env.kernel.clone(),
        mode: plan.mode.as_str().into(),
        job: job.clone(),
        command: crate::redact::apply(
            config.capture_args,
            command.iter().map(|a| a.as_bytes().to_vec()).collect(),
        )
        .into_iter()
        .map(Text::new)
        .collect(),
        hooks: agent.probes.hooks.clone(),
        requested_mode: plan
            .fallback
            .as_ref()
            .map(|_| plan.requested.as_str().to_string()),
        mode_fallback: plan.fallback.clone(),
        policy: plan.policy.clone(),
        capture_args: config.capture_args,
        sensitive_paths: agent.sensitive.patterns(),
        ignore_paths: agent.sensitive.ignore_patterns(),
    }
}

pub fn trace_end(
    totals: Totals,
    ended: Option<Ended>,
    still_running: u64,
    complete: bool,
    status: &str,
) -> TraceEnd {
    let (exit_code, exit_signal) = match ended {
        Some(Ended::Code(c)) => (Some(c), None),
        Some(Ended::Signal(s)) => (None, Some(s)),
        None => (None, None),
    };
    TraceEnd {
        kind: "trace_end",
        time: rfc3339(std::time::SystemTime::now()),
        totals,
        exit_code,
        exit_signal,
        still_running,
        unwritten: 0,
        agent_status: status.to_string(),
        complete,
    }
}

/// The agent's own footprint, for scripts/bench (CIWATCH_LOG=info).
pub fn log_own_usage() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map_or("?".into(), |v| v.trim().to_string());
    // SAFETY: getrusage fills a valid rusage struct for this process.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tracing::info!(
        "agent usage: peak_rss={peak_kib} cpu_user_s={:.3} cpu_sys_s={:.3}",
        cpu(usage.ru_utime),
        cpu(usage.ru_stime)
    );
}

fn local_job_id() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    format!("run-{}-{}", now.replace([':', '-'], ""), std::process::id())
}

fn command_line(command: &[OsString]) -> String {
    command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
