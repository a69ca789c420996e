//! The trace_start and trace_end records the predicate is read from. Only
//! the fields the predicate needs are decoded; serde skips everything else,
//! which keeps the pass over a large log fast.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("the log does not start with a trace_start record (line 1 is {found}): not a ciwatch event log")]
    NoTraceStart { found: String },
    #[error("the log has no trace_end record: it is incomplete (not sealed)")]
    NoTraceEnd,
    #[error("malformed {record} record: {message}")]
    BadRecord {
        record: &'static str,
        message: String,
    },
}

#[derive(Deserialize)]
pub(super) struct TraceStart {
    #[serde(default)]
    pub(super) schema: Option<String>,
    #[serde(default)]
    pub(super) time: Option<String>,
    #[serde(default)]
    pub(super) agent: Value,
    #[serde(default)]
    pub(super) host: Option<String>,
    #[serde(default)]
    pub(super) kernel: Option<String>,
    #[serde(default)]
    pub(super) mode: Option<String>,
    #[serde(default)]
    pub(super) job: Option<Box<RawValue>>,
    #[serde(default)]
    pub(super) hooks: Vec<Value>,
    #[serde(default)]
    pub(super) capture_args: Option<String>,
    /// `{"source", "version", "sha256", "rules"}` when a policy is in force.
    #[serde(default)]
    pub(super) policy: Option<PolicyRecord>,
    #[serde(default)]
    pub(super) requested_mode: Option<String>,
    #[serde(default)]
    pub(super) mode_fallback: Option<String>,
    #[serde(default)]
    pub(super) sudo_disabled: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct PolicyRecord {
    /// A number in the log; kept as text in the predicate.
    #[serde(default)]
    pub(super) version: Option<serde_json::Value>,
    #[serde(default)]
    pub(super) sha256: Option<String>,
    #[serde(default)]
    pub(super) source: Option<String>,
    #[serde(default)]
    pub(super) mode: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct TraceEnd {
    #[serde(default)]
    pub(super) time: Option<String>,
    #[serde(default)]
    pub(super) lost: BTreeMap<String, u64>,
    #[serde(default)]
    pub(super) lost_total: u64,
    #[serde(default)]
    pub(super) undecodable: u64,
    #[serde(default)]
    pub(super) untracked: u64,
    #[serde(default)]
    pub(super) file_filtered: u64,
    #[serde(default)]
    pub(super) exit_code: Option<i64>,
    #[serde(default)]
    pub(super) exit_signal: Option<i64>,
    #[serde(default)]
    pub(super) still_running: Option<u64>,
    #[serde(default)]
    pub(super) complete: bool,
    #[serde(default)]
    pub(super) unwritten: u64,
    #[serde(default)]
    pub(super) agent_status: Option<String>,
}

/// Decodes a whole trace_start or trace_end line (`record` names it in errors).
pub(super) fn record<T: DeserializeOwned>(
    line: &[u8],
    record: &'static str,
) -> Result<T, SummaryError> {
    serde_json::from_slice(line).map_err(|e| SummaryError::BadRecord {
        record,
        message: e.to_string(),
    })
}
