//! The local resolver: `nameserver` lines of /etc/resolv.conf, which the
//! `defaults.resolver` rule allows on port 53.

use std::net::IpAddr;
use std::path::Path;

pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// This host's nameservers; none when the file is missing or unreadable
/// (then only loopback resolvers such as 127.0.0.53 work, through `loopback`).
pub fn system_nameservers() -> Vec<IpAddr> {
    nameservers_in(Path::new(RESOLV_CONF))
}

pub fn nameservers_in(path: &Path) -> Vec<IpAddr> {
    std::fs::read_to_string(path)
        .map(|t| parse_nameservers(&t))
        .unwrap_or_default()
}

/// `nameserver ADDR` lines, in order, without duplicates. A zone index
/// (`fe80::1%eth0`) is dropped: rules match addresses, not interfaces.
pub fn parse_nameservers(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        let addr = addr.split('%').next().unwrap_or(addr);
        if let Ok(ip) = addr.parse::<IpAddr>() {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameserver_lines() {
        let text = "# generated\nsearch example.internal\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\n\
                    nameserver   10.0.0.2 # trailing\nnameserver bogus\n;nameserver 1.1.1.1\nnameserver 127.0.0.53\n";
        let got: Vec<String> = parse_nameservers(text)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["127.0.0.53", "fe80::1", "10.0.0.2"]);
    }
}
