//! `ciwatch run -- CMD`: watch one command's whole process tree and write
//! its event log and summary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::attest::{self, AttestError, SignMode};
use crate::attribute::Attributor;
use crate::bpf::abi::{self, Tag};
use crate::bpf::loader::{self, LoadError, LoadOptions, Probes};
use crate::bpf::preflight::{self, Environment, PreflightError};
use crate::cli::spawn::{self, Ended, SpawnError};
use crate::config::{Config, ConfigError};
use crate::event::{rfc3339, Agent, HookStatus, JobRef, StepRef, TraceEnd, TraceStart, Totals, SCHEMA};
use crate::pipeline::{Pipeline, PipelineError};
use crate::redact::CaptureArgs;
use crate::sink::ndjson::{NdjsonLog, Sealed};
use crate::sink::summary::{Context, Summary};
use crate::sink::{SinkError, Sinks};
use crate::text::Text;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Directory for events.ndjson and summary.md.
    #[arg(long, value_name = "DIR", default_value = "ciwatch-out")]
    pub out: PathBuf,
    /// Agent configuration (TOML). Without it the embedded defaults apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kernel BTF to use instead of /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// What of each argv the log keeps (overrides the config file).
    #[arg(long, value_enum)]
    pub capture_args: Option<CaptureArgs>,
    /// Record even if a hook cannot attach on this kernel; the gap is recorded.
    #[arg(long)]
    pub allow_partial: bool,
    /// Do not print the summary to the terminal.
    #[arg(long, short)]
    pub quiet: bool,
    /// How the sealed trace is signed (default for `run`: --sign key).
    #[command(flatten)]
    pub signing: super::signing::SigningArgs,
    /// The command to watch.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error("cannot write to output directory {path}: {source}")]
    OutputDir { path: String, source: std::io::Error },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot register the command with the kernel: {0}")]
    Register(String),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("waiting for the command failed: {0}")]
    Wait(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    SigningKey(AttestError),
}

impl RunError {
    fn exit_code(&self) -> u8 {
        use crate::exit;
        match self {
            RunError::Config(_) | RunError::SigningKey(_) => exit::CONFIG,
            RunError::Spawn(e) => e.exit_code(),
            RunError::Preflight(e) => exit::preflight(e),
            RunError::OutputDir { .. } => exit::OUTPUT_DIR,
            RunError::Load(_) => exit::HOOKS,
            RunError::Sink(_) => exit::WRITE,
            RunError::Register(_) | RunError::Signals(_) | RunError::Wait(_) | RunError::Pipeline(_) => exit::INTERNAL,
        }
    }
}

pub async fn execute(args: RunArgs) -> u8 {
    match run(args).await {
        Ok(code) => code,
        Err(e) => super::fail(e.exit_code(), &e),
    }
}

/// The watched command's tag: job 1, and (until attribution names steps) one step.
const JOB_TAG: Tag = Tag { job: 1, step: 1, flags: 0, _pad: 0 };

async fn run(args: RunArgs) -> Result<u8, RunError> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(policy) = args.capture_args {
        config.capture_args = policy;
    }
    let config_name = args.config.as_ref().map_or("embedded defaults".to_string(), |p| p.display().to_string());
    let sensitive =
        config.sensitive_paths().map_err(|source| ConfigError::Rule { path: config_name, source })?;
    let prepared = spawn::prepare(&args.command)?;
    // A missing or malformed signing key fails before the job runs, not after.
    let mut sign_opts = args.signing.options(SignMode::Key);
    if let Some(key) = attest::prepare_key(&sign_opts).map_err(RunError::SigningKey)? {
        if key.created {
            eprintln!("ciwatch: created signing key {} (key id {})", key.private_path.display(), key.key_id);
        }
    }
    let env = preflight::check(args.btf.as_deref())?;
    let log = create_log(&args.out)?;
    let signals = Signals::install().map_err(RunError::Signals)?;

    let mut probes = loader::load(&LoadOptions {
        ring_bytes: config.ring.size_bytes,
        wakeup_bytes: config.ring.wakeup_bytes,
        args_max: abi::ARGS_MAX as u32,
        btf: &env.btf,
        sensitive: &sensitive,
        cgroup2: env.cgroup2.as_deref(),
        require_all: !args.allow_partial,
    })?;
    let job = JobRef { platform: "none".into(), id: local_job_id() };
    let step = StepRef { id: "job".into(), stage: None, name: Some(command_line(&args.command)) };
    let mut sinks = Sinks { log, summary: Summary::default() };
    sinks.log.write(&trace_start(&env, &config, &sensitive, &job, &args.command, &probes.hooks))?;

    let attributor = Attributor::new(job, step, config.capture_args, sensitive);
    let ring = probes.take_ring().ok_or_else(|| RunError::Register("ring buffer already taken".into()))?;
    let drain = Duration::from_millis(config.ring.drain_interval_ms);
    let pipeline = Pipeline::start(ring, drain, attributor, sinks).map_err(|e| RunError::Register(e.to_string()))?;

    let held = prepared.fork_held()?;
    probes.tasks.insert(held.pid, JOB_TAG, 0).map_err(|e| RunError::Register(loader::chain(&e)))?;
    let pid = held.release()?;
    let ended = signals.wait_forwarding(pid).await?;
    let still_running = linger(&probes, Duration::from_millis(config.run.linger_ms)).await;

    let drained = pipeline.finish().await?;
    let mut totals = drained.attributor.totals_base();
    totals.events = drained.sinks.summary.totals.events.clone();
    totals.undecodable = drained.undecodable;
    read_lost(&probes, &mut totals);
    let complete = totals.lost_total == 0 && totals.undecodable == 0 && probes.hooks.iter().all(|h| h.attached);
    let Sinks { mut log, mut summary } = drained.sinks;
    log.write(&trace_end(&totals, ended, still_running, complete))?;
    let sealed = log.seal()?;
    summary.totals = totals;
    sign_opts.expected_log_sha256 = Some(sealed.sha256.clone());
    let signed = attest::sign_trace(&args.out, &sign_opts).await;
    let attestation = attest::summary_markdown(&signed, &args.out);
    let markdown = write_summary(&args.out, &summary, &probes.hooks, ended, still_running, &sealed, &attestation)?;
    if !args.quiet {
        eprintln!("\n{markdown}");
        eprintln!("ciwatch: event log {} ({} lines)", sealed.path.display(), sealed.lines);
    }
    match &signed {
        Ok(outcome) if outcome.method.is_some() => {
            if let Some(fallback) = &outcome.fallback {
                eprintln!("ciwatch: warning: keyless signing failed ({}); signed with the local key", fallback.reason);
            }
            eprintln!("ciwatch: verify with: {}", attest::verify_command(outcome, &args.out));
        }
        Ok(_) => {}
        Err(e) => {
            // The trace is on disk, but unsigned: say so loudly and fail.
            eprintln!("ciwatch: error: the trace was NOT signed: {}", loader::chain(e));
            return Ok(crate::exit::SIGNING);
        }
    }
    Ok(ended.shell_code())
}

fn create_log(dir: &Path) -> Result<NdjsonLog, RunError> {
    let output = |source| RunError::OutputDir { path: dir.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(output)?;
    NdjsonLog::create(dir).map_err(|e| match e {
        SinkError::Create { source, .. } => output(source),
        other => RunError::Sink(other),
    })
}

/// Keeps recording while the command's descendants (daemons) live, up to `limit`.
async fn linger(probes: &Probes, limit: Duration) -> u64 {
    let start = Instant::now();
    loop {
        let alive = probes.tasks.keys().filter(Result::is_ok).count() as u64;
        if alive == 0 || start.elapsed() >= limit {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn read_lost(probes: &Probes, totals: &mut Totals) {
    for (kind, name) in [
        (abi::KIND_EXEC, "exec"),
        (abi::KIND_FORK, "fork"),
        (abi::KIND_EXIT, "exit"),
        (abi::KIND_CONNECT, "connect"),
        (abi::KIND_FILE, "file"),
        (abi::KIND_DNS, "dns"),
    ] {
        let lost: u64 = probes.lost.get(&u32::from(kind), 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0);
        totals.lost.insert(name, lost);
        totals.lost_total += lost;
    }
}

fn trace_start(
    env: &Environment,
    config: &Config,
    sensitive: &crate::filter::sensitive::SensitivePaths,
    job: &JobRef,
    command: &[OsString],
    hooks: &[HookStatus],
) -> TraceStart {
    use std::os::unix::ffi::OsStrExt;
    TraceStart {
        kind: "trace_start",
        schema: SCHEMA,
        time: rfc3339(std::time::SystemTime::now()),
        agent: Agent::this(),
        host: hostname(),
        kernel: env.kernel.clone(),
        mode: "observe".into(),
        job: job.clone(),
        command: crate::redact::apply(config.capture_args, command.iter().map(|a| a.as_bytes().to_vec()).collect())
            .into_iter()
            .map(Text::new)
            .collect(),
        hooks: hooks.to_vec(),
        capture_args: config.capture_args,
        sensitive_paths: sensitive.patterns(),
        ignore_paths: sensitive.ignore_patterns(),
    }
}

fn trace_end(totals: &Totals, ended: Ended, still_running: u64, complete: bool) -> TraceEnd {
    let (exit_code, exit_signal) = match ended {
        Ended::Code(c) => (Some(c), None),
        Ended::Signal(s) => (None, Some(s)),
    };
    TraceEnd {
        kind: "trace_end",
        time: rfc3339(std::time::SystemTime::now()),
        totals: totals.clone(),
        exit_code,
        exit_signal,
        still_running,
        complete,
    }
}

fn write_summary(
    dir: &Path,
    summary: &Summary,
    hooks: &[HookStatus],
    ended: Ended,
    still_running: u64,
    sealed: &Sealed,
    attestation: &str,
) -> Result<String, RunError> {
    let exit = match ended {
        Ended::Code(c) => format!("exited with code {c}"),
        Ended::Signal(s) => format!("killed by signal {s}"),
    };
    let markdown = summary.render(&Context {
        title: "ciwatch: job summary",
        hooks,
        exit: Some(exit),
        log_sha256: Some(&sealed.sha256),
        still_running,
    });
    let markdown = markdown + attestation;
    write_atomically(&dir.join("summary.md"), markdown.as_bytes())?;
    Ok(markdown)
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let partial = path.with_extension("partial");
    let err = |source| SinkError::Write { path: path.display().to_string(), source };
    std::fs::write(&partial, bytes).map_err(err)?;
    std::fs::rename(&partial, path).map_err(err)
}

fn local_job_id() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    format!("run-{}-{}", now.replace([':', '-'], ""), std::process::id())
}

fn command_line(command: &[OsString]) -> String {
    command.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Termination signals are forwarded to the command; ciwatch itself stays to seal the trace.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
    quit: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    async fn wait_forwarding(mut self, pid: u32) -> Result<Ended, RunError> {
        let mut wait = tokio::task::spawn_blocking(move || spawn::wait(pid));
        loop {
            let forwarded = tokio::select! {
                done = &mut wait => {
                    let waited = done.map_err(|e| RunError::Wait(e.to_string()))?;
                    return waited.map_err(|e| RunError::Wait(e.to_string()));
                }
                _ = self.interrupt.recv() => libc::SIGINT,
                _ = self.terminate.recv() => libc::SIGTERM,
                _ = self.hangup.recv() => libc::SIGHUP,
                _ = self.quit.recv() => libc::SIGQUIT,
            };
            // SAFETY: kill() on our own child's pid.
            unsafe { libc::kill(pid as i32, forwarded) };
            tracing::info!("forwarded signal {forwarded} to the command");
        }
    }
}
