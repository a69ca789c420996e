//! The first and last records of every trace, and how the watched command ended.

use crate::config::Config;
use crate::enforce::plan::Plan;
use crate::event::{rfc3339, Agent as AgentInfo, JobRef, Totals, TraceEnd, TraceStart, SCHEMA};
use crate::text::Text;

use super::sudo::SudoDisabled;
use super::Agent;

/// How a watched command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

impl Ended {
    /// The shell convention: the code, or 128 + signal.
    pub fn shell_code(self) -> u8 {
        match self {
            // A wait status holds 0..=255, and signals are below 128.
            Ended::Code(c) => u8::try_from(c).unwrap_or(u8::MAX),
            Ended::Signal(s) => u8::try_from(128 + s).unwrap_or(u8::MAX),
        }
    }

    /// As the summary says it.
    pub fn describe(self) -> String {
        match self {
            Ended::Code(c) => format!("exited with code {c}"),
            Ended::Signal(s) => format!("killed by signal {s}"),
        }
    }
}

/// The `trace_start` record: what watched, on which kernel, under which policy.
pub fn trace_start(
    agent: &Agent,
    config: &Config,
    plan: &Plan,
    job: &JobRef,
    command: &[Vec<u8>],
    sudo_disabled: Option<&SudoDisabled>,
) -> TraceStart {
    TraceStart {
        kind: "trace_start",
        schema: SCHEMA,
        time: rfc3339(std::time::SystemTime::now()),
        agent: AgentInfo::this(),
        host: hostname(),
        kernel: agent.env.kernel.clone(),
        mode: plan.mode.as_str().into(),
        job: job.clone(),
        command: crate::redact::apply(config.capture_args, command.to_vec())
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
        sudo_disabled: sudo_disabled.cloned(),
    }
}

/// The `trace_end` record, before sealing adds the per-kind counts.
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
        survivors: Vec::new(),
        unwritten: 0,
        agent_status: status.to_string(),
        complete,
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
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
