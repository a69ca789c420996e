//! Address → host names the job itself resolved, so an egress destination can
//! be named without trusting reverse DNS.

use std::collections::HashMap;
use std::net::IpAddr;

/// Names kept per address; CDNs map many names to one address.
const NAMES_PER_ADDR: usize = 4;
const MAX_ADDRS: usize = 65_536;

#[derive(Debug, Default)]
pub struct NameCache {
    names: HashMap<IpAddr, Vec<String>>,
}

impl NameCache {
    pub fn learn(&mut self, addr: IpAddr, host: &str) {
        if host.is_empty() || (self.names.len() >= MAX_ADDRS && !self.names.contains_key(&addr)) {
            return;
        }
        let list = self.names.entry(addr).or_default();
        list.retain(|h| h != host);
        list.insert(0, host.to_string());
        list.truncate(NAMES_PER_ADDR);
    }

    /// Most recently resolved first.
    pub fn hosts(&self, addr: &IpAddr) -> Vec<String> {
        self.names.get(addr).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_recent_name_first_and_bounded() {
        let mut c = NameCache::default();
        let a: IpAddr = "127.0.0.3".parse().unwrap();
        for h in ["a", "b", "c", "d", "e", "b"] {
            c.learn(a, h);
        }
        assert_eq!(c.hosts(&a), ["b", "e", "d", "c"]);
    }
}
