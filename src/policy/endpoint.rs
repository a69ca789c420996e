//! One allowed endpoint: the syntax shared by the policy file's short form,
//! the action's `allowed-endpoints` input and `--allow ENDPOINT`
//! (docs/policy.md, "Endpoint syntax"):
//!
//! ```text
//! github.com            exact host name
//! *.example.com         leftmost wildcard: one or more labels below, never example.com itself
//! 192.0.2.10            IPv4 address        2001:db8::1     IPv6 address
//! 10.0.0.0/8            IPv4 CIDR           2001:db8::/32   IPv6 CIDR
//! github.com:443        with a port         [2001:db8::1]:443, [2001:db8::/32]:443, 10.0.0.0/8:443
//! github.com:443/tcp    with a protocol     (tcp or udp; /tcp alone means any port over tcp)
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// Why one endpoint string is not valid. The caller adds where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("empty endpoint")]
    Empty,
    #[error("write the host without a scheme (\"github.com:443\", not \"https://github.com\")")]
    Scheme,
    #[error("contains {0:?}: an endpoint has no spaces, user info, path or query")]
    BadChar(char),
    #[error("port {0:?} is not a number from 1 to 65535")]
    Port(String),
    #[error("protocol {0:?} is not tcp or udp")]
    Protocol(String),
    #[error("missing \"]\" after the IPv6 address")]
    Bracket,
    #[error("only \":port\" may follow \"]\"")]
    AfterBracket,
    #[error("{0:?} in brackets is not an IPv6 address or CIDR")]
    NotV6InBrackets(String),
    #[error("{0:?} is not a valid IPv6 address (write an IPv6 address with a port as \"[2001:db8::1]:443\")")]
    BadV6(String),
    #[error("missing host or address before the port")]
    NoTarget,
    #[error("invalid CIDR {cidr:?}: {reason}")]
    Cidr { cidr: String, reason: String },
    #[error("invalid CIDR {cidr:?}: host bits are set (the network is {network})")]
    HostBits { cidr: String, network: String },
    #[error("{0:?} is not a valid IPv4 address")]
    BadV4(String),
    #[error("a wildcard is only allowed as the whole leftmost label, as in \"*.example.com\" (got {0:?})")]
    WildcardPosition(String),
    #[error("wildcard {0:?} is too broad: it needs at least two labels after \"*.\"")]
    WildcardTooBroad(String),
    #[error("{0:?} is not a valid host name, IP address or CIDR")]
    BadHost(String),
    #[error("host name {0:?} is longer than the kernel's {MAX_NAME_BYTES}-byte limit")]
    NameTooLong(String),
    #[error("a port goes in the `port` field, not in `host` ({0:?})")]
    PortInHost(String),
    #[error("a protocol goes in the `protocol` field, not in `host` ({0:?})")]
    ProtocolInHost(String),
}

/// Transport protocol of a rule. A rule without one matches every protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// Parses `tcp`/`udp` (any case); the event log's `raw` and `unknown` are neither.
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An address and a prefix length: a single address is a /32 or /128.
/// Always canonical: the host bits are zero and an IPv4-mapped IPv6 network
/// is stored as the IPv4 one, so `::ffff:10.0.0.1` and `10.0.0.1` are one rule.
/// A wrapper, not a bare `ipnet::IpNet`: ipnet keeps mapped networks as IPv6
/// and always prints a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpNet(ipnet::IpNet);

impl IpNet {
    /// Fails when the prefix is too long or host bits are set.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, EndpointError> {
        let (addr, prefix) = unmap(addr, prefix);
        let net = ipnet::IpNet::new(addr, prefix).map_err(|_| EndpointError::Cidr {
            cidr: format!("{addr}/{prefix}"),
            reason: format!("prefix length must be 0-{}", max_prefix(addr)),
        })?;
        let network = net.trunc();
        if network != net {
            return Err(EndpointError::HostBits {
                cidr: format!("{addr}/{prefix}"),
                network: Self(network).to_string(),
            });
        }
        Ok(Self(net))
    }

    pub fn host(addr: IpAddr) -> Self {
        Self(ipnet::IpNet::from(addr.to_canonical()))
    }

    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }

    pub fn prefix(&self) -> u8 {
        self.0.prefix_len()
    }

    pub fn is_host(&self) -> bool {
        self.0.prefix_len() == self.0.max_prefix_len()
    }

    /// IPv4-mapped IPv6 addresses (what a dual-stack socket's connect6 sees
    /// for an IPv4 peer) match IPv4 networks.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(&addr.to_canonical())
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    ipnet::IpNet::from(addr).max_prefix_len()
}

/// `::ffff:a.b.c.d/len` (len >= 96) is the IPv4 network `a.b.c.d/(len-96)`.
fn unmap(addr: IpAddr, prefix: u8) -> (IpAddr, u8) {
    match addr {
        IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix - 96),
            None => (addr, prefix),
        },
        _ => (addr, prefix),
    }
}

/// What an endpoint names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// An exact host name, lower-case, without a trailing dot.
    Host(String),
    /// `*.parent`: any name one or more labels below `parent` (stored without `*.`).
    Wildcard(String),
    /// An address or CIDR.
    Net(IpNet),
}

impl Target {
    /// Parses a host name, `*.` wildcard, address or CIDR (no port, no protocol).
    pub fn parse(text: &str) -> Result<Self, EndpointError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(EndpointError::NoTarget);
        }
        let unbracketed = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Some((addr, len)) = unbracketed.split_once('/') {
            return parse_cidr(addr, len).map(Target::Net);
        }
        if let Ok(addr) = unbracketed.parse::<IpAddr>() {
            return Ok(Target::Net(IpNet::host(addr)));
        }
        if unbracketed.contains(':') {
            return Err(EndpointError::BadV6(text.to_string()));
        }
        if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(EndpointError::BadV4(text.to_string()));
        }
        let name = text.to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name);
        if let Some(parent) = name.strip_prefix("*.") {
            if parent.contains('*') {
                return Err(EndpointError::WildcardPosition(text.to_string()));
            }
            if !is_host_name(parent) {
                return Err(EndpointError::BadHost(text.to_string()));
            }
            if !parent.contains('.') {
                return Err(EndpointError::WildcardTooBroad(text.to_string()));
            }
            fits_the_kernel(parent, text)?;
            return Ok(Target::Wildcard(parent.to_string()));
        }
        if name.contains('*') {
            return Err(EndpointError::WildcardPosition(text.to_string()));
        }
        if !is_host_name(name) {
            return Err(EndpointError::BadHost(text.to_string()));
        }
        fits_the_kernel(name, text)?;
        Ok(Target::Host(name.to_string()))
    }

    pub fn is_v6(&self) -> bool {
        matches!(self, Target::Net(n) if n.addr().is_ipv6())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Host(h) => f.write_str(h),
            Target::Wildcard(p) => write!(f, "*.{p}"),
            Target::Net(n) => write!(f, "{n}"),
        }
    }
}

fn parse_cidr(addr: &str, len: &str) -> Result<IpNet, EndpointError> {
    let cidr = format!("{addr}/{len}");
    let ip: IpAddr = addr.parse().map_err(|_| EndpointError::Cidr {
        cidr: cidr.clone(),
        reason: format!("{addr:?} before the \"/\" is not an IPv4 or IPv6 address"),
    })?;
    let max = max_prefix(ip);
    let prefix = match len.parse::<u8>() {
        Ok(p)
            if p <= max
                && len.bytes().all(|b| b.is_ascii_digit())
                && (len == "0" || !len.starts_with('0')) =>
        {
            p
        }
        _ => {
            return Err(EndpointError::Cidr {
                cidr,
                reason: format!("prefix length {len:?} must be 0-{max}"),
            })
        }
    };
    IpNet::new(ip, prefix)
}

/// The longest name (or wildcard parent) the kernel's allowlist keys hold,
/// without their NUL. DNS allows 253, so this is checked here rather than
/// failing later when enforcement starts.
pub const MAX_NAME_BYTES: usize = crate::bpf::abi::NAME_MAX - 1;

/// `key` is what the kernel map stores: the name, or a wildcard's parent.
fn fits_the_kernel(key: &str, written: &str) -> Result<(), EndpointError> {
    if key.len() > MAX_NAME_BYTES {
        return Err(EndpointError::NameTooLong(written.to_string()));
    }
    Ok(())
}

/// Labels of letters, digits, `-` and `_` (service names like `_dmarc`), 1-63
/// bytes, no leading or trailing `-`; an all-numeric last label is refused, so a
/// malformed address such as `1.2.3` is never taken for a name.
pub fn is_host_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    let labels: Vec<&str> = name.split('.').collect();
    labels.iter().all(|l| label_ok(l))
        && !labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// One allowed endpoint, in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub target: Target,
    /// `None`: every port.
    pub port: Option<u16>,
    /// `None`: every protocol.
    pub protocol: Option<Proto>,
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    /// Parses the short form (module docs).
    fn from_str(raw: &str) -> Result<Self, EndpointError> {
        let entry = raw.trim();
        if entry.is_empty() {
            return Err(EndpointError::Empty);
        }
        if let Some(i) = entry.find("://") {
            if i > 0
                && entry[..i]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
            {
                return Err(EndpointError::Scheme);
            }
        }
        if let Some(c) = entry
            .chars()
            .find(|c| c.is_whitespace() || "@?#,;\"'\\".contains(*c))
        {
            return Err(EndpointError::BadChar(c));
        }
        let (rest, protocol) = split_protocol(entry)?;
        let (target, port) = split_port(rest)?;
        Ok(Endpoint {
            target: Target::parse(target)?,
            port,
            protocol,
        })
    }
}

/// A trailing `/tcp` or `/udp`. Anything else after the last `/` is a CIDR
/// prefix length (digits) or an error.
fn split_protocol(entry: &str) -> Result<(&str, Option<Proto>), EndpointError> {
    let Some((head, tail)) = entry.rsplit_once('/') else {
        return Ok((entry, None));
    };
    if tail.bytes().all(|b| b.is_ascii_digit()) && !tail.is_empty() {
        return Ok((entry, None));
    }
    // `10.0.0.0/8:443` ends in a port, not a protocol.
    if tail.contains(':') || tail.contains(']') {
        return Ok((entry, None));
    }
    match Proto::parse(tail) {
        Some(p) => Ok((head, Some(p))),
        None => Err(EndpointError::Protocol(tail.to_string())),
    }
}

/// `[v6]:port`, `host:port`, or no port. A bare IPv6 address takes no port:
/// `2001:db8::1:443` is an address.
fn split_port(entry: &str) -> Result<(&str, Option<u16>), EndpointError> {
    if let Some(inner) = entry.strip_prefix('[') {
        let close = inner.find(']').ok_or(EndpointError::Bracket)?;
        let target = &inner[..close];
        let rest = &inner[close + 1..];
        let addr = target.split('/').next().unwrap_or_default();
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(EndpointError::NotV6InBrackets(target.to_string()));
        }
        let port = match rest {
            "" => None,
            _ => Some(parse_port(
                rest.strip_prefix(':').ok_or(EndpointError::AfterBracket)?,
            )?),
        };
        return Ok((target, port));
    }
    let target_and_port = match entry.matches(':').count() {
        0 => (entry, None),
        1 => {
            let (target, port) = entry.split_once(':').unwrap_or((entry, ""));
            (target, Some(parse_port(port)?))
        }
        _ => {
            let addr = entry.split('/').next().unwrap_or_default();
            if addr.parse::<Ipv6Addr>().is_err() {
                return Err(EndpointError::BadV6(entry.to_string()));
            }
            (entry, None)
        }
    };
    if target_and_port.0.is_empty() {
        return Err(EndpointError::NoTarget);
    }
    Ok(target_and_port)
}

pub fn parse_port(text: &str) -> Result<u16, EndpointError> {
    let ok = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && !text.starts_with('0');
    match text.parse::<u16>() {
        Ok(p) if ok && p > 0 => Ok(p),
        _ => Err(EndpointError::Port(text.to_string())),
    }
}

impl fmt::Display for Endpoint {
    /// The canonical short form; parsing it gives the same endpoint back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.port, self.target.is_v6()) {
            (Some(port), true) => write!(f, "[{}]:{port}", self.target)?,
            (Some(port), false) => write!(f, "{}:{port}", self.target)?,
            (None, _) => write!(f, "{}", self.target)?,
        }
        if let Some(p) = self.protocol {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn short_forms_round_trip_canonically() {
        for (input, canonical) in [
            ("github.com", "github.com"),
            ("GitHub.COM.", "github.com"),
            ("github.com:443", "github.com:443"),
            ("github.com:443/tcp", "github.com:443/tcp"),
            ("github.com/UDP", "github.com/udp"),
            ("*.githubusercontent.com:443", "*.githubusercontent.com:443"),
            ("192.0.2.10", "192.0.2.10"),
            ("192.0.2.10:8080/udp", "192.0.2.10:8080/udp"),
            ("2001:DB8::1", "2001:db8::1"),
            ("[2001:db8::1]:443", "[2001:db8::1]:443"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.0.0.0/8:443", "10.0.0.0/8:443"),
            ("10.0.0.0/8:443/tcp", "10.0.0.0/8:443/tcp"),
            ("10.0.0.0/8/tcp", "10.0.0.0/8/tcp"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("[2001:db8::/32]:443", "[2001:db8::/32]:443"),
            ("[2001:db8::/32]:443/udp", "[2001:db8::/32]:443/udp"),
            ("::ffff:192.0.2.1", "192.0.2.1"),
            ("_dmarc.example.com", "_dmarc.example.com"),
            ("localhost", "localhost"),
        ] {
            let e = ep(input);
            assert_eq!(e.to_string(), canonical, "{input}");
            assert_eq!(ep(canonical), e, "re-parse of {canonical}");
        }
    }

    #[test]
    fn bad_endpoints_say_why() {
        for (input, want) in [
            ("https://github.com", EndpointError::Scheme),
            (
                "a.*.b.com",
                EndpointError::WildcardPosition("a.*.b.com".into()),
            ),
            (
                "*foo.example.com",
                EndpointError::WildcardPosition("*foo.example.com".into()),
            ),
            (
                "*.*.example.com",
                EndpointError::WildcardPosition("*.*.example.com".into()),
            ),
            ("*.com", EndpointError::WildcardTooBroad("*.com".into())),
            ("*", EndpointError::WildcardPosition("*".into())),
            ("github.com:0", EndpointError::Port("0".into())),
            ("github.com:65536", EndpointError::Port("65536".into())),
            ("github.com:https", EndpointError::Port("https".into())),
            ("github.com:0443", EndpointError::Port("0443".into())),
            (
                "github.com:443/sctp",
                EndpointError::Protocol("sctp".into()),
            ),
            (
                "10.0.0.1/8",
                EndpointError::HostBits {
                    cidr: "10.0.0.1/8".into(),
                    network: "10.0.0.0/8".into(),
                },
            ),
            ("1.2.3", EndpointError::BadV4("1.2.3".into())),
            ("300.1.1.1", EndpointError::BadV4("300.1.1.1".into())),
            (
                "2001:db8::1:443:x",
                EndpointError::BadV6("2001:db8::1:443:x".into()),
            ),
            (
                "[10.0.0.1]:443",
                EndpointError::NotV6InBrackets("10.0.0.1".into()),
            ),
            (":443", EndpointError::NoTarget),
            ("user@host", EndpointError::BadChar('@')),
            (
                "-bad.example.com",
                EndpointError::BadHost("-bad.example.com".into()),
            ),
        ] {
            assert_eq!(input.parse::<Endpoint>(), Err(want), "{input}");
        }
        assert!(matches!(
            "10.0.0.0/33".parse::<Endpoint>(),
            Err(EndpointError::Cidr { .. })
        ));
        assert!(matches!(
            "2001:db8::/129".parse::<Endpoint>(),
            Err(EndpointError::Cidr { .. })
        ));
        assert!(matches!(
            "2001:db8::1/64".parse::<Endpoint>(),
            Err(EndpointError::HostBits { .. })
        ));
        assert!(matches!(
            "10.0.0.0/08".parse::<Endpoint>(),
            Err(EndpointError::Cidr { .. })
        ));
    }

    #[test]
    fn names_longer_than_the_kernel_key_are_refused() {
        // 63 + 1 + 63 = 127 bytes fits; two more do not (DNS would allow 253).
        let fits = format!("{}.{}", "a".repeat(63), "b".repeat(63));
        assert_eq!(ep(&fits).target, Target::Host(fits.clone()));
        assert_eq!(
            ep(&format!("*.{fits}")).target,
            Target::Wildcard(fits.clone())
        );
        let over = format!("c.{fits}");
        for input in [over.clone(), format!("*.{over}")] {
            assert_eq!(
                input.parse::<Endpoint>(),
                Err(EndpointError::NameTooLong(input.clone()))
            );
        }
    }

    #[test]
    fn bare_ipv6_takes_no_port() {
        let e = ep("2001:db8::1:443");
        assert_eq!(e.port, None);
        assert_eq!(e.target.to_string(), "2001:db8::1:443");
    }

    #[test]
    fn nets_contain_v4_v6_and_mapped() {
        let n = |s: &str| match Target::parse(s).unwrap() {
            Target::Net(n) => n,
            t => panic!("{t:?}"),
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(n("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!n("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(
            n("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")),
            "v4-mapped matches v4 rules"
        );
        assert!(n("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(
            !n("0.0.0.0/0").contains(ip("2001:db8::1")),
            "a v4 rule never matches v6"
        );
        assert!(n("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!n("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(n("::/0").contains(ip("::1")));
        assert!(n("::1").contains(ip("::1")));
        assert!(!n("::1").contains(ip("::2")));
        assert_eq!(n("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
    }
}
