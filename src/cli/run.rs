//! `ciwatch run -- CMD`: watch one command's whole process tree and write
//! its event log and summary.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::agent::session::{Recorder, SessionError, SessionOptions, Target};
use crate::agent::{Agent, AgentError, AgentOptions};
use crate::attest::{self, AttestError, SignMode};
use crate::attribute::env::StepEnv;
use crate::attribute::jobs::Registry;
use crate::attribute::platform::{self, JobIdentity, Platform, StepIdentity};
use crate::bpf::abi::{self, Tag};
use crate::cli::signals::Signals;
use crate::cli::spawn::{self, SpawnError};
use crate::config::ConfigError;
use crate::enforce::plan::{plan, ModeArgs, PlanError};

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
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error("waiting for the command failed")]
    Wait(#[source] std::io::Error),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
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
            RunError::Session(e) => e.exit_code(),
            RunError::Plan(_) | RunError::SigningKey(_) => exit::CONFIG,
            RunError::Sink(_) => exit::WRITE,
            RunError::Signals(_) | RunError::Wait(_) => exit::INTERNAL,
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
    let agent = Agent::load(&AgentOptions {
        config: &config,
        config_name: &config_name,
        btf: args.agent.btf.as_deref(),
        require_all: !args.agent.allow_partial,
        plan: &plan,
    })?;
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
    let signals = Signals::install().map_err(RunError::Signals)?;

    let command: Vec<Vec<u8>> = args.command.iter().map(|a| a.as_bytes().to_vec()).collect();
    // The step (and job) name is copied into every event, the summary and the
    // statement: masked as argv is.
    let (registry, job) = job_registry(&crate::redact::command_line(
        config.capture_args,
        command.clone(),
    ));
    let mut recorder = Recorder::start(
        agent,
        SessionOptions {
            config: &config,
            plan: &plan,
            registry,
            target: Target::Job {
                dir: args.out.clone(),
                job,
            },
            command: &command,
            runner_logs: Vec::new(),
            sudo_disabled: None,
        },
    )?;

    let held = prepared.fork_held()?;
    recorder.agent_mut().tag(
        held.pid,
        Tag {
            job: JOB,
            step: STEP,
            flags: abi::TAG_STEP_ROOT,
            platform: 0,
        },
    )?;
    let pid = held.release()?;
    let ended = signals.wait_forwarding(pid).await.map_err(RunError::Wait)?;
    let still_running = recorder.linger().await;
    let sealed = recorder
        .stop()
        .await?
        .seal_job(Some(ended), still_running)?;
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
                crate::error::chain(e)
            );
            return Ok(crate::exit::SIGNING);
        }
    }
    Ok(ended.shell_code())
}

/// The job this command is: the CI job around it when there is one, else the
/// command itself; `command_line` is already redacted.
fn job_registry(command_line: &str) -> (Registry, String) {
    let mut registry = Registry::new();
    let detection = platform::detect(&StepEnv::of_this_process(), &[], None);
    let identity = detection.job.unwrap_or_else(|| JobIdentity {
        platform: Platform::None,
        id: local_job_id(),
        name: Some(command_line.to_string()),
        url: None,
        proof: vec![
            "no CI platform detected: the job is the watched command's process tree".into(),
        ],
    });
    let job = registry.register_job(JOB, identity, detection.conflicts);
    let step = StepIdentity {
        key: Some("command".into()),
        name: Some(command_line.to_string()),
        ..Default::default()
    };
    registry.register_step(STEP, &job, step, "lineage");
    (registry, job)
}

fn local_job_id() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    format!("run-{}-{}", now.replace([':', '-'], ""), std::process::id())
}
