//! `ciwatch finish`: tell the background agent to seal the job, wait for it,
//! and report. If the agent died, the trace it left is sealed here and says so.
//! Idempotent: a second call reports the same result.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::json;

use crate::agent::recovered;
use crate::agent::report::{self, Report};
use crate::agent::seal;
use crate::agent::trace::trace_end;
use crate::attest::{self, SignMode};
use crate::cli::spawn;
use crate::event::Totals;
use crate::sink::ndjson::LIVE_NAME;

#[derive(Debug, clap::Args)]
pub struct FinishArgs {
    /// The directory `ciwatch start --out` wrote to.
    #[arg(long, value_name = "DIR", default_value = "ciwatch-out")]
    pub out: PathBuf,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the agent to seal.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
    /// How the sealed trace is signed (default for `finish`: --sign auto, keyless when the CI gives a token).
    #[command(flatten)]
    pub signing: super::signing::SigningArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error("{0}")]
    NoAgent(String),
    #[error("the agent (pid {0}) did not seal the job within {1}s; it was killed and its trace recovered")]
    Timeout(u32, u64),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error(transparent)]
    Pins(#[from] crate::bpf::pin::PinError),
    #[error(transparent)]
    Recovered(#[from] crate::agent::recovered::RecoveredError),
}

pub async fn execute(args: FinishArgs) -> u8 {
    let finished = finish(&args).await;
    // Whatever the outcome, the job has ended: its hooks go (they enforce while they are pinned).
    if let Err(e) = crate::bpf::pin::release(&crate::bpf::pin::dir_for(&args.out)) {
        eprintln!("ciwatch: warning: {}", crate::error::chain(&e));
    }
    let mut report = match finished {
        Ok(r) => r,
        Err(e) => return super::fail(exit_code(&e), &e),
    };
    let signed = match &report.signing {
        Some(recorded) => recorded.get("error").is_none(),
        None => sign(&args, &mut report).await,
    };
    if let Err(e) = report.write(&args.out) {
        return super::fail(crate::exit::WRITE, &e);
    }
    print(&report, args.json);
    if !signed {
        eprintln!(
            "ciwatch: error: the trace was NOT signed (see the signing error above and summary.md)"
        );
        crate::exit::SIGNING
    } else if report.agent_died {
        eprintln!("ciwatch: error: the agent died during the job; the trace is incomplete (see summary.md)");
        crate::exit::AGENT_DIED
    } else if report.lost > 0 {
        eprintln!(
            "ciwatch: error: {} events were lost; raise ring.size_bytes",
            report.lost
        );
        crate::exit::EVENTS_LOST
    } else {
        0
    }
}

/// Signs the sealed log (once: a second finish finds `signing` set) and records the outcome.
async fn sign(args: &FinishArgs, report: &mut Report) -> bool {
    let mut opts = args
        .signing
        .clone()
        .or_recorded(&args.out)
        .options(SignMode::Auto);
    opts.expected_log_sha256 = Some(report.log_sha256.clone());
    let result = attest::sign_trace(&args.out, &opts).await;
    let section = attest::summary_markdown(&result, &args.out);
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
                "verify_command": outcome.method.map(|_| attest::verify_command(&outcome, &args.out)),
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

fn exit_code(e: &FinishError) -> u8 {
    match e {
        FinishError::NoAgent(_) => crate::exit::NO_AGENT,
        FinishError::Timeout(..) => crate::exit::AGENT_DIED,
        FinishError::Sink(_) | FinishError::Recovered(_) => crate::exit::WRITE,
        FinishError::Pins(_) => crate::exit::INTERNAL,
    }
}

async fn finish(args: &FinishArgs) -> Result<Report, FinishError> {
    let dir = args.out.as_path();
    if let Some(done) = Report::read(dir) {
        return Ok(done);
    }
    let agent = report::live_agent(dir).map_err(FinishError::NoAgent)?;
    if let Some(pid) = agent {
        // The agent's pid, checked against its start time just above.
        spawn::kill(pid, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        while Instant::now() < deadline {
            if let Some(done) = Report::read(dir) {
                return Ok(done);
            }
            if report::live_agent(dir).ok().flatten().is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(done) = Report::read(dir) {
            return Ok(done);
        }
        if report::live_agent(dir).ok().flatten().is_some() {
            spawn::kill(pid, Signal::KILL);
            recover(dir)?;
            return Err(FinishError::Timeout(pid, args.timeout));
        }
    }
    recover(dir)
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

fn print(report: &Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
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
