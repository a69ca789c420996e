//! What the kernel and our privileges must offer before anything loads, each
//! failure named with what to do about it.

use std::path::{Path, PathBuf};

use super::pin::BPFFS;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "missing capabilities: {}. Run ciwatch as root (sudo), or grant them: \
         setcap cap_bpf,cap_perfmon,cap_net_admin,cap_sys_admin+ep $(command -v ciwatch)",
        .0.join(", ")
    )]
    MissingCapabilities(Vec<&'static str>),
    #[error(
        "this kernel exposes no BTF at {0}: ciwatch's CO-RE programs need a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (ciwatch needs Linux 5.17+), \
         or pass --btf FILE with BTF for this exact kernel (for example from BTFHub)"
    )]
    NoBtf(PathBuf),
    #[error("{what} is not mounted at {path} and mounting it failed ({cause}); mount it with: mount -t {fstype} {fstype} {path}")]
    Mount {
        what: &'static str,
        fstype: &'static str,
        path: &'static str,
        /// Shown inside the message, before the fix: not a `source()`.
        cause: std::io::Error,
    },
}

/// Capabilities ciwatch uses, by bit number (include/uapi/linux/capability.h).
const REQUIRED_CAPS: &[(u32, &str)] = &[
    (39, "CAP_BPF"),
    (38, "CAP_PERFMON"),
    (12, "CAP_NET_ADMIN"),
    (21, "CAP_SYS_ADMIN"),
];

pub const SYS_BTF: &str = "/sys/kernel/btf/vmlinux";
const TRACEFS: &str = "/sys/kernel/tracing";

/// Facts found and fixes applied, for `check` and the trace header.
#[derive(Debug, Default, Clone)]
pub struct Environment {
    pub kernel: String,
    pub btf: PathBuf,
    pub cgroup2: Option<PathBuf>,
    pub mounted: Vec<&'static str>,
}

pub fn check(btf_override: Option<&Path>) -> Result<Environment, PreflightError> {
    check_capabilities()?;
    let btf = btf_override.map_or_else(|| PathBuf::from(SYS_BTF), Path::to_path_buf);
    if !btf.is_file() {
        return Err(PreflightError::NoBtf(btf));
    }
    let mut mounted = Vec::new();
    if ensure_mounted("tracefs", "tracefs", TRACEFS, "events")? {
        mounted.push("tracefs");
    }
    // Only `start` in enforce mode pins (src/bpf/pin.rs), and it fails there if bpffs is missing.
    match ensure_mounted("bpffs", "bpf", BPFFS, "") {
        Ok(true) => mounted.push("bpffs"),
        Ok(false) => {}
        Err(e) => tracing::warn!("{e}"),
    }
    raise_memlock_limit();
    Ok(Environment {
        kernel: kernel_release(),
        btf,
        cgroup2: cgroup2_mount(),
        mounted,
    })
}

fn check_capabilities() -> Result<(), PreflightError> {
    let effective = effective_capabilities().unwrap_or(0);
    let missing: Vec<&str> = REQUIRED_CAPS
        .iter()
        .filter(|(bit, _)| effective & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::MissingCapabilities(missing))
    }
}

fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Returns true when this call mounted it.
fn ensure_mounted(
    what: &'static str,
    fstype: &'static str,
    path: &'static str,
    probe: &str,
) -> Result<bool, PreflightError> {
    if is_mounted(path, fstype) || (!probe.is_empty() && Path::new(path).join(probe).exists()) {
        return Ok(false);
    }
    let target = std::ffi::CString::new(path).expect("no NUL in a constant path");
    let fs = std::ffi::CString::new(fstype).expect("no NUL in a constant fstype");
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PreflightError::Mount {
            what,
            fstype,
            path,
            cause: std::io::Error::last_os_error(),
        });
    }
    tracing::info!("mounted {what} at {path}");
    Ok(true)
}

fn is_mounted(path: &str, fstype: &str) -> bool {
    mounts().any(|(point, fs)| point == path && fs == fstype)
}

/// (mount point, filesystem type) from /proc/self/mountinfo.
fn mounts() -> impl Iterator<Item = (String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some((unescape_octal(point), fstype.to_string()))
        })
        .collect::<Vec<_>>()
        .into_iter()
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 mount; never assumed to be /sys/fs/cgroup (hybrid hosts differ).
pub fn cgroup2_mount() -> Option<PathBuf> {
    mounts()
        .find(|(_, fs)| fs == "cgroup2")
        .map(|(point, _)| PathBuf::from(point))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (https://lwn.net/Articles/837122/).
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_octal(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape_octal(r"/plain"), "/plain");
        assert_eq!(unescape_octal(r"/trailing\04"), r"/trailing\04");
    }
}
