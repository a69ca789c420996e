//! Enforce mode: a policy's allowed endpoints become the kernel's allowlist
//! maps (ebpf/enforce.bpf.h). Networks go into an LPM trie keyed by
//! IPv4-mapped IPv6 addresses, so IPv4 and IPv6 are enforced by one lookup;
//! host names and leftmost-wildcard suffixes go into hash maps the DNS return
//! probe consults. Step-scoped rules carry a step-group bit that the engine
//! sets for each step once it knows the step's identity.

pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};

use crate::bpf::abi::{AllowEntry, AllowVal, HostKey, ALLOW_ENTRIES, SCOPE_ALL};
use crate::bpf::loader::AllowMaps;

/// What one allow rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Net { addr: IpAddr, prefix: u8 },
    /// An exact host name.
    Host(String),
    /// `*.example.com`: any name with at least one label before `example.com`.
    Suffix(String),
}

/// One allow rule, as the kernel enforces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub target: Target,
    pub port: Option<u16>,
    /// IANA protocol number (6 tcp, 17 udp); None for any.
    pub proto: Option<u8>,
    /// Step ids, names or GITHUB_ACTION values (`*` globs allowed); empty for every step.
    pub steps: Vec<String>,
}

/// Destinations allowed unless a policy turns them off (docs/policy.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Defaults {
    /// 127.0.0.1 and ::1, any port.
    pub loopback: bool,
    /// The nameservers in /etc/resolv.conf, port 53.
    pub resolver: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("{dest}: more than {ALLOW_ENTRIES} port, protocol and step combinations allow it; merge some rules")]
    TooManyVariants { dest: String },
    #[error("more than 31 distinct step scopes; group steps into fewer `steps:` lists")]
    TooManyScopes,
    #[error("host name {0:?} is longer than the kernel's 127-byte limit")]
    NameTooLong(String),
    #[error("cannot load the allowlist into the kernel ({map}): {reason}")]
    Map { map: &'static str, reason: String },
}

/// The step groups of scoped rules: bit i is `groups[i]`.
#[derive(Debug, Clone, Default)]
pub struct Scopes {
    groups: Vec<Vec<String>>,
}

impl Scopes {
    fn bit(&mut self, selectors: &[String]) -> Result<u32, EnforceError> {
        if selectors.is_empty() {
            return Ok(SCOPE_ALL);
        }
        let index = match self.groups.iter().position(|g| g == selectors) {
            Some(i) => i,
            None => {
                if self.groups.len() >= 31 {
                    return Err(EnforceError::TooManyScopes);
                }
                self.groups.push(selectors.to_vec());
                self.groups.len() - 1
            }
        };
        Ok(1 << index)
    }

    /// The groups a step belongs to, by its id, display name or action.
    pub fn groups_of(&self, id: &str, name: Option<&str>, action: Option<&str>) -> u32 {
        let fields = [Some(id), name, action];
        self.groups
            .iter()
            .enumerate()
            .filter(|(_, selectors)| selectors.iter().any(|sel| fields.iter().flatten().any(|f| glob(sel, f))))
            .fold(0, |bits, (i, _)| bits | (1 << i))
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, tail)) => {
            text.starts_with(head) && (0..=text.len() - head.len()).any(|i| text.is_char_boundary(head.len() + i) && glob(tail, &text[head.len() + i..]))
        }
    }
}

type NetKey = (u32, [u8; 16]);

/// Loads rules and defaults into the kernel; returns the step groups to maintain.
pub fn install(maps: &mut AllowMaps, rules: &[Rule], defaults: Defaults, resolvers: &[IpAddr]) -> Result<Scopes, EnforceError> {
    let mut scopes = Scopes::default();
    let mut nets: BTreeMap<NetKey, Vec<AllowEntry>> = BTreeMap::new();
    let mut names: BTreeMap<String, Vec<AllowEntry>> = BTreeMap::new();
    let mut suffixes: BTreeMap<String, Vec<AllowEntry>> = BTreeMap::new();
    let any = |port: Option<u16>, proto: Option<u8>, scope| AllowEntry { port: port.unwrap_or(0), proto: proto.unwrap_or(0), _pad: 0, scope };

    if defaults.loopback {
        for addr in [IpAddr::from([127, 0, 0, 1]), IpAddr::V6(Ipv6Addr::LOCALHOST)] {
            add(&mut nets, net_key(addr, full(addr)), any(None, None, SCOPE_ALL));
        }
    }
    if defaults.resolver {
        for addr in resolvers {
            add(&mut nets, net_key(*addr, full(*addr)), any(Some(53), None, SCOPE_ALL));
        }
    }
    for rule in rules {
        let entry = any(rule.port, rule.proto, scopes.bit(&rule.steps)?);
        match &rule.target {
            Target::Net { addr, prefix } => add(&mut nets, net_key(*addr, *prefix), entry),
            Target::Host(name) => add(&mut names, host(name)?, entry),
            Target::Suffix(name) => add(&mut suffixes, host(name)?, entry),
        }
    }
    let nets = with_covering(&nets);
    load(maps, &nets, &names, &suffixes)?;
    Ok(scopes)
}

fn host(name: &str) -> Result<String, EnforceError> {
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    if HostKey::new(&lower).is_none() {
        return Err(EnforceError::NameTooLong(name.to_string()));
    }
    Ok(lower)
}

fn add<K: Ord>(map: &mut BTreeMap<K, Vec<AllowEntry>>, key: K, entry: AllowEntry) {
    let entries = map.entry(key).or_default();
    if !entries.contains(&entry) {
        entries.push(entry);
    }
}

fn full(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// The trie key: IPv4 as IPv4-mapped IPv6, masked to the prefix.
fn net_key(addr: IpAddr, prefix: u8) -> NetKey {
    let (bytes, bits) = match addr {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), u32::from(prefix.min(32)) + 96),
        IpAddr::V6(v6) => (v6.octets(), u32::from(prefix.min(128))),
    };
    (bits, mask(bytes, bits))
}

fn mask(mut bytes: [u8; 16], bits: u32) -> [u8; 16] {
    for (i, b) in bytes.iter_mut().enumerate() {
        let keep = bits.saturating_sub(i as u32 * 8).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    bytes
}

/// The longest prefix wins in the kernel, so each network also carries what
/// every network containing it allows.
fn with_covering(nets: &BTreeMap<NetKey, Vec<AllowEntry>>) -> BTreeMap<NetKey, Vec<AllowEntry>> {
    let lengths: Vec<u32> = {
        let mut l: Vec<u32> = nets.keys().map(|(bits, _)| *bits).collect();
        l.sort_unstable();
        l.dedup();
        l
    };
    let index: HashMap<&NetKey, &Vec<AllowEntry>> = nets.iter().collect();
    nets.iter()
        .map(|(key, entries)| {
            let mut merged = entries.clone();
            for &bits in lengths.iter().filter(|b| **b < key.0) {
                if let Some(covering) = index.get(&(bits, mask(key.1, bits))) {
                    for e in covering.iter() {
                        if !merged.contains(e) {
                            merged.push(*e);
                        }
                    }
                }
            }
            (*key, merged)
        })
        .collect()
}

fn value(dest: &str, entries: &[AllowEntry]) -> Result<AllowVal, EnforceError> {
    if entries.len() > ALLOW_ENTRIES {
        return Err(EnforceError::TooManyVariants { dest: dest.to_string() });
    }
    let mut v = AllowVal { count: entries.len() as u32, ..AllowVal::default() };
    v.entries[..entries.len()].copy_from_slice(entries);
    Ok(v)
}

fn load(
    maps: &mut AllowMaps,
    nets: &BTreeMap<NetKey, Vec<AllowEntry>>,
    names: &BTreeMap<String, Vec<AllowEntry>>,
    suffixes: &BTreeMap<String, Vec<AllowEntry>>,
) -> Result<(), EnforceError> {
    let err = |map| move |e: aya::maps::MapError| EnforceError::Map { map, reason: crate::bpf::loader::chain(&e) };
    for ((bits, addr), entries) in nets {
        let dest = format!("{}/{}", Ipv6Addr::from(*addr), bits);
        let key = aya::maps::lpm_trie::Key::new(*bits, *addr);
        maps.nets.insert(&key, value(&dest, entries)?, 0).map_err(err("allow_nets"))?;
    }
    for (name, entries) in names {
        let key = HostKey::new(name).ok_or_else(|| EnforceError::NameTooLong(name.clone()))?;
        maps.names.insert(key, value(name, entries)?, 0).map_err(err("allow_names"))?;
    }
    for (name, entries) in suffixes {
        let key = HostKey::new(name).ok_or_else(|| EnforceError::NameTooLong(name.clone()))?;
        maps.suffixes.insert(key, value(&format!("*.{name}"), entries)?, 0).map_err(err("allow_suffixes"))?;
    }
    Ok(())
}

/// The nameservers of /etc/resolv.conf.
pub fn resolvers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(port: u16, scope: u32) -> AllowEntry {
        AllowEntry { port, proto: 0, _pad: 0, scope }
    }

    #[test]
    fn ipv4_is_keyed_as_ipv4_mapped_and_masked() {
        let (bits, addr) = net_key("10.1.2.3".parse().unwrap(), 8);
        assert_eq!(bits, 104);
        assert_eq!(Ipv6Addr::from(addr), "::ffff:10.0.0.0".parse::<Ipv6Addr>().unwrap());
        let (bits, addr) = net_key("2001:db8::1".parse().unwrap(), 32);
        assert_eq!((bits, Ipv6Addr::from(addr)), (32, "2001:db8::".parse().unwrap()));
    }

    #[test]
    fn a_network_inherits_what_covering_networks_allow() {
        let mut nets = BTreeMap::new();
        add(&mut nets, net_key("10.0.0.0".parse().unwrap(), 8), entry(0, SCOPE_ALL));
        add(&mut nets, net_key("10.1.2.3".parse().unwrap(), 32), entry(443, 1));
        let merged = with_covering(&nets);
        let host = &merged[&net_key("10.1.2.3".parse().unwrap(), 32)];
        assert!(host.contains(&entry(443, 1)) && host.contains(&entry(0, SCOPE_ALL)));
        assert_eq!(merged[&net_key("10.0.0.0".parse().unwrap(), 8)], vec![entry(0, SCOPE_ALL)]);
    }

    #[test]
    fn step_scopes_match_ids_names_and_globs() {
        let mut scopes = Scopes::default();
        let build = scopes.bit(&["Build".into()]).unwrap();
        let deploy = scopes.bit(&["deploy-*".into(), "__publish".into()]).unwrap();
        assert_eq!(scopes.bit(&[]).unwrap(), SCOPE_ALL);
        assert_eq!(scopes.groups_of("g1", Some("Build"), None), build);
        assert_eq!(scopes.groups_of("g2", Some("deploy-prod"), None), deploy);
        assert_eq!(scopes.groups_of("g3", Some("Test"), Some("__publish")), deploy);
        assert_eq!(scopes.groups_of("g4", Some("Test"), None), 0);
    }

    #[test]
    fn too_many_variants_for_one_destination_is_an_error() {
        let entries: Vec<AllowEntry> = (1..=9).map(|p| entry(p, SCOPE_ALL)).collect();
        assert!(matches!(value("x", &entries), Err(EnforceError::TooManyVariants { .. })));
    }
}

/// `--allow` syntax, shared with the action's `allowed-endpoints`: a host name,
/// a leftmost `*.` wildcard, an IP or a CIDR, then an optional `:PORT` and `/tcp`
/// or `/udp` (`[::1]:443`, `10.0.0.0/8:443/tcp`, `*.example.com:443`).
pub fn parse_endpoint(text: &str) -> Result<Rule, String> {
    let bad = |why: &str| format!("endpoint {text:?}: {why}");
    let (rest, proto) = match text.rsplit_once('/') {
        Some((r, "tcp")) => (r, Some(crate::bpf::abi::PROTO_TCP)),
        Some((r, "udp")) => (r, Some(crate::bpf::abi::PROTO_UDP)),
        _ => (text, None),
    };
    let (host, port) = split_port(rest).map_err(|e| bad(&e))?;
    let target = if let Some((addr, prefix)) = host.split_once('/') {
        let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP network"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
        if prefix > full(addr) {
            return Err(bad("prefix length is longer than the address"));
        }
        if net_key(addr, prefix).1 != net_key(addr, full(addr)).1 {
            return Err(bad(&format!("host bits are set; the network is {}", masked(addr, prefix))));
        }
        Target::Net { addr, prefix }
    } else if let Ok(addr) = host.parse::<IpAddr>() {
        Target::Net { addr, prefix: full(addr) }
    } else if let Some(suffix) = host.strip_prefix("*.") {
        valid_name(suffix).map_err(|e| bad(&e))?;
        Target::Suffix(suffix.to_ascii_lowercase())
    } else {
        valid_name(host).map_err(|e| bad(&e))?;
        Target::Host(host.to_ascii_lowercase())
    };
    Ok(Rule { target, port, proto, steps: Vec::new() })
}

fn masked(addr: IpAddr, prefix: u8) -> String {
    let (bits, bytes) = net_key(addr, prefix);
    match addr {
        IpAddr::V4(_) => format!("{}/{}", std::net::Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]), bits - 96),
        IpAddr::V6(_) => format!("{}/{bits}", Ipv6Addr::from(bytes)),
    }
}

fn split_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("bad port {p:?}"));
    if let Some(rest) = text.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']').ok_or("unclosed '['")?;
        return match tail.strip_prefix(':') {
            Some(p) => Ok((addr, Some(port(p)?))),
            None if tail.is_empty() => Ok((addr, None)),
            None => Err("unexpected text after ']'".into()),
        };
    }
    // More than one ':' is a bare IPv6 address (with port it must be bracketed).
    match text.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') => Ok((host, Some(port(p)?))),
        _ => Ok((text, None)),
    }
}

fn valid_name(name: &str) -> Result<(), String> {
    if name.contains('*') {
        return Err("a wildcard is only allowed as the whole leftmost label (*.example.com)".into());
    }
    let ok = !name.is_empty()
        && name.len() < 254
        && name.trim_end_matches('.').split('.').all(|l| !l.is_empty() && l.len() < 64 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    if ok {
        Ok(())
    } else {
        Err("not a valid host name".into())
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        let r = parse_endpoint("127.0.0.1").unwrap();
        assert_eq!((r.target, r.port), (Target::Net { addr: "127.0.0.1".parse().unwrap(), prefix: 32 }, None));
        assert_eq!(parse_endpoint("[::1]:443").unwrap().port, Some(443));
        assert_eq!(parse_endpoint("::1").unwrap().target, Target::Net { addr: "::1".parse().unwrap(), prefix: 128 });
        let r = parse_endpoint("10.0.0.0/8:443/tcp").unwrap();
        assert_eq!((r.port, r.proto), (Some(443), Some(6)));
        assert_eq!(parse_endpoint("*.Example.com:443").unwrap().target, Target::Suffix("example.com".into()));
        assert_eq!(parse_endpoint("github.com").unwrap().target, Target::Host("github.com".into()));
    }

    #[test]
    fn bad_endpoints_say_why() {
        assert!(parse_endpoint("10.0.0.1/8").unwrap_err().contains("host bits"));
        assert!(parse_endpoint("a.*.b").unwrap_err().contains("leftmost"));
        assert!(parse_endpoint("host:99999").unwrap_err().contains("bad port"));
        assert!(parse_endpoint("10.0.0.0/33").unwrap_err().contains("longer"));
        assert!(parse_endpoint("bad name!").unwrap_err().contains("valid host name"));
    }
}
