//! The denials in the log of an agent that died, which `ciwatch finish` reads
//! back after recovering it: the agent's own tallies died with it. They are
//! grouped as a sealed job's report groups them (`Report::from_sealed`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum RecoveredError {
    #[error("cannot read the recovered log {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the recovered log {path} has a malformed line {line}")]
    Parse {
        path: String,
        line: u64,
        source: serde_json::Error,
    },
}

/// Denied connects, refused DNS queries and denied sockets, as the report lists them.
#[derive(Debug, Default)]
pub struct Denials {
    pub denied: u64,
    pub refused: u64,
    pub sockets: u64,
    pub denied_events: Vec<Value>,
    pub refused_lookups: Vec<Value>,
    pub denied_sockets: Vec<Value>,
}

/// The kinds read, by their `type` as it starts a needle: a quote inside a JSON string is escaped.
const KINDS: [&[u8]; 3] = [
    br#""type":"denied""#,
    br#""type":"dns_refused""#,
    br#""type":"socket_denied""#,
];

/// The fields of a `denied`, `dns_refused` or `socket_denied` line that the report shows.
#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    addr: Option<String>,
    port: Option<u64>,
    protocol: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    host: Option<Value>,
    reason: Option<String>,
    class: Option<String>,
    family: Option<String>,
    protocol_number: Option<u64>,
    refusal: Option<String>,
    step: Option<Step>,
    #[serde(rename = "proc")]
    process: Option<Process>,
}

#[derive(Deserialize)]
struct Step {
    id: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Process {
    comm: Value,
}

#[derive(Default)]
struct Group {
    count: u64,
    /// A destination's host names, a refused lookup's reasons, a socket's refusals.
    names: BTreeSet<String>,
    steps: BTreeSet<String>,
    comm: Option<Value>,
}

impl Group {
    fn add(&mut self, line: &Line) {
        self.count += 1;
        if let Some(step) = &line.step {
            self.steps
                .insert(step.name.clone().unwrap_or_else(|| step.id.clone()));
        }
        if self.comm.is_none() {
            self.comm = line.process.as_ref().map(|p| p.comm.clone());
        }
    }
}

/// Reads the denials of the sealed log at `path`, streaming.
pub fn denials(path: &Path) -> Result<Denials, RecoveredError> {
    let shown = || path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| RecoveredError::Read {
        path: shown(),
        source,
    })?;
    let mut denied: BTreeMap<(String, u64, String), Group> = BTreeMap::new();
    let mut refused: BTreeMap<String, Group> = BTreeMap::new();
    let mut sockets: BTreeMap<(String, String, u64), Group> = BTreeMap::new();
    for (n, line) in (1..).zip(std::io::BufReader::with_capacity(1 << 16, file).split(b'\n')) {
        let line = line.map_err(|source| RecoveredError::Read {
            path: shown(),
            source,
        })?;
        if !KINDS
            .iter()
            .any(|kind| memchr::memmem::find(&line, kind).is_some())
        {
            continue;
        }
        let parsed: Line =
            serde_json::from_slice(&line).map_err(|source| RecoveredError::Parse {
                path: shown(),
                line: n,
                source,
            })?;
        match parsed.kind.as_str() {
            "denied" => {
                let key = (
                    parsed.addr.clone().unwrap_or_default(),
                    parsed.port.unwrap_or(0),
                    parsed.protocol.clone().unwrap_or_default(),
                );
                let group = denied.entry(key).or_default();
                group.names.extend(parsed.hosts.iter().cloned());
                group.add(&parsed);
            }
            "dns_refused" => {
                let host = match &parsed.host {
                    Some(Value::String(h)) if !h.is_empty() => h.clone(),
                    Some(Value::String(_)) | None => "(unreadable)".into(),
                    Some(other) => other.to_string(),
                };
                let group = refused.entry(host).or_default();
                group.names.extend(parsed.reason.clone());
                group.add(&parsed);
            }
            "socket_denied" => {
                let key = (
                    parsed.class.clone().unwrap_or_default(),
                    parsed.family.clone().unwrap_or_default(),
                    parsed.protocol_number.unwrap_or(0),
                );
                let group = sockets.entry(key).or_default();
                group.names.extend(parsed.refusal.clone());
                group.add(&parsed);
            }
            _ => {}
        }
    }
    Ok(Denials {
        denied: denied.values().map(|g| g.count).sum(),
        refused: refused.values().map(|g| g.count).sum(),
        sockets: sockets.values().map(|g| g.count).sum(),
        denied_events: denied
            .into_iter()
            .map(|((addr, port, protocol), g)| {
                json!({
                    "addr": addr, "port": port, "protocol": protocol, "hosts": g.names,
                    "steps": g.steps, "comm": g.comm, "count": g.count,
                })
            })
            .collect(),
        refused_lookups: refused
            .into_iter()
            .map(|(host, g)| {
                json!({
                    "host": host, "reasons": g.names, "steps": g.steps, "comm": g.comm, "count": g.count,
                })
            })
            .collect(),
        denied_sockets: sockets
            .into_iter()
            .map(|((class, family, protocol), g)| {
                json!({
                    "socket": class, "family": family, "protocol": protocol, "refusals": g.names,
                    "steps": g.steps, "comm": g.comm, "count": g.count,
                })
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_counted_and_grouped_as_a_sealed_report_groups_them() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("events.ndjson");
        let lines = [
            r#"{"type":"trace_start","note":"\"type\":\"denied\" in a string"}"#,
            r#"{"type":"connect","addr":"127.0.0.1","port":9,"protocol":"tcp"}"#,
            r#"{"type":"denied","addr":"127.0.0.1","port":9,"protocol":"tcp","hosts":["a.test"],"step":{"id":"s1","name":"Build"},"proc":{"comm":"curl"}}"#,
            r#"{"type":"denied","addr":"127.0.0.1","port":9,"protocol":"tcp","step":{"id":"s2"},"proc":{"comm":"wget"}}"#,
            r#"{"type":"dns_refused","host":"x.test","reason":"unlisted","step":{"id":"s1","name":"Build"},"proc":{"comm":"dig"}}"#,
            r#"{"type":"dns_refused","host":"","reason":"unreadable","step":{"id":"s1"},"proc":{"comm":"dig"}}"#,
            r#"{"type":"socket","class":"raw","family":"ipv4","protocol_number":1,"step":{"id":"s1"},"proc":{"comm":"ping"}}"#,
            r#"{"type":"socket_denied","class":"raw","family":"ipv4","protocol_number":1,"refusal":"eperm","step":{"id":"s1"},"proc":{"comm":"ping"}}"#,
            r#"{"type":"trace_end","agent_status":"died"}"#,
        ];
        std::fs::write(&log, lines.join("\n") + "\n").unwrap_or_else(|e| panic!("{e}"));
        let d = denials(&log).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.denied, d.refused, d.sockets), (2, 2, 1));
        assert_eq!(d.denied_events.len(), 1);
        let e = &d.denied_events[0];
        assert_eq!(e["count"], 2);
        assert_eq!(e["hosts"], json!(["a.test"]));
        assert_eq!(e["steps"], json!(["Build", "s2"]));
        assert_eq!(e["comm"], "curl");
        let hosts: Vec<&Value> = d.refused_lookups.iter().map(|r| &r["host"]).collect();
        assert_eq!(hosts, [&json!("(unreadable)"), &json!("x.test")]);
        assert_eq!(d.refused_lookups[1]["reasons"], json!(["unlisted"]));
        let socket = &d.denied_sockets[0];
        assert_eq!(
            (&socket["socket"], &socket["protocol"], &socket["refusals"]),
            (&json!("raw"), &json!(1), &json!(["eperm"]))
        );
    }
}
