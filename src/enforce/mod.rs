//! Enforce mode in the kernel: a compiled policy (src/policy) becomes the
//! allowlist maps of ebpf/enforce.bpf.h. Networks go into an LPM trie keyed
//! by IPv4-mapped IPv6 addresses, so IPv4, IPv6 and dual-stack sockets are
//! enforced by one lookup; exact names and `*.` parents go into hash maps the
//! DNS return probe consults. A step-scoped rule carries a step-group bit: the
//! exec hook sets a new step's bits from its environment before it runs
//! (ebpf/step_scope.bpf.h), and the engine adds what only it learns later.
//! The `sockets:` classes go into `sock_allow` with the step groups they are
//! allowed in (ebpf/socket.bpf.h).

pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};

use crate::bpf::abi::{
    AllowEntry, AllowVal, HostKey, StepVar, ALLOW_ENTRIES, PROTO_TCP, PROTO_UDP, SCOPE_ALL,
    SOCKET_PACKET, SOCKET_PING, SOCKET_RAW, STEP_PATTERNS,
};
use crate::bpf::loader::AllowMaps;
use crate::policy::{
    CompiledPolicy, NamePattern, Proto, SocketClass, SocketRule, StepMatch, StepPattern, StepScope,
};
use crate::attribute::platform::Platform;

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
    groups: Vec<Vec<StepPattern>>,
}

impl Scopes {
    fn bit(&mut self, scope: &StepScope) -> Result<u32, EnforceError> {
        let StepScope::Only(patterns) = scope else {
            return Ok(SCOPE_ALL);
        };
        let index = match self.groups.iter().position(|g| g == patterns) {
            Some(i) => i,
            None => {
                if self.groups.len() >= 31 {
                    return Err(EnforceError::TooManyScopes);
                }
                self.groups.push(patterns.clone());
                self.groups.len() - 1
            }
        };
        Ok(1 << index)
    }

    /// The groups a step belongs to, by its id or display name.
    pub fn groups_of(&self, step: &StepMatch<'_>) -> u32 {
        self.groups
            .iter()
            .enumerate()
            .filter(|(_, patterns)| patterns.iter().any(|p| p.matches(step)))
            .fold(0, |bits, (i, _)| bits | (1 << i))
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Each distinct pattern with the groups it puts a matching step in.
    fn patterns(&self) -> BTreeMap<&str, u32> {
        let mut out: BTreeMap<&str, u32> = BTreeMap::new();
        for (i, group) in self.groups.iter().enumerate() {
            for p in group {
                *out.entry(p.0.as_str()).or_default() |= 1 << i;
            }
        }
        out
    }
}

/// Variables whose value a platform uses as a step's id (`action`) or name,
/// read by the exec hook: GitHub and Azure step ids, Azure and Drone names.
/// The kernel reads only those of the step's launcher's platform, so a
/// variable of another platform that the job put into the environment
/// (`DRONE_STEP_NAME` through `$GITHUB_ENV`) names nothing. The engine
/// matches the same values through the job's own detector
/// (src/attribute/platform/), so the kernel's groups are never more than the engine's.
pub const KERNEL_STEP_VARS: [(&str, Platform); 4] = [
    ("GITHUB_ACTION", Platform::GithubActions),
    ("SYSTEM_TASKINSTANCENAME", Platform::AzurePipelines),
    ("SYSTEM_TASKDISPLAYNAME", Platform::AzurePipelines),
    ("DRONE_STEP_NAME", Platform::Drone),
];

/// Patterns the kernel matches byte for byte exactly as `glob` does by character: ASCII, short enough.
fn kernel_matchable(pattern: &str) -> bool {
    pattern.is_ascii() && crate::bpf::abi::StepPattern::new(pattern, 1).is_some()
}

type NetKey = (u32, [u8; 16]);

/// Loads a compiled policy (its defaults are rules too) into the kernel; returns the step groups to maintain.
pub fn install(maps: &mut AllowMaps, policy: &CompiledPolicy) -> Result<Scopes, EnforceError> {
    let mut scopes = Scopes::default();
    let mut nets: BTreeMap<NetKey, Vec<AllowEntry>> = BTreeMap::new();
    let mut names: BTreeMap<String, Vec<AllowEntry>> = BTreeMap::new();
    let mut suffixes: BTreeMap<String, Vec<AllowEntry>> = BTreeMap::new();
    for rule in &policy.ip_rules {
        let entry = entry(rule.port, rule.protocol, scopes.bit(&rule.steps)?);
        add(
            &mut nets,
            net_key(rule.net.addr(), rule.net.prefix()),
            entry,
        );
    }
    for rule in &policy.name_rules {
        let entry = entry(rule.port, rule.protocol, scopes.bit(&rule.steps)?);
        match &rule.pattern {
            NamePattern::Exact(name) => add(&mut names, host(name)?, entry),
            NamePattern::Subdomains(parent) => add(&mut suffixes, host(parent)?, entry),
        }
    }
    let nets = with_covering(&nets);
    load(maps, &nets, &names, &suffixes)?;
    for (class, groups) in socket_groups(&policy.socket_rules, &mut scopes)? {
        maps.sockets
            .set(class, groups, 0)
            .map_err(map_error("sock_allow"))?;
    }
    load_step_patterns(maps, &scopes)?;
    Ok(scopes)
}

/// Each listed socket class (its `sock_allow` index) with the step groups it is allowed in.
/// A class no entry lists keeps 0: refused in every step.
fn socket_groups(
    rules: &[SocketRule],
    scopes: &mut Scopes,
) -> Result<BTreeMap<u32, u32>, EnforceError> {
    let mut groups: BTreeMap<u32, u32> = BTreeMap::new();
    for rule in rules {
        let class = match rule.class {
            SocketClass::Raw => SOCKET_RAW,
            SocketClass::Packet => SOCKET_PACKET,
            SocketClass::Ping => SOCKET_PING,
        };
        *groups.entry(u32::from(class)).or_default() |= scopes.bit(&rule.steps)?;
    }
    Ok(groups)
}

/// Gives the exec hook the patterns it can match at a step's first exec; the rest wait for the engine.
fn load_step_patterns(maps: &mut AllowMaps, scopes: &Scopes) -> Result<(), EnforceError> {
    for (index, (var, platform)) in (0u32..).zip(KERNEL_STEP_VARS) {
        if let Some(var) = StepVar::new(var, platform.id()) {
            maps.step_vars
                .set(index, var, 0)
                .map_err(map_error("step_vars"))?;
        }
    }
    let mut slot = 0;
    for (pattern, groups) in scopes.patterns() {
        let entry = kernel_matchable(pattern)
            .then(|| crate::bpf::abi::StepPattern::new(pattern, groups))
            .flatten()
            .filter(|_| slot < STEP_PATTERNS);
        let Some(entry) = entry else {
            tracing::warn!(
                "step pattern {pattern:?} is matched once the agent has named the step, not at its first \
                 exec (non-ASCII, over 63 bytes, or past the kernel's {STEP_PATTERNS} patterns); see docs/policy.md"
            );
            continue;
        };
        maps.step_patterns
            .set(slot, entry, 0)
            .map_err(map_error("step_patterns"))?;
        slot += 1;
    }
    Ok(())
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> EnforceError {
    move |e| EnforceError::Map {
        map,
        reason: crate::error::chain(&e),
    }
}

fn entry(port: Option<u16>, proto: Option<Proto>, scope: u32) -> AllowEntry {
    let proto = match proto {
        None => 0,
        Some(Proto::Tcp) => PROTO_TCP,
        Some(Proto::Udp) => PROTO_UDP,
    };
    AllowEntry {
        port: port.unwrap_or(0),
        proto,
        _pad: 0,
        scope,
    }
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

/// The trie key: IPv4 as IPv4-mapped IPv6, masked to the prefix.
fn net_key(addr: IpAddr, prefix: u8) -> NetKey {
    let (bytes, bits) = match addr {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), u32::from(prefix.min(32)) + 96),
        IpAddr::V6(v6) => (v6.octets(), u32::from(prefix.min(128))),
    };
    (bits, mask(bytes, bits))
}

fn mask(mut bytes: [u8; 16], bits: u32) -> [u8; 16] {
    for (i, b) in (0u32..).zip(bytes.iter_mut()) {
        let keep = bits.saturating_sub(i * 8).min(8);
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
        return Err(EnforceError::TooManyVariants {
            dest: dest.to_string(),
        });
    }
    let mut v = AllowVal {
        // At most ALLOW_ENTRIES, checked above.
        count: u32::try_from(entries.len()).unwrap_or(u32::MAX),
        ..AllowVal::default()
    };
    v.entries[..entries.len()].copy_from_slice(entries);
    Ok(v)
}

fn load(
    maps: &mut AllowMaps,
    nets: &BTreeMap<NetKey, Vec<AllowEntry>>,
    names: &BTreeMap<String, Vec<AllowEntry>>,
    suffixes: &BTreeMap<String, Vec<AllowEntry>>,
) -> Result<(), EnforceError> {
    for ((bits, addr), entries) in nets {
        let dest = format!("{}/{}", Ipv6Addr::from(*addr), bits);
        let key = aya::maps::lpm_trie::Key::new(*bits, *addr);
        maps.nets
            .insert(&key, value(&dest, entries)?, 0)
            .map_err(map_error("allow_nets"))?;
    }
    for (name, entries) in names {
        let key = HostKey::new(name).ok_or_else(|| EnforceError::NameTooLong(name.clone()))?;
        maps.names
            .insert(key, value(name, entries)?, 0)
            .map_err(map_error("allow_names"))?;
    }
    for (name, entries) in suffixes {
        let key = HostKey::new(name).ok_or_else(|| EnforceError::NameTooLong(name.clone()))?;
        maps.suffixes
            .insert(key, value(&format!("*.{name}"), entries)?, 0)
            .map_err(map_error("allow_suffixes"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(port: u16, scope: u32) -> AllowEntry {
        AllowEntry {
            port,
            proto: 0,
            _pad: 0,
            scope,
        }
    }

    #[test]
    fn ipv4_is_keyed_as_ipv4_mapped_and_masked() {
        let (bits, addr) = net_key("10.1.2.3".parse().unwrap(), 8);
        assert_eq!(bits, 104);
        assert_eq!(
            Ipv6Addr::from(addr),
            "::ffff:10.0.0.0".parse::<Ipv6Addr>().unwrap()
        );
        let (bits, addr) = net_key("2001:db8::1".parse().unwrap(), 32);
        assert_eq!(
            (bits, Ipv6Addr::from(addr)),
            (32, "2001:db8::".parse().unwrap())
        );
    }

    #[test]
    fn a_network_inherits_what_covering_networks_allow() {
        let mut nets = BTreeMap::new();
        add(
            &mut nets,
            net_key("10.0.0.0".parse().unwrap(), 8),
            entry(0, SCOPE_ALL),
        );
        add(
            &mut nets,
            net_key("10.1.2.3".parse().unwrap(), 32),
            entry(443, 1),
        );
        let merged = with_covering(&nets);
        let host = &merged[&net_key("10.1.2.3".parse().unwrap(), 32)];
        assert!(host.contains(&entry(443, 1)) && host.contains(&entry(0, SCOPE_ALL)));
        assert_eq!(
            merged[&net_key("10.0.0.0".parse().unwrap(), 8)],
            vec![entry(0, SCOPE_ALL)]
        );
    }

    #[test]
    fn step_scopes_match_ids_names_and_globs() {
        let only =
            |p: &[&str]| StepScope::Only(p.iter().map(|s| StepPattern(s.to_string())).collect());
        let mut scopes = Scopes::default();
        let build = scopes.bit(&only(&["Build"])).unwrap();
        let deploy = scopes.bit(&only(&["deploy-*", "publish"])).unwrap();
        assert_eq!(scopes.bit(&StepScope::Any).unwrap(), SCOPE_ALL);
        assert_eq!(
            scopes.groups_of(&StepMatch {
                id: "g1",
                name: Some("Build")
            }),
            build
        );
        assert_eq!(
            scopes.groups_of(&StepMatch {
                id: "g2",
                name: Some("deploy-prod")
            }),
            deploy
        );
        assert_eq!(
            scopes.groups_of(&StepMatch {
                id: "publish",
                name: Some("Test")
            }),
            deploy
        );
        assert_eq!(
            scopes.groups_of(&StepMatch {
                id: "g4",
                name: Some("Test")
            }),
            0
        );
    }

    #[test]
    fn the_kernel_gets_each_pattern_once_with_all_its_groups() {
        let only =
            |p: &[&str]| StepScope::Only(p.iter().map(|s| StepPattern(s.to_string())).collect());
        let mut scopes = Scopes::default();
        let a = scopes.bit(&only(&["build", "lint-*"])).unwrap();
        let b = scopes.bit(&only(&["build"])).unwrap();
        let patterns = scopes.patterns();
        assert_eq!(patterns["build"], a | b);
        assert_eq!(patterns["lint-*"], a);
        assert!(kernel_matchable("deploy-?"));
        assert!(
            !kernel_matchable("déploiement"),
            "byte and character globs differ"
        );
        assert!(
            !kernel_matchable(&"x".repeat(64)),
            "longer than the kernel's slot"
        );
    }

    #[test]
    fn socket_classes_get_the_groups_of_their_entries() {
        let rule = |class, steps: &[&str]| SocketRule {
            class,
            steps: if steps.is_empty() {
                StepScope::Any
            } else {
                StepScope::Only(steps.iter().map(|s| StepPattern(s.to_string())).collect())
            },
            origin: crate::policy::Origin::File { line: 1 },
        };
        let mut scopes = Scopes::default();
        let build = scopes
            .bit(&StepScope::Only(vec![StepPattern("Build".into())]))
            .unwrap();
        let groups = socket_groups(
            &[
                rule(SocketClass::Ping, &[]),
                rule(SocketClass::Raw, &["Build"]),
                rule(SocketClass::Raw, &["Trace"]),
            ],
            &mut scopes,
        )
        .unwrap();
        let trace = scopes
            .bit(&StepScope::Only(vec![StepPattern("Trace".into())]))
            .unwrap();
        assert_eq!(groups[&u32::from(SOCKET_PING)], SCOPE_ALL);
        assert_eq!(
            groups[&u32::from(SOCKET_RAW)],
            build | trace,
            "an existing step group is reused"
        );
        assert!(
            !groups.contains_key(&u32::from(SOCKET_PACKET)),
            "unlisted: refused everywhere"
        );
    }

    #[test]
    fn too_many_variants_for_one_destination_is_an_error() {
        let entries: Vec<AllowEntry> = (1..=9).map(|p| entry(p, SCOPE_ALL)).collect();
        assert!(matches!(
            value("x", &entries),
            Err(EnforceError::TooManyVariants { .. })
        ));
    }
}
