//! Every C library on the host whose getaddrinfo() the DNS hook probes: the
//! glibc the dynamic loader's cache names, and musl where installed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const LD_SO_CACHE: &str = "/etc/ld.so.cache";
const CACHE_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";

/// `FLAG_*` values of an ld.so.cache entry for this architecture's libc6.
#[cfg(target_arch = "x86_64")]
const ARCH_FLAGS: i32 = 0x0303;
#[cfg(target_arch = "aarch64")]
const ARCH_FLAGS: i32 = 0x0a03;

const MUSL_CANDIDATES: &[&str] = &[
    "/lib/ld-musl-x86_64.so.1",
    "/lib/ld-musl-aarch64.so.1",
    "/usr/lib/musl/lib/libc.so",
    "/usr/lib/x86_64-linux-musl/libc.so",
    "/usr/lib/aarch64-linux-musl/libc.so",
    "/usr/local/musl/lib/libc.so",
];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Libc {
    pub flavor: &'static str,
    pub path: PathBuf,
}

pub fn discover() -> Vec<Libc> {
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    let glibc = std::fs::read(LD_SO_CACHE)
        .map(|c| glibc_from_cache(&c))
        .unwrap_or_default();
    let musl = MUSL_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists());
    for (flavor, path) in glibc
        .into_iter()
        .map(|p| ("glibc", p))
        .chain(musl.map(|p| ("musl", p)))
    {
        let real = std::fs::canonicalize(&path).unwrap_or(path);
        if seen.insert(real.clone()) {
            found.push(Libc { flavor, path: real });
        }
    }
    found
}

/// `libc.so.6` entries of the new-format cache for this architecture.
/// Pre-2.32 caches put an old-format table first; offsets count from the new header.
fn glibc_from_cache(file: &[u8]) -> Vec<PathBuf> {
    let Some(base) = file
        .windows(CACHE_MAGIC.len())
        .position(|w| w == CACHE_MAGIC)
    else {
        return Vec::new();
    };
    let cache = &file[base..];
    let u32_at = |at: usize| {
        cache
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let Some(count) = u32_at(20) else {
        return Vec::new();
    };
    // Header: magic[20], nlibs, len_strings, flags(u8)+pad[3], extension offset, unused[3] = 48 bytes.
    let entries = 48;
    let entry_size = 24;
    // Never trust the count beyond what the file can hold.
    let count = (count as usize).min(cache.len().saturating_sub(entries) / entry_size);
    let string = |offset: u32| -> Option<&[u8]> {
        let rest = cache.get(offset as usize..)?;
        Some(&rest[..rest.iter().position(|&b| b == 0)?])
    };
    (0..count)
        .filter_map(|i| {
            let at = entries + i * entry_size;
            let flags = u32_at(at)? as i32;
            let key = string(u32_at(at + 4)?)?;
            let value = string(u32_at(at + 8)?)?;
            let path = std::str::from_utf8(value).ok()?;
            (key == b"libc.so.6" && flags == ARCH_FLAGS).then(|| PathBuf::from(path))
        })
        .filter(|p| Path::new(p).exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_cache_yields_nothing() {
        assert!(glibc_from_cache(b"").is_empty());
        assert!(glibc_from_cache(b"glibc-ld.so.cache1.1\xff\xff\xff\xff").is_empty());
    }

    #[test]
    fn this_host_has_a_libc() {
        // Every supported build host (Debian/Ubuntu) has glibc in its loader cache.
        assert!(
            discover().iter().any(|l| l.flavor == "glibc"),
            "{:?}",
            discover()
        );
    }
}
