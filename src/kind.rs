//! The one table of record kinds: the kernel's ABI value, the name logs,
//! totals, summaries and metrics use, and whether the kind reaches the log.

use crate::bpf::abi;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Exec,
    Fork,
    Exit,
    Connect,
    File,
    Dns,
    /// A step root's environment: it feeds attribution and is never logged.
    Env,
    Denied,
    DnsRefused,
    /// A raw, packet or ping socket a job process opened.
    Socket,
    /// One the enforce hook refused.
    SocketDenied,
}

struct Row {
    abi: u16,
    name: &'static str,
}

/// In `Kind`'s order, which is the ABI's (checked by a test).
const TABLE: [Row; 11] = [
    Row {
        abi: abi::KIND_EXEC,
        name: "exec",
    },
    Row {
        abi: abi::KIND_FORK,
        name: "fork",
    },
    Row {
        abi: abi::KIND_EXIT,
        name: "exit",
    },
    Row {
        abi: abi::KIND_CONNECT,
        name: "connect",
    },
    Row {
        abi: abi::KIND_FILE,
        name: "file",
    },
    Row {
        abi: abi::KIND_DNS,
        name: "dns",
    },
    Row {
        abi: abi::KIND_ENV,
        name: "env",
    },
    Row {
        abi: abi::KIND_DENIED,
        name: "denied",
    },
    Row {
        abi: abi::KIND_DNS_REFUSED,
        name: "dns_refused",
    },
    Row {
        abi: abi::KIND_SOCKET,
        name: "socket",
    },
    Row {
        abi: abi::KIND_SOCKET_DENIED,
        name: "socket_denied",
    },
];

impl Kind {
    /// Every kind the kernel sends, in ABI order.
    pub const ALL: [Kind; 11] = [
        Kind::Exec,
        Kind::Fork,
        Kind::Exit,
        Kind::Connect,
        Kind::File,
        Kind::Dns,
        Kind::Env,
        Kind::Denied,
        Kind::DnsRefused,
        Kind::Socket,
        Kind::SocketDenied,
    ];

    fn row(self) -> &'static Row {
        &TABLE[self as usize]
    }

    /// The `KIND_*` value of ebpf/ciwatch.h.
    pub fn abi(self) -> u16 {
        self.row().abi
    }

    /// The `type` of its log lines, and its name in totals and metrics.
    pub fn name(self) -> &'static str {
        self.row().name
    }

    /// Whether records of this kind become events in the log.
    pub fn is_event(self) -> bool {
        self != Kind::Env
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kinds that appear in a log.
    pub fn events() -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(|k| k.is_event())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_indexed_by_kind_and_every_abi_value_and_name_is_unique() {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i);
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
        }
        let mut abis: Vec<u16> = TABLE.iter().map(|r| r.abi).collect();
        abis.dedup();
        assert_eq!(abis.len(), TABLE.len());
        assert!(abis.windows(2).all(|w| w[0] < w[1]), "ABI order");
        assert!(u32::from(*abis.last().unwrap()) < abi::KIND_SLOTS);
    }
}
