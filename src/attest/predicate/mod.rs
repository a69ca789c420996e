//! The ciwatch runtime-trace predicate (`https://dpndncy.io/agent/runtime-trace/v1`,
//! docs/predicate.md, docs/predicate.schema.json): its schema here, the
//! records it is read from in `read`, and the summariser that builds it from
//! the event log one line at a time in `summarise`, over the `tally` rows.
//!
//! Memory grows with what is distinct (destinations, host names, executables,
//! files, steps), never with the number of events, and each of those lists is
//! capped: events beyond a cap are counted in `truncated` instead.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::text::Text;

mod read;
mod summarise;
mod tally;

#[cfg(test)]
mod tests;

pub use read::SummaryError;
pub use summarise::{LogFacts, Summariser, Summary};

pub const PREDICATE_TYPE: &str = "https://dpndncy.io/agent/runtime-trace/v1";
/// Minor version within the predicate type: bumped on additive changes only
/// (a breaking change gets a new predicate type URI).
pub const PREDICATE_VERSION: &str = "1.0";

/// Entries kept per list (egress, dns, execs, files). Keeps the statement
/// small enough for Rekor and the summariser's memory bounded.
pub const MAX_ENTRIES: usize = 10_000;
/// Distinct steps kept.
pub const MAX_STEPS: usize = 1_000;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Predicate {
    pub predicate_version: &'static str,
    /// The agent that recorded the log (from `trace_start.agent`).
    pub agent: Value,
    pub event_log: EventLog,
    pub started_on: Option<String>,
    pub finished_on: Option<String>,
    pub recording: Recording,
    pub ci: Ci,
    pub policy: Policy,
    /// `trace_start.hooks`, verbatim: implementation attached, fallbacks skipped and why.
    pub hooks: Vec<Value>,
    pub counts: Counts,
    pub egress: Vec<Egress>,
    pub dns: Vec<DnsName>,
    pub execs: Vec<ExecSummary>,
    pub files: Vec<FileAccess>,
    pub command: Option<CommandEnd>,
    pub truncated: Truncated,
    pub signing: Signing,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventLog {
    pub name: String,
    pub schema: String,
    pub digest: Sha256Digest,
    pub bytes: u64,
    pub lines: u64,
    /// `trace_end.complete`: nothing lost or undecodable, every hook attached.
    pub complete: bool,
    /// Lines that were not JSON objects of the documented shape.
    pub unparsed_lines: u64,
    /// `trace_end.agent_status` when the log has it: `ok`, `died` (the agent was
    /// gone before sealing; the log was recovered) or `stopped`.
    pub agent_status: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sha256Digest {
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recording {
    pub host: Option<String>,
    pub kernel: Option<String>,
    /// argv capture policy (`full`, `redacted`, `none`): what `execs[].sha256` could cover.
    pub capture_args: Option<String>,
    /// `trace_start.sudo_disabled`, verbatim: the job's user had no sudo while it was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sudo_disabled: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ci {
    pub platform: Option<String>,
    /// `trace_start.job`, verbatim.
    pub job: Value,
    /// Each distinct `step` object of the log, verbatim, plus `eventCount`.
    pub steps: Vec<Value>,
    /// Events whose `job` differs from `trace_start.job`.
    pub foreign_job_events: u64,
}

/// The policy in force (`trace_start.policy`) and the mode that ran. When an
/// unusable policy fell back to observe, `requestedMode` and `modeFallback`
/// say so: a downgrade is part of the signed evidence.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub mode: Option<String>,
    pub version: Option<String>,
    pub digest: Option<Sha256Digest>,
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode_fallback: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Events per type, counted while reading the log.
    pub events: BTreeMap<String, u64>,
    /// Per type: records the kernel could not queue (`trace_end.lost`).
    pub lost: BTreeMap<String, u64>,
    pub lost_total: u64,
    pub undecodable: u64,
    /// Job processes the kernel's process map had no room for (`trace_end.untracked`).
    pub untracked: u64,
    pub file_filtered: u64,
    /// Events that could not be written (`trace_end.unwritten`, e.g. after a full disk).
    pub unwritten: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Egress {
    pub ip: String,
    pub port: u16,
    pub protocol: String,
    pub hosts: Vec<String>,
    pub steps: Vec<String>,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DnsName {
    pub host: Text,
    pub count: u64,
    /// Lookups that returned an error.
    pub failed: u64,
    pub steps: Vec<String>,
}

/// One distinct (binary, first argument) pair; see [`exec_digest`].
#[derive(Debug, Clone, Serialize)]
pub struct ExecSummary {
    pub sha256: String,
    /// The exec record's `filename`: the path passed to execve.
    pub binary: Text,
    pub count: u64,
    pub steps: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileAccess {
    pub path: Text,
    pub access: Vec<String>,
    pub rule: String,
    pub count: u64,
    pub steps: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandEnd {
    pub exit_code: Option<i64>,
    pub exit_signal: Option<i64>,
    pub still_running: Option<u64>,
}

/// Events left out of a list because it reached its cap.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Truncated {
    pub egress: u64,
    pub dns: u64,
    pub execs: u64,
    pub files: u64,
    pub steps: u64,
}

/// How the statement was signed, recorded inside what is signed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Signing {
    /// `key` or `keyless`.
    pub method: String,
    /// What was asked for: `key`, `keyless` or `auto`.
    pub requested: String,
    /// For `key`: the key id (base64 SHA-256 of the public key's DER SPKI).
    pub key_id: Option<String>,
    /// Set when `auto` could not sign keylessly and fell back to the key.
    pub fallback: Option<Fallback>,
    pub attestor: AttestorVersion,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Fallback {
    pub from: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AttestorVersion {
    pub name: &'static str,
    pub version: &'static str,
}

impl AttestorVersion {
    pub fn this() -> Self {
        Self {
            name: "ciwatch",
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// SHA-256 over the exec's binary and first argument, as the log stores them:
/// `filename` bytes, then a NUL byte and `argv[1]` bytes when argv has a second
/// element. NUL cannot occur in a path or an argv element, so the encoding is
/// unambiguous. Hashing lets a consumer test "did the job run `npm install`?"
/// without the statement spelling out first arguments, which can be secrets.
pub fn exec_digest(filename: &[u8], first_arg: Option<&[u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(filename);
    if let Some(arg) = first_arg {
        h.update([0u8]);
        h.update(arg);
    }
    h.finalize().into()
}
