//! The ciwatch runtime-trace predicate (`https://dpndncy.io/agent/runtime-trace/v1`,
//! docs/predicate.md, docs/predicate.schema.json) and the summariser that
//! builds it from the event log one line at a time.
//!
//! Memory grows with what is distinct (destinations, host names, executables,
//! files, steps), never with the number of events, and each of those lists is
//! capped: events beyond a cap are counted in `truncated` instead.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::record::{Record, TextRef};
use crate::text::Text;

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

// ---------------------------------------------------------------------------
// Reading records. Only the fields the predicate needs are decoded; serde
// skips everything else, which keeps the pass over a large log fast.

#[derive(Deserialize)]
struct TraceStart {
    #[serde(default)]
    schema: Option<String>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    agent: Value,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    kernel: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    job: Option<Box<RawValue>>,
    #[serde(default)]
    hooks: Vec<Value>,
    #[serde(default)]
    capture_args: Option<String>,
    /// `{"source", "version", "sha256", "rules"}` when a policy is in force.
    #[serde(default)]
    policy: Option<PolicyRecord>,
    #[serde(default)]
    requested_mode: Option<String>,
    #[serde(default)]
    mode_fallback: Option<String>,
}

#[derive(Deserialize)]
struct PolicyRecord {
    /// A number in the log; kept as text in the predicate.
    #[serde(default)]
    version: Option<serde_json::Value>,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Deserialize)]
struct TraceEnd {
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    lost: BTreeMap<String, u64>,
    #[serde(default)]
    lost_total: u64,
    #[serde(default)]
    undecodable: u64,
    #[serde(default)]
    file_filtered: u64,
    #[serde(default)]
    exit_code: Option<i64>,
    #[serde(default)]
    exit_signal: Option<i64>,
    #[serde(default)]
    still_running: Option<u64>,
    #[serde(default)]
    complete: bool,
    #[serde(default)]
    unwritten: u64,
    #[serde(default)]
    agent_status: Option<String>,
}

// ---------------------------------------------------------------------------
// The summariser. Several may work on different parts of one log in parallel
// (scan.rs); `merge` combines them, so nothing here may depend on line order
// except what the first line (trace_start) provides.

#[derive(Default)]
struct EgressAgg {
    hosts: BTreeSet<String>,
    steps: BTreeSet<u16>,
    count: u64,
}

#[derive(Default)]
struct DnsAgg {
    count: u64,
    failed: u64,
    steps: BTreeSet<u16>,
}

struct ExecAgg {
    binary: Vec<u8>,
    count: u64,
    steps: BTreeSet<u16>,
}

#[derive(Default)]
struct FileAgg {
    access: BTreeSet<String>,
    rule: String,
    count: u64,
    steps: BTreeSet<u16>,
}

/// One aggregate row of the summariser, as `merge` folds two of them.
trait Aggregate: Sized {
    fn count(&self) -> u64;
    fn steps(&mut self) -> &mut BTreeSet<u16>;
    fn fold(&mut self, other: Self);

    /// Re-numbers the steps (into another summariser's numbering).
    fn remap(mut self, map: &impl Fn(BTreeSet<u16>) -> BTreeSet<u16>) -> Self {
        let steps = std::mem::take(self.steps());
        *self.steps() = map(steps);
        self
    }
}

impl Aggregate for EgressAgg {
    fn count(&self) -> u64 {
        self.count
    }
    fn steps(&mut self) -> &mut BTreeSet<u16> {
        &mut self.steps
    }
    fn fold(&mut self, other: Self) {
        self.count += other.count;
        self.steps.extend(other.steps);
        for h in other.hosts {
            if self.hosts.len() < 64 {
                self.hosts.insert(h);
            }
        }
    }
}

impl Aggregate for DnsAgg {
    fn count(&self) -> u64 {
        self.count
    }
    fn steps(&mut self) -> &mut BTreeSet<u16> {
        &mut self.steps
    }
    fn fold(&mut self, other: Self) {
        self.count += other.count;
        self.failed += other.failed;
        self.steps.extend(other.steps);
    }
}

impl Aggregate for ExecAgg {
    fn count(&self) -> u64 {
        self.count
    }
    fn steps(&mut self) -> &mut BTreeSet<u16> {
        &mut self.steps
    }
    fn fold(&mut self, other: Self) {
        self.count += other.count;
        self.steps.extend(other.steps);
    }
}

impl Aggregate for FileAgg {
    fn count(&self) -> u64 {
        self.count
    }
    fn steps(&mut self) -> &mut BTreeSet<u16> {
        &mut self.steps
    }
    fn fold(&mut self, other: Self) {
        self.count += other.count;
        self.steps.extend(other.steps);
        self.access.extend(other.access);
        if self.rule.is_empty() {
            self.rule = other.rule;
        }
    }
}

/// Folds `other` into `mine`, keeping at most MAX_ENTRIES keys; what does not fit is counted in `overflow`.
fn merge_capped<K: std::hash::Hash + Eq, A: Aggregate>(
    mine: &mut HashMap<K, A>,
    other: HashMap<K, A>,
    overflow: &mut u64,
    map: &impl Fn(BTreeSet<u16>) -> BTreeSet<u16>,
) {
    for (k, a) in other {
        let a = a.remap(map);
        let full = mine.len() >= MAX_ENTRIES;
        match mine.get_mut(&k) {
            Some(m) => m.fold(a),
            None if full => *overflow += a.count(),
            None => {
                mine.insert(k, a);
            }
        }
    }
}

/// A step seen in the log: its object verbatim, how many events it caused,
/// and its first event's `seq` (steps are listed in order of first appearance).
struct StepAgg {
    id: String,
    object: Map<String, Value>,
    events: u64,
    first_seq: u64,
}

/// A connect destination. Addresses are parsed so that lookups never allocate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct DestKey {
    ip: IpAddr,
    port: u16,
    protocol: Proto,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Proto {
    Known(&'static str),
    Other(Box<str>),
}

impl Proto {
    fn of(name: &str) -> Self {
        ["tcp", "udp", "raw", "unknown"]
            .into_iter()
            .find(|k| *k == name)
            .map_or_else(|| Proto::Other(name.into()), Proto::Known)
    }

    fn as_str(&self) -> &str {
        match self {
            Proto::Known(s) => s,
            Proto::Other(s) => s,
        }
    }
}

/// Seeded per process, so crafted log content cannot force collisions, and
/// several times faster than SipHash on the short keys looked up per event.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Distinct `job` objects seen on events, by their serialised form.
const MAX_JOBS: usize = 16;

/// Everything the predicate needs except how it is signed.
#[derive(Debug, Clone)]
pub struct Summary {
    pub predicate: Predicate,
}

#[derive(Default)]
pub struct Summariser {
    start: Option<TraceStart>,
    end: Option<TraceEnd>,
    events: BTreeMap<String, u64>,
    /// Events per serialised `job` object; compared with trace_start's job at the end.
    jobs: HashMap<Vec<u8>, u64>,
    jobs_overflow: u64,
    /// The job of the previous event and how many events in a row carried it.
    last_job: Option<(Vec<u8>, u64)>,
    /// The step of the previous event (raw text) and its index.
    last_step: Option<(Vec<u8>, u16)>,
    steps: Vec<StepAgg>,
    step_by_raw: HashMap<Vec<u8>, u16>,
    step_by_id: HashMap<String, u16>,
    egress: HashMap<DestKey, EgressAgg>,
    dns: HashMap<Vec<u8>, DnsAgg>,
    execs: HashMap<[u8; 32], ExecAgg>,
    files: HashMap<Vec<u8>, FileAgg>,
    truncated: Truncated,
    unparsed: u64,
}

impl Summariser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one line, without its trailing newline. `first` marks the log's
    /// first line, which must be the trace_start record.
    pub fn line(&mut self, line: &[u8], first: bool) -> Result<(), SummaryError> {
        let record = match Record::parse(line) {
            Ok(r) => r,
            Err(e) if first => {
                return Err(SummaryError::NoTraceStart {
                    found: format!("not a record: {e}"),
                })
            }
            Err(e) => {
                tracing::warn!("unparsed event log line: {e}");
                self.unparsed += 1;
                return Ok(());
            }
        };
        match (first, record.kind.as_ref()) {
            (true, "trace_start") => self.trace_start(line),
            (true, other) => Err(SummaryError::NoTraceStart {
                found: format!("a {other:?} record"),
            }),
            (false, "trace_end") => self.trace_end(line),
            _ => {
                self.event(&record);
                Ok(())
            }
        }
    }

    /// A line too long to be a record: counted, not parsed.
    pub fn skipped_line(&mut self) {
        self.unparsed += 1;
    }

    fn trace_start(&mut self, line: &[u8]) -> Result<(), SummaryError> {
        let start: TraceStart =
            serde_json::from_slice(line).map_err(|e| SummaryError::BadRecord {
                record: "trace_start",
                message: e.to_string(),
            })?;
        self.start = Some(start);
        Ok(())
    }

    fn trace_end(&mut self, line: &[u8]) -> Result<(), SummaryError> {
        let end: TraceEnd = serde_json::from_slice(line).map_err(|e| SummaryError::BadRecord {
            record: "trace_end",
            message: e.to_string(),
        })?;
        self.end = Some(end);
        Ok(())
    }

    fn event(&mut self, r: &Record<'_>) {
        match self.events.get_mut(r.kind.as_ref()) {
            Some(n) => *n += 1,
            None => {
                self.events.insert(r.kind.to_string(), 1);
            }
        }
        if let Some(job) = r.job {
            // Consecutive events nearly always share their job: skip the lookup then.
            if let Some((raw, n)) = &mut self.last_job {
                if raw == job {
                    *n += 1;
                    return self.event_body(r);
                }
            }
            self.flush_last_job();
            self.last_job = Some((job.to_vec(), 1));
        }
        self.event_body(r);
    }

    fn flush_last_job(&mut self) {
        let Some((job, n)) = self.last_job.take() else {
            return;
        };
        let full = self.jobs.len() >= MAX_JOBS;
        match self.jobs.get_mut(&job) {
            Some(m) => *m += n,
            None if full => self.jobs_overflow += n,
            None => {
                self.jobs.insert(job, n);
            }
        }
    }

    fn event_body(&mut self, r: &Record<'_>) {
        let step = r
            .step
            .and_then(|raw| self.step(raw, r.seq.unwrap_or(u64::MAX)));
        match r.kind.as_ref() {
            "exec" => self.exec(r, step),
            "connect" => self.connect(r, step),
            "dns" => self.dns(r, step),
            "file" => self.file(r, step),
            _ => {}
        }
    }

    /// The step's index. The writer serialises a step identically every time,
    /// so the raw text is the lookup key; the object is parsed once per form.
    fn step(&mut self, raw: &[u8], seq: u64) -> Option<u16> {
        let cached = match &self.last_step {
            Some((text, i)) if text == raw => Some(*i),
            _ => self.step_by_raw.get(raw).copied(),
        };
        if let Some(i) = cached {
            let s = &mut self.steps[usize::from(i)];
            s.events += 1;
            s.first_seq = s.first_seq.min(seq);
            if !matches!(&self.last_step, Some((text, _)) if text == raw) {
                self.last_step = Some((raw.to_vec(), i));
            }
            return Some(i);
        }
        let object = serde_json::from_slice::<Map<String, Value>>(raw).ok()?;
        let id = object.get("id").and_then(Value::as_str)?.to_string();
        let i = self.register_step(id, object, 1, seq)?;
        self.step_by_raw.insert(raw.to_vec(), i);
        Some(i)
    }

    fn register_step(
        &mut self,
        id: String,
        object: Map<String, Value>,
        events: u64,
        first_seq: u64,
    ) -> Option<u16> {
        if let Some(&i) = self.step_by_id.get(&id) {
            let s = &mut self.steps[usize::from(i)];
            s.events += events;
            s.first_seq = s.first_seq.min(first_seq);
            return Some(i);
        }
        if self.steps.len() >= MAX_STEPS {
            self.truncated.steps += events;
            return None;
        }
        let i = u16::try_from(self.steps.len()).ok()?;
        self.step_by_id.insert(id.clone(), i);
        self.steps.push(StepAgg {
            id,
            object,
            events,
            first_seq,
        });
        Some(i)
    }

    fn exec(&mut self, r: &Record<'_>, step: Option<u16>) {
        let Some(filename) = &r.filename else { return };
        let first_arg = r
            .argv
            .as_ref()
            .and_then(|a| a.0.as_ref())
            .map(TextRef::bytes);
        let digest = exec_digest(filename.bytes(), first_arg);
        let full = self.execs.len() >= MAX_ENTRIES;
        match self.execs.get_mut(&digest) {
            Some(agg) => bump(&mut agg.count, &mut agg.steps, step),
            None if full => self.truncated.execs += 1,
            None => {
                let mut agg = ExecAgg {
                    binary: filename.bytes().to_vec(),
                    count: 0,
                    steps: BTreeSet::new(),
                };
                bump(&mut agg.count, &mut agg.steps, step);
                self.execs.insert(digest, agg);
            }
        }
    }

    fn connect(&mut self, r: &Record<'_>, step: Option<u16>) {
        let (Some(addr), Some(port)) = (&r.addr, r.port) else {
            return;
        };
        let Ok(ip) = addr.parse::<IpAddr>() else {
            self.unparsed += 1;
            return;
        };
        let key = DestKey {
            ip,
            port,
            protocol: Proto::of(r.protocol.as_deref().unwrap_or("unknown")),
        };
        let full = self.egress.len() >= MAX_ENTRIES;
        let agg = match self.egress.get_mut(&key) {
            Some(agg) => agg,
            None if full => {
                self.truncated.egress += 1;
                return;
            }
            None => self.egress.entry(key).or_default(),
        };
        bump(&mut agg.count, &mut agg.steps, step);
        for host in r.hosts.iter().flatten() {
            // Bounded too: a destination's names are few, but do not trust that.
            if agg.hosts.len() < 64 && !agg.hosts.contains(host.as_ref()) {
                agg.hosts.insert(host.to_string());
            }
        }
    }

    fn dns(&mut self, r: &Record<'_>, step: Option<u16>) {
        let Some(host) = &r.host else { return };
        let full = self.dns.len() >= MAX_ENTRIES;
        let agg = match self.dns.get_mut(host.bytes()) {
            Some(agg) => agg,
            None if full => {
                self.truncated.dns += 1;
                return;
            }
            None => self.dns.entry(host.bytes().to_vec()).or_default(),
        };
        bump(&mut agg.count, &mut agg.steps, step);
        if r.ret.is_some_and(|ret| ret != 0) {
            agg.failed += 1;
        }
    }

    fn file(&mut self, r: &Record<'_>, step: Option<u16>) {
        let Some(path) = &r.path else { return };
        let full = self.files.len() >= MAX_ENTRIES;
        let agg = match self.files.get_mut(path.bytes()) {
            Some(agg) => agg,
            None if full => {
                self.truncated.files += 1;
                return;
            }
            None => self.files.entry(path.bytes().to_vec()).or_default(),
        };
        bump(&mut agg.count, &mut agg.steps, step);
        if let Some(access) = &r.access {
            if !agg.access.contains(access.as_ref()) {
                agg.access.insert(access.to_string());
            }
        }
        if let Some(rule) = &r.rule {
            if agg.rule.is_empty() {
                agg.rule = rule.to_string();
            }
        }
    }

    /// Folds another summariser (of another part of the same log) into this one.
    pub fn merge(&mut self, mut other: Summariser) {
        self.flush_last_job();
        other.flush_last_job();
        self.start = self.start.take().or(other.start);
        // Only the last line is trace_end; a second one would be a malformed log.
        self.end = self.end.take().or(other.end);
        for (k, v) in other.events {
            *self.events.entry(k).or_default() += v;
        }
        for (job, n) in other.jobs {
            let full = self.jobs.len() >= MAX_JOBS;
            match self.jobs.get_mut(&job) {
                Some(m) => *m += n,
                None if full => self.jobs_overflow += n,
                None => {
                    self.jobs.insert(job, n);
                }
            }
        }
        self.jobs_overflow += other.jobs_overflow;
        // Re-number the other side's steps into ours.
        let remap: Vec<Option<u16>> = other
            .steps
            .into_iter()
            .map(|s| self.register_step(s.id, s.object, s.events, s.first_seq))
            .collect();
        let map = |steps: BTreeSet<u16>| -> BTreeSet<u16> {
            steps
                .into_iter()
                .filter_map(|i| remap[usize::from(i)])
                .collect()
        };
        merge_capped(
            &mut self.egress,
            other.egress,
            &mut self.truncated.egress,
            &map,
        );
        merge_capped(&mut self.dns, other.dns, &mut self.truncated.dns, &map);
        merge_capped(
            &mut self.execs,
            other.execs,
            &mut self.truncated.execs,
            &map,
        );
        merge_capped(
            &mut self.files,
            other.files,
            &mut self.truncated.files,
            &map,
        );
        let t = other.truncated;
        self.truncated.egress += t.egress;
        self.truncated.dns += t.dns;
        self.truncated.execs += t.execs;
        self.truncated.files += t.files;
        self.truncated.steps += t.steps;
        self.unparsed += other.unparsed;
    }

    /// Builds the predicate; `signing` is filled in by the signer.
    pub fn finish(mut self, log: LogFacts) -> Result<Summary, SummaryError> {
        self.flush_last_job();
        let start = self.start.take().ok_or(SummaryError::NoTraceStart {
            found: "nothing (empty log)".into(),
        })?;
        let end = self.end.take().ok_or(SummaryError::NoTraceEnd)?;
        let job_raw = start.job.as_ref().map(|j| j.get().as_bytes().to_vec());
        let own_job_events: u64 = match &job_raw {
            Some(expected) => self
                .jobs
                .iter()
                .filter(|(raw, _)| *raw == expected || same_json(raw, expected))
                .map(|(_, n)| n)
                .sum(),
            None => 0,
        };
        let with_job: u64 = self.jobs.values().sum::<u64>() + self.jobs_overflow;
        let foreign_job_events = if job_raw.is_some() {
            with_job - own_job_events
        } else {
            0
        };

        // Steps in order of first appearance; entries refer to them by index.
        let mut order: Vec<usize> = (0..self.steps.len()).collect();
        order.sort_by_key(|&i| (self.steps[i].first_seq, i));
        let names = |set: &BTreeSet<u16>| -> Vec<String> {
            let mut v: Vec<&StepAgg> = set.iter().map(|&i| &self.steps[usize::from(i)]).collect();
            v.sort_by_key(|s| s.first_seq);
            v.into_iter().map(|s| s.id.clone()).collect()
        };
        let job: Value = start
            .job
            .as_ref()
            .and_then(|j| serde_json::from_str(j.get()).ok())
            .unwrap_or(Value::Null);
        let platform = job
            .get("platform")
            .and_then(Value::as_str)
            .map(str::to_string);
        let policy = start.policy.as_ref();

        let mut egress: Vec<(DestKey, EgressAgg)> =
            std::mem::take(&mut self.egress).into_iter().collect();
        egress.sort_by(|a, b| a.0.cmp(&b.0));
        let mut dns: Vec<(Vec<u8>, DnsAgg)> = std::mem::take(&mut self.dns).into_iter().collect();
        dns.sort_by(|a, b| a.0.cmp(&b.0));
        let mut execs: Vec<([u8; 32], ExecAgg)> =
            std::mem::take(&mut self.execs).into_iter().collect();
        execs.sort_by(|a, b| (&a.1.binary, a.0).cmp(&(&b.1.binary, b.0)));
        let mut files: Vec<(Vec<u8>, FileAgg)> =
            std::mem::take(&mut self.files).into_iter().collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));

        let predicate = Predicate {
            predicate_version: PREDICATE_VERSION,
            agent: start.agent,
            event_log: EventLog {
                name: log.name,
                schema: start.schema.unwrap_or_default(),
                digest: Sha256Digest { sha256: log.sha256 },
                bytes: log.bytes,
                lines: log.lines,
                complete: end.complete,
                unparsed_lines: self.unparsed,
                agent_status: end.agent_status,
            },
            started_on: start.time,
            finished_on: end.time,
            recording: Recording {
                host: start.host,
                kernel: start.kernel,
                capture_args: start.capture_args,
            },
            ci: Ci {
                platform,
                job,
                steps: order
                    .iter()
                    .map(|&i| {
                        let mut object = self.steps[i].object.clone();
                        object.insert("eventCount".into(), Value::from(self.steps[i].events));
                        Value::Object(object)
                    })
                    .collect(),
                foreign_job_events,
            },
            policy: Policy {
                mode: policy.and_then(|p| p.mode.clone()).or(start.mode),
                version: policy
                    .and_then(|p| p.version.as_ref())
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), String::from)),
                digest: policy
                    .and_then(|p| p.sha256.clone())
                    .map(|sha256| Sha256Digest { sha256 }),
                source: policy.and_then(|p| p.source.clone()),
                requested_mode: start.requested_mode.clone(),
                mode_fallback: start.mode_fallback.clone(),
            },
            hooks: start.hooks,
            counts: Counts {
                events: std::mem::take(&mut self.events),
                lost: end.lost,
                lost_total: end.lost_total,
                undecodable: end.undecodable,
                file_filtered: end.file_filtered,
                unwritten: end.unwritten,
            },
            egress: egress
                .into_iter()
                .map(|(k, a)| Egress {
                    ip: k.ip.to_string(),
                    port: k.port,
                    protocol: k.protocol.as_str().to_string(),
                    hosts: a.hosts.into_iter().collect(),
                    steps: names(&a.steps),
                    count: a.count,
                })
                .collect(),
            dns: dns
                .into_iter()
                .map(|(host, a)| DnsName {
                    host: Text(host),
                    count: a.count,
                    failed: a.failed,
                    steps: names(&a.steps),
                })
                .collect(),
            execs: execs
                .into_iter()
                .map(|(digest, a)| ExecSummary {
                    sha256: hex::encode(digest),
                    binary: Text(a.binary),
                    count: a.count,
                    steps: names(&a.steps),
                })
                .collect(),
            files: files
                .into_iter()
                .map(|(path, a)| FileAccess {
                    path: Text(path),
                    access: a.access.into_iter().collect(),
                    rule: a.rule,
                    count: a.count,
                    steps: names(&a.steps),
                })
                .collect(),
            command: Some(CommandEnd {
                exit_code: end.exit_code,
                exit_signal: end.exit_signal,
                still_running: end.still_running,
            }),
            truncated: std::mem::take(&mut self.truncated),
            signing: Signing {
                method: String::new(),
                requested: String::new(),
                key_id: None,
                fallback: None,
                attestor: AttestorVersion::this(),
            },
        };
        Ok(Summary { predicate })
    }
}

/// Facts about the log file itself, gathered while hashing it.
#[derive(Debug, Clone)]
pub struct LogFacts {
    pub name: String,
    pub sha256: String,
    pub bytes: u64,
    pub lines: u64,
}

fn bump(count: &mut u64, steps: &mut BTreeSet<u16>, step: Option<u16>) {
    *count += 1;
    if let Some(s) = step {
        steps.insert(s);
    }
}

/// The writer always serialises `job` the same way; compare as values only
/// when the bytes differ (a log written by something else).
fn same_json(a: &[u8], b: &[u8]) -> bool {
    match (
        serde_json::from_slice::<Value>(a),
        serde_json::from_slice::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> LogFacts {
        LogFacts {
            name: "events.ndjson".into(),
            sha256: "00".repeat(32),
            bytes: 1,
            lines: 1,
        }
    }

    fn summarise(lines: &[&str]) -> Result<Predicate, SummaryError> {
        let mut s = Summariser::new();
        for (i, l) in lines.iter().enumerate() {
            s.line(l.as_bytes(), i == 0)?;
        }
        Ok(s.finish(facts())?.predicate)
    }

    const START: &str = r#"{"type":"trace_start","schema":"ciwatch.events/v1","time":"2026-11-02T10:00:00.000000000Z","agent":{"name":"ciwatch","version":"0.1.0"},"host":"runner-1","kernel":"6.8.0","mode":"observe","job":{"platform":"github","id":"acme/app/1/1/build"},"command":["make"],"hooks":[{"hook":"exec","implementation":"tracepoint/sched/sched_process_exec","skipped":[],"attached":true}],"capture_args":"redacted","sensitive_paths":[],"ignore_paths":[]}"#;
    const END: &str = r#"{"type":"trace_end","time":"2026-11-02T10:01:00.000000000Z","events":{"exec":2},"lost":{"exec":0,"dns":3},"lost_total":3,"undecodable":0,"file_filtered":0,"exit_code":0,"still_running":0,"unwritten":2,"agent_status":"died","complete":false}"#;

    fn ev(body: &str, step: &str) -> String {
        format!(
            r#"{{"seq":1,"time":"t","ktime_ns":1,"job":{{"platform":"github","id":"acme/app/1/1/build"}},"step":{step},"proc":{{"pid":1,"tgid":1,"start_ns":1,"comm":"sh","uid":0,"cgroup_id":1}},{body}}}"#
        )
    }

    #[test]
    fn exec_digest_covers_binary_and_first_argument_only() {
        let expected = hex::encode(Sha256::digest(b"/usr/bin/npm\0install"));
        assert_eq!(
            hex::encode(exec_digest(b"/usr/bin/npm", Some(b"install"))),
            expected
        );
        // No first argument: the binary alone, no separator.
        assert_eq!(
            hex::encode(exec_digest(b"/bin/true", None)),
            hex::encode(Sha256::digest(b"/bin/true"))
        );
        assert_ne!(
            exec_digest(b"/bin/true", None),
            exec_digest(b"/bin/true", Some(b""))
        );
    }

    #[test]
    fn summarises_events_by_kind_destination_and_step() {
        let build = r#"{"id":"2","name":"Build","stage":"main","runner_extra":{"x":1}}"#;
        let test = r#"{"id":"3","name":"Test"}"#;
        let lines = [
            START.to_string(),
            ev(
                r#""type":"exec","filename":"/usr/bin/npm","argv":["npm","install","--token=[REDACTED]"],"argv_truncated":false,"argv_policy":"redacted","ppid":1,"parent_start_ns":1"#,
                build,
            ),
            ev(
                r#""type":"exec","filename":"/usr/bin/npm","argv":["npm","install"],"argv_truncated":false,"argv_policy":"redacted","ppid":1,"parent_start_ns":1"#,
                test,
            ),
            ev(
                r#""type":"exec","filename":{"base64":"L3RtcC9m/28="},"argv":["x"],"argv_truncated":false,"argv_policy":"redacted","ppid":1,"parent_start_ns":1"#,
                test,
            ),
            ev(
                r#""type":"connect","family":"ipv4","protocol":"tcp","addr":"140.82.112.3","port":443,"source":"syscall","hosts":["github.com"]"#,
                build,
            ),
            ev(
                r#""type":"connect","family":"ipv4","protocol":"tcp","addr":"140.82.112.3","port":443,"source":"syscall""#,
                test,
            ),
            ev(
                r#""type":"dns","host":"github.com","addrs":["140.82.112.3"],"ret":0,"latency_us":5,"host_truncated":false"#,
                build,
            ),
            ev(
                r#""type":"dns","host":"nope.invalid","addrs":[],"ret":-2,"error":"EAI_NONAME","latency_us":5,"host_truncated":false"#,
                build,
            ),
            ev(
                r#""type":"file","path":"/root/.ssh/id_rsa","access":"read","open_flags":0,"hook":"kprobe/security_file_open","rule":"**/.ssh/id_*","path_truncated":false"#,
                test,
            ),
            ev(r#""type":"fork","child_tgid":2,"child_start_ns":2"#, test),
            ev(r#""type":"future_kind","whatever":[1,2,3]"#, test),
            END.to_string(),
        ];
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let p = summarise(&refs).unwrap();
        assert_eq!(p.counts.events.get("exec"), Some(&3));
        assert_eq!(p.counts.events.get("future_kind"), Some(&1));
        assert_eq!(p.counts.lost.get("dns"), Some(&3));
        assert_eq!(p.counts.lost_total, 3);
        assert!(!p.event_log.complete);
        assert_eq!(p.event_log.agent_status.as_deref(), Some("died"));
        assert_eq!(p.counts.unwritten, 2);
        assert_eq!(p.policy.mode.as_deref(), Some("observe"));
        assert_eq!(p.policy.version, None);
        assert_eq!(p.ci.platform.as_deref(), Some("github"));
        assert_eq!(p.ci.steps.len(), 2);
        // Unknown step fields are kept verbatim.
        assert_eq!(p.ci.steps[0]["runner_extra"]["x"], 1);
        assert_eq!(p.ci.steps[0]["eventCount"], 4);
        assert_eq!(p.egress.len(), 1);
        assert_eq!(p.egress[0].count, 2);
        assert_eq!(p.egress[0].hosts, vec!["github.com"]);
        assert_eq!(p.egress[0].steps, vec!["2", "3"]);
        // npm install counted twice (redacted third argument does not matter), the raw-bytes path once.
        assert_eq!(p.execs.len(), 2);
        let npm = p
            .execs
            .iter()
            .find(|e| e.binary == Text::from("/usr/bin/npm"))
            .unwrap();
        assert_eq!(npm.count, 2);
        assert_eq!(
            npm.sha256,
            hex::encode(Sha256::digest(b"/usr/bin/npm\0install"))
        );
        let raw = p
            .execs
            .iter()
            .find(|e| e.binary.0 == b"/tmp/f\xffo")
            .unwrap();
        assert_eq!(raw.sha256, hex::encode(Sha256::digest(b"/tmp/f\xffo")));
        assert_eq!(p.dns.len(), 2);
        assert_eq!(
            p.dns
                .iter()
                .find(|d| d.host == Text::from("nope.invalid"))
                .unwrap()
                .failed,
            1
        );
        assert_eq!(p.files[0].rule, "**/.ssh/id_*");
        assert_eq!(p.files[0].access, vec!["read"]);
    }

    #[test]
    fn rejects_logs_that_are_not_sealed_ciwatch_logs() {
        assert!(matches!(
            summarise(&[END]),
            Err(SummaryError::NoTraceStart { .. })
        ));
        assert!(matches!(
            summarise(&["not json"]),
            Err(SummaryError::NoTraceStart { .. })
        ));
        assert!(matches!(summarise(&[START]), Err(SummaryError::NoTraceEnd)));
    }

    #[test]
    fn counts_unparsed_lines_without_failing() {
        let p = summarise(&[START, "{garbage", END]).unwrap();
        assert_eq!(p.event_log.unparsed_lines, 1);
    }

    #[test]
    fn merged_parts_equal_one_pass() {
        let steps = [r#"{"id":"a","name":"A"}"#, r#"{"id":"b"}"#, r#"{"id":"c"}"#];
        let mut lines = vec![START.to_string()];
        for i in 0..60u32 {
            let step = steps[(i as usize / 7) % 3];
            let body = match i % 4 {
                0 => format!(
                    r#""type":"dns","host":"h{}.example","ret":{}"#,
                    i % 5,
                    i % 2
                ),
                1 => format!(
                    r#""type":"connect","protocol":"{}","addr":"10.0.0.{}","port":443,"hosts":["n{}"]"#,
                    ["tcp", "sctp"][i as usize % 2],
                    i % 3,
                    i % 4
                ),
                2 => format!(
                    r#""type":"exec","filename":"/bin/x{}","argv":["x","{}"]"#,
                    i % 3,
                    i % 2
                ),
                _ => format!(
                    r#""type":"file","path":"/p{}","access":"{}","rule":"r""#,
                    i % 2,
                    ["read", "write"][i as usize % 2]
                ),
            };
            lines.push(ev(&body, step).replace(r#""seq":1"#, &format!(r#""seq":{}"#, i + 1)));
        }
        lines.push(END.to_string());
        let whole = {
            let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
            serde_json::to_value(summarise(&refs).unwrap()).unwrap()
        };
        // Parts handed out out of order, as parallel workers would see them.
        let mut parts: Vec<Summariser> = (0..3).map(|_| Summariser::new()).collect();
        for (i, l) in lines.iter().enumerate() {
            parts[(i * 7) % 3].line(l.as_bytes(), i == 0).unwrap();
        }
        let mut merged = parts.pop().unwrap();
        while let Some(p) = parts.pop() {
            merged.merge(p);
        }
        let merged = serde_json::to_value(merged.finish(facts()).unwrap().predicate).unwrap();
        assert_eq!(merged, whole);
        assert_eq!(whole["ci"]["steps"][0]["id"], "a");
        assert_eq!(
            whole["egress"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["protocol"] == "sctp")
                .count(),
            3
        );
    }

    #[test]
    fn caps_distinct_entries() {
        let mut s = Summariser::new();
        s.line(START.as_bytes(), true).unwrap();
        for i in 0..(MAX_ENTRIES + 5) {
            let l = ev(
                &format!(
                    r#""type":"dns","host":"h{i}.example","addrs":[],"ret":0,"latency_us":1,"host_truncated":false"#
                ),
                r#"{"id":"1"}"#,
            );
            s.line(l.as_bytes(), false).unwrap();
        }
        s.line(END.as_bytes(), false).unwrap();
        let p = s.finish(facts()).unwrap().predicate;
        assert_eq!(p.dns.len(), MAX_ENTRIES);
        assert_eq!(p.truncated.dns, 5);
    }
}
