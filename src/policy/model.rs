//! The egress policy (docs/policy.md): what a job may connect to, and the
//! pure decision function that `policy diff`, `learn` and the tests use and
//! that the kernel programs mirror.
//!
//! A [`Policy`] is what the file (plus any `--allow` entries) says;
//! [`Policy::compiled`] turns it into flat IP and name rules with the
//! defaults made explicit, which is what enforcement consumes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::endpoint::{Endpoint, EndpointError, IpNet, Proto, Target};

/// The schema version this build reads and writes.
pub const VERSION: u32 = 1;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
#[clap(rename_all = "lowercase")]
pub enum Mode {
    /// Record everything.
    #[default]
    Observe,
    Learn,
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Observe => "observe",
            Mode::Learn => "learn",
            Mode::Enforce => "enforce",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "observe" => Some(Mode::Observe),
            "learn" => Some(Mode::Learn),
            "enforce" => Some(Mode::Enforce),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens when the policy cannot be loaded or is unusable (an empty
/// allowlist in enforce mode): fail the job at start (default), or fall back
/// to observe, recorded as such in the trace, summary and attestation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[clap(rename_all = "lowercase")]
pub enum OnPolicyError {
    #[default]
    Fail,
    Observe,
}

impl OnPolicyError {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "fail" => Some(OnPolicyError::Fail),
            "observe" => Some(OnPolicyError::Observe),
            _ => None,
        }
    }
}

/// Traffic allowed without a rule, each switchable off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Defaults {
    /// 127.0.0.0/8, ::1, and the unspecified 0.0.0.0 and :: (which Linux
    /// routes to the local host), any port and protocol.
    pub loopback: bool,
    /// The nameservers of /etc/resolv.conf, port 53, TCP and UDP.
    pub resolver: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            loopback: true,
            resolver: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DnsPolicy {
    /// Refuse lookups of names no name rule matches (they are always reported).
    pub refuse_unlisted: bool,
}

/// Steps a rule applies in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum StepScope {
    /// Every step of the job (no `steps:` given).
    Any,
    /// Only steps whose id or name matches one of these patterns.
    Only(Vec<StepPattern>),
}

impl StepScope {
    pub fn matches(&self, step: &StepMatch<'_>) -> bool {
        match self {
            StepScope::Any => true,
            StepScope::Only(patterns) => patterns.iter().any(|p| p.matches(step)),
        }
    }

    pub fn is_any(&self) -> bool {
        matches!(self, StepScope::Any)
    }
}

/// A step id, a step name, or a glob over either (`*` any run of characters,
/// `?` one character). Case-sensitive, like the names in a workflow file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StepPattern(pub String);

impl StepPattern {
    pub fn matches(&self, step: &StepMatch<'_>) -> bool {
        glob(&self.0, step.id) || step.name.is_some_and(|n| glob(&self.0, n))
    }
}

/// The step a connection or lookup happened in, as the event log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepMatch<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
}

impl<'a> StepMatch<'a> {
    pub fn new(id: &'a str, name: Option<&'a str>) -> Self {
        Self { id, name }
    }
}

/// `*` and `?` over characters; iterative with one backtrack point, so it is
/// linear enough for step names and never recurses.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Where a rule came from, for messages and the denied-event report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Origin {
    /// An `allow:` entry of the policy file, at this line.
    File { line: u32 },
    /// The n-th (0-based) `--allow` / `allowed-endpoints` entry.
    CommandLine { index: u32 },
    /// `defaults.loopback`.
    Loopback,
    /// `defaults.resolver`.
    Resolver,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { line } => write!(f, "line {line}"),
            Origin::CommandLine { index } => write!(f, "--allow #{}", index + 1),
            Origin::Loopback => f.write_str("defaults.loopback"),
            Origin::Resolver => f.write_str("defaults.resolver"),
        }
    }
}

/// One `allow:` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    #[serde(serialize_with = "display")]
    pub endpoint: Endpoint,
    pub steps: StepScope,
    pub origin: Origin,
}

fn display<T: fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Rule {
    /// The rule in the short form, with its steps: for messages and diffs.
    pub fn describe(&self) -> String {
        match &self.steps {
            StepScope::Any => self.endpoint.to_string(),
            StepScope::Only(p) => {
                let names: Vec<&str> = p.iter().map(|s| s.0.as_str()).collect();
                format!("{} (steps: {})", self.endpoint, names.join(", "))
            }
        }
    }
}

/// Sockets whose traffic passes no connect or sendmsg hook, so no `allow:`
/// rule can judge it; a job opens them only where `sockets:` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketClass {
    /// `SOCK_RAW`, IPv4 or IPv6.
    Raw,
    /// `AF_PACKET`.
    Packet,
    /// ICMP and ICMPv6 echo sockets (`SOCK_DGRAM`).
    Ping,
}

impl SocketClass {
    pub const ALL: [SocketClass; 3] = [SocketClass::Raw, SocketClass::Packet, SocketClass::Ping];

    pub fn as_str(self) -> &'static str {
        match self {
            SocketClass::Raw => "raw",
            SocketClass::Packet => "packet",
            SocketClass::Ping => "ping",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

impl fmt::Display for SocketClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `sockets:` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocketRule {
    pub class: SocketClass,
    pub steps: StepScope,
    pub origin: Origin,
}

impl SocketRule {
    /// The entry in the short form, with its steps: for messages.
    pub fn describe(&self) -> String {
        match &self.steps {
            StepScope::Any => self.class.to_string(),
            StepScope::Only(p) => {
                let names: Vec<&str> = p.iter().map(|s| s.0.as_str()).collect();
                format!("{} (steps: {})", self.class, names.join(", "))
            }
        }
    }
}

/// A loaded policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub version: u32,
    pub mode: Mode,
    pub on_policy_error: OnPolicyError,
    pub defaults: Defaults,
    pub dns: DnsPolicy,
    /// `no-egress: true`: an empty allowlist in enforce mode is intended.
    pub no_egress: bool,
    pub rules: Vec<Rule>,
    /// Raw, packet and ping sockets the job may open (none unless listed).
    pub sockets: Vec<SocketRule>,
    /// SHA-256 of the file's exact bytes, lowercase hex. For a policy made
    /// only of `--allow` entries, of their canonical forms, one per line.
    pub digest: String,
    /// The file it came from, or `--allow` (for messages).
    pub source: String,
}

/// The policy is loadable but not usable as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error(
        "{policy}: the allowlist is empty in enforce mode, which would deny all egress but loopback and the \
         resolver; add `allow:` entries (or --allow), or set `no-egress: true` if that is intended"
    )]
    EmptyAllowlist { policy: String },
    #[error("--allow {entry:?}: {error}")]
    Allow { entry: String, error: EndpointError },
}

impl Policy {
    /// A policy made only of `--allow` / `allowed-endpoints` entries.
    pub fn from_endpoints(mode: Mode, entries: &[String]) -> Result<Self, UsageError> {
        let mut policy = Policy {
            version: VERSION,
            mode,
            on_policy_error: OnPolicyError::Fail,
            defaults: Defaults::default(),
            dns: DnsPolicy::default(),
            no_egress: false,
            rules: Vec::new(),
            sockets: Vec::new(),
            digest: String::new(),
            source: "--allow".into(),
        };
        policy.add_endpoints(entries)?;
        let canonical: String = policy
            .rules
            .iter()
            .map(|r| format!("{}\n", r.endpoint))
            .collect();
        policy.digest = super::sha256_hex(canonical.as_bytes());
        Ok(policy)
    }

    /// Adds `--allow` entries (job-wide) to a file's rules. Duplicates of
    /// existing rules are skipped: the command line may repeat the file.
    pub fn add_endpoints(&mut self, entries: &[String]) -> Result<(), UsageError> {
        for (index, entry) in entries.iter().enumerate() {
            let endpoint: Endpoint = entry.parse().map_err(|error| UsageError::Allow {
                entry: entry.clone(),
                error,
            })?;
            let origin = Origin::CommandLine {
                index: u32::try_from(index).unwrap_or(u32::MAX),
            };
            if !self
                .rules
                .iter()
                .any(|r| r.endpoint == endpoint && r.steps.is_any())
            {
                self.rules.push(Rule {
                    endpoint,
                    steps: StepScope::Any,
                    origin,
                });
            }
        }
        Ok(())
    }

    /// Checks what parsing alone cannot: call after adding `--allow` entries.
    pub fn validate(&self) -> Result<(), UsageError> {
        if self.mode == Mode::Enforce && self.rules.is_empty() && !self.no_egress {
            return Err(UsageError::EmptyAllowlist {
                policy: self.source.clone(),
            });
        }
        Ok(())
    }

    /// Compiled against this host's resolvers (/etc/resolv.conf).
    pub fn compiled(&self) -> CompiledPolicy {
        self.compiled_with(&super::resolv::system_nameservers())
    }

    /// Compiled against the given resolver addresses (tests, and `policy diff`
    /// of a trace recorded on another host).
    pub fn compiled_with(&self, resolvers: &[IpAddr]) -> CompiledPolicy {
        let mut ip_rules = Vec::new();
        let mut name_rules = Vec::new();
        if self.defaults.loopback {
            for net in loopback_nets() {
                ip_rules.push(IpRule {
                    net,
                    port: None,
                    protocol: None,
                    steps: StepScope::Any,
                    origin: Origin::Loopback,
                });
            }
        }
        if self.defaults.resolver {
            let mut seen = Vec::new();
            for &addr in resolvers {
                let net = IpNet::host(addr);
                if !seen.contains(&net) {
                    seen.push(net);
                    ip_rules.push(IpRule {
                        net,
                        port: Some(53),
                        protocol: None,
                        steps: StepScope::Any,
                        origin: Origin::Resolver,
                    });
                }
            }
        }
        for rule in &self.rules {
            let Endpoint {
                target,
                port,
                protocol,
            } = &rule.endpoint;
            let (port, protocol, steps, origin) =
                (*port, *protocol, rule.steps.clone(), rule.origin);
            match target {
                Target::Net(net) => ip_rules.push(IpRule {
                    net: *net,
                    port,
                    protocol,
                    steps,
                    origin,
                }),
                Target::Host(h) => {
                    name_rules.push(NameRule {
                        pattern: NamePattern::Exact(h.clone()),
                        port,
                        protocol,
                        steps,
                        origin,
                    });
                }
                Target::Wildcard(p) => {
                    name_rules.push(NameRule {
                        pattern: NamePattern::Subdomains(p.clone()),
                        port,
                        protocol,
                        steps,
                        origin,
                    });
                }
            }
        }
        CompiledPolicy {
            mode: self.mode,
            refuse_unlisted_dns: self.dns.refuse_unlisted,
            ip_rules,
            name_rules,
            socket_rules: self.sockets.clone(),
        }
    }
}

fn loopback_nets() -> [IpNet; 4] {
    let v4 = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0));
    [
        // 127.0.0.0/8 is a valid network; the fallback is unreachable.
        IpNet::new(v4, 8).unwrap_or_else(|_| IpNet::host(v4)),
        IpNet::host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        IpNet::host(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        IpNet::host(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    ]
}

/// A name pattern of a name rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NamePattern {
    /// Exactly this name (lower-case, no trailing dot).
    Exact(String),
    /// Any name one or more labels below this parent; never the parent itself.
    Subdomains(String),
}

impl NamePattern {
    pub fn matches(&self, host: &str) -> bool {
        let host = normalize_name(host);
        match self {
            NamePattern::Exact(name) => host == *name,
            NamePattern::Subdomains(parent) => {
                host.len() > parent.len() + 1
                    && host.ends_with(parent.as_str())
                    && host.as_bytes()[host.len() - parent.len() - 1] == b'.'
            }
        }
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamePattern::Exact(n) => f.write_str(n),
            NamePattern::Subdomains(p) => write!(f, "*.{p}"),
        }
    }
}

/// Lower-case, without a trailing dot: how names are compared.
pub fn normalize_name(host: &str) -> String {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

/// An address rule: the kernel's LPM-trie material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpRule {
    #[serde(serialize_with = "display")]
    pub net: IpNet,
    /// `None`: every port.
    pub port: Option<u16>,
    /// `None`: every protocol.
    pub protocol: Option<Proto>,
    pub steps: StepScope,
    pub origin: Origin,
}

impl IpRule {
    pub fn matches(
        &self,
        addr: IpAddr,
        port: u16,
        proto: Option<Proto>,
        step: &StepMatch<'_>,
    ) -> bool {
        self.net.contains(addr)
            && port_proto_match(self.port, self.protocol, port, proto)
            && self.steps.matches(step)
    }
}

/// A host-name rule: allows an address only once the job itself resolved a
/// matching name to it (the kernel inserts the answer before `getaddrinfo`
/// returns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NameRule {
    pub pattern: NamePattern,
    pub port: Option<u16>,
    pub protocol: Option<Proto>,
    pub steps: StepScope,
    pub origin: Origin,
}

impl NameRule {
    pub fn matches_name(&self, host: &str) -> bool {
        self.pattern.matches(host)
    }
}

fn port_proto_match(
    rule_port: Option<u16>,
    rule_proto: Option<Proto>,
    port: u16,
    proto: Option<Proto>,
) -> bool {
    rule_port.is_none_or(|p| p == port) && rule_proto.is_none_or(|p| Some(p) == proto)
}

/// The flat rule set enforcement consumes. Defaults are explicit IP rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CompiledPolicy {
    pub mode: Mode,
    pub refuse_unlisted_dns: bool,
    pub ip_rules: Vec<IpRule>,
    pub name_rules: Vec<NameRule>,
    pub socket_rules: Vec<SocketRule>,
}

/// Which rule let a connection through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "by")]
pub enum Allowed {
    /// `ip_rules[rule]`.
    Ip { rule: usize },
    /// `name_rules[rule]`, through the job's resolution of `name`.
    Name { rule: usize, name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "decision")]
pub enum Decision {
    Allow(Allowed),
    Deny,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

impl CompiledPolicy {
    /// The verdict for one connect or sendmsg: `addr:port` over `proto`
    /// (`None` for anything but TCP and UDP) in `step`, where
    /// `resolved_names` are the names the job resolved to `addr` before it
    /// (the connect record's `hosts`). IP rules are tried first, then name
    /// rules; the first match wins. IPv4-mapped IPv6 addresses are treated as
    /// the IPv4 address.
    pub fn allows(
        &self,
        addr: IpAddr,
        port: u16,
        proto: Option<Proto>,
        step: &StepMatch<'_>,
        resolved_names: &[String],
    ) -> Decision {
        let addr = addr.to_canonical();
        if let Some(rule) = self
            .ip_rules
            .iter()
            .position(|r| r.matches(addr, port, proto, step))
        {
            return Decision::Allow(Allowed::Ip { rule });
        }
        for name in resolved_names {
            let found = self.name_rules.iter().position(|r| {
                r.matches_name(name)
                    && port_proto_match(r.port, r.protocol, port, proto)
                    && r.steps.matches(step)
            });
            if let Some(rule) = found {
                return Decision::Allow(Allowed::Name {
                    rule,
                    name: normalize_name(name),
                });
            }
        }
        Decision::Deny
    }

    /// Name rules a resolved name enables (any step): the kernel inserts the
    /// answer's addresses for each, with the rule's port, protocol and steps.
    pub fn name_rules_for<'a>(
        &'a self,
        host: &'a str,
    ) -> impl Iterator<Item = (usize, &'a NameRule)> + 'a {
        self.name_rules
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.matches_name(host))
    }

    /// Whether any rule is limited to some steps; when none is, enforcement
    /// needs no per-step state at all.
    pub fn has_step_scopes(&self) -> bool {
        self.ip_rules.iter().any(|r| !r.steps.is_any())
            || self.name_rules.iter().any(|r| !r.steps.is_any())
            || self.socket_rules.iter().any(|r| !r.steps.is_any())
    }

    /// The first `sockets:` entry in scope for the step that allows a socket
    /// of this class; None: enforce refuses it.
    pub fn socket_rule(&self, class: SocketClass, step: &StepMatch<'_>) -> Option<&SocketRule> {
        self.socket_rules
            .iter()
            .find(|r| r.class == class && r.steps.matches(step))
    }

    /// The rules in force in one step: indexes into `ip_rules` and
    /// `name_rules`. Computed once when a step is identified, this is what a
    /// per-step bitmap in the kernel holds.
    pub fn rules_in_scope(&self, step: &StepMatch<'_>) -> (Vec<usize>, Vec<usize>) {
        let ip = self
            .ip_rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.steps.matches(step))
            .map(|(i, _)| i)
            .collect();
        let name = self
            .name_rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.steps.matches(step))
            .map(|(i, _)| i)
            .collect();
        (ip, name)
    }

    /// Whether a lookup of `host` in `step` is listed: some name rule in
    /// scope for the step matches it. Unlisted lookups are reported, and
    /// refused when `refuse_unlisted_dns`.
    pub fn dns_listed(&self, host: &str, step: &StepMatch<'_>) -> bool {
        self.name_rules
            .iter()
            .any(|r| r.matches_name(host) && r.steps.matches(step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: Mode, entries: &[&str]) -> Policy {
        Policy::from_endpoints(
            mode,
            &entries.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const MAIN: StepMatch<'static> = StepMatch {
        id: "b2f7",
        name: Some("Build"),
    };

    #[test]
    fn sockets_are_allowed_only_by_an_entry_in_scope() {
        let mut p = policy(Mode::Enforce, &["a.example"]);
        let scoped = |class, pattern: &str| SocketRule {
            class,
            steps: StepScope::Only(vec![StepPattern(pattern.into())]),
            origin: Origin::File { line: 1 },
        };
        p.sockets = vec![
            SocketRule {
                class: SocketClass::Ping,
                steps: StepScope::Any,
                origin: Origin::File { line: 1 },
            },
            scoped(SocketClass::Raw, "Bui*"),
        ];
        let c = p.compiled_with(&[]);
        let test = StepMatch::new("t1", Some("Test"));
        let allows = |class, step| c.socket_rule(class, step).is_some();
        assert!(allows(SocketClass::Ping, &MAIN) && allows(SocketClass::Ping, &test));
        assert_eq!(
            c.socket_rule(SocketClass::Raw, &MAIN).map(|r| &r.steps),
            Some(&StepScope::Only(vec![StepPattern("Bui*".into())]))
        );
        assert!(!allows(SocketClass::Raw, &test));
        assert!(!allows(SocketClass::Packet, &MAIN), "unlisted");
        assert!(
            c.has_step_scopes(),
            "a scoped socket entry needs step groups"
        );
        assert_eq!(SocketClass::parse("packet"), Some(SocketClass::Packet));
        assert_eq!(SocketClass::parse("Packet"), None);
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("Build", "Build", true),
            ("Build", "build", false),
            ("Run *", "Run actions/checkout@v4", true),
            ("*checkout*", "Run actions/checkout@v4", true),
            ("Te?t", "Test", true),
            ("Te?t", "Tet", false),
            ("*", "", true),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
        ] {
            assert_eq!(glob(p, t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn wildcards_match_subdomains_never_the_parent() {
        let p = NamePattern::Subdomains("example.com".into());
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.example.com"));
        assert!(p.matches("A.Example.COM."));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        assert!(!p.matches("example.com.evil.net"));
        assert!(!p.matches(".example.com"));
        let e = NamePattern::Exact("github.com".into());
        assert!(e.matches("GitHub.com."));
        assert!(!e.matches("api.github.com"));
    }

    #[test]
    fn ip_and_cidr_rules_v4_and_v6() {
        let c = policy(
            Mode::Enforce,
            &["192.0.2.10", "10.0.0.0/8:443", "[2001:db8::/32]:443"],
        )
        .compiled_with(&[]);
        let tcp = Some(Proto::Tcp);
        assert!(c.allows(ip("192.0.2.10"), 22, tcp, &MAIN, &[]).is_allowed());
        assert!(!c.allows(ip("192.0.2.11"), 22, tcp, &MAIN, &[]).is_allowed());
        assert!(c.allows(ip("10.9.8.7"), 443, tcp, &MAIN, &[]).is_allowed());
        assert!(
            !c.allows(ip("10.9.8.7"), 80, tcp, &MAIN, &[]).is_allowed(),
            "port is part of the rule"
        );
        assert!(
            c.allows(ip("::ffff:10.9.8.7"), 443, tcp, &MAIN, &[])
                .is_allowed(),
            "v4-mapped v6 = v4"
        );
        assert!(c
            .allows(ip("2001:db8:1::5"), 443, tcp, &MAIN, &[])
            .is_allowed());
        assert!(!c
            .allows(ip("2001:db9::5"), 443, tcp, &MAIN, &[])
            .is_allowed());
        assert!(!c
            .allows(ip("2001:db8::5"), 80, tcp, &MAIN, &[])
            .is_allowed());
    }

    #[test]
    fn protocol_narrows() {
        let c = policy(Mode::Enforce, &["192.0.2.1:53/udp", "192.0.2.2/tcp"]).compiled_with(&[]);
        assert!(c
            .allows(ip("192.0.2.1"), 53, Some(Proto::Udp), &MAIN, &[])
            .is_allowed());
        assert!(!c
            .allows(ip("192.0.2.1"), 53, Some(Proto::Tcp), &MAIN, &[])
            .is_allowed());
        assert!(
            !c.allows(ip("192.0.2.1"), 53, None, &MAIN, &[]).is_allowed(),
            "raw sockets are not udp"
        );
        assert!(c
            .allows(ip("192.0.2.2"), 1234, Some(Proto::Tcp), &MAIN, &[])
            .is_allowed());
        assert!(!c
            .allows(ip("192.0.2.2"), 1234, Some(Proto::Udp), &MAIN, &[])
            .is_allowed());
    }

    #[test]
    fn names_allow_only_through_the_jobs_resolution() {
        let c = policy(
            Mode::Enforce,
            &["github.com:443", "*.githubusercontent.com:443"],
        )
        .compiled_with(&[]);
        let a = ip("140.82.112.3");
        let tcp = Some(Proto::Tcp);
        assert_eq!(
            c.allows(a, 443, tcp, &MAIN, &[]),
            Decision::Deny,
            "an address nobody resolved"
        );
        assert_eq!(
            c.allows(
                a,
                443,
                tcp,
                &MAIN,
                &["evil.example".into(), "GitHub.com".into()]
            ),
            Decision::Allow(Allowed::Name {
                rule: 0,
                name: "github.com".into()
            })
        );
        assert_eq!(
            c.allows(a, 22, tcp, &MAIN, &["github.com".into()]),
            Decision::Deny
        );
        assert!(c
            .allows(a, 443, tcp, &MAIN, &["raw.githubusercontent.com".into()])
            .is_allowed());
        assert!(!c
            .allows(a, 443, tcp, &MAIN, &["githubusercontent.com".into()])
            .is_allowed());
        assert_eq!(
            c.name_rules_for("objects.githubusercontent.com")
                .map(|(i, _)| i)
                .collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn step_scoping() {
        let mut p = policy(Mode::Enforce, &[]);
        p.rules.push(Rule {
            endpoint: "registry.npmjs.org:443".parse().unwrap(),
            steps: StepScope::Only(vec![
                StepPattern("Install*".into()),
                StepPattern("7f3a".into()),
            ]),
            origin: Origin::File { line: 3 },
        });
        let c = p.compiled_with(&[]);
        let names = ["registry.npmjs.org".to_string()];
        let a = ip("104.16.1.1");
        let tcp = Some(Proto::Tcp);
        assert!(c
            .allows(
                a,
                443,
                tcp,
                &StepMatch::new("x", Some("Install deps")),
                &names
            )
            .is_allowed());
        assert!(
            c.allows(a, 443, tcp, &StepMatch::new("7f3a", None), &names)
                .is_allowed(),
            "by id"
        );
        assert!(
            !c.allows(a, 443, tcp, &MAIN, &names).is_allowed(),
            "same destination, another step"
        );
        assert!(c.dns_listed("registry.npmjs.org", &StepMatch::new("x", Some("Install"))));
        assert!(!c.dns_listed("registry.npmjs.org", &MAIN));
        assert!(c.has_step_scopes());
        assert!(!policy(Mode::Enforce, &["a.example"])
            .compiled_with(&[])
            .has_step_scopes());
        // Loopback rules (4) apply everywhere; the registry rule only in Install.
        assert_eq!(c.rules_in_scope(&MAIN), (vec![0, 1, 2, 3], vec![]));
        assert_eq!(
            c.rules_in_scope(&StepMatch::new("x", Some("Install 2"))),
            (vec![0, 1, 2, 3], vec![0])
        );
    }

    #[test]
    fn defaults_are_explicit_and_switchable() {
        let mut p = policy(Mode::Enforce, &["github.com"]);
        let resolvers = [ip("10.1.0.2"), ip("fd00::53")];
        let c = p.compiled_with(&resolvers);
        let tcp = Some(Proto::Tcp);
        let udp = Some(Proto::Udp);
        for lo in [
            "127.0.0.1",
            "127.0.0.53",
            "127.255.0.1",
            "::1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
        ] {
            assert!(c.allows(ip(lo), 8080, tcp, &MAIN, &[]).is_allowed(), "{lo}");
        }
        assert!(c.allows(ip("10.1.0.2"), 53, udp, &MAIN, &[]).is_allowed());
        assert!(c.allows(ip("fd00::53"), 53, tcp, &MAIN, &[]).is_allowed());
        assert!(
            !c.allows(ip("10.1.0.2"), 80, tcp, &MAIN, &[]).is_allowed(),
            "only port 53 of the resolver"
        );
        assert!(
            !c.allows(ip("8.8.8.8"), 53, udp, &MAIN, &[]).is_allowed(),
            "not a configured resolver"
        );
        assert_eq!(
            c.ip_rules
                .iter()
                .filter(|r| r.origin == Origin::Loopback)
                .count(),
            4
        );
        p.defaults = Defaults {
            loopback: false,
            resolver: false,
        };
        let c = p.compiled_with(&resolvers);
        assert!(c.ip_rules.is_empty());
        assert!(!c
            .allows(ip("127.0.0.1"), 8080, tcp, &MAIN, &[])
            .is_allowed());
        assert!(!c.allows(ip("10.1.0.2"), 53, udp, &MAIN, &[]).is_allowed());
    }

    #[test]
    fn empty_allowlist_in_enforce_is_refused_unless_intended() {
        let mut p = policy(Mode::Enforce, &[]);
        assert!(matches!(
            p.validate(),
            Err(UsageError::EmptyAllowlist { .. })
        ));
        p.no_egress = true;
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(policy(Mode::Observe, &[]).validate(), Ok(()));
        let mut p = policy(Mode::Enforce, &[]);
        p.add_endpoints(&["127.0.0.1".into()]).unwrap();
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn allow_entries_are_checked_and_deduplicated() {
        let mut p = policy(Mode::Enforce, &["github.com:443"]);
        p.add_endpoints(&["GitHub.com:443".into(), "example.org".into()])
            .unwrap();
        assert_eq!(p.rules.len(), 2);
        let err = p.add_endpoints(&["a.*.b".into()]).unwrap_err();
        assert!(err.to_string().contains("leftmost label"), "{err}");
    }
}
