//! What a policy would have denied in recorded traces: every connect of the
//! logs run through [`CompiledPolicy::allows`], grouped by destination and
//! step; DNS lookups of names no rule lists; raw, packet and ping sockets
//! `sockets:` does not allow; rules nothing used.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::Serialize;

use super::model::{Allowed, CompiledPolicy, Decision, Origin, Policy, SocketClass};
use super::trace::{Step, Trace};
use crate::text::escape_controls as inert;

/// One destination the policy would deny, in one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    pub addr: IpAddr,
    pub port: u16,
    pub protocol: String,
    /// Names the job resolved to the address.
    pub hosts: Vec<String>,
    pub step: Step,
    pub count: u64,
    /// The traces it happened in.
    pub traces: Vec<String>,
}

/// Lookups of a name no name rule lists (in that step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnlistedLookup {
    pub host: String,
    pub step: Step,
    pub count: u64,
    /// `dns.refuse-unlisted` is on: the lookup itself would fail.
    pub refused: bool,
}

/// Raw, packet or ping sockets of one class the policy would refuse, in one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedSocket {
    pub class: SocketClass,
    pub step: Step,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceInfo {
    pub path: String,
    pub job: String,
    pub mode: String,
    pub connects: usize,
    pub lookups: usize,
    pub complete: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyInfo {
    pub source: String,
    pub version: u32,
    pub mode: String,
    pub digest: String,
    pub resolvers: Vec<IpAddr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub policy: PolicyInfo,
    pub traces: Vec<TraceInfo>,
    pub connects_checked: u64,
    pub connects_denied: u64,
    pub denied: Vec<Denial>,
    pub unlisted_dns: Vec<UnlistedLookup>,
    pub refused_sockets: Vec<RefusedSocket>,
    /// Rules of the file or command line that allowed nothing in these traces.
    pub unused_rules: Vec<String>,
}

impl DiffReport {
    /// Whether anything would have been denied: a connect, or a lookup when
    /// unlisted names are refused.
    pub fn would_deny(&self) -> bool {
        !self.denied.is_empty()
            || self.unlisted_dns.iter().any(|l| l.refused)
            || !self.refused_sockets.is_empty()
    }
}

/// Replays the traces against the policy. Deterministic: sorted by step,
/// then destination.
pub fn diff(
    policy: &Policy,
    compiled: &CompiledPolicy,
    resolvers: &[IpAddr],
    traces: &[Trace],
) -> DiffReport {
    type Key = (Step, IpAddr, u16, String);
    let mut denied: BTreeMap<Key, (u64, BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
    let mut used: BTreeSet<Origin> = BTreeSet::new();
    let mut unlisted: BTreeMap<(Step, String), u64> = BTreeMap::new();
    let mut refused: BTreeMap<(Step, SocketClass), u64> = BTreeMap::new();
    let (mut checked, mut denied_count) = (0u64, 0u64);
    for trace in traces {
        for c in &trace.connects {
            checked += 1;
            match compiled.allows(c.addr, c.port, c.proto(), &c.step.as_match(), &c.hosts) {
                Decision::Allow(Allowed::Ip { rule }) => {
                    used.extend(compiled.ip_rules.get(rule).map(|r| r.origin));
                }
                Decision::Allow(Allowed::Name { rule, .. }) => {
                    used.extend(compiled.name_rules.get(rule).map(|r| r.origin));
                }
                Decision::Deny => {
                    denied_count += 1;
                    let entry = denied
                        .entry((c.step.clone(), c.addr, c.port, c.protocol.clone()))
                        .or_default();
                    entry.0 += 1;
                    entry.1.extend(c.hosts.iter().cloned());
                    entry.2.insert(trace.origin.clone());
                }
            }
        }
        for l in &trace.lookups {
            if !compiled.dns_listed(&l.host, &l.step.as_match()) {
                *unlisted
                    .entry((l.step.clone(), l.host.clone()))
                    .or_default() += 1;
            }
        }
        for socket in &trace.sockets {
            match compiled.socket_rule(socket.class, &socket.step.as_match()) {
                Some(rule) => {
                    used.insert(rule.origin);
                }
                None => {
                    *refused
                        .entry((socket.step.clone(), socket.class))
                        .or_default() += 1;
                }
            }
        }
    }
    let denied = denied
        .into_iter()
        .map(
            |((step, addr, port, protocol), (count, hosts, traces))| Denial {
                addr,
                port,
                protocol,
                hosts: hosts.into_iter().collect(),
                step,
                count,
                traces: traces.into_iter().collect(),
            },
        )
        .collect();
    let unlisted_dns = unlisted
        .into_iter()
        .map(|((step, host), count)| UnlistedLookup {
            host,
            step,
            count,
            refused: compiled.refuse_unlisted_dns,
        })
        .collect();
    let refused_sockets = refused
        .into_iter()
        .map(|((step, class), count)| RefusedSocket { class, step, count })
        .collect();
    let unused_rules = policy
        .rules
        .iter()
        .filter(|r| !used.contains(&r.origin))
        .map(|r| format!("{} ({})", r.describe(), r.origin))
        .chain(
            policy
                .sockets
                .iter()
                .filter(|s| !used.contains(&s.origin))
                .map(|s| format!("sockets: {} ({})", s.describe(), s.origin)),
        )
        .collect();
    DiffReport {
        policy: PolicyInfo {
            source: policy.source.clone(),
            version: policy.version,
            mode: policy.mode.to_string(),
            digest: policy.digest.clone(),
            resolvers: resolvers.to_vec(),
        },
        traces: traces
            .iter()
            .map(|t| TraceInfo {
                path: t.origin.clone(),
                job: t.job.clone(),
                mode: t.mode.clone(),
                connects: t.connects.len(),
                lookups: t.lookups.len(),
                complete: t.complete,
            })
            .collect(),
        connects_checked: checked,
        connects_denied: denied_count,
        denied,
        unlisted_dns,
        refused_sockets,
        unused_rules,
    }
}

impl DiffReport {
    /// The human form `policy diff` prints. Everything that came from a file
    /// (trace names, hosts, steps; the policy's rules) is shown inert, since a
    /// job chooses its host and step names.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let p = &self.policy;
        let short = p.digest.get(..12).unwrap_or(&p.digest);
        let _ = writeln!(
            out,
            "policy {} (version {}, mode {}, sha256 {short}…)",
            inert(&p.source),
            p.version,
            p.mode
        );
        for t in &self.traces {
            let partial = if t.complete {
                ""
            } else {
                ", incomplete: events were lost or a hook was missing"
            };
            let _ = writeln!(
                out,
                "trace  {} (job {}, {} connects, {} lookups{partial})",
                inert(&t.path),
                inert(&t.job),
                t.connects,
                t.lookups
            );
        }
        if self.denied.is_empty() {
            let _ = writeln!(
                out,
                "\nwould deny nothing: all {} connects are allowed",
                self.connects_checked
            );
        } else {
            let _ = writeln!(
                out,
                "\nwould deny {} of {} connects, to {} destinations:",
                self.connects_denied,
                self.connects_checked,
                self.denied.len()
            );
            let rows: Vec<[String; 6]> = self
                .denied
                .iter()
                .map(|d| {
                    [
                        d.addr.to_string(),
                        d.port.to_string(),
                        d.protocol.clone(),
                        if d.hosts.is_empty() {
                            "-".into()
                        } else {
                            d.hosts.join(",")
                        },
                        d.step.label().to_string(),
                        d.count.to_string(),
                    ]
                })
                .collect();
            table(
                &mut out,
                ["DESTINATION", "PORT", "PROTO", "HOSTS", "STEP", "COUNT"],
                &rows,
            );
        }
        if !self.unlisted_dns.is_empty() {
            let verb = if self.unlisted_dns.iter().any(|l| l.refused) {
                "would be refused"
            } else {
                "reported, not refused"
            };
            let _ = writeln!(out, "\nlookups of names no rule lists ({verb}):");
            let rows: Vec<[String; 3]> = self
                .unlisted_dns
                .iter()
                .map(|l| {
                    [
                        l.host.clone(),
                        l.step.label().to_string(),
                        l.count.to_string(),
                    ]
                })
                .collect();
            table(&mut out, ["HOST", "STEP", "COUNT"], &rows);
        }
        if !self.refused_sockets.is_empty() {
            let _ = writeln!(
                out,
                "\nraw, packet and ping sockets `sockets:` does not allow (would be refused):"
            );
            let rows: Vec<[String; 3]> = self
                .refused_sockets
                .iter()
                .map(|r| {
                    [
                        r.class.to_string(),
                        r.step.label().to_string(),
                        r.count.to_string(),
                    ]
                })
                .collect();
            table(&mut out, ["SOCKET", "STEP", "COUNT"], &rows);
        }
        if !self.unused_rules.is_empty() {
            let _ = writeln!(out, "\nrules nothing in these traces used:");
            for r in &self.unused_rules {
                let _ = writeln!(out, "  {}", inert(r));
            }
        }
        out
    }
}

/// Left-aligned columns, two spaces apart; cells shown inert.
fn table<const N: usize>(out: &mut String, header: [&str; N], rows: &[[String; N]]) {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.each_ref().map(|cell| inert(cell).into_owned()))
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str("  ");
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_traces_are_printed_inert() {
        let evil = "x\x1b[2J\x1b]0;pwned\x07<img src=x onerror=alert(1)>";
        let shown = "x\\x1b[2J\\x1b]0;pwned\\x07<img src=x onerror=alert(1)>";
        let step = Step {
            id: "s1".into(),
            name: Some(evil.into()),
            stage: None,
        };
        let report = DiffReport {
            policy: PolicyInfo {
                source: "p.yml".into(),
                version: 1,
                mode: "enforce".into(),
                digest: "ab".repeat(32),
                resolvers: Vec::new(),
            },
            traces: vec![TraceInfo {
                path: "t".into(),
                job: evil.into(),
                mode: "observe".into(),
                connects: 1,
                lookups: 1,
                complete: true,
            }],
            connects_checked: 1,
            connects_denied: 1,
            denied: vec![Denial {
                addr: IpAddr::from([192, 0, 2, 1]),
                port: 443,
                protocol: "tcp".into(),
                hosts: vec![evil.into()],
                step: step.clone(),
                count: 1,
                traces: vec!["t".into()],
            }],
            unlisted_dns: vec![UnlistedLookup {
                host: evil.into(),
                step,
                count: 1,
                refused: false,
            }],
            refused_sockets: vec![RefusedSocket {
                class: SocketClass::Raw,
                step: Step {
                    id: "s1".into(),
                    name: Some(evil.into()),
                    stage: None,
                },
                count: 2,
            }],
            unused_rules: Vec::new(),
        };
        let out = report.render();
        assert!(!out.contains('\x1b') && !out.contains('\x07'), "{out}");
        assert!(out.contains(&format!("(job {shown}, ")), "{out}");
        assert!(
            out.contains(&format!("192.0.2.1    443   tcp    {shown}  {shown}  1")),
            "{out}"
        );
        assert!(out.contains(&format!("  {shown}  {shown}  1\n")), "{out}");
        assert!(out.contains(&format!("  raw     {shown}  2\n")), "{out}");
    }
}
