//! Finding the step launchers that are already running: the one `ciwatch
//! start` runs under, and those a starting daemon adopts.

use super::platform::{self, Platform};
use super::procfs::{cmdline, comm, parent_of, pids};
use crate::bpf::abi::CommKey;

/// A running step launcher.
#[derive(Debug, Clone)]
pub struct Found {
    pub pid: u32,
    pub comm: String,
    pub platform: Platform,
    pub argv: Vec<String>,
}

/// Task names of every platform's step launchers, with the platform's id.
pub fn names() -> Vec<(&'static str, u32)> {
    platform::detectors()
        .iter()
        .flat_map(|d| {
            d.launcher_comms()
                .iter()
                .map(move |c| (*c, d.platform().id()))
        })
        .collect()
}

/// The nearest ancestor of this process whose task name is the platform's step launcher.
pub fn ancestor(platform: Platform) -> Option<(u32, String)> {
    let names: Vec<&str> = match platform::detector(platform) {
        Some(d) if !d.launcher_comms().is_empty() => d.launcher_comms().to_vec(),
        Some(d) if d.platform() == Platform::Jenkins => vec!["java"],
        _ => names().into_iter().map(|(n, _)| n).collect(),
    };
    let mut pid = std::os::unix::process::parent_id();
    for _ in 0..64 {
        if pid <= 1 {
            return None;
        }
        let name = comm(pid);
        if names.iter().any(|n| CommKey::new(n) == CommKey::new(&name)) {
            return Some((pid, name));
        }
        pid = parent_of(pid)?;
    }
    None
}

/// Jenkins' durable-task wrapper double-forks, so the agent JVM is not an
/// ancestor: the one JVM running the remoting agent.
pub fn jenkins_agent() -> Option<(u32, String)> {
    let agents: Vec<u32> = pids()
        .into_iter()
        .filter(|pid| comm(*pid) == "java")
        .filter(|pid| {
            cmdline(*pid).iter().any(|a| {
                a.contains("agent.jar") || a.contains("remoting") || a.contains("slave.jar")
            })
        })
        .collect();
    match agents.as_slice() {
        [one] => Some((*one, "java".into())),
        _ => None,
    }
}

/// Launchers already running on the host, recognised by task name.
pub fn running(names: &[(&str, u32)]) -> Vec<Found> {
    pids()
        .into_iter()
        .filter_map(|pid| {
            let comm = comm(pid);
            let (_, id) = names
                .iter()
                .find(|(n, _)| CommKey::new(n) == CommKey::new(&comm))?;
            Some(Found {
                pid,
                comm,
                platform: Platform::from_id(*id),
                argv: cmdline(pid),
            })
        })
        .collect()
}
