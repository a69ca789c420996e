//! The summariser. Several may work on different parts of one log in parallel
//! (scan.rs); `merge` combines them, so nothing here may depend on line order
//! except what the first line (trace_start) provides.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::{Map, Value};

use super::read::{self, SummaryError, TraceEnd, TraceStart};
use super::tally::{HashMap, Payload, Tallies};
use super::{
    exec_digest, AttestorVersion, Ci, CommandEnd, Counts, DnsName, Egress, EventLog, ExecSummary,
    FileAccess, Policy, Predicate, Recording, Sha256Digest, Signing, Truncated, MAX_STEPS,
    PREDICATE_VERSION,
};
use crate::attest::record::{Record, TextRef};
use crate::kind::Kind;
use crate::text::Text;

/// Host names kept per destination: a destination's names are few, but do not trust that.
const MAX_HOSTS: usize = 64;

/// A destination's host names.
#[derive(Default)]
struct DestHosts {
    hosts: BTreeSet<String>,
}

impl Payload for DestHosts {
    fn fold(&mut self, other: Self) {
        for h in other.hosts {
            if self.hosts.len() < MAX_HOSTS {
                self.hosts.insert(h);
            }
        }
    }
}

/// A host name's lookups that returned an error.
#[derive(Default)]
struct DnsFailures {
    failed: u64,
}

impl Payload for DnsFailures {
    fn fold(&mut self, other: Self) {
        self.failed += other.failed;
    }
}

/// The path an exec digest was taken over (both parts hold the same one).
struct ExecBinary {
    binary: Vec<u8>,
}

impl Payload for ExecBinary {
    fn fold(&mut self, _other: Self) {}
}

/// How a path was opened, and the rule that reported it.
#[derive(Default)]
struct FileUse {
    access: BTreeSet<String>,
    rule: String,
}

impl Payload for FileUse {
    fn fold(&mut self, other: Self) {
        self.access.extend(other.access);
        if self.rule.is_empty() {
            self.rule = other.rule;
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
    egress: Tallies<DestKey, DestHosts>,
    dns: Tallies<Vec<u8>, DnsFailures>,
    execs: Tallies<[u8; 32], ExecBinary>,
    files: Tallies<Vec<u8>, FileUse>,
    /// Events of steps beyond MAX_STEPS.
    steps_truncated: u64,
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
        self.start = Some(read::record(line, "trace_start")?);
        Ok(())
    }

    fn trace_end(&mut self, line: &[u8]) -> Result<(), SummaryError> {
        self.end = Some(read::record(line, "trace_end")?);
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
        if let Some((job, n)) = self.last_job.take() {
            self.count_job(job, n);
        }
    }

    /// Adds `n` events of `job`, or counts them as overflow past MAX_JOBS.
    fn count_job(&mut self, job: Vec<u8>, n: u64) {
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
        match Kind::from_name(r.kind.as_ref()) {
            Some(Kind::Exec) => self.exec(r, step),
            Some(Kind::Connect) => self.connect(r, step),
            Some(Kind::Dns) => self.dns(r, step),
            Some(Kind::File) => self.file(r, step),
            // Counted per kind above; no aggregate of their own in the predicate.
            Some(
                Kind::Fork
                | Kind::Exit
                | Kind::Env
                | Kind::Denied
                | Kind::DnsRefused
                | Kind::Socket
                | Kind::SocketDenied,
            )
            | None => {}
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
            self.steps_truncated += events;
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
        let binary = filename.bytes();
        let new = || {
            (
                digest,
                ExecBinary {
                    binary: binary.to_vec(),
                },
            )
        };
        self.execs.record(&digest, step, new, |_| {});
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
        let new = || (key.clone(), DestHosts::default());
        self.egress.record(&key, step, new, |dest| {
            for host in r.hosts.iter().flatten() {
                if dest.hosts.len() < MAX_HOSTS && !dest.hosts.contains(host.as_ref()) {
                    dest.hosts.insert(host.to_string());
                }
            }
        });
    }

    fn dns(&mut self, r: &Record<'_>, step: Option<u16>) {
        let Some(host) = &r.host else { return };
        let new = || (host.bytes().to_vec(), DnsFailures::default());
        self.dns.record(host.bytes(), step, new, |name| {
            if r.ret.is_some_and(|ret| ret != 0) {
                name.failed += 1;
            }
        });
    }

    fn file(&mut self, r: &Record<'_>, step: Option<u16>) {
        let Some(path) = &r.path else { return };
        let new = || (path.bytes().to_vec(), FileUse::default());
        self.files.record(path.bytes(), step, new, |file| {
            if let Some(access) = &r.access {
                if !file.access.contains(access.as_ref()) {
                    file.access.insert(access.to_string());
                }
            }
            if let Some(rule) = &r.rule {
                if file.rule.is_empty() {
                    file.rule = rule.to_string();
                }
            }
        });
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
            self.count_job(job, n);
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
        self.egress.merge(other.egress, &map);
        self.dns.merge(other.dns, &map);
        self.execs.merge(other.execs, &map);
        self.files.merge(other.files, &map);
        self.steps_truncated += other.steps_truncated;
        self.unparsed += other.unparsed;
    }

    /// Builds the predicate; `signing` is filled in by the signer.
    pub fn finish(mut self, log: LogFacts) -> Result<Summary, SummaryError> {
        self.flush_last_job();
        let start = self.start.take().ok_or(SummaryError::NoTraceStart {
            found: "nothing (empty log)".into(),
        })?;
        let end = self.end.take().ok_or(SummaryError::NoTraceEnd)?;
        // Before the fields of `start` move into the predicate.
        let ci = self.ci(&start);
        let policy = policy_in_force(&start);
        let truncated = self.truncated();
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
                sudo_disabled: start.sudo_disabled,
            },
            ci,
            policy,
            hooks: start.hooks,
            counts: Counts {
                events: std::mem::take(&mut self.events),
                lost: end.lost,
                lost_total: end.lost_total,
                undecodable: end.undecodable,
                untracked: end.untracked,
                file_filtered: end.file_filtered,
                unwritten: end.unwritten,
            },
            egress: self.egress_list(),
            dns: self.dns_list(),
            execs: self.exec_list(),
            files: self.file_list(),
            command: Some(CommandEnd {
                exit_code: end.exit_code,
                exit_signal: end.exit_signal,
                still_running: end.still_running,
            }),
            truncated,
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

    /// The job of trace_start, the steps seen and the events of other jobs.
    fn ci(&self, start: &TraceStart) -> Ci {
        let job: Value = start
            .job
            .as_ref()
            .and_then(|j| serde_json::from_str(j.get()).ok())
            .unwrap_or(Value::Null);
        let platform = job
            .get("platform")
            .and_then(Value::as_str)
            .map(str::to_string);
        Ci {
            platform,
            job,
            steps: self.step_objects(),
            foreign_job_events: self.foreign_job_events(start),
        }
    }

    /// Events whose `job` is not trace_start's (none when trace_start has no job).
    fn foreign_job_events(&self, start: &TraceStart) -> u64 {
        let Some(expected) = start.job.as_ref().map(|j| j.get().as_bytes()) else {
            return 0;
        };
        let own: u64 = self
            .jobs
            .iter()
            .filter(|(raw, _)| raw.as_slice() == expected || same_json(raw, expected))
            .map(|(_, n)| n)
            .sum();
        let with_job: u64 = self.jobs.values().sum::<u64>() + self.jobs_overflow;
        with_job - own
    }

    /// Each step's object with its `eventCount`, in order of first appearance.
    fn step_objects(&self) -> Vec<Value> {
        let mut order: Vec<usize> = (0..self.steps.len()).collect();
        order.sort_by_key(|&i| (self.steps[i].first_seq, i));
        order
            .iter()
            .map(|&i| {
                let mut object = self.steps[i].object.clone();
                object.insert("eventCount".into(), Value::from(self.steps[i].events));
                Value::Object(object)
            })
            .collect()
    }

    /// The ids of a row's steps, in order of first appearance.
    fn step_names(&self, set: &BTreeSet<u16>) -> Vec<String> {
        let mut v: Vec<&StepAgg> = set.iter().map(|&i| &self.steps[usize::from(i)]).collect();
        v.sort_by_key(|s| s.first_seq);
        v.into_iter().map(|s| s.id.clone()).collect()
    }

    fn truncated(&self) -> Truncated {
        Truncated {
            egress: self.egress.overflow(),
            dns: self.dns.overflow(),
            execs: self.execs.overflow(),
            files: self.files.overflow(),
            steps: self.steps_truncated,
        }
    }

    fn egress_list(&mut self) -> Vec<Egress> {
        let mut rows = std::mem::take(&mut self.egress).into_rows();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.into_iter()
            .map(|(k, a)| Egress {
                ip: k.ip.to_string(),
                port: k.port,
                protocol: k.protocol.as_str().to_string(),
                hosts: a.payload.hosts.into_iter().collect(),
                steps: self.step_names(&a.steps),
                count: a.count,
            })
            .collect()
    }

    fn dns_list(&mut self) -> Vec<DnsName> {
        let mut rows = std::mem::take(&mut self.dns).into_rows();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.into_iter()
            .map(|(host, a)| DnsName {
                host: Text(host),
                count: a.count,
                failed: a.payload.failed,
                steps: self.step_names(&a.steps),
            })
            .collect()
    }

    /// By binary, then digest: one binary's first arguments side by side.
    fn exec_list(&mut self) -> Vec<ExecSummary> {
        let mut rows = std::mem::take(&mut self.execs).into_rows();
        rows.sort_by(|a, b| (&a.1.payload.binary, a.0).cmp(&(&b.1.payload.binary, b.0)));
        rows.into_iter()
            .map(|(digest, a)| ExecSummary {
                sha256: hex::encode(digest),
                binary: Text(a.payload.binary),
                count: a.count,
                steps: self.step_names(&a.steps),
            })
            .collect()
    }

    fn file_list(&mut self) -> Vec<FileAccess> {
        let mut rows = std::mem::take(&mut self.files).into_rows();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.into_iter()
            .map(|(path, a)| FileAccess {
                path: Text(path),
                access: a.payload.access.into_iter().collect(),
                rule: a.payload.rule,
                count: a.count,
                steps: self.step_names(&a.steps),
            })
            .collect()
    }
}

/// The policy in force and the mode that ran, from trace_start.
fn policy_in_force(start: &TraceStart) -> Policy {
    let policy = start.policy.as_ref();
    Policy {
        mode: policy.and_then(|p| p.mode.clone()).or(start.mode.clone()),
        version: policy
            .and_then(|p| p.version.as_ref())
            .map(|v| v.as_str().map_or_else(|| v.to_string(), String::from)),
        digest: policy
            .and_then(|p| p.sha256.clone())
            .map(|sha256| Sha256Digest { sha256 }),
        source: policy.and_then(|p| p.source.clone()),
        requested_mode: start.requested_mode.clone(),
        mode_fallback: start.mode_fallback.clone(),
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
