//! From N traces to a proposed policy that would have allowed all of them,
//! with the coverage of every entry (docs/policy.md, "Learning a policy").
//!
//! - A destination the job reached through its own DNS answer becomes a
//!   host-name rule (the name it resolved last); otherwise an address rule.
//! - At least `wildcard_min` (K) distinct names directly below one parent, on
//!   the same port and protocol, collapse into `*.parent`.
//! - Loopback and the resolver stay implicit (`defaults`).
//! - Every class of raw, packet or ping socket the jobs opened is listed under
//!   `sockets:`, which enforce otherwise refuses.
//! - Everything is sorted, so two proposals diff line by line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::IpAddr;

use serde::Serialize;

use crate::policy::endpoint::MAX_NAME_BYTES;
use crate::policy::trace::{Connect, SocketOpen, Step, Trace};
use crate::policy::{
    Allowed, CompiledPolicy, Decision, Endpoint, IpNet, Policy, Proto, SocketClass, StepScope,
    Target,
};

/// Fewer jobs than this and the proposal says it is not to be trusted.
pub const MIN_TRUSTED_JOBS: usize = 5;
/// Distinct subdomains of one parent that collapse into a `*.` wildcard.
pub const DEFAULT_WILDCARD_MIN: usize = 3;

#[derive(Debug, Clone, Copy)]
pub struct LearnOptions {
    /// K: distinct names below one parent before they become `*.parent`.
    pub wildcard_min: usize,
    /// Scope every rule to the steps it was seen in.
    pub per_step: bool,
}

impl Default for LearnOptions {
    fn default() -> Self {
        Self {
            wildcard_min: DEFAULT_WILDCARD_MIN,
            per_step: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Name,
    Wildcard,
    Address,
}

/// One proposed rule and what it rests on.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The rule, in the short form (steps apart).
    pub endpoint: String,
    pub kind: Kind,
    /// Seen in this many jobs…
    pub jobs: usize,
    /// …of this many.
    pub of: usize,
    /// Step names (ids when a step has no name) it was seen in.
    pub steps: Vec<String>,
    pub connects: u64,
    /// Addresses it was reached at.
    pub addresses: Vec<IpAddr>,
    /// For a wildcard: the names it stands for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Why the entry is not to be relied on (empty: stable).
    pub unstable: Vec<String>,
    pub notes: Vec<String>,
    /// Scoped to `steps` (`--per-step`).
    pub step_scoped: bool,
    #[serde(skip)]
    rule: Endpoint,
    /// The distinct connects it covers, to check another policy against.
    #[serde(skip)]
    observed: BTreeSet<Observation>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Observation {
    addr: IpAddr,
    port: u16,
    protocol: String,
    step: Step,
    hosts: Vec<String>,
}

impl Observation {
    fn of(c: &Connect) -> Self {
        Observation {
            addr: c.addr,
            port: c.port,
            protocol: c.protocol.clone(),
            step: c.step.clone(),
            hosts: c.hosts.clone(),
        }
    }

    fn decision(&self, policy: &CompiledPolicy) -> Decision {
        policy.allows(
            self.addr,
            self.port,
            Proto::parse(&self.protocol),
            &self.step.as_match(),
            &self.hosts,
        )
    }
}

/// One proposed `sockets:` entry: a class of socket the jobs opened.
#[derive(Debug, Clone, Serialize)]
pub struct SocketEntry {
    pub class: SocketClass,
    /// Seen in this many jobs…
    pub jobs: usize,
    /// …of this many.
    pub of: usize,
    /// Step names (ids when a step has no name) it was opened in.
    pub steps: Vec<String>,
    pub opened: u64,
    pub unstable: Vec<String>,
    pub notes: Vec<String>,
    /// Scoped to `steps` (`--per-step`).
    pub step_scoped: bool,
    /// The steps it was opened in, to check another policy against.
    #[serde(skip)]
    observed: BTreeSet<Step>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Proposal {
    pub jobs: usize,
    pub traces: Vec<String>,
    /// At least [`MIN_TRUSTED_JOBS`] jobs.
    pub trusted: bool,
    pub wildcard_min: usize,
    pub per_step: bool,
    pub entries: Vec<Entry>,
    pub sockets: Vec<SocketEntry>,
    /// Names looked up but never connected to: no rule needed unless
    /// `dns.refuse-unlisted` is turned on.
    pub resolved_only: Vec<String>,
    /// Traces that were incomplete (events lost, a hook missing).
    pub incomplete: Vec<String>,
}

/// Aggregation of one destination before it becomes an [`Entry`].
#[derive(Debug, Default)]
struct Acc {
    jobs: BTreeSet<usize>,
    steps: BTreeMap<String, bool>,
    connects: u64,
    denied_jobs: BTreeSet<usize>,
    addrs_by_job: BTreeMap<usize, BTreeSet<IpAddr>>,
    names: BTreeSet<String>,
    /// Names the address answered for that no name rule can hold (over the kernel's limit).
    too_long: BTreeSet<String>,
    observed: BTreeSet<Observation>,
}

impl Acc {
    fn add(&mut self, job: usize, c: &Connect) {
        self.jobs.insert(job);
        // true: the label is a step id because the step had no name.
        self.steps
            .insert(c.step.label().to_string(), c.step.name.is_none());
        self.connects += 1;
        if c.denied {
            self.denied_jobs.insert(job);
        }
        self.addrs_by_job.entry(job).or_default().insert(c.addr);
        self.observed.insert(Observation::of(c));
    }

    fn merge(&mut self, other: Acc) {
        self.jobs.extend(other.jobs);
        self.steps.extend(other.steps);
        self.connects += other.connects;
        self.denied_jobs.extend(other.denied_jobs);
        for (job, addrs) in other.addrs_by_job {
            self.addrs_by_job.entry(job).or_default().extend(addrs);
        }
        self.names.extend(other.names);
        self.too_long.extend(other.too_long);
        self.observed.extend(other.observed);
    }

    fn addresses(&self) -> BTreeSet<IpAddr> {
        self.addrs_by_job.values().flatten().copied().collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Dest {
    Name(String),
    Addr(IpAddr),
}

type Key = (Dest, u16, Option<Proto>);

/// Proposes a policy covering every connect of `traces` (one trace per job).
pub fn propose(traces: &[Trace], opts: &LearnOptions) -> Proposal {
    let mut dests: BTreeMap<Key, Acc> = BTreeMap::new();
    let mut connected_names: BTreeSet<String> = BTreeSet::new();
    let mut looked_up: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (job, trace) in traces.iter().enumerate() {
        for c in trace.connects.iter().filter(|c| !implicit(c)) {
            // The most recent name a rule can hold; the kernel keys names of at most 127 bytes.
            let fitting = c.hosts.iter().find(|h| h.len() <= MAX_NAME_BYTES);
            let dest = fitting.map_or(Dest::Addr(c.addr), |name| Dest::Name(name.clone()));
            connected_names.extend(c.hosts.iter().cloned());
            let acc = dests.entry((dest, c.port, c.proto())).or_default();
            acc.add(job, c);
            if fitting.is_none() {
                acc.too_long.extend(c.hosts.iter().cloned());
            }
        }
        for l in trace.lookups.iter().filter(|l| !l.failed) {
            looked_up.entry(l.host.clone()).or_default().insert(job);
        }
    }
    let collapsed = collapse_wildcards(dests, opts.wildcard_min.max(2));
    let n = traces.len();
    let mut entries: Vec<Entry> = collapsed
        .into_iter()
        .map(|(target, port, proto, acc)| entry(target, port, proto, acc, n, opts))
        .collect();
    mark_rotating_addresses(&mut entries);
    entries.sort_by_key(sort_key);
    let sockets = socket_entries(traces, opts);
    let resolved_only = looked_up
        .into_iter()
        .filter(|(name, _)| !connected_names.contains(name))
        .map(|(name, jobs)| format!("{name} ({}/{n} jobs)", jobs.len()))
        .collect();
    Proposal {
        jobs: n,
        traces: traces.iter().map(|t| t.origin.clone()).collect(),
        trusted: n >= MIN_TRUSTED_JOBS,
        wildcard_min: opts.wildcard_min.max(2),
        per_step: opts.per_step,
        entries,
        sockets,
        resolved_only,
        incomplete: traces
            .iter()
            .filter(|t| !t.complete)
            .map(|t| t.origin.clone())
            .collect(),
    }
}

/// One entry per socket class the jobs opened, in class order.
fn socket_entries(traces: &[Trace], opts: &LearnOptions) -> Vec<SocketEntry> {
    let mut by_class: BTreeMap<SocketClass, Vec<(usize, &SocketOpen)>> = BTreeMap::new();
    for (job, trace) in traces.iter().enumerate() {
        for s in &trace.sockets {
            by_class.entry(s.class).or_default().push((job, s));
        }
    }
    let n = traces.len();
    by_class
        .into_iter()
        .map(|(class, opens)| {
            let jobs: BTreeSet<usize> = opens.iter().map(|(job, _)| *job).collect();
            let denied: BTreeSet<usize> = opens
                .iter()
                .filter(|(_, s)| s.denied)
                .map(|(job, _)| *job)
                .collect();
            // true: the label is a step id because the step had no name.
            let steps: BTreeMap<String, bool> = opens
                .iter()
                .map(|(_, s)| (s.step.label().to_string(), s.step.name.is_none()))
                .collect();
            let mut unstable = Vec::new();
            if jobs.len() * 2 < n {
                unstable.push(format!("seen in {} of {n} jobs (under half)", jobs.len()));
            }
            let mut notes = Vec::new();
            if !denied.is_empty() {
                notes.push(format!(
                    "refused by the enforced policy in {} job(s)",
                    denied.len()
                ));
            }
            if opts.per_step && steps.values().any(|&is_id| is_id) {
                notes.push(
                    "a step without a name is scoped by its id, which may differ between runs"
                        .into(),
                );
            }
            SocketEntry {
                class,
                jobs: jobs.len(),
                of: n,
                steps: steps.into_keys().collect(),
                opened: opens.len() as u64,
                unstable,
                notes,
                step_scoped: opts.per_step,
                observed: opens.iter().map(|(_, s)| s.step.clone()).collect(),
            }
        })
        .collect()
}

/// Covered by `defaults.loopback`: never proposed.
fn implicit(c: &Connect) -> bool {
    c.addr.is_loopback() || c.addr.is_unspecified()
}

/// Names directly below one parent, on one port and protocol, become
/// `*.parent` once there are K of them. The parent needs two labels, so
/// `*.com` is never proposed.
fn collapse_wildcards(
    dests: BTreeMap<Key, Acc>,
    k: usize,
) -> Vec<(Target, u16, Option<Proto>, Acc)> {
    let mut groups: BTreeMap<(String, u16, Option<Proto>), Vec<String>> = BTreeMap::new();
    for (dest, port, proto) in dests.keys() {
        if let Dest::Name(name) = dest {
            if let Some((_, parent)) = name.split_once('.') {
                if parent.contains('.') {
                    groups
                        .entry((parent.to_string(), *port, *proto))
                        .or_default()
                        .push(name.clone());
                }
            }
        }
    }
    let mut wild: BTreeMap<(String, u16, Option<Proto>), Acc> = BTreeMap::new();
    let mut out = Vec::new();
    for ((dest, port, proto), mut acc) in dests {
        match dest {
            Dest::Name(name) => {
                let parent = name
                    .split_once('.')
                    .map(|(_, p)| p.to_string())
                    .unwrap_or_default();
                let key = (parent, port, proto);
                if groups.get(&key).is_some_and(|g| g.len() >= k) {
                    acc.names.insert(name);
                    wild.entry(key).or_default().merge(acc);
                } else {
                    out.push((Target::Host(name), port, proto, acc));
                }
            }
            Dest::Addr(addr) => out.push((Target::Net(IpNet::host(addr)), port, proto, acc)),
        }
    }
    for ((parent, port, proto), acc) in wild {
        out.push((Target::Wildcard(parent), port, proto, acc));
    }
    out
}

fn entry(
    target: Target,
    port: u16,
    proto: Option<Proto>,
    acc: Acc,
    n: usize,
    opts: &LearnOptions,
) -> Entry {
    let kind = match target {
        Target::Host(_) => Kind::Name,
        Target::Wildcard(_) => Kind::Wildcard,
        Target::Net(_) => Kind::Address,
    };
    let rule = Endpoint {
        target,
        port: Some(port),
        protocol: proto,
    };
    let jobs = acc.jobs.len();
    let mut unstable = Vec::new();
    if jobs * 2 < n {
        unstable.push(format!("seen in {jobs} of {n} jobs (under half)"));
    }
    let mut notes = Vec::new();
    let per_job: BTreeSet<&BTreeSet<IpAddr>> = acc.addrs_by_job.values().collect();
    let addresses = acc.addresses();
    if kind != Kind::Address && per_job.len() > 1 {
        notes.push(format!(
            "addresses changed between runs ({} distinct): allowed through the job's own DNS answers",
            addresses.len()
        ));
    }
    if kind == Kind::Address && !acc.too_long.is_empty() {
        let names: Vec<&str> = acc.too_long.iter().map(String::as_str).collect();
        notes.push(format!(
            "named {}, longer than the {MAX_NAME_BYTES} bytes a name rule can hold: proposed by address",
            names.join(", ")
        ));
    } else if kind == Kind::Address {
        notes.push(
            "no DNS answer named this address (a literal address, or a resolver libc does not see)"
                .into(),
        );
    }
    if port == 53 && kind == Kind::Address {
        notes.push(
            "a DNS server: covered by defaults.resolver if it is the runner's nameserver".into(),
        );
    }
    if !acc.denied_jobs.is_empty() {
        notes.push(format!(
            "denied by the enforced policy in {} job(s)",
            acc.denied_jobs.len()
        ));
    }
    if opts.per_step && acc.steps.values().any(|&is_id| is_id) {
        notes.push(
            "a step without a name is scoped by its id, which may differ between runs".into(),
        );
    }
    Entry {
        endpoint: rule.to_string(),
        kind,
        jobs,
        of: n,
        steps: acc.steps.keys().cloned().collect(),
        connects: acc.connects,
        addresses: addresses.into_iter().collect(),
        names: acc.names.into_iter().collect(),
        unstable,
        notes,
        step_scoped: opts.per_step,
        rule,
        observed: acc.observed,
    }
}

/// Address rules for one port, protocol and set of steps whose address
/// differs from job to job are probably one service behind rotating
/// addresses: each of them breaks in the next run.
fn mark_rotating_addresses(entries: &mut [Entry]) {
    // (port, protocol, steps) → the address entries that share them.
    type Group = (Option<u16>, Option<Proto>, Vec<String>);
    let mut groups: BTreeMap<Group, Vec<usize>> = BTreeMap::new();
    for (i, e) in entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == Kind::Address)
    {
        groups
            .entry((e.rule.port, e.rule.protocol, e.steps.clone()))
            .or_default()
            .push(i);
    }
    for members in groups.values().filter(|m| m.len() > 1) {
        let of = members.first().map_or(0, |&i| entries[i].of);
        if members.iter().all(|&i| entries[i].jobs == of) {
            // Several addresses, each in every job: a fixed set, not a rotation.
            continue;
        }
        let all: Vec<String> = members
            .iter()
            .map(|&i| entries[i].endpoint.clone())
            .collect();
        let rotating: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| entries[i].jobs < of)
            .collect();
        for i in rotating {
            let others: Vec<&str> = all
                .iter()
                .filter(|a| **a != entries[i].endpoint)
                .map(String::as_str)
                .collect();
            entries[i].unstable.push(format!(
                "address changed between runs (same port and steps elsewhere: {}); prefer a host-name rule",
                others.join(", ")
            ));
        }
    }
}

/// Names before addresses; names grouped by domain (reversed labels).
fn sort_key(e: &Entry) -> (u8, Vec<String>, Option<IpAddr>, Option<u16>, Option<Proto>) {
    match &e.rule.target {
        Target::Host(n) | Target::Wildcard(n) => {
            let mut labels: Vec<String> = n.split('.').rev().map(String::from).collect();
            if e.kind == Kind::Wildcard {
                labels.push(String::new());
            }
            (0, labels, None, e.rule.port, e.rule.protocol)
        }
        Target::Net(net) => (
            1,
            Vec::new(),
            Some(net.addr()),
            e.rule.port,
            e.rule.protocol,
        ),
    }
}

impl Entry {
    /// `# …` coverage line(s) and the `- …` entry line.
    fn yaml(&self, out: &mut String) {
        let mut facts = vec![format!("{}/{} jobs", self.jobs, self.of)];
        facts.push(format!("steps: {}", self.steps.join(", ")));
        facts.push(format!(
            "{} connect{}",
            self.connects,
            if self.connects == 1 { "" } else { "s" }
        ));
        if !self.names.is_empty() {
            facts.push(format!("stands for {}", self.names.join(", ")));
        }
        if self.kind == Kind::Address || self.addresses.len() <= 3 {
            let addrs: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
            facts.push(format!("at {}", addrs.join(", ")));
        } else {
            facts.push(format!("at {} addresses", self.addresses.len()));
        }
        for u in &self.unstable {
            let _ = writeln!(out, "  # UNSTABLE: {u}");
        }
        let _ = writeln!(out, "  # {}", facts.join("; "));
        for n in &self.notes {
            let _ = writeln!(out, "  # note: {n}");
        }
        if self.step_scoped {
            let steps: Vec<String> = self.steps.iter().map(|s| quote(s)).collect();
            let mut fields = vec![format!("host: {}", quote(&self.rule.target.to_string()))];
            if let Some(p) = self.rule.port {
                fields.push(format!("port: {p}"));
            }
            if let Some(p) = self.rule.protocol {
                fields.push(format!("protocol: {p}"));
            }
            fields.push(format!("steps: [{}]", steps.join(", ")));
            let _ = writeln!(out, "  - {{ {} }}", fields.join(", "));
        } else {
            let _ = writeln!(out, "  - {}", quote(&self.endpoint));
        }
    }
}

impl SocketEntry {
    /// `# …` coverage line(s) and the `- …` entry line.
    fn yaml(&self, out: &mut String) {
        for u in &self.unstable {
            let _ = writeln!(out, "  # UNSTABLE: {u}");
        }
        let _ = writeln!(
            out,
            "  # {}/{} jobs; steps: {}; {} opened",
            self.jobs,
            self.of,
            self.steps.join(", "),
            self.opened
        );
        for n in &self.notes {
            let _ = writeln!(out, "  # note: {n}");
        }
        if self.step_scoped {
            let steps: Vec<String> = self.steps.iter().map(|s| quote(s)).collect();
            let _ = writeln!(
                out,
                "  - {{ class: {}, steps: [{}] }}",
                self.class,
                steps.join(", ")
            );
        } else {
            let _ = writeln!(out, "  - {}", self.class);
        }
    }

    /// How `diff_against` names it: `sockets: raw`, with its steps when scoped.
    fn key(&self) -> (String, Vec<String>) {
        let steps = if self.step_scoped {
            sorted(self.steps.clone())
        } else {
            Vec::new()
        };
        (format!("sockets: {}", self.class), steps)
    }
}

/// A YAML double-quoted scalar (JSON string syntax is a subset of it).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.escape_default()))
}

impl Proposal {
    /// The policy file, with coverage as comments.
    pub fn yaml(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Proposed by `ciwatch learn` from {} job{}. Review it before enforcing.",
            self.jobs,
            plural(self.jobs)
        );
        if !self.trusted {
            let _ = writeln!(
                out,
                "# WARNING: {} job{} {} too few to trust (want at least {MIN_TRUSTED_JOBS}): egress that happens only \
                 sometimes is likely missing.",
                self.jobs,
                plural(self.jobs),
                if self.jobs == 1 { "is" } else { "are" }
            );
        }
        for t in self.traces.iter().take(20) {
            let _ = writeln!(out, "#   from {t}");
        }
        if self.traces.len() > 20 {
            let _ = writeln!(out, "#   and {} more", self.traces.len() - 20);
        }
        for t in &self.incomplete {
            let _ = writeln!(
                out,
                "# WARNING: {t} is incomplete (events were lost or a hook was missing)"
            );
        }
        let _ = writeln!(out, "# Each entry: the jobs it was seen in, its steps, connects and addresses. UNSTABLE marks entries");
        let _ = writeln!(
            out,
            "# seen in under half of the jobs, or whose address changed between runs."
        );
        let _ = writeln!(
            out,
            "# Names with {}+ subdomains on one port became `*.` wildcards. Loopback and the local resolver are",
            self.wildcard_min
        );
        let _ = writeln!(out, "# allowed by `defaults` and are not listed.");
        let _ = writeln!(out, "version: {}", crate::policy::model::VERSION);
        let _ = writeln!(out, "mode: enforce");
        let _ = writeln!(out, "on-policy-error: fail");
        if self.entries.is_empty() {
            let _ = writeln!(
                out,
                "# No egress was seen: the jobs need no network beyond loopback and the resolver."
            );
            let _ = writeln!(out, "no-egress: true");
            let _ = writeln!(out, "allow: []");
        } else {
            let _ = writeln!(out, "allow:");
            for e in &self.entries {
                e.yaml(&mut out);
            }
        }
        if !self.sockets.is_empty() {
            let _ = writeln!(
                out,
                "# Raw, packet and ping sockets the jobs opened: enforce refuses any class not listed here."
            );
            let _ = writeln!(out, "sockets:");
            for s in &self.sockets {
                s.yaml(&mut out);
            }
        }
        if !self.resolved_only.is_empty() {
            let _ = writeln!(
                out,
                "# Resolved but never connected to (needs a rule only with dns.refuse-unlisted):"
            );
            for r in &self.resolved_only {
                let _ = writeln!(out, "#   {r}");
            }
        }
        out
    }

    /// The proposal as a policy, by parsing its own YAML: what is written is
    /// exactly what is checked.
    pub fn policy(&self) -> Result<Policy, crate::policy::PolicyError> {
        crate::policy::parse(self.yaml().as_bytes(), "proposal").map(|p| p.policy)
    }

    /// Compares with an existing policy: rules added and removed, and whether
    /// the old policy already allowed what each added rule covers.
    pub fn diff_against(&self, old: &Policy, old_compiled: &CompiledPolicy) -> PolicyDelta {
        let scope =
            |steps: &[String], scoped: bool| if scoped { steps.to_vec() } else { Vec::new() };
        let proposed: BTreeSet<(String, Vec<String>)> = self
            .entries
            .iter()
            .map(|e| (e.endpoint.clone(), sorted(scope(&e.steps, e.step_scoped))))
            .collect();
        let existing: BTreeMap<(String, Vec<String>), crate::policy::Origin> = old
            .rules
            .iter()
            .map(|r| {
                let steps = match &r.steps {
                    crate::policy::StepScope::Any => Vec::new(),
                    crate::policy::StepScope::Only(p) => {
                        sorted(p.iter().map(|s| s.0.clone()).collect())
                    }
                };
                ((r.endpoint.to_string(), steps), r.origin)
            })
            .collect();
        let mut added = Vec::new();
        let mut denied_connects = 0u64;
        let mut used = BTreeSet::new();
        for e in &self.entries {
            let key = (e.endpoint.clone(), sorted(scope(&e.steps, e.step_scoped)));
            let mut missing = 0;
            for o in &e.observed {
                match o.decision(old_compiled) {
                    Decision::Deny => missing += 1,
                    Decision::Allow(Allowed::Ip { rule }) => {
                        used.extend(old_compiled.ip_rules.get(rule).map(|r| r.origin))
                    }
                    Decision::Allow(Allowed::Name { rule, .. }) => {
                        used.extend(old_compiled.name_rules.get(rule).map(|r| r.origin));
                    }
                }
            }
            denied_connects += missing;
            if !existing.contains_key(&key) {
                added.push(AddedRule {
                    rule: describe(&key),
                    jobs: e.jobs,
                    of: e.of,
                    steps: e.steps.clone(),
                    already_allowed: missing == 0,
                });
            }
        }
        let (socket_added, socket_removed, denied_sockets) = self.socket_delta(old, old_compiled);
        added.extend(socket_added);
        let removed = existing
            .iter()
            .filter(|(k, _)| !proposed.contains(*k))
            .map(|(k, origin)| RemovedRule {
                rule: describe(k),
                origin: origin.to_string(),
                used: used.contains(origin),
            })
            .chain(socket_removed)
            .collect();
        PolicyDelta {
            old: old.source.clone(),
            old_digest: old.digest.clone(),
            added,
            removed,
            denied_destinations: denied_connects,
            denied_sockets,
        }
    }

    /// `sockets:` entries added and removed, and the (class, step) pairs
    /// opened in these jobs that the old policy would refuse.
    fn socket_delta(
        &self,
        old: &Policy,
        old_compiled: &CompiledPolicy,
    ) -> (Vec<AddedRule>, Vec<RemovedRule>, u64) {
        let existing: BTreeMap<(String, Vec<String>), crate::policy::Origin> = old
            .sockets
            .iter()
            .map(|r| {
                let steps = match &r.steps {
                    StepScope::Any => Vec::new(),
                    StepScope::Only(p) => sorted(p.iter().map(|s| s.0.clone()).collect()),
                };
                ((format!("sockets: {}", r.class), steps), r.origin)
            })
            .collect();
        let mut used = BTreeSet::new();
        let mut added = Vec::new();
        let mut refused = 0u64;
        for e in &self.sockets {
            let mut missing = 0;
            for step in &e.observed {
                match old_compiled.socket_rule(e.class, &step.as_match()) {
                    Some(rule) => {
                        used.insert(rule.origin);
                    }
                    None => missing += 1,
                }
            }
            refused += missing;
            let key = e.key();
            if !existing.contains_key(&key) {
                added.push(AddedRule {
                    rule: describe(&key),
                    jobs: e.jobs,
                    of: e.of,
                    steps: e.steps.clone(),
                    already_allowed: missing == 0,
                });
            }
        }
        let proposed: BTreeSet<(String, Vec<String>)> =
            self.sockets.iter().map(SocketEntry::key).collect();
        let removed = existing
            .iter()
            .filter(|(k, _)| !proposed.contains(*k))
            .map(|(k, origin)| RemovedRule {
                rule: describe(k),
                origin: origin.to_string(),
                used: used.contains(origin),
            })
            .collect();
        (added, removed, refused)
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

fn describe((endpoint, steps): &(String, Vec<String>)) -> String {
    if steps.is_empty() {
        endpoint.clone()
    } else {
        format!("{endpoint} (steps: {})", steps.join(", "))
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AddedRule {
    pub rule: String,
    pub jobs: usize,
    pub of: usize,
    pub steps: Vec<String>,
    /// The old policy already allowed everything this rule covers (through
    /// another, broader rule).
    pub already_allowed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemovedRule {
    pub rule: String,
    /// Where the old policy has it.
    pub origin: String,
    /// It allowed some of these jobs' traffic (which the proposal words
    /// differently, usually more narrowly).
    pub used: bool,
}

/// The difference between an existing policy and a proposal.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyDelta {
    pub old: String,
    pub old_digest: String,
    pub added: Vec<AddedRule>,
    pub removed: Vec<RemovedRule>,
    /// Distinct observed connects (destination, step, names) the old policy would deny.
    pub denied_destinations: u64,
    /// Distinct (socket class, step) pairs opened that the old policy's `sockets:` would refuse.
    pub denied_sockets: u64,
}

impl PolicyDelta {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let short = self.old_digest.get(..12).unwrap_or(&self.old_digest);
        let _ = writeln!(out, "--- {} (sha256 {short}…)", self.old);
        let _ = writeln!(out, "+++ proposal");
        for a in &self.added {
            let covered = if a.already_allowed {
                "; already allowed by the old policy"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "+ {}    # {}/{} jobs; steps: {}{covered}",
                a.rule,
                a.jobs,
                a.of,
                a.steps.join(", ")
            );
        }
        for r in &self.removed {
            let why = if r.used {
                "used; the proposal covers it with the rules above"
            } else {
                "not used by these jobs"
            };
            let _ = writeln!(out, "- {}    # {}; {why}", r.rule, r.origin);
        }
        if self.added.is_empty() && self.removed.is_empty() {
            let _ = writeln!(out, "  (no change)");
        }
        if self.denied_destinations == 0 && self.denied_sockets == 0 {
            let _ = writeln!(out, "The old policy allows everything these jobs did.");
        }
        if self.denied_destinations > 0 {
            let _ = writeln!(
                out,
                "The old policy would deny {} destination(s) these jobs used (`ciwatch policy diff` lists them).",
                self.denied_destinations
            );
        }
        if self.denied_sockets > 0 {
            let _ = writeln!(
                out,
                "The old policy would refuse {} raw, packet or ping socket(s) these jobs opened (by class and step).",
                self.denied_sockets
            );
        }
        out
    }

    /// Whether the old policy would have refused anything these jobs did.
    pub fn would_deny(&self) -> bool {
        self.denied_destinations > 0 || self.denied_sockets > 0
    }
}
