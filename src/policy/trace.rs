//! Reading the egress of a sealed event log (docs/events.md): its `connect`
//! (and `denied`) records, its `dns` answers and its raw, packet and ping
//! sockets, each with its step. Shared by `policy diff` and `learn`;
//! everything else in the log is skipped.

use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::endpoint::Proto;
use super::model::{normalize_name, SocketClass, StepMatch};

pub const EVENTS_FILE: &str = "events.ndjson";
const SCHEMA: &str = "ciwatch.events/v1";

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read trace {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no events.ndjson here{hint}")]
    NoEvents { path: String, hint: &'static str },
    #[error("{path}: not a sealed trace ({why})")]
    NotSealed { path: String, why: String },
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: u64,
        message: String,
    },
}

/// The step of a record, as the event log names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Step {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

impl Step {
    pub fn as_match(&self) -> StepMatch<'_> {
        StepMatch::new(&self.id, self.name.as_deref())
    }

    /// The name when there is one (stable across runs), else the id.
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

/// One outbound connection attempt (a `connect` record, or a `denied` one
/// from an enforcing run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub seq: u64,
    pub addr: IpAddr,
    pub port: u16,
    /// As logged: tcp, udp, raw or unknown.
    pub protocol: String,
    /// Names the job resolved to `addr` before this, most recent first.
    pub hosts: Vec<String>,
    pub step: Step,
    pub denied: bool,
}

impl Connect {
    pub fn proto(&self) -> Option<Proto> {
        Proto::parse(&self.protocol)
    }
}

/// One `getaddrinfo()` that named a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub seq: u64,
    pub host: String,
    pub addrs: Vec<IpAddr>,
    pub step: Step,
    pub failed: bool,
}

/// A raw, packet or ping socket a job process opened (a `socket` record), or
/// tried to (`socket_denied`, from an enforcing run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOpen {
    pub class: SocketClass,
    pub step: Step,
    pub denied: bool,
}

/// The egress of one job's sealed trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Where it was read from (a path, or `artifact NAME (run N)`).
    pub origin: String,
    /// SHA-256 of the log's bytes: the same trace read twice counts once.
    pub sha256: String,
    /// `platform/id` from `trace_start`.
    pub job: String,
    pub mode: String,
    pub connects: Vec<Connect>,
    pub lookups: Vec<Lookup>,
    pub sockets: Vec<SocketOpen>,
    /// `trace_end.complete`: nothing was lost and every hook was attached.
    pub complete: bool,
}

/// Reads `events.ndjson`, or the one in a trace directory.
pub fn read_path(path: &Path) -> Result<Trace, TraceError> {
    let file = events_file(path)?;
    let name = file.display().to_string();
    let f = std::fs::File::open(&file).map_err(|source| TraceError::Read {
        path: name.clone(),
        source,
    })?;
    read(BufReader::new(f), &name)
}

/// The log a path names: the file itself, or `DIR/events.ndjson`. A leftover
/// `.partial` means the agent was killed before sealing (`ciwatch finish`
/// recovers it).
pub fn events_file(path: &Path) -> Result<PathBuf, TraceError> {
    if !path.is_dir() {
        if path.extension().is_some_and(|e| e == "partial") {
            return Err(TraceError::NotSealed {
                path: path.display().to_string(),
                why: "a .partial log; run `ciwatch finish` on its directory to seal it".into(),
            });
        }
        return Ok(path.to_path_buf());
    }
    let file = path.join(EVENTS_FILE);
    if file.is_file() {
        return Ok(file);
    }
    let hint = if path.join(format!("{EVENTS_FILE}.partial")).exists() {
        " (only events.ndjson.partial: the agent was killed before sealing; run `ciwatch finish`)"
    } else {
        ""
    };
    Err(TraceError::NoEvents {
        path: path.display().to_string(),
        hint,
    })
}

/// Parses a sealed log: `trace_start` first, `trace_end` last.
pub fn read<R: Read>(reader: BufReader<R>, origin: &str) -> Result<Trace, TraceError> {
    let mut hasher = Sha256::new();
    let mut state = State::new(origin);
    let mut reader = reader;
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|source| TraceError::Read {
                path: origin.into(),
                source,
            })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf);
        line_no += 1;
        let text = std::str::from_utf8(&buf)
            .map_err(|e| state.err(line_no, format!("not UTF-8 at byte {}", e.valid_up_to())))?;
        if text.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| state.err(line_no, format!("not JSON: {e}")))?;
        state.record(line_no, &value)?;
    }
    state.finish(hex::encode(hasher.finalize()))
}

struct State {
    origin: String,
    started: bool,
    ended: bool,
    job: String,
    mode: String,
    complete: bool,
    connects: Vec<Connect>,
    lookups: Vec<Lookup>,
    sockets: Vec<SocketOpen>,
}

impl State {
    fn new(origin: &str) -> Self {
        State {
            origin: origin.into(),
            started: false,
            ended: false,
            job: String::new(),
            mode: String::new(),
            complete: false,
            connects: Vec::new(),
            lookups: Vec::new(),
            sockets: Vec::new(),
        }
    }

    fn err(&self, line: u64, message: String) -> TraceError {
        TraceError::Line {
            path: self.origin.clone(),
            line,
            message,
        }
    }

    fn record(&mut self, line: u64, v: &Value) -> Result<(), TraceError> {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        if !self.started {
            if kind != "trace_start" {
                return Err(self.err(
                    line,
                    "the first line is not a trace_start record: not a ciwatch event log".into(),
                ));
            }
            let schema = v.get("schema").and_then(Value::as_str).unwrap_or_default();
            if schema != SCHEMA {
                return Err(self.err(line, format!("schema {schema:?} is not {SCHEMA}")));
            }
            self.started = true;
            self.mode = str_field(v, "mode").unwrap_or_default();
            self.job = job_of(v.get("job"));
            return Ok(());
        }
        if self.ended {
            return Err(self.err(line, "a record after trace_end".into()));
        }
        match kind {
            "trace_end" => {
                self.ended = true;
                self.complete = v.get("complete").and_then(Value::as_bool).unwrap_or(false);
            }
            "connect" | "denied" => {
                if let Some(c) = self.connect(line, v, kind == "denied")? {
                    self.connects.push(c);
                }
            }
            "dns" => {
                if let Some(l) = self.lookup(line, v)? {
                    self.lookups.push(l);
                }
            }
            "socket" | "socket_denied" => {
                // A class this build does not know is no entry it could propose or judge.
                if let Some(class) = str_field(v, "class").and_then(|c| SocketClass::parse(&c)) {
                    self.sockets.push(SocketOpen {
                        class,
                        step: self.step(line, v)?,
                        denied: kind == "socket_denied",
                    });
                }
            }
            // Other and future record types are not egress.
            _ => {}
        }
        Ok(())
    }

    fn connect(&self, line: u64, v: &Value, denied: bool) -> Result<Option<Connect>, TraceError> {
        // A denied record without an address is not a connect (future kinds of denial).
        let Some(addr) = v.get("addr").and_then(Value::as_str) else {
            return Ok(None);
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| self.err(line, format!("addr {addr:?} is not an IP address")))?;
        let port = v
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| self.err(line, "connect without a valid port".into()))?;
        let hosts = v
            .get("hosts")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(normalize_name)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(Connect {
            seq: v.get("seq").and_then(Value::as_u64).unwrap_or(0),
            addr: addr.to_canonical(),
            port,
            protocol: str_field(v, "protocol").unwrap_or_else(|| "unknown".into()),
            hosts,
            step: self.step(line, v)?,
            denied,
        }))
    }

    fn lookup(&self, line: u64, v: &Value) -> Result<Option<Lookup>, TraceError> {
        // Address literals name no destination; a non-UTF-8 name ({"base64": …}) can be no rule.
        if v.get("numeric").and_then(Value::as_bool).unwrap_or(false) {
            return Ok(None);
        }
        let Some(host) = v.get("host").and_then(Value::as_str) else {
            return Ok(None);
        };
        let addrs = v
            .get("addrs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter_map(|s| s.parse::<IpAddr>().ok())
                    .map(|a| a.to_canonical())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(Lookup {
            seq: v.get("seq").and_then(Value::as_u64).unwrap_or(0),
            host: normalize_name(host),
            addrs,
            step: self.step(line, v)?,
            failed: v.get("ret").and_then(Value::as_i64).unwrap_or(0) != 0,
        }))
    }

    fn step(&self, line: u64, v: &Value) -> Result<Step, TraceError> {
        let s = v
            .get("step")
            .ok_or_else(|| self.err(line, "record without a step".into()))?;
        Ok(Step {
            id: str_field(s, "id").ok_or_else(|| self.err(line, "step without an id".into()))?,
            name: str_field(s, "name"),
            stage: str_field(s, "stage"),
        })
    }

    fn finish(mut self, sha256: String) -> Result<Trace, TraceError> {
        if !self.started {
            return Err(TraceError::NotSealed {
                path: self.origin,
                why: "empty".into(),
            });
        }
        if !self.ended {
            return Err(TraceError::NotSealed {
                path: self.origin,
                why: "no trace_end record: it was cut short".into(),
            });
        }
        fill_hosts_from_lookups(&mut self.connects, &self.lookups);
        Ok(Trace {
            origin: self.origin,
            sha256,
            job: self.job,
            mode: self.mode,
            connects: self.connects,
            lookups: self.lookups,
            sockets: self.sockets,
            complete: self.complete,
        })
    }
}

/// Logs written before connect records carried `hosts` still have the dns
/// answers: a connect is credited with the names resolved to its address
/// earlier in the log, most recent first, as the agent itself does.
fn fill_hosts_from_lookups(connects: &mut [Connect], lookups: &[Lookup]) {
    for c in connects.iter_mut().filter(|c| c.hosts.is_empty()) {
        let mut names: Vec<String> = Vec::new();
        for l in lookups
            .iter()
            .rev()
            .filter(|l| l.seq < c.seq && l.addrs.contains(&c.addr))
        {
            if !names.contains(&l.host) {
                names.push(l.host.clone());
            }
        }
        c.hosts = names;
    }
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(String::from)
}

fn job_of(job: Option<&Value>) -> String {
    match job {
        Some(j) => format!(
            "{}/{}",
            j.get("platform").and_then(Value::as_str).unwrap_or("?"),
            j.get("id").and_then(Value::as_str).unwrap_or("?")
        ),
        None => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"type":"trace_start","schema":"ciwatch.events/v1","mode":"observe","job":{"platform":"github-actions","id":"j1"}}"#;
    const END: &str = r#"{"type":"trace_end","complete":true}"#;

    fn parse(lines: &[&str]) -> Result<Trace, TraceError> {
        let text = lines.join("\n") + "\n";
        read(BufReader::new(text.as_bytes()), "t.ndjson")
    }

    #[test]
    fn reads_connects_and_lookups_with_steps() {
        let t = parse(&[
            START,
            r#"{"type":"dns","seq":1,"step":{"id":"s1","name":"Build"},"host":"Example.COM.","numeric":false,"addrs":["93.184.216.34"],"ret":0}"#,
            r#"{"type":"exec","seq":2,"step":{"id":"s1"}}"#,
            r#"{"type":"connect","seq":3,"step":{"id":"s1","name":"Build"},"family":"ipv4","protocol":"tcp","addr":"93.184.216.34","port":443}"#,
            r#"{"type":"connect","seq":4,"step":{"id":"s2"},"family":"ipv6","protocol":"udp","addr":"::ffff:10.0.0.1","port":53,"hosts":["x.test"]}"#,
            r#"{"type":"dns","seq":5,"step":{"id":"s2"},"host":"10.0.0.1","numeric":true,"addrs":[],"ret":0}"#,
            r#"{"type":"some_future_kind","seq":6}"#,
            r#"{"type":"socket","seq":7,"step":{"id":"s1","name":"Build"},"class":"ping","family":"ipv4"}"#,
            r#"{"type":"socket_denied","seq":8,"step":{"id":"s2"},"class":"packet","refusal":"killed"}"#,
            r#"{"type":"socket","seq":9,"step":{"id":"s2"},"class":"some_future_class"}"#,
            END,
        ])
        .unwrap();
        let sockets: Vec<(SocketClass, &str, bool)> = t
            .sockets
            .iter()
            .map(|s| (s.class, s.step.label(), s.denied))
            .collect();
        assert_eq!(
            sockets,
            [
                (SocketClass::Ping, "Build", false),
                (SocketClass::Packet, "s2", true)
            ]
        );
        assert_eq!(t.job, "github-actions/j1");
        assert_eq!(t.connects.len(), 2);
        assert_eq!(
            t.connects[0].hosts,
            ["example.com"],
            "filled from the earlier dns answer"
        );
        assert_eq!(t.connects[0].step.label(), "Build");
        assert_eq!(
            t.connects[1].addr.to_string(),
            "10.0.0.1",
            "v4-mapped read as v4"
        );
        assert_eq!(t.connects[1].step.label(), "s2");
        assert_eq!(t.lookups.len(), 1, "numeric lookups name no destination");
        assert!(t.complete);
        assert_eq!(t.sha256.len(), 64);
    }

    #[test]
    fn refuses_what_is_not_a_sealed_log() {
        assert!(matches!(parse(&[START]), Err(TraceError::NotSealed { .. })));
        assert!(matches!(
            parse(&[r#"{"type":"exec"}"#]),
            Err(TraceError::Line { line: 1, .. })
        ));
        let e = parse(&[START, "{oops", END]).unwrap_err();
        assert!(matches!(e, TraceError::Line { line: 2, .. }), "{e}");
        let e = parse(&[START, END, END]).unwrap_err();
        assert!(e.to_string().contains("after trace_end"), "{e}");
        let e = parse(&[
            START,
            r#"{"type":"connect","step":{"id":"a"},"addr":"nope","port":1}"#,
            END,
        ])
        .unwrap_err();
        assert!(e.to_string().contains("t.ndjson:2: addr \"nope\""), "{e}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("events.ndjson.partial"), START).unwrap();
        let e = read_path(dir.path()).unwrap_err();
        assert!(e.to_string().contains("ciwatch finish"), "{e}");
    }
}
