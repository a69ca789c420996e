//! Reading a policy file: size and encoding checks before any YAML parsing,
//! then serde-saphyr into span-carrying raw structs, then validation that
//! names the line, column and field of every mistake. Never panics.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::endpoint::{Endpoint, EndpointError, Proto, Target};
use super::model::{
    Defaults, DnsPolicy, Mode, OnPolicyError, Origin, Policy, Rule, SocketClass, SocketRule,
    StepPattern, StepScope, VERSION,
};

/// Policy files larger than this are refused before parsing: a policy is a
/// list of endpoints, and 1 MiB is some 30,000 of them.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Where in the file: 1-based line and column (0 when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    fn of(loc: &Location) -> Self {
        Pos {
            line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
            column: u32::try_from(loc.column()).unwrap_or(u32::MAX),
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => Ok(()),
            (l, 0) => write!(f, "{l}:"),
            (l, c) => write!(f, "{l}:{c}:"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("policy file {path} is {size} bytes, over the {limit}-byte limit (a policy is a list of endpoints)")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{path}:{line}: not valid UTF-8 at byte {offset}; save the policy as UTF-8")]
    NotUtf8 {
        path: String,
        offset: usize,
        line: u32,
    },
    #[error("{path}:{pos} {message}")]
    Yaml {
        path: String,
        pos: Pos,
        message: String,
    },
    #[error("{path}:{pos} {field}: {message}")]
    Invalid {
        path: String,
        pos: Pos,
        field: String,
        message: String,
    },
    #[error("{path}:{pos} {field}: duplicate rule {rule} (already at line {first_line})")]
    Duplicate {
        path: String,
        pos: Pos,
        field: String,
        rule: String,
        first_line: u32,
    },
}

impl PolicyError {
    /// The 1-based line the error is on, when it has one.
    pub fn line(&self) -> Option<u32> {
        match self {
            PolicyError::NotUtf8 { line, .. } => Some(*line),
            PolicyError::Yaml { pos, .. }
            | PolicyError::Invalid { pos, .. }
            | PolicyError::Duplicate { pos, .. } => (pos.line > 0).then_some(pos.line),
            PolicyError::Read { .. } | PolicyError::TooLarge { .. } => None,
        }
    }
}

/// Something legal but worth a second look (`policy check` prints them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: u32,
    pub message: String,
}

/// A parsed policy and its warnings.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub policy: Policy,
    pub warnings: Vec<Warning>,
}

/// Reads and parses a policy file, refusing one over [`MAX_POLICY_BYTES`]
/// before reading it whole.
pub fn load(path: &Path) -> Result<Parsed, PolicyError> {
    let name = path.display().to_string();
    let read_err = |source| PolicyError::Read {
        path: name.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            path: name,
            size,
            limit: MAX_POLICY_BYTES,
        });
    }
    let mut bytes = Vec::new();
    // The size may change between stat and read (a pipe, a growing file).
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    parse(&bytes, &name)
}

/// Parses policy bytes; `name` is used in messages.
pub fn parse(bytes: &[u8], name: &str) -> Result<Parsed, PolicyError> {
    let size = bytes.len() as u64;
    if size > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            path: name.into(),
            size,
            limit: MAX_POLICY_BYTES,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let offset = e.valid_up_to();
        let line = bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
        PolicyError::NotUtf8 {
            path: name.into(),
            offset,
            line: u32::try_from(line).unwrap_or(u32::MAX),
        }
    })?;
    let raw: RawPolicy = serde_saphyr::from_str_with_options(text, yaml_options())
        .map_err(|e| yaml_error(&e, name))?;
    let mut parsed = Validator {
        path: name,
        source: text,
        warnings: Vec::new(),
    }
    .policy(raw)?;
    parsed.policy.digest = super::sha256_hex(bytes);
    Ok(parsed)
}

/// When a file cannot be parsed at all, its `on-policy-error` cannot be read
/// either; this finds a top-level `on-policy-error: observe` line anyway, so
/// the documented fallback still works for a file broken elsewhere.
pub fn on_policy_error_hint(bytes: &[u8]) -> OnPolicyError {
    let text = String::from_utf8_lossy(bytes);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("on-policy-error:") else {
            continue;
        };
        let value = rest
            .split('#')
            .next()
            .unwrap_or_default()
            .trim()
            .trim_matches(|c| c == '"' || c == '\'');
        return OnPolicyError::parse(value).unwrap_or_default();
    }
    OnPolicyError::Fail
}

/// YAML 1.2 booleans only, so a step named `y` or `on` stays a name; numbers
/// keep their spelling (`0443`, `1_000`) so our own checks see what was written.
fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.strict_booleans = true;
    o.leading_zero_numbers_as_strings = true;
    o.underscored_numbers_as_strings = true;
    o.with_snippet = false;
    o
}

fn yaml_error(e: &serde_saphyr::Error, path: &str) -> PolicyError {
    let pos = e
        .location()
        .map(|l| Pos::of(&l))
        .unwrap_or(Pos { line: 0, column: 0 });
    // The plain message; the location is ours to print, in the path:line:col form.
    let full = e.without_snippet().to_string();
    let message = strip_location(&full);
    PolicyError::Yaml {
        path: path.into(),
        pos,
        message: message.to_string(),
    }
}

fn strip_location(message: &str) -> &str {
    let first = message.lines().next().unwrap_or(message);
    match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    }
}

// ---- the raw file, as written ------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPolicy {
    version: Spanned<Scalar>,
    mode: Spanned<Scalar>,
    #[serde(default)]
    on_policy_error: Option<Spanned<Scalar>>,
    #[serde(default)]
    defaults: Option<RawDefaults>,
    #[serde(default)]
    dns: Option<RawDns>,
    #[serde(default)]
    no_egress: Option<Spanned<bool>>,
    #[serde(default)]
    allow: Option<Spanned<Vec<Spanned<RawEntry>>>>,
    #[serde(default)]
    sockets: Option<Spanned<Vec<Spanned<RawSocket>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDefaults {
    #[serde(default)]
    loopback: Option<bool>,
    #[serde(default)]
    resolver: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDns {
    #[serde(default)]
    refuse_unlisted: Option<bool>,
}

/// The long form of an `allow:` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLong {
    host: Spanned<Scalar>,
    #[serde(default)]
    port: Option<Spanned<Scalar>>,
    #[serde(default)]
    protocol: Option<Spanned<Scalar>>,
    #[serde(default)]
    steps: Option<Spanned<Vec<Spanned<Scalar>>>>,
}

/// An `allow:` entry.
type RawEntry = ShortOrLong<RawLong>;

/// The long form of a `sockets:` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSocketLong {
    class: Spanned<Scalar>,
    #[serde(default)]
    steps: Option<Spanned<Vec<Spanned<Scalar>>>>,
}

/// A `sockets:` entry.
type RawSocket = ShortOrLong<RawSocketLong>;

/// What a list entry's deserialiser says it expected.
trait LongForm {
    const EXPECTING: &'static str;
}

impl LongForm for RawLong {
    const EXPECTING: &'static str =
        "an endpoint string or a mapping with host, port, protocol, steps";
}

impl LongForm for RawSocketLong {
    const EXPECTING: &'static str = "raw, packet or ping, or a mapping with class, steps";
}

/// A list entry written as one scalar, or as a mapping.
enum ShortOrLong<L> {
    Short(Scalar),
    Long(Box<L>),
}

impl<'de, L: Deserialize<'de> + LongForm> Deserialize<'de> for ShortOrLong<L> {
    // By hand rather than `untagged`: untagged enums lose both the spans and
    // the inner error (an unknown field would become "did not match any variant").
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<L>(std::marker::PhantomData<L>);
        impl<'de, L: Deserialize<'de> + LongForm> Visitor<'de> for V<L> {
            type Value = ShortOrLong<L>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(L::EXPECTING)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ShortOrLong::Short(Scalar::text(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(ShortOrLong::Short(Scalar::number(v.to_string())))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ShortOrLong::Short(Scalar::number(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(ShortOrLong::Short(Scalar::number(v.to_string())))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                L::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|l| ShortOrLong::Long(Box::new(l)))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Any YAML scalar, kept as text, so ports, modes and versions get our own
/// messages ("port \"https\" is not a number from 1 to 65535") rather than a
/// type error.
#[derive(Debug, Clone)]
struct Scalar {
    text: String,
    is_number: bool,
}

impl Scalar {
    fn text(v: &str) -> Self {
        Scalar {
            text: v.to_string(),
            is_number: false,
        }
    }
    fn number(v: String) -> Self {
        Scalar {
            text: v,
            is_number: true,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a single value (text or number)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::text(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::text(if v { "true" } else { "false" }))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::number(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::number(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::number(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

// ---- validation --------------------------------------------------------------

struct Validator<'a> {
    path: &'a str,
    source: &'a str,
    warnings: Vec<Warning>,
}

impl Validator<'_> {
    fn invalid(
        &self,
        loc: &Location,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> PolicyError {
        PolicyError::Invalid {
            path: self.path.into(),
            pos: Pos::of(loc),
            field: field.into(),
            message: message.into(),
        }
    }

    /// A scalar as written. YAML numbers arrive as their value, so without this
    /// `port: 1.5e3`, `0x1bb` or `+443` would pass as the integer they evaluate to.
    fn written<'s>(&'s self, scalar: &'s Spanned<Scalar>) -> &'s str {
        if !scalar.value.is_number {
            return &scalar.value.text;
        }
        let span = scalar.referenced.span();
        span.byte_offset()
            .zip(span.byte_len())
            .and_then(|(start, len)| {
                let start = usize::try_from(start).ok()?;
                let end = start.checked_add(usize::try_from(len).ok()?)?;
                self.source.get(start..end)
            })
            .unwrap_or(&scalar.value.text)
    }

    fn policy(mut self, raw: RawPolicy) -> Result<Parsed, PolicyError> {
        let version = &raw.version;
        if !version.value.is_number {
            return Err(self.invalid(
                &version.referenced,
                "version",
                format!(
                    "must be a number (version {VERSION}), not the text {:?}",
                    version.value.text
                ),
            ));
        }
        if self.written(version) != VERSION.to_string() {
            return Err(self.invalid(
                &version.referenced,
                "version",
                format!(
                    "unsupported version {}: this ciwatch reads version {VERSION}",
                    self.written(version)
                ),
            ));
        }
        let mode = Mode::parse(&raw.mode.value.text).ok_or_else(|| {
            self.invalid(
                &raw.mode.referenced,
                "mode",
                format!(
                    "unknown mode {:?}: expected observe, learn or enforce",
                    raw.mode.value.text
                ),
            )
        })?;
        let on_policy_error = match &raw.on_policy_error {
            None => OnPolicyError::Fail,
            Some(s) => OnPolicyError::parse(&s.value.text).ok_or_else(|| {
                self.invalid(
                    &s.referenced,
                    "on-policy-error",
                    format!("unknown value {:?}: expected fail or observe", s.value.text),
                )
            })?,
        };
        let defaults = raw.defaults.map_or_else(Defaults::default, |d| Defaults {
            loopback: d.loopback.unwrap_or(true),
            resolver: d.resolver.unwrap_or(true),
        });
        let dns = DnsPolicy {
            refuse_unlisted: raw.dns.and_then(|d| d.refuse_unlisted).unwrap_or(false),
        };
        let rules = match &raw.allow {
            None => Vec::new(),
            Some(list) => self.rules(&list.value)?,
        };
        let sockets = match &raw.sockets {
            None => Vec::new(),
            Some(list) => self.sockets(&list.value)?,
        };
        let no_egress = raw.no_egress.as_ref().is_some_and(|n| n.value);
        if let (Some(n), false) = (&raw.no_egress, rules.is_empty()) {
            if n.value {
                return Err(self.invalid(
                    &n.referenced,
                    "no-egress",
                    "`no-egress: true` means an empty allowlist, but `allow:` has entries",
                ));
            }
        }
        let policy = Policy {
            version: VERSION,
            mode,
            on_policy_error,
            defaults,
            dns,
            no_egress,
            rules,
            sockets,
            digest: String::new(),
            source: self.path.to_string(),
        };
        Ok(Parsed {
            policy,
            warnings: self.warnings,
        })
    }

    fn rules(&mut self, entries: &[Spanned<RawEntry>]) -> Result<Vec<Rule>, PolicyError> {
        let mut rules: Vec<Rule> = Vec::new();
        // Canonical rule → first line, for duplicate detection.
        let mut seen: BTreeMap<(Endpoint, StepScope), u32> = BTreeMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let field = format!("allow[{i}]");
            let rule = self.rule(entry, &field)?;
            let line = Pos::of(&entry.referenced).line;
            let key = (rule.endpoint.clone(), sorted(&rule.steps));
            if let Some(&first_line) = seen.get(&key) {
                return Err(PolicyError::Duplicate {
                    path: self.path.into(),
                    pos: Pos::of(&entry.referenced),
                    field,
                    rule: format!("`{}`", rule.describe()),
                    first_line,
                });
            }
            seen.insert(key, line);
            self.warn_broad(&rule, line);
            rules.push(rule);
        }
        Ok(rules)
    }

    fn rule(&self, entry: &Spanned<RawEntry>, field: &str) -> Result<Rule, PolicyError> {
        let origin = Origin::File {
            line: Pos::of(&entry.referenced).line,
        };
        match &entry.value {
            ShortOrLong::Short(s) => {
                let endpoint: Endpoint = s.text.parse().map_err(|e: EndpointError| {
                    self.invalid(&entry.referenced, field, e.to_string())
                })?;
                Ok(Rule {
                    endpoint,
                    steps: StepScope::Any,
                    origin,
                })
            }
            ShortOrLong::Long(long) => {
                let host_field = format!("{field}.host");
                let target = self.long_target(&long.host, &host_field)?;
                let port = match &long.port {
                    None => None,
                    Some(p) => Some(super::endpoint::parse_port(self.written(p)).map_err(|e| {
                        self.invalid(&p.referenced, format!("{field}.port"), e.to_string())
                    })?),
                };
                let protocol = match &long.protocol {
                    None => None,
                    Some(p) => Some(Proto::parse(&p.value.text).ok_or_else(|| {
                        self.invalid(
                            &p.referenced,
                            format!("{field}.protocol"),
                            format!("protocol {:?} is not tcp or udp", p.value.text),
                        )
                    })?),
                };
                let steps = match &long.steps {
                    None => StepScope::Any,
                    Some(s) => self.steps(s, &format!("{field}.steps"))?,
                };
                Ok(Rule {
                    endpoint: Endpoint {
                        target,
                        port,
                        protocol,
                    },
                    steps,
                    origin,
                })
            }
        }
    }

    fn sockets(&self, entries: &[Spanned<RawSocket>]) -> Result<Vec<SocketRule>, PolicyError> {
        let mut sockets: Vec<SocketRule> = Vec::new();
        // Class and sorted steps → first line, for duplicate detection.
        let mut seen: BTreeMap<(SocketClass, StepScope), u32> = BTreeMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let field = format!("sockets[{i}]");
            let pos = Pos::of(&entry.referenced);
            let rule = self.socket(entry, &field)?;
            let key = (rule.class, sorted(&rule.steps));
            if let Some(&first_line) = seen.get(&key) {
                return Err(PolicyError::Duplicate {
                    path: self.path.into(),
                    pos,
                    field,
                    rule: format!("`{}`", rule.describe()),
                    first_line,
                });
            }
            seen.insert(key, pos.line);
            sockets.push(rule);
        }
        Ok(sockets)
    }

    fn socket(&self, entry: &Spanned<RawSocket>, field: &str) -> Result<SocketRule, PolicyError> {
        let origin = Origin::File {
            line: Pos::of(&entry.referenced).line,
        };
        let (class, loc, class_field, steps) = match &entry.value {
            ShortOrLong::Short(s) => (s, &entry.referenced, field.to_string(), StepScope::Any),
            ShortOrLong::Long(long) => {
                let steps = match &long.steps {
                    None => StepScope::Any,
                    Some(s) => self.steps(s, &format!("{field}.steps"))?,
                };
                (
                    &long.class.value,
                    &long.class.referenced,
                    format!("{field}.class"),
                    steps,
                )
            }
        };
        let class = SocketClass::parse(class.text.trim()).ok_or_else(|| {
            self.invalid(
                loc,
                class_field,
                format!(
                    "unknown socket class {:?}: expected raw, packet or ping",
                    class.text
                ),
            )
        })?;
        Ok(SocketRule {
            class,
            steps,
            origin,
        })
    }

    /// `host:` takes a name, wildcard, address or CIDR: the port and the
    /// protocol have their own fields.
    fn long_target(&self, host: &Spanned<Scalar>, field: &str) -> Result<Target, PolicyError> {
        let text = host.value.text.trim();
        let err = |e: EndpointError| self.invalid(&host.referenced, field, e.to_string());
        let as_endpoint: Result<Endpoint, _> = text.parse();
        if let Ok(e) = &as_endpoint {
            if e.port.is_some() {
                return Err(err(EndpointError::PortInHost(text.into())));
            }
            if e.protocol.is_some() {
                return Err(err(EndpointError::ProtocolInHost(text.into())));
            }
        }
        Target::parse(text).map_err(err)
    }

    fn steps(
        &self,
        steps: &Spanned<Vec<Spanned<Scalar>>>,
        field: &str,
    ) -> Result<StepScope, PolicyError> {
        if steps.value.is_empty() {
            return Err(self.invalid(&steps.referenced, field, "an empty list would allow the rule in no step; remove `steps` to allow it in every step"));
        }
        let mut patterns = Vec::new();
        for (i, s) in steps.value.iter().enumerate() {
            let text = s.value.text.trim();
            if text.is_empty() {
                return Err(self.invalid(
                    &s.referenced,
                    format!("{field}[{i}]"),
                    "empty step id or name",
                ));
            }
            patterns.push(StepPattern(text.to_string()));
        }
        Ok(StepScope::Only(patterns))
    }

    fn warn_broad(&mut self, rule: &Rule, line: u32) {
        if let Target::Net(net) = &rule.endpoint.target {
            if net.prefix() == 0 {
                let family = if net.addr().is_ipv4() { "IPv4" } else { "IPv6" };
                self.warnings.push(Warning {
                    line,
                    message: format!("`{}` allows every {family} address", rule.endpoint),
                });
            }
        }
    }
}

fn sorted(steps: &StepScope) -> StepScope {
    match steps {
        StepScope::Any => StepScope::Any,
        StepScope::Only(p) => {
            let mut p = p.clone();
            p.sort();
            p.dedup();
            StepScope::Only(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> PolicyError {
        match parse(text.as_bytes(), "p.yml") {
            Ok(p) => panic!("parsed: {:?}", p.policy),
            Err(e) => e,
        }
    }

    fn ok(text: &str) -> Parsed {
        parse(text.as_bytes(), "p.yml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_full_policy() {
        let text = "\
version: 1
mode: enforce
on-policy-error: observe
defaults:
  loopback: true
  resolver: false
dns:
  refuse-unlisted: true
allow:
  - github.com:443/tcp
  - \"*.githubusercontent.com:443\"
  - 10.0.0.0/8
  - \"[2001:db8::/32]:443\"
  - host: registry.npmjs.org
    port: 443
    protocol: tcp
    steps: [\"Install*\", 7f3a]
  - { host: \"2001:db8::1\", port: 8443 }
";
        let p = ok(text).policy;
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.on_policy_error, OnPolicyError::Observe);
        assert_eq!(
            p.defaults,
            Defaults {
                loopback: true,
                resolver: false
            }
        );
        assert!(p.dns.refuse_unlisted);
        let rules: Vec<String> = p.rules.iter().map(Rule::describe).collect();
        assert_eq!(
            rules,
            [
                "github.com:443/tcp",
                "*.githubusercontent.com:443",
                "10.0.0.0/8",
                "[2001:db8::/32]:443",
                "registry.npmjs.org:443/tcp (steps: Install*, 7f3a)",
                "[2001:db8::1]:8443",
            ]
        );
        let lines: Vec<Origin> = p.rules.iter().map(|r| r.origin).collect();
        assert_eq!(lines[0], Origin::File { line: 10 });
        assert_eq!(lines[4], Origin::File { line: 14 });
        assert_eq!(lines[5], Origin::File { line: 18 });
        assert_eq!(p.digest, super::super::sha256_hex(text.as_bytes()));
        assert_eq!(p.digest.len(), 64);
    }

    /// (input, line, column or 0 for any, text the message must contain)
    fn expect(text: &str, line: u32, needle: &str) -> String {
        let e = err(text);
        let msg = e.to_string();
        eprintln!("{msg}");
        assert_eq!(e.line(), Some(line), "wrong line in {msg:?}");
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        assert!(msg.starts_with("p.yml:"), "{msg:?}");
        msg
    }

    #[test]
    fn invalid_cidrs_name_line_and_field() {
        let m = expect(
            "version: 1\nmode: enforce\nallow:\n  - github.com\n  - 10.0.0.1/8\n",
            5,
            "host bits are set",
        );
        assert!(m.starts_with("p.yml:5:5: allow[1]: "), "{m}");
        assert!(m.contains("10.0.0.0/8"), "suggests the network: {m}");
        expect(
            "version: 1\nmode: enforce\nallow:\n  - 10.0.0.0/33\n",
            4,
            "prefix length \"33\" must be 0-32",
        );
        expect(
            "version: 1\nmode: enforce\nallow:\n  - 2001:db8::/129\n",
            4,
            "must be 0-128",
        );
        expect(
            "version: 1\nmode: enforce\nallow:\n  - 10.0.0.300/24\n",
            4,
            "not an IPv4 or IPv6 address",
        );
        let m = expect(
            "version: 1\nmode: enforce\nallow:\n  - a.b\n  - host: 2001:db8::1/64\n    port: 443\n",
            5,
            "host bits",
        );
        assert!(m.contains("allow[1].host"), "{m}");
    }

    #[test]
    fn wildcard_in_the_middle() {
        let m = expect(
            "version: 1\nmode: enforce\nallow:\n  - ok.example.com\n  - \"a.*.example.com\"\n",
            5,
            "leftmost label",
        );
        assert!(m.contains("allow[1]"), "{m}");
        expect(
            "version: 1\nmode: enforce\nallow:\n  - host: \"foo*.example.com\"\n",
            4,
            "leftmost label",
        );
        expect(
            "version: 1\nmode: enforce\nallow:\n  - \"*.com\"\n",
            4,
            "too broad",
        );
    }

    #[test]
    fn unknown_fields_anywhere() {
        let m = expect(
            "version: 1\nmode: enforce\nallowed:\n  - github.com\n",
            3,
            "allowed",
        );
        assert!(m.contains("unknown field"), "{m}");
        let m = expect(
            "version: 1\nmode: enforce\nallow:\n  - host: github.com\n    ports: 443\n",
            5,
            "ports",
        );
        assert!(m.contains("unknown field"), "{m}");
        expect(
            "version: 1\nmode: enforce\ndefaults:\n  loopbak: false\n",
            4,
            "loopbak",
        );
        expect(
            "version: 1\nmode: enforce\ndns:\n  refuse: true\n",
            4,
            "refuse",
        );
    }

    #[test]
    fn duplicate_rules_point_at_both_lines() {
        let m = expect(
            "version: 1\nmode: enforce\nallow:\n  - github.com:443\n  - example.org\n  - GitHub.com.:443\n",
            6,
            "duplicate rule `github.com:443` (already at line 4)",
        );
        assert!(m.contains("allow[2]"), "{m}");
        // The long form and the short form of one rule are duplicates too.
        expect("version: 1\nmode: enforce\nallow:\n  - 10.0.0.0/8:443/tcp\n  - host: 10.0.0.0/8\n    port: 443\n    protocol: TCP\n", 5, "already at line 4");
        // Steps in another order are the same rule.
        expect(
            "version: 1\nmode: enforce\nallow:\n  - {host: a.example, steps: [x, y]}\n  - {host: a.example, steps: [y, x]}\n",
            5,
            "`a.example (steps: y, x)` (already at line 4)",
        );
        // Different steps or ports are different rules.
        ok("version: 1\nmode: enforce\nallow:\n  - {host: a.example, steps: [x]}\n  - {host: a.example, steps: [y]}\n  - a.example:443\n  - a.example\n");
    }

    #[test]
    fn sockets_are_listed_by_class_with_optional_steps() {
        let p = ok("version: 1\nmode: enforce\nallow: [a.example]\nsockets:\n  - ping\n  - class: raw\n    steps: [Trace*]\n  - {class: raw, steps: [Other]}\n")
            .policy;
        let described: Vec<String> = p.sockets.iter().map(SocketRule::describe).collect();
        assert_eq!(
            described,
            ["ping", "raw (steps: Trace*)", "raw (steps: Other)"]
        );
        assert_eq!(p.sockets[1].origin, Origin::File { line: 6 });
        assert!(ok("version: 1\nmode: enforce\nallow: [a.example]\n")
            .policy
            .sockets
            .is_empty());
    }

    #[test]
    fn socket_mistakes_name_line_and_field() {
        let m = expect(
            "version: 1\nmode: enforce\nsockets:\n  - ping\n  - icmp\n",
            5,
            "unknown socket class \"icmp\": expected raw, packet or ping",
        );
        assert!(m.starts_with("p.yml:5:5: sockets[1]: "), "{m}");
        let m = expect(
            "version: 1\nmode: enforce\nsockets:\n  - class: RAW\n",
            4,
            "unknown socket class \"RAW\"",
        );
        assert!(m.contains("sockets[0].class"), "{m}");
        expect(
            "version: 1\nmode: enforce\nsockets:\n  - raw\n  - packet\n  - raw\n",
            6,
            "duplicate rule `raw` (already at line 4)",
        );
        expect(
            "version: 1\nmode: enforce\nsockets:\n  - {class: ping, steps: []}\n",
            4,
            "empty list",
        );
        let m = expect(
            "version: 1\nmode: enforce\nsockets:\n  - class: ping\n    step: [x]\n",
            5,
            "step",
        );
        assert!(m.contains("unknown field"), "{m}");
        expect("version: 1\nmode: enforce\nsockets: raw\n", 3, "");
    }

    #[test]
    fn non_utf8_names_byte_and_line() {
        let mut bytes = b"version: 1\nmode: enforce\nallow:\n  - caf".to_vec();
        bytes.extend_from_slice(&[0xe9, b'\n']);
        let e = parse(&bytes, "p.yml").unwrap_err();
        assert!(
            matches!(
                e,
                PolicyError::NotUtf8 {
                    offset: 39,
                    line: 4,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "p.yml:4: not valid UTF-8 at byte 39; save the policy as UTF-8"
        );
    }

    #[test]
    fn huge_files_are_refused_before_parsing() {
        let mut bytes = b"version: 1\nmode: enforce\nallow:\n".to_vec();
        while bytes.len() as u64 <= MAX_POLICY_BYTES {
            bytes.extend_from_slice(b"  - a.example.com\n");
        }
        let e = parse(&bytes, "p.yml").unwrap_err();
        assert!(
            matches!(
                e,
                PolicyError::TooLarge {
                    limit: MAX_POLICY_BYTES,
                    ..
                }
            ),
            "{e:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yml");
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(load(&path), Err(PolicyError::TooLarge { .. })));
    }

    #[test]
    fn bad_ports() {
        for (port, needle) in [
            ("0", "\"0\""),
            ("0443", "\"0443\""),
            ("65536", "\"65536\""),
            ("https", "\"https\""),
            ("-1", "\"-1\""),
            ("4.5", "\"4.5\""),
            ("1.5e3", "\"1.5e3\""),
            ("443.0", "\"443.0\""),
            ("0x1bb", "\"0x1bb\""),
            ("+443", "\"+443\""),
        ] {
            let m = expect(
                &format!(
                    "version: 1\nmode: enforce\nallow:\n  - host: github.com\n    port: {port}\n"
                ),
                5,
                needle,
            );
            assert!(m.contains("allow[0].port: port"), "{m}");
        }
        expect(
            "version: 1\nmode: enforce\nallow:\n  - github.com:99999\n",
            4,
            "not a number from 1 to 65535",
        );
        expect(
            "version: 1\nmode: enforce\nallow:\n  - host: github.com:443\n",
            4,
            "`port` field",
        );
        let long = format!("c.{}.{}", "a".repeat(63), "b".repeat(63));
        expect(
            &format!("version: 1\nmode: enforce\nallow:\n  - x.example\n  - host: {long}\n"),
            5,
            "longer than the kernel's 127-byte limit",
        );
    }

    #[test]
    fn unknown_mode_version_and_values() {
        let m = expect(
            "version: 1\nmode: block\nallow: [github.com]\n",
            2,
            "unknown mode \"block\"",
        );
        assert!(m.starts_with("p.yml:2:7: mode: "), "{m}");
        expect(
            "version: 2\nmode: enforce\n",
            1,
            "unsupported version 2: this ciwatch reads version 1",
        );
        expect("version: \"1\"\nmode: enforce\n", 1, "must be a number");
        expect(
            "version: 1.0\nmode: enforce\n",
            1,
            "unsupported version 1.0",
        );
        expect(
            "version: 1\nmode: enforce\non-policy-error: ignore\n",
            3,
            "expected fail or observe",
        );
        expect(
            "version: 1\nmode: enforce\nallow:\n  - host: github.com\n    protocol: sctp\n",
            5,
            "not tcp or udp",
        );
        expect(
            "version: 1\nmode: enforce\nallow:\n  - {host: a.example, steps: []}\n",
            4,
            "empty list",
        );
        expect(
            "version: 1\nmode: enforce\nno-egress: true\nallow: [a.example]\n",
            3,
            "no-egress",
        );
    }

    #[test]
    fn yaml_syntax_and_type_errors_have_lines() {
        expect("version: 1\nmode: enforce\nallow:\n  - [a, b]\n", 4, "");
        expect("version: 1\nmode: [enforce]\n", 2, "");
        expect(
            "version: 1\nmode: enforce\nallow:\n  - github.com\n  - [unclosed\n",
            5,
            "",
        );
        expect(
            "version: 1\nmode: enforce\nallow:\n  - github.com\n - misaligned\n",
            5,
            "",
        );
        expect(
            "version: 1\nmode: enforce\ndns:\n  refuse-unlisted: maybe\n",
            4,
            "",
        );
        let e = err("");
        assert!(
            e.to_string().contains("version")
                || e.to_string().contains("EOF")
                || e.to_string().contains("end"),
            "{e}"
        );
        let p =
            ok("version: 1\nmode: observe\nallow:\n  - {host: a.example, steps: [y, on, no, 1]}\n")
                .policy;
        assert_eq!(
            p.rules[0].describe(),
            "a.example (steps: y, on, no, 1)",
            "YAML 1.1 booleans stay names"
        );
        let e = err("mode: enforce\n");
        assert!(e.to_string().contains("missing field `version`"), "{e}");
    }

    #[test]
    fn empty_allowlist_parses_but_does_not_validate_in_enforce() {
        let p = ok("version: 1\nmode: enforce\n").policy;
        assert!(p.validate().is_err());
        assert!(ok("version: 1\nmode: enforce\nallow: []\n")
            .policy
            .validate()
            .is_err());
        assert!(ok("version: 1\nmode: enforce\nno-egress: true\n")
            .policy
            .validate()
            .is_ok());
        assert!(ok("version: 1\nmode: observe\n").policy.validate().is_ok());
    }

    #[test]
    fn warnings_for_everything_rules() {
        let parsed = ok("version: 1\nmode: enforce\nallow:\n  - 0.0.0.0/0:443\n  - \"::/0\"\n");
        let lines: Vec<u32> = parsed.warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, [4, 5]);
        assert!(parsed.warnings[1].message.contains("every IPv6 address"));
    }

    #[test]
    fn fallback_hint_reads_a_broken_file() {
        assert_eq!(
            on_policy_error_hint(b"version: [\non-policy-error: observe # fall back\n"),
            OnPolicyError::Observe
        );
        assert_eq!(
            on_policy_error_hint(b"on-policy-error: \"observe\"\n"),
            OnPolicyError::Observe
        );
        assert_eq!(
            on_policy_error_hint(b"  on-policy-error: observe\n"),
            OnPolicyError::Fail,
            "top level only"
        );
        assert_eq!(on_policy_error_hint(b"version: 1\n"), OnPolicyError::Fail);
    }

    #[test]
    fn never_panics_on_junk() {
        let junk: [&[u8]; 8] = [
            b"\x00\x01\x02",
            b"---\n---\n",
            b"&a [*a]",
            b"version: 1\nmode: enforce\nallow: !!binary aGVsbG8=\n",
            b"{{{{{{{{{{{{{{{{{{{{{{{{",
            b"version: 1\nmode: enforce\nallow:\n  - host: {a: b}\n",
            b"version: 1\nmode: enforce\nallow:\n  - ~\n",
            b"\xef\xbb\xbfversion: 1\nmode: observe\n",
        ];
        for bytes in junk {
            let _ = parse(bytes, "p.yml");
        }
    }
}
