//! `ciwatch finish`: ask the background agent to seal the job, sign the
//! sealed trace, and publish its public files to the job's output directory.
//! If the agent died, the trace it left is sealed here and says so.
//! Idempotent: a second call reports, and publishes, the same result.
//!
//! Everything it acts on comes from the job's root-only state
//! (`agent::state_dir`): the agent's pid and control socket, the report, how
//! to sign and with which key, where to publish and as whom. Nothing is read
//! from the output directory, whose files the job can plant, nor from the
//! environment, which the job can set.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::agent::control::{self, ControlError};
use crate::agent::out_dir::{self, OutDirError};
use crate::agent::recovered;
use crate::agent::report::{self, Report};
use crate::agent::seal;
use crate::agent::state_dir::{self, JobRecord, StateDir, StateError};
use crate::agent::trace::trace_end;
use crate::attest;
use crate::cli::signing::Recorded;
use crate::cli::spawn;
use crate::event::Totals;
use crate::sink::ndjson::LIVE_NAME;

#[derive(Debug, clap::Args)]
pub struct FinishArgs {
    /// The job's state directory, as `ciwatch start` printed it (`state`).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Without --state: the directory `ciwatch start --out` named (its newest job is finished).
    #[arg(long, value_name = "DIR", default_value = "ciwatch-out")]
    pub out: PathBuf,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the agent to seal.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    NoAgent(String),
    #[error(
        "the token on standard input is not the one `ciwatch start` was given: refusing to finish"
    )]
    Token,
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("the agent (pid {0}) did not seal the job within {1}s; it was killed and its trace recovered")]
    Timeout(u32, u64),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error(transparent)]
    Publish(#[from] OutDirError),
    #[error(transparent)]
    Pins(#[from] crate::bpf::pin::PinError),
    #[error(transparent)]
    Recovered(#[from] crate::agent::recovered::RecoveredError),
}

pub async fn execute(args: FinishArgs) -> u8 {
    let (state, job) = match open(&args) {
        Ok(opened) => opened,
        Err(e) => return super::fail(exit_code(&e), &e),
    };
    if let Err(e) = check_token(&job) {
        return super::fail(exit_code(&e), &e);
    }
    let recorded = Recorded::read(&state);
    if let Ok(recorded) = &recorded {
        // Before any task runs or any HTTPS client reads them.
        recorded.apply_network_env();
    }
    let finished = finish(&args, &state).await;
    // Whatever the outcome, the job has ended: its hooks go (they enforce while they are pinned).
    if let Err(e) = crate::bpf::pin::release(&crate::bpf::pin::dir_for(state.path())) {
        eprintln!("ciwatch: warning: {}", crate::error::chain(&e));
    }
    let (mut report, repeat) = match finished {
        Ok(r) => r,
        Err(e) => return super::fail(exit_code(&e), &e),
    };
    let signed = match &report.signing {
        Some(recorded) => recorded.get("error").is_none(),
        None => sign(&state, &job, recorded, &mut report).await,
    };
    if let Err(e) = report.write(state.path()) {
        return super::fail(crate::exit::WRITE, &e);
    }
    let public = match publish(&state, &job, &report) {
        Ok(public) => public,
        Err(e) => return super::fail(exit_code(&e), &e),
    };
    print(&public, args.json, repeat);
    if !signed {
        eprintln!(
            "ciwatch: error: the trace was NOT signed (see the signing error above and summary.md)"
        );
        crate::exit::SIGNING
    } else if public.agent_died {
        eprintln!("ciwatch: error: the agent died during the job; the trace is incomplete (see summary.md)");
        crate::exit::AGENT_DIED
    } else if public.lost > 0 {
        eprintln!(
            "ciwatch: error: {} events were lost; raise ring.size_bytes",
            public.lost
        );
        crate::exit::EVENTS_LOST
    } else {
        0
    }
}

/// The job's state (`--state`, else the newest job for `--out`) and what `start` fixed in it.
fn open(args: &FinishArgs) -> Result<(StateDir, JobRecord), FinishError> {
    let state = match &args.state {
        Some(dir) => StateDir::open(dir)?,
        None => StateDir::for_out(Path::new(state_dir::ROOT), &args.out)?,
    };
    let job = JobRecord::read(&state)?;
    Ok((state, job))
}

/// When `start` was given a token's digest, `finish` must be shown the token
/// (one line on stdin): a step that may run this `finish` through sudo cannot end the job early.
fn check_token(job: &JobRecord) -> Result<(), FinishError> {
    let Some(expected) = &job.finish_token_sha256 else {
        return Ok(());
    };
    let mut line = String::new();
    std::io::BufReader::new(std::io::stdin().take(1024))
        .read_line(&mut line)
        .map_err(|_| FinishError::Token)?;
    let shown = hex::encode(Sha256::digest(line.trim().as_bytes()));
    if shown.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(FinishError::Token)
    }
}

/// Signs the sealed log (once: a second finish finds `signing` set) as `start` fixed, and records the outcome.
async fn sign(
    state: &StateDir,
    job: &JobRecord,
    recorded: Result<Recorded, crate::cli::signing::RecordError>,
    report: &mut Report,
) -> bool {
    let result = match recorded {
        Ok(recorded) => {
            let mut opts = recorded.options(state);
            opts.expected_log_sha256 = Some(report.log_sha256.clone());
            let mut result = attest::sign_trace(state.path(), &opts).await;
            if let Ok(outcome) = &mut result {
                recorded.show_key(outcome);
            }
            result
        }
        Err(e) => {
            eprintln!(
                "ciwatch: error: signing failed: {}",
                crate::error::chain(&e)
            );
            report.signing = Some(json!({ "method": "none", "error": crate::error::chain(&e) }));
            return false;
        }
    };
    let section = attest::summary_markdown(&result, &job.out);
    if let Ok(summary) = std::fs::read_to_string(&report.summary) {
        let _ = crate::sink::write_atomically(&report.summary, (summary + &section).as_bytes());
    }
    match result {
        Ok(outcome) => {
            let file = |suffix: &str| {
                outcome
                    .files
                    .iter()
                    .find(|f| f.to_string_lossy().ends_with(suffix))
                    .cloned()
            };
            report.envelope = file(".intoto.jsonl");
            report.bundle = file(".sigstore.json");
            report.signing = Some(json!({
                "method": outcome.method.map_or("none", |m| m.as_str()),
                "fallback": outcome.fallback.as_ref().map(|f| f.reason.clone()),
                "identity": outcome.keyless.as_ref().and_then(|k| k.identity.clone())
                    .or_else(|| outcome.key.as_ref().map(|k| format!("key {}", k.key_id))),
                "verify_command": outcome.method.map(|_| attest::verify_command(&outcome, &job.out)),
            }));
            true
        }
        Err(e) => {
            eprintln!(
                "ciwatch: error: signing failed: {}",
                crate::error::chain(&e)
            );
            report.signing = Some(json!({ "method": "none", "error": crate::error::chain(&e) }));
            false
        }
    }
}

/// The files the job may see, copied from the state into `out` as the job's
/// user; returns the report as the job sees it, naming those copies.
fn publish(state: &StateDir, job: &JobRecord, report: &Report) -> Result<Report, FinishError> {
    let public_path = |p: &Path| p.file_name().map(|name| job.out.join(name));
    let mut public = report.clone();
    public.events = public_path(&report.events).unwrap_or_default();
    public.summary = public_path(&report.summary).unwrap_or_default();
    public.envelope = report.envelope.as_deref().and_then(public_path);
    public.bundle = report.bundle.as_deref().and_then(public_path);
    public.write_as(state.path(), PUBLIC_REPORT)?;
    let files: Vec<(&str, PathBuf)> = [
        crate::sink::ndjson::FILE_NAME,
        "summary.md",
        attest::ENVELOPE_FILE,
        attest::BUNDLE_FILE,
        attest::RUNTIME_TRACE_BUNDLE_FILE,
        crate::learn::PROPOSED_POLICY,
        state_dir::AGENT_LOG,
    ]
    .into_iter()
    .map(|name| (name, state.file(name)))
    .chain(std::iter::once((
        report::REPORT_FILE,
        state.file(PUBLIC_REPORT),
    )))
    .collect();
    out_dir::publish(&job.out, job.user, &files)?;
    Ok(public)
}

/// The report with the published paths, kept in the state until it is copied out as agent.json.
const PUBLIC_REPORT: &str = "public-report.json";

fn exit_code(e: &FinishError) -> u8 {
    match e {
        FinishError::State(_) | FinishError::NoAgent(_) => crate::exit::NO_AGENT,
        FinishError::Token => crate::exit::PRIVILEGES,
        FinishError::Control(_) => crate::exit::INTERNAL,
        FinishError::Timeout(..) => crate::exit::AGENT_DIED,
        FinishError::Sink(_) | FinishError::Publish(_) | FinishError::Recovered(_) => {
            crate::exit::WRITE
        }
        FinishError::Pins(_) => crate::exit::INTERNAL,
    }
}

/// The sealed report, and whether an earlier `finish` already signed it.
async fn finish(args: &FinishArgs, state: &StateDir) -> Result<(Report, bool), FinishError> {
    let dir = state.path();
    if let Some(done) = Report::read(dir) {
        let repeat = done.signing.is_some();
        return Ok((done, repeat));
    }
    let agent = report::live_agent(dir).map_err(FinishError::NoAgent)?;
    let Some(pid) = agent else {
        return Ok((recover(dir)?, false));
    };
    let timeout = Duration::from_secs(args.timeout);
    match control::request_seal(state, pid, timeout).await {
        Ok(()) | Err(ControlError::Agent(_)) => {}
        Err(ControlError::Timeout(_)) => return Err(kill_and_recover(dir, pid, args.timeout)),
        Err(e @ ControlError::NotTheAgent { .. }) => return Err(e.into()),
        // The socket is gone: the agent is exiting on its own, or predates it.
        Err(e) => {
            tracing::warn!("{}; signalling the agent instead", crate::error::chain(&e));
            spawn::kill(pid, Signal::TERM);
        }
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(done) = Report::read(dir) {
            return Ok((done, false));
        }
        if report::live_agent(dir).ok().flatten().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(done) = Report::read(dir) {
        return Ok((done, false));
    }
    if report::live_agent(dir).ok().flatten().is_some() {
        return Err(kill_and_recover(dir, pid, args.timeout));
    }
    Ok((recover(dir)?, false))
}

/// The agent (checked against its start time by the caller) did not seal in time.
fn kill_and_recover(dir: &Path, pid: u32, timeout: u64) -> FinishError {
    spawn::kill(pid, Signal::KILL);
    match recover(dir) {
        Ok(_) => FinishError::Timeout(pid, timeout),
        Err(e) => e,
    }
}

/// Seals what a dead agent left, marking the trace incomplete.
fn recover(dir: &Path) -> Result<Report, FinishError> {
    if !dir.join(LIVE_NAME).exists() {
        return Err(FinishError::NoAgent(format!(
            "the agent for {} died before writing any event",
            dir.display()
        )));
    }
    // Its pinned hooks enforced until now: detach them, then count what they left.
    let totals = crate::bpf::pin::detach(&crate::bpf::pin::dir_for(dir))?
        .map_or_else(Totals::default, |left| crate::agent::leftover_totals(&left));
    let end = trace_end(totals, None, 0, false, "died");
    let (sealed, end) = seal::recover(dir, end)?;
    let denials = recovered::denials(&sealed.path)?;
    let summary = format!(
        "# ciwatch: job summary\n\n> **Warning: the ciwatch agent died during this job.** The event log holds what it \
         recorded until then; events after that were not recorded and the trace is incomplete.\n\n\
         In the recovered log: {} denied connections, {} refused DNS lookups, {} denied sockets. Never \
         written to the log (lost, or queued after the agent stopped reading): {} records (`trace_end.lost`).\n\n\
         Event log SHA-256: `{}`\n",
        denials.denied, denials.refused, denials.sockets, end.totals.lost_total, sealed.sha256
    );
    crate::sink::write_atomically(&dir.join("summary.md"), summary.as_bytes())?;
    let report = Report {
        status: "died".into(),
        agent_died: true,
        events: sealed.path,
        summary: dir.join("summary.md"),
        log_sha256: sealed.sha256,
        counts: Report::counts(&end.totals.events),
        lost: end.totals.lost_total,
        denied: denials.denied,
        steps: Vec::new(),
        egress: Vec::new(),
        dns: Vec::new(),
        files: Vec::new(),
        denied_events: denials.denied_events,
        refused_lookups: denials.refused_lookups,
        denied_sockets: denials.denied_sockets,
        proposed_policy: None,
        policy_diff: None,
        envelope: None,
        bundle: None,
        signing: None,
    };
    report.write(dir)?;
    Ok(report)
}

/// `repeat`: an earlier `finish` already sealed and signed this job (the GitHub Action uploads once).
fn print(report: &Report, json: bool, repeat: bool) {
    if json {
        let mut value = serde_json::to_value(report).unwrap_or_default();
        value["repeat"] = repeat.into();
        println!("{value}");
    }
    eprintln!("| step | execs | connects | DNS | sensitive opens |\n|---|---:|---:|---:|---:|");
    for s in &report.steps {
        eprintln!(
            "| {} | {} | {} | {} | {} |",
            s.name, s.execs, s.connects, s.dns, s.files
        );
    }
    eprintln!(
        "\nciwatch: event log {} (sha256 {})",
        report.events.display(),
        report.log_sha256
    );
    // The agent sets the diff only together with a proposal.
    if report.proposed_policy.is_some() {
        crate::learn::announce(&report.events, report.policy_diff.as_deref());
    }
}
