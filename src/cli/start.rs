//! `ciwatch start`: attach an agent to the current CI job and return once its
//! hooks are attached. The agent keeps running in the background until
//! `ciwatch finish` (or the job's launcher exiting) tells it to seal.
//!
//! Everything the agent keeps lives in a fresh root-only state directory
//! (`agent::state_dir`): its log, pid, control socket, and how `finish` will
//! sign, key included. `--out` only receives the public files at `finish`.
//!
//! It forks before any thread exists: the foreground process waits on a pipe
//! for one readiness line, prints it, and exits with the agent's status.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::Signal;
use serde_json::json;

use crate::agent::control;
use crate::agent::engine::runner_diag;
use crate::agent::out_dir::{self, JobUser};
use crate::agent::report::{self, Report};
use crate::agent::session::{Recorder, SessionError, SessionOptions, Target};
use crate::agent::state_dir::{self, JobRecord, StateDir, AGENT_LOG};
use crate::agent::sudo::SudoDisabled;
use crate::agent::{Agent, AgentOptions};
use crate::attribute::env::StepEnv;
use crate::attribute::github_log::RunnerLogSource;
use crate::attribute::jobs::Registry;
use crate::attribute::platform::{self, JobIdentity, Platform};
use crate::attribute::{launcher, procfs};
use crate::cli::signals::Signals;
use crate::cli::spawn::{self, pipe};

#[derive(Debug, Clone, clap::Args)]
pub struct StartArgs {
    /// Directory for the trace; `ciwatch finish --out` must name the same one.
    #[arg(long, value_name = "DIR", default_value = "ciwatch-out")]
    pub out: PathBuf,
    #[command(flatten)]
    pub agent: super::agent_args::AgentArgs,
    /// The step launcher's pid, when it is not an ancestor of this process.
    #[arg(long, value_name = "PID")]
    pub launcher_pid: Option<u32>,
    /// The GitHub runner's `_diag` directory (default: next to Runner.Worker's `bin/`).
    #[arg(long, value_name = "DIR")]
    pub runner_diag: Option<PathBuf>,
    #[command(flatten)]
    pub policy: crate::enforce::plan::ModeArgs,
    /// A sensitive-path glob added to the configured list (repeatable).
    #[arg(long = "sensitive-path", value_name = "GLOB")]
    pub sensitive_paths: Vec<String>,
    /// How `ciwatch finish` will sign the trace (checked now, so a bad key fails before the job runs).
    #[command(flatten)]
    pub signing: super::signing::SigningArgs,
    /// Read the PEM signing key from standard input (kept only in the root-only state).
    #[arg(long, conflicts_with = "signing_key")]
    pub sign_key_stdin: bool,
    /// `finish` must then be given, on standard input, the token whose SHA-256 this is.
    #[arg(long, value_name = "HEX", value_parser = sha256_hex)]
    pub finish_token_sha256: Option<String>,
    /// Take sudo away from the user who ran `start` through sudo, for the rest of the job;
    /// only `finish --state <this job's state> --json` stays allowed.
    #[arg(long)]
    pub disable_sudo: bool,
    /// Seconds to wait for the hooks to attach.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub ready_timeout: u64,
}

fn sha256_hex(s: &str) -> Result<String, String> {
    let valid = s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    valid
        .then(|| s.to_ascii_lowercase())
        .ok_or_else(|| "not a SHA-256 in hex (64 hex digits)".into())
}

const JOB: u32 = 1;
/// The step of the shell that ran `ciwatch start`, when it is put into the job.
const CALLER_STEP: u32 = 2;

/// What the foreground prepared for the agent.
struct Prepared {
    state: StateDir,
    sudo_disabled: Option<SudoDisabled>,
}

/// Runs in the foreground process before any runtime exists. Returns the exit code.
pub fn launch(args: StartArgs) -> u8 {
    let prepared = match preflight_in_foreground(&args) {
        Ok(prepared) => prepared,
        Err(code) => return code,
    };
    // The shell that ran us; read before forking, when it is still our parent.
    let caller = std::os::unix::process::parent_id();
    let (read, write) = match pipe() {
        Ok(p) => p,
        Err(e) => return super::fail(crate::exit::INTERNAL, &e),
    };
    // SAFETY: no other thread exists yet (no runtime has been built), so the child may do anything.
    match unsafe { libc::fork() } {
        -1 => super::fail(crate::exit::INTERNAL, &std::io::Error::last_os_error()),
        0 => {
            drop(read);
            std::process::exit(i32::from(background(args, prepared, write, caller)));
        }
        child => {
            drop(write);
            let log = prepared.state.file(AGENT_LOG);
            await_ready(
                read,
                child as u32,
                Duration::from_secs(args.ready_timeout),
                &log,
            )
        }
    }
}

/// Errors worth reporting before forking: a bad config, missing privileges or
/// BTF, an unusable output directory or signing key, sudo that cannot be taken away.
fn preflight_in_foreground(args: &StartArgs) -> Result<Prepared, u8> {
    if let Err(e) = args.agent.load_config() {
        return Err(super::fail(crate::exit::CONFIG, &e));
    }
    if let Err(e) = crate::bpf::preflight::check(args.agent.btf.as_deref()) {
        return Err(super::fail(crate::exit::preflight(&e), &e));
    }
    let user = JobUser::invoking();
    if let Err(e) = out_dir::prepare(&args.out, user) {
        return Err(super::fail(crate::exit::OUTPUT_DIR, &e));
    }
    let state = StateDir::create(Path::new(state_dir::ROOT), &args.out)
        .map_err(|e| super::fail(crate::exit::OUTPUT_DIR, &e))?;
    let stdin_key = if args.sign_key_stdin {
        Some(read_key_from_stdin().map_err(|e| super::fail(crate::exit::CONFIG, &e))?)
    } else {
        None
    };
    args.signing
        .record(&state, stdin_key.as_deref(), crate::attest::SignMode::Auto)
        .map_err(|e| super::fail(crate::exit::CONFIG, &e))?;
    let out = std::path::absolute(&args.out).unwrap_or_else(|_| args.out.clone());
    JobRecord {
        out,
        user,
        finish_token_sha256: args.finish_token_sha256.clone(),
    }
    .write(&state)
    .map_err(|e| super::fail(crate::exit::OUTPUT_DIR, &e))?;
    let sudo_disabled = if args.disable_sudo {
        Some(disable_sudo(user, &state).map_err(|e| super::fail(crate::exit::CONFIG, &e))?)
    } else {
        None
    };
    Ok(Prepared {
        state,
        sudo_disabled,
    })
}

/// The PEM key on standard input, bounded: a key is a few hundred bytes.
fn read_key_from_stdin() -> Result<Vec<u8>, super::signing::RecordError> {
    use std::io::Read;
    let mut pem = Vec::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_end(&mut pem)
        .map_err(super::signing::RecordError::Stdin)?;
    Ok(pem)
}

/// Leaves the job's user exactly the `finish` the GitHub Action's post step runs.
fn disable_sudo(
    user: JobUser,
    state: &StateDir,
) -> Result<SudoDisabled, crate::agent::sudo::SudoError> {
    let binary = std::env::current_exe().unwrap_or_default();
    let finish = [
        "finish",
        "--state",
        &state.path().display().to_string(),
        "--json",
    ]
    .map(String::from);
    crate::agent::sudo::disable(user, &binary, &finish)
}

/// Prints the agent's readiness line, or its error, and returns the exit code.
fn await_ready(read: OwnedFd, agent: u32, timeout: Duration, log: &Path) -> u8 {
    // Past what a timespec holds is forever in effect.
    let limit = Timespec::try_from(timeout).ok();
    let ready = rustix::event::poll(&mut [PollFd::new(&read, PollFlags::IN)], limit.as_ref());
    if let Ok(0) = ready {
        spawn::kill(agent, Signal::KILL);
        eprintln!(
            "ciwatch: error: the agent did not attach its hooks within {}s; see {}",
            timeout.as_secs(),
            log.display()
        );
        return crate::exit::INTERNAL;
    }
    let mut line = String::new();
    let got = BufReader::new(std::fs::File::from(read)).read_line(&mut line);
    let message: serde_json::Value = match got {
        Ok(n) if n > 0 => serde_json::from_str(&line)
            .unwrap_or_else(|_| json!({"error": line.trim(), "code": crate::exit::INTERNAL})),
        _ => {
            json!({"error": format!("the agent exited before it was ready; see {}", log.display()), "code": crate::exit::INTERNAL})
        }
    };
    if let Some(error) = message.get("error").and_then(|e| e.as_str()) {
        eprintln!("ciwatch: error: {error}");
        return message
            .get("code")
            .and_then(serde_json::Value::as_u64)
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(crate::exit::INTERNAL);
    }
    println!("{message}");
    0
}

/// The background agent: detaches, loads, reports readiness, records until told to stop, seals.
fn background(args: StartArgs, prepared: Prepared, ready: OwnedFd, caller: u32) -> u8 {
    detach(prepared.state.path());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return report_failure(ready, crate::exit::INTERNAL, &e.to_string()),
    };
    let code = runtime.block_on(agent_main(args, prepared, ready, caller));
    runtime.shutdown_background();
    code
}

/// New session, no terminal; logs go to agent.log in the state directory.
fn detach(state: &Path) {
    // Best effort, as a daemon does: a failure leaves the agent attached, not broken.
    let _ = rustix::process::setsid();
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = rustix::stdio::dup2_stdin(&null);
    }
    if let Ok(log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.join(AGENT_LOG))
    {
        let _ = rustix::stdio::dup2_stdout(&log);
        let _ = rustix::stdio::dup2_stderr(&log);
    }
}

fn report_failure(ready: OwnedFd, code: u8, message: &str) -> u8 {
    let mut file = std::fs::File::from(ready);
    let _ = writeln!(file, "{}", json!({"error": message, "code": code}));
    code
}

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Plan(#[from] crate::enforce::plan::PlanError),
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("cannot write {}", report::PID_FILE)]
    PidFile(#[source] std::io::Error),
    #[error(transparent)]
    Control(#[from] crate::agent::control::ControlError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
}

impl StartError {
    fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) | StartError::Plan(_) => crate::exit::CONFIG,
            StartError::Agent(e) => e.exit_code(),
            StartError::Session(e) => e.exit_code(),
            StartError::Signals(_) | StartError::Control(_) => crate::exit::INTERNAL,
            StartError::PidFile(_) | StartError::Sink(_) => crate::exit::OUTPUT_DIR,
        }
    }
}

/// Records until stopped; failures before readiness go to the foreground
/// process, later ones to agent.log.
async fn agent_main(args: StartArgs, prepared: Prepared, ready: OwnedFd, caller: u32) -> u8 {
    let Started {
        recorder,
        mut signals,
        control,
        plan,
        platform,
        job,
        launcher,
        pins,
    } = match begin(&args, &prepared, caller) {
        Ok(started) => started,
        Err(e) => return report_failure(ready, e.exit_code(), &crate::error::chain(&e)),
    };
    announce(
        ready,
        recorder.agent(),
        &Announced {
            out: &args.out,
            state: prepared.state.path(),
            platform,
            job: &job,
            launcher: launcher.as_ref(),
        },
    );
    let (stopped_by, request) = wait_for_stop(
        &mut signals,
        &control,
        launcher.as_ref().map(|(pid, _)| *pid),
    )
    .await;
    tracing::info!("stopping: {stopped_by}");
    let still_running = recorder.linger().await;
    let state = prepared.state.path();
    let written = match recorder.stop().await {
        Ok(stopped) => stopped
            .seal_job(None, still_running)
            .map_err(StartError::from)
            .and_then(|sealed| {
                Ok(learned(Report::from_sealed(&sealed), &plan, &args.policy).write(state)?)
            }),
        Err(e) => Err(StartError::from(e)),
    };
    // The end is recorded: the hooks need not outlive this agent. Unsealed, they
    // stay pinned for `finish`, which recovers the log.
    if let (Ok(()), Some(dir)) = (&written, &pins) {
        if let Err(e) = crate::bpf::pin::release(dir) {
            tracing::warn!("{}", crate::error::chain(&e));
        }
    }
    if let Some(request) = request {
        request
            .reply(
                written
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| crate::error::chain(e)),
            )
            .await;
    }
    match written {
        Ok(()) => 0,
        Err(e) => super::fail(crate::exit::WRITE, &e),
    }
}

/// A recording agent, before it reports readiness.
struct Started {
    recorder: Recorder,
    signals: Signals,
    control: control::Server,
    plan: crate::enforce::plan::Plan,
    platform: Platform,
    job: String,
    launcher: Option<(u32, String)>,
    /// Where the hooks are pinned (enforce mode).
    pins: Option<PathBuf>,
}

/// Loads the agent, puts the job's launcher and caller into the job, and starts recording.
fn begin(args: &StartArgs, prepared: &Prepared, caller: u32) -> Result<Started, StartError> {
    let mut config = args.agent.load_config()?;
    config
        .files
        .extra_sensitive
        .extend(args.sensitive_paths.iter().cloned());
    let config_name = args.agent.config_name();
    let plan = crate::enforce::plan::plan(&args.policy, config.mode)?;
    let mut agent = Agent::load(&AgentOptions {
        config: &config,
        config_name: &config_name,
        btf: args.agent.btf.as_deref(),
        require_all: !args.agent.allow_partial,
        plan: &plan,
    })?;
    // Before any process is tagged: enforcement outlives this agent (src/bpf/pin.rs).
    let pins = plan
        .enforce()
        .then(|| agent.pin_enforcement(prepared.state.path()))
        .transpose()?;
    let own_env = StepEnv::of_this_process();
    let detection = platform::detect(&own_env, &[], None);
    let launcher = args
        .launcher_pid
        .map(|pid| (pid, procfs::comm(pid)))
        .or_else(|| launcher::ancestor(detection.platform))
        .or_else(|| {
            (detection.platform == Platform::Jenkins)
                .then(launcher::jenkins_agent)
                .flatten()
        });
    let identity = detection.job.clone().unwrap_or_else(|| JobIdentity {
        platform: Platform::None,
        id: format!("start-{}", std::process::id()),
        name: None,
        url: None,
        proof: vec!["no CI platform detected".into()],
    });
    let platform = identity.platform;
    let mut registry = Registry::new();
    let job = registry.register_job(JOB, identity, detection.conflicts);
    let long_lived = matches!(
        platform,
        Platform::GitlabCi | Platform::Jenkins | Platform::Drone
    );
    registry.register_launcher(
        JOB,
        platform,
        long_lived,
        launcher.as_ref().map(|(pid, _)| *pid),
    );
    let setup = match &launcher {
        Some((pid, _)) => agent.add_launcher(*pid, JOB, platform.id()),
        None => {
            registry.job_note(&job, "no step launcher found among this process's ancestors: only container steps can be attributed".into());
            Ok(())
        }
    };
    setup.and_then(|()| agent.watch_container_runtimes())?;
    if joins_caller(platform) {
        join_caller(&mut agent, &mut registry, &job, platform, &own_env, caller)?;
    }
    let mut runner_logs = Vec::new();
    if platform == Platform::GithubActions {
        // Only the Worker's own open log is read, so without the Worker there are no names.
        let source = launcher.as_ref().and_then(|(worker, _)| {
            let diag = args.runner_diag.clone().or_else(|| runner_diag(*worker))?;
            Some(RunnerLogSource {
                diag,
                worker: *worker,
            })
        });
        match source {
            Some(source) => runner_logs.push(source),
            None => registry.job_note(
                &job,
                "the runner's Worker or its _diag directory was not found: steps have no display names".into(),
            ),
        }
    }
    let recorder = Recorder::start(
        agent,
        SessionOptions {
            config: &config,
            plan: &plan,
            registry,
            target: Target::Job {
                dir: prepared.state.path().to_path_buf(),
                job: job.clone(),
            },
            command: &[b"ciwatch start".to_vec()],
            runner_logs,
            sudo_disabled: prepared.sudo_disabled.clone(),
        },
    )?;
    let signals = Signals::install().map_err(StartError::Signals)?;
    let control = control::Server::bind(&prepared.state)?;
    report::write_pid_file(prepared.state.path()).map_err(StartError::PidFile)?;
    Ok(Started {
        recorder,
        signals,
        control,
        plan,
        platform,
        job,
        launcher,
        pins: pins.map(crate::bpf::pin::Pinned::keep),
    })
}

/// In learn mode the report carries the proposed policy (and its diff against
/// the policy in force), which the GitHub Action shows in the job summary.
fn learned(
    mut report: Report,
    plan: &crate::enforce::plan::Plan,
    args: &crate::enforce::plan::ModeArgs,
) -> Report {
    if plan.mode == crate::config::Mode::Learn {
        if let Some((proposal, diff)) =
            crate::learn::for_job(&report.events, args.policy.as_deref())
        {
            report.proposed_policy = Some(proposal);
            report.policy_diff = diff;
        }
    }
    report
}

/// Where `ciwatch start` runs inside a job script (GitLab, Jenkins, CircleCI, Buildkite,
/// Drone, …), the rest of that script runs in the calling shell, exec'd before the
/// agent attached: put it into the job. On GitHub and Azure ciwatch runs as its
/// own step, so there is nothing of the job's to adopt.
fn joins_caller(platform: Platform) -> bool {
    !matches!(platform, Platform::GithubActions | Platform::AzurePipelines)
}

fn join_caller(
    agent: &mut Agent,
    registry: &mut Registry,
    job: &str,
    platform: Platform,
    env: &StepEnv,
    caller: u32,
) -> Result<(), crate::agent::AgentError> {
    let argv = procfs::cmdline(caller);
    let mut identity = platform::detector(platform)
        .and_then(|d| d.step(env, &argv))
        .unwrap_or_default();
    if identity.key.is_none() {
        identity.key = Some("start".into());
        identity.name = Some("the step that ran ciwatch start".into());
    }
    registry.register_step(CALLER_STEP, job, identity, "caller of ciwatch start");
    agent.tag(
        caller,
        crate::bpf::abi::Tag {
            job: JOB,
            step: CALLER_STEP,
            flags: crate::bpf::abi::TAG_STEP_ROOT,
            platform: platform.id(),
        },
    )
}

/// What the readiness line names besides the hooks.
struct Announced<'a> {
    out: &'a Path,
    state: &'a Path,
    platform: Platform,
    job: &'a str,
    launcher: Option<&'a (u32, String)>,
}

fn announce(ready: OwnedFd, agent: &Agent, a: &Announced<'_>) {
    let line = json!({
        "pid": std::process::id(),
        "out": a.out,
        "state": a.state,
        "platform": a.platform.name(),
        "job": a.job,
        "launcher": a.launcher.map(|(pid, comm)| json!({"pid": pid, "comm": comm})),
        "hooks": agent.probes.hooks,
    });
    let mut file = std::fs::File::from(ready);
    let _ = writeln!(file, "{line}");
}

/// Until finish asks us (on the control socket, or by a signal), or the job's
/// launcher is gone (the job ended without a finish).
async fn wait_for_stop(
    signals: &mut Signals,
    control: &control::Server,
    launcher: Option<u32>,
) -> (String, Option<control::SealRequest>) {
    let start = launcher.and_then(procfs::process_start);
    loop {
        tokio::select! {
            request = control.next_seal() => return ("a seal request on the control socket".into(), Some(request)),
            sig = signals.any() => return (format!("signal {sig}"), None),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Some(pid) = launcher {
                    if procfs::process_start(pid) != start {
                        return (format!("the step launcher (pid {pid}) exited"), None);
                    }
                }
            }
        }
    }
}
