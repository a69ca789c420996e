//! The files a background agent leaves in its root-only state directory for
//! `ciwatch finish`: `agent.pid` (pid and start time, so a reused pid is never
//! mistaken for the agent) and `agent.json` (the sealed job's report, which
//! `finish --json` prints and publishes to the output directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::seal::SealedJob;
use crate::sink::summary::{StepNames, StepRow};
use crate::sink::SinkError;

pub const PID_FILE: &str = "agent.pid";
pub const REPORT_FILE: &str = "agent.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `sealed`, or `died` when finish recovered the trace of a dead agent.
    pub status: String,
    pub agent_died: bool,
    pub events: PathBuf,
    pub summary: PathBuf,
    pub log_sha256: String,
    pub counts: BTreeMap<String, u64>,
    pub lost: u64,
    pub denied: u64,
    pub steps: Vec<StepRow>,
    pub egress: Vec<ReportDestination>,
    pub dns: Vec<ReportLookup>,
    pub files: Vec<ReportFile>,
    #[serde(default)]
    pub denied_events: Vec<serde_json::Value>,
    /// DNS queries refused under `dns.refuse-unlisted`, by name.
    #[serde(default)]
    pub refused_lookups: Vec<serde_json::Value>,
    /// Raw, packet and ping sockets refused under the policy's `sockets:`.
    #[serde(default)]
    pub denied_sockets: Vec<serde_json::Value>,
    #[serde(default)]
    pub proposed_policy: Option<String>,
    #[serde(default)]
    pub policy_diff: Option<String>,
    #[serde(default)]
    pub envelope: Option<PathBuf>,
    #[serde(default)]
    pub bundle: Option<PathBuf>,
    #[serde(default)]
    pub signing: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportDestination {
    pub addr: String,
    pub port: u16,
    pub protocol: String,
    pub hosts: Vec<String>,
    pub steps: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportLookup {
    pub host: String,
    pub addrs: Vec<String>,
    pub steps: Vec<String>,
    /// Enforce judged it unlisted (docs/policy.md, "DNS").
    #[serde(default)]
    pub unlisted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportFile {
    pub path: String,
    pub steps: Vec<String>,
}

impl Report {
    /// The per-kind counts every report carries, zero included.
    pub fn counts(events: &BTreeMap<&'static str, u64>) -> BTreeMap<String, u64> {
        ["exec", "connect", "dns", "file"]
            .iter()
            .map(|k| (k.to_string(), events.get(k).copied().unwrap_or(0)))
            .collect()
    }

    pub fn from_sealed(job: &SealedJob) -> Self {
        let names = StepNames(&job.steps);
        let step_names = |ids: &std::collections::BTreeSet<String>| {
            ids.iter().map(|id| names.name(id)).collect::<Vec<_>>()
        };
        let s = &job.data;
        let count = |k: &str| s.totals.events.get(k).copied().unwrap_or(0);
        Report {
            status: "sealed".into(),
            agent_died: false,
            events: job.log.path.clone(),
            summary: job.dir.join("summary.md"),
            log_sha256: job.log.sha256.clone(),
            counts: Self::counts(&s.totals.events),
            lost: s.totals.lost_total,
            denied: count("denied"),
            steps: job.steps.clone(),
            egress: s
                .egress
                .iter()
                .map(|((addr, port, proto), d)| ReportDestination {
                    addr: addr.to_string(),
                    port: *port,
                    protocol: format!("{proto:?}").to_lowercase(),
                    hosts: d.hosts.iter().cloned().collect(),
                    steps: step_names(&d.steps),
                })
                .collect(),
            dns: s
                .dns
                .iter()
                .map(|(host, l)| ReportLookup {
                    host: host.clone(),
                    addrs: l.addrs.iter().map(|a| a.to_string()).collect(),
                    steps: step_names(&l.steps),
                    unlisted: l.unlisted,
                })
                .collect(),
            files: s.files.iter().map(|(path, o)| ReportFile { path: path.clone(), steps: step_names(&o.steps) }).collect(),
            denied_events: s
                .denied
                .iter()
                .map(|((addr, port, proto), d)| {
                    serde_json::json!({
                        "addr": addr.to_string(), "port": port, "protocol": format!("{proto:?}").to_lowercase(),
                        "hosts": d.hosts, "steps": step_names(&d.steps), "comm": d.comms.iter().next(), "count": d.count,
                    })
                })
                .collect(),
            refused_lookups: s
                .refused
                .iter()
                .map(|(host, r)| {
                    serde_json::json!({
                        "host": host, "reasons": r.reasons, "steps": step_names(&r.steps),
                        "comm": r.comms.iter().next(), "count": r.count,
                    })
                })
                .collect(),
            denied_sockets: s
                .denied_sockets
                .iter()
                .map(|((class, family, protocol), u)| {
                    serde_json::json!({
                        "socket": class, "family": family, "protocol": protocol, "refusals": u.refusals,
                        "steps": step_names(&u.steps), "comm": u.comms.iter().next(), "count": u.count,
                    })
                })
                .collect(),
            proposed_policy: None,
            policy_diff: None,
            envelope: None,
            bundle: None,
            signing: None,
        }
    }

    pub fn write(&self, dir: &Path) -> Result<(), SinkError> {
        self.write_as(dir, REPORT_FILE)
    }

    pub fn write_as(&self, dir: &Path, name: &str) -> Result<(), SinkError> {
        let json = serde_json::to_vec_pretty(self)?;
        crate::sink::write_atomically(&dir.join(name), &json)
    }

    pub fn read(dir: &Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(dir.join(REPORT_FILE)).ok()?).ok()
    }
}

/// `<pid> <start time in clock ticks>` of the agent process.
pub fn write_pid_file(dir: &Path) -> std::io::Result<()> {
    let pid = std::process::id();
    let start = crate::attribute::procfs::process_start(pid).unwrap_or(0);
    std::fs::write(dir.join(PID_FILE), format!("{pid} {start}\n"))
}

/// The agent's pid, if it is still the same process that wrote the pid file.
pub fn live_agent(dir: &Path) -> Result<Option<u32>, String> {
    let text = std::fs::read_to_string(dir.join(PID_FILE)).map_err(|e| {
        format!(
            "no agent was started for {} ({}: {e}); did `ciwatch start` run?",
            dir.display(),
            PID_FILE
        )
    })?;
    let mut parts = text.split_whitespace();
    let pid: u32 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("{PID_FILE} is malformed"))?;
    let start: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Ok((crate::attribute::procfs::process_start(pid) == Some(start)).then_some(pid))
}
