//! Rust mirror of `ebpf/ciwatch.h`. `tests::layout_matches_c` compares every
//! struct here with the C layout recorded in the BTF of `abi_check.bpf.o`, and
//! `tests::constants_match_c` every constant with the value clang gave it.
//!
//! Every struct derives `bytemuck::Pod`, which does not compile for a struct
//! with implicit padding: its bytes are all fields, so any bit pattern read
//! from the kernel is a valid value.

pub const ABI_VERSION: u32 = 1;

pub const COMM_LEN: usize = 16;
pub const PATH_MAX: usize = 256;
pub const ARGS_MAX: usize = 1024;
pub const HOST_MAX: usize = 256;
pub const NAME_KEY: usize = 32;
pub const DNS_ADDRS: usize = 8;
pub const KIND_SLOTS: u32 = 16;
pub const ENV_MAX: usize = 16384;

pub const KIND_EXEC: u16 = 1;
pub const KIND_FORK: u16 = 2;
pub const KIND_EXIT: u16 = 3;
pub const KIND_CONNECT: u16 = 4;
pub const KIND_FILE: u16 = 5;
pub const KIND_DNS: u16 = 6;
pub const KIND_ENV: u16 = 7;
pub const KIND_DENIED: u16 = 8;
pub const KIND_DNS_REFUSED: u16 = 9;
pub const KIND_SOCKET: u16 = 10;
pub const KIND_SOCKET_DENIED: u16 = 11;

pub const REFUSED_UNLISTED: u8 = 1;
pub const REFUSED_UNREADABLE: u8 = 2;

pub const ALLOW_ENTRIES: usize = 8;
pub const SCOPE_ALL: u32 = 1 << 31;
pub const PROTO_ANY: u8 = 0;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const NAME_MAX: usize = 128;

pub const STEP_PATTERNS: u32 = 64;
pub const STEP_TEXT: usize = 64;
pub const STEP_VARS: u32 = 4;
pub const STEP_VAR_NAME: usize = 32;

pub const TAG_STEP_ROOT: u32 = 1 << 0;
pub const TAG_LAUNCHER: u32 = 1 << 1;
pub const TAG_CONTAINER: u32 = 1 << 2;
pub const TAG_LAUNCHED: u32 = 1 << 3;

pub const ENV_STEP_ROOT: u32 = 1;
pub const ENV_LAUNCHER: u32 = 2;
pub const ENV_CONTAINER: u32 = 3;
pub const ENV_DETACHED: u32 = 4;

pub const F_TRUNC_FILENAME: u16 = 1 << 0;
pub const F_TRUNC_ARGS: u16 = 1 << 1;
pub const F_TRUNC_PATH: u16 = 1 << 2;
pub const F_TRUNC_CWD: u16 = 1 << 3;
pub const F_PATH_REVERSED: u16 = 1 << 4;
pub const F_CWD_REVERSED: u16 = 1 << 5;
pub const F_TRUNC_HOST: u16 = 1 << 6;
pub const F_TRUNC_ADDRS: u16 = 1 << 7;
pub const F_DNS_JUDGED: u16 = 1 << 8;
pub const F_DNS_UNLISTED: u16 = 1 << 9;
pub const F_UNTRACKED: u16 = 1 << 10;

pub const SRC_SYSCALL: u8 = 1;
pub const SRC_CGROUP_CONNECT: u8 = 2;
pub const SRC_CGROUP_SENDMSG: u8 = 3;

pub const SOCKET_RAW: u8 = 1;
pub const SOCKET_PACKET: u8 = 2;
pub const SOCKET_PING: u8 = 3;
pub const SOCKET_CLASSES: u32 = 4;

pub const SOCKET_EPERM: u8 = 1;
pub const SOCKET_KILLED: u8 = 2;
pub const SOCKET_KILL_FAILED: u8 = 3;

pub const SOCKET_SRC_CGROUP: u8 = 1;
pub const SOCKET_SRC_SYSCALL: u8 = 2;

pub const FILE_KPROBE: u16 = 1;
pub const FILE_FENTRY: u16 = 2;
pub const FILE_TP_OPENAT: u16 = 3;
pub const FILE_TP_OPENAT2: u16 = 4;
pub const FILE_TP_OPEN: u16 = 5;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default, PartialEq, Eq)]
pub struct Tag {
    pub job: u32,
    pub step: u32,
    pub flags: u32,
    /// The launcher's `Platform::id` (0: none).
    pub platform: u32,
}

// SAFETY: plain old data with explicit padding; any bit pattern is valid.
unsafe impl aya::Pod for Tag {}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Header {
    pub kind: u16,
    pub flags: u16,
    pub size: u32,
    pub ktime_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub proc_start_ns: u64,
    pub cgroup_id: u64,
    pub uid: u32,
    pub job: u32,
    pub step: u32,
    pub tag_flags: u32,
    pub comm: [u8; COMM_LEN],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Exec {
    pub h: Header,
    pub ppid: u32,
    pub filename_len: u32,
    pub parent_start_ns: u64,
    pub args_len: u32,
    pub args_total: u32,
    pub filename: [u8; PATH_MAX],
    pub args: [u8; ARGS_MAX],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Fork {
    pub h: Header,
    pub child_tgid: u32,
    pub _pad: u32,
    pub child_start_ns: u64,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Exit {
    pub h: Header,
    pub exit_code: i32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Connect {
    pub h: Header,
    pub family: u16,
    pub port: u16,
    pub sock_type: u16,
    pub source: u8,
    pub _pad0: u8,
    pub addr: [u8; 16],
    pub fd: i32,
    pub _pad1: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct File {
    pub h: Header,
    pub dirfd: i32,
    pub open_flags: u32,
    pub hook: u16,
    pub path_len: u16,
    pub cwd_len: u16,
    pub _pad: u16,
    pub path: [u8; PATH_MAX],
    pub cwd: [u8; PATH_MAX],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DnsAddr {
    pub family: u16,
    pub _pad0: u16,
    pub _pad1: u32,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Dns {
    pub h: Header,
    pub ret: i32,
    pub naddrs: u16,
    pub host_len: u16,
    pub latency_ns: u64,
    pub addrs: [DnsAddr; DNS_ADDRS],
    pub host: [u8; HOST_MAX],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct DnsRefused {
    pub h: Header,
    pub family: u16,
    pub port: u16,
    pub proto: u8,
    pub reason: u8,
    pub name_len: u16,
    pub qtype: u16,
    pub _pad0: u16,
    pub _pad1: u32,
    pub addr: [u8; 16],
    pub name: [u8; NAME_MAX],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Socket {
    pub h: Header,
    pub protocol: u32,
    pub family: u16,
    pub sock_type: u16,
    pub class: u8,
    pub refusal: u8,
    pub source: u8,
    pub _pad0: u8,
    pub _pad1: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default, PartialEq, Eq)]
pub struct Launcher {
    pub job: u32,
    pub platform: u32,
    pub flags: u32,
    pub _pad: u32,
}

// SAFETY: plain old data with explicit padding; any bit pattern is valid.
unsafe impl aya::Pod for Launcher {}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, PartialEq, Eq)]
pub struct CommKey {
    pub comm: [u8; COMM_LEN],
}

// SAFETY: a byte array; any bit pattern is valid.
unsafe impl aya::Pod for CommKey {}

impl CommKey {
    /// The kernel compares the first 15 bytes of a task name, NUL-padded.
    pub fn new(name: &str) -> Self {
        let mut comm = [0u8; COMM_LEN];
        let bytes = name.as_bytes();
        let len = bytes.len().min(COMM_LEN - 1);
        comm[..len].copy_from_slice(&bytes[..len]);
        Self { comm }
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Env {
    pub h: Header,
    pub reason: u32,
    pub env_len: u32,
    pub env_total: u32,
    pub ppid: u32,
    pub env: [u8; ENV_MAX],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, PartialEq, Eq)]
pub struct AllowKey {
    pub prefixlen: u32,
    pub addr: [u8; 16],
}

// SAFETY: plain old data; any bit pattern is valid.
unsafe impl aya::Pod for AllowKey {}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default, PartialEq, Eq)]
pub struct AllowEntry {
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub scope: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default, PartialEq, Eq)]
pub struct AllowVal {
    pub count: u32,
    pub _pad: u32,
    pub entries: [AllowEntry; ALLOW_ENTRIES],
}

// SAFETY: plain old data with explicit padding; any bit pattern is valid.
unsafe impl aya::Pod for AllowVal {}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, PartialEq, Eq)]
pub struct HostKey {
    pub name: [u8; NAME_MAX],
}

// SAFETY: a byte array; any bit pattern is valid.
unsafe impl aya::Pod for HostKey {}

impl HostKey {
    /// None when the name cannot fit with its NUL.
    pub fn new(name: &str) -> Option<Self> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= NAME_MAX {
            return None;
        }
        let mut key = [0u8; NAME_MAX];
        key[..bytes.len()].copy_from_slice(bytes);
        Some(Self { name: key })
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, PartialEq, Eq)]
pub struct StepPattern {
    pub groups: u32,
    pub len: u32,
    pub text: [u8; STEP_TEXT],
}

// SAFETY: integers and a byte array; any bit pattern is valid.
unsafe impl aya::Pod for StepPattern {}

impl StepPattern {
    /// None when the pattern cannot fit.
    pub fn new(pattern: &str, groups: u32) -> Option<Self> {
        let bytes = pattern.as_bytes();
        if bytes.is_empty() || bytes.len() >= STEP_TEXT {
            return None;
        }
        let mut text = [0u8; STEP_TEXT];
        text[..bytes.len()].copy_from_slice(bytes);
        Some(Self {
            groups,
            len: u32::try_from(bytes.len()).ok()?,
            text,
        })
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, PartialEq, Eq)]
pub struct StepVar {
    pub len: u32,
    /// The `Platform::id` whose steps carry this variable.
    pub platform: u32,
    pub name: [u8; STEP_VAR_NAME],
}

// SAFETY: integers and a byte array; any bit pattern is valid.
unsafe impl aya::Pod for StepVar {}

impl StepVar {
    /// `NAME=`, as the kernel compares it, for steps of `platform`; None when it cannot fit.
    pub fn new(var: &str, platform: u32) -> Option<Self> {
        let with_eq = format!("{var}=");
        let bytes = with_eq.as_bytes();
        if bytes.len() >= STEP_VAR_NAME {
            return None;
        }
        let mut name = [0u8; STEP_VAR_NAME];
        name[..bytes.len()].copy_from_slice(bytes);
        Some(Self {
            len: u32::try_from(bytes.len()).ok()?,
            platform,
            name,
        })
    }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, PartialEq, Eq)]
pub struct NameKey {
    pub name: [u8; NAME_KEY],
}

// SAFETY: a byte array; any bit pattern is valid.
unsafe impl aya::Pod for NameKey {}

impl NameKey {
    /// A map key for one path component; None when it cannot fit with its NUL.
    pub fn new(component: &[u8]) -> Option<Self> {
        if component.is_empty() || component.len() >= NAME_KEY || component.contains(&0) {
            return None;
        }
        let mut name = [0u8; NAME_KEY];
        name[..component.len()].copy_from_slice(component);
        Some(Self { name })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::btf_layout::{enum_values, struct_layout, Layout};
    use std::collections::BTreeMap;
    use std::mem::{offset_of, size_of};

    macro_rules! layout {
        ($ty:ty, $($field:ident),+) => {
            Layout {
                size: size_of::<$ty>(),
                fields: vec![$((stringify!($field).trim_start_matches("r#").to_string(), offset_of!($ty, $field))),+],
            }
        };
    }

    #[test]
    fn layout_matches_c() {
        let object = crate::bpf::ABI_CHECK_OBJECT;
        let cases = [
            ("cw_tag", layout!(Tag, job, step, flags, platform)),
            (
                "cw_header",
                layout!(
                    Header,
                    kind,
                    flags,
                    size,
                    ktime_ns,
                    pid,
                    tgid,
                    proc_start_ns,
                    cgroup_id,
                    uid,
                    job,
                    step,
                    tag_flags,
                    comm
                ),
            ),
            (
                "cw_exec",
                layout!(
                    Exec,
                    h,
                    ppid,
                    filename_len,
                    parent_start_ns,
                    args_len,
                    args_total,
                    filename,
                    args
                ),
            ),
            (
                "cw_fork",
                layout!(Fork, h, child_tgid, _pad, child_start_ns),
            ),
            ("cw_exit", layout!(Exit, h, exit_code, _pad)),
            (
                "cw_connect",
                layout!(Connect, h, family, port, sock_type, source, _pad0, addr, fd, _pad1),
            ),
            (
                "cw_file",
                layout!(File, h, dirfd, open_flags, hook, path_len, cwd_len, _pad, path, cwd),
            ),
            ("cw_dns_addr", layout!(DnsAddr, family, _pad0, _pad1, addr)),
            (
                "cw_dns",
                layout!(Dns, h, ret, naddrs, host_len, latency_ns, addrs, host),
            ),
            (
                "cw_dns_refused",
                layout!(
                    DnsRefused, h, family, port, proto, reason, name_len, qtype, _pad0, _pad1,
                    addr, name
                ),
            ),
            (
                "cw_socket",
                layout!(
                    Socket, h, protocol, family, sock_type, class, refusal, source, _pad0, _pad1
                ),
            ),
            ("cw_name_key", layout!(NameKey, name)),
            ("cw_launcher", layout!(Launcher, job, platform, flags, _pad)),
            ("cw_comm_key", layout!(CommKey, comm)),
            (
                "cw_env",
                layout!(Env, h, reason, env_len, env_total, ppid, env),
            ),
            ("cw_allow_key", layout!(AllowKey, prefixlen, addr)),
            (
                "cw_allow_entry",
                layout!(AllowEntry, port, proto, _pad, scope),
            ),
            ("cw_allow_val", layout!(AllowVal, count, _pad, entries)),
            ("cw_host_key", layout!(HostKey, name)),
            ("cw_step_pattern", layout!(StepPattern, groups, len, text)),
            ("cw_step_var", layout!(StepVar, len, platform, name)),
        ];
        for (c_name, rust) in cases {
            let c = struct_layout(object, c_name).unwrap_or_else(|e| panic!("{c_name}: {e}"));
            assert_eq!(
                c, rust,
                "layout of struct {c_name} differs between ebpf/ciwatch.h and src/bpf/abi.rs"
            );
        }
    }

    /// Each Rust constant X with its C name CW_X.
    macro_rules! constants {
        ($($name:ident),+ $(,)?) => {
            [$((concat!("CW_", stringify!($name)), $name as i128)),+]
        };
    }

    /// `#define`s of ciwatch.h that are not ABI values, and why.
    const NOT_CONSTANTS: &[(&str, &str)] =
        &[("CIWATCH_ABI_H", "the include guard: it has no value")];

    /// The `#define`s of ciwatch.h, in order: (name, whether it is function-like).
    fn header_defines() -> Vec<(String, bool)> {
        include_str!("../../ebpf/ciwatch.h")
            .lines()
            .filter_map(|line| {
                let rest = line.trim_start().strip_prefix('#')?.trim_start();
                let token = rest.strip_prefix("define")?.split_whitespace().next()?;
                let name = token.split('(').next().unwrap_or(token);
                Some((name.to_string(), name.len() < token.len()))
            })
            .collect()
    }

    #[test]
    fn constants_match_c() {
        let rust: BTreeMap<&str, i128> = constants!(
            ABI_VERSION,
            COMM_LEN,
            PATH_MAX,
            ARGS_MAX,
            HOST_MAX,
            NAME_KEY,
            DNS_ADDRS,
            KIND_SLOTS,
            ENV_MAX,
            KIND_EXEC,
            KIND_FORK,
            KIND_EXIT,
            KIND_CONNECT,
            KIND_FILE,
            KIND_DNS,
            KIND_ENV,
            KIND_DENIED,
            KIND_DNS_REFUSED,
            KIND_SOCKET,
            KIND_SOCKET_DENIED,
            F_TRUNC_FILENAME,
            F_TRUNC_ARGS,
            F_TRUNC_PATH,
            F_TRUNC_CWD,
            F_PATH_REVERSED,
            F_CWD_REVERSED,
            F_TRUNC_HOST,
            F_TRUNC_ADDRS,
            F_DNS_JUDGED,
            F_DNS_UNLISTED,
            F_UNTRACKED,
            TAG_STEP_ROOT,
            TAG_LAUNCHER,
            TAG_CONTAINER,
            TAG_LAUNCHED,
            ENV_STEP_ROOT,
            ENV_LAUNCHER,
            ENV_CONTAINER,
            ENV_DETACHED,
            SRC_SYSCALL,
            SRC_CGROUP_CONNECT,
            SRC_CGROUP_SENDMSG,
            ALLOW_ENTRIES,
            SCOPE_ALL,
            PROTO_ANY,
            PROTO_TCP,
            PROTO_UDP,
            NAME_MAX,
            STEP_PATTERNS,
            STEP_TEXT,
            STEP_VARS,
            STEP_VAR_NAME,
            REFUSED_UNLISTED,
            REFUSED_UNREADABLE,
            SOCKET_RAW,
            SOCKET_PACKET,
            SOCKET_PING,
            SOCKET_CLASSES,
            SOCKET_EPERM,
            SOCKET_KILLED,
            SOCKET_KILL_FAILED,
            SOCKET_SRC_CGROUP,
            SOCKET_SRC_SYSCALL,
            FILE_KPROBE,
            FILE_FENTRY,
            FILE_TP_OPENAT,
            FILE_TP_OPENAT2,
            FILE_TP_OPEN,
        )
        .into_iter()
        .collect();
        let c: BTreeMap<String, i128> =
            enum_values(crate::bpf::ABI_CHECK_OBJECT, "cw_abi_constants")
                .unwrap_or_else(|e| panic!("enum cw_abi_constants: {e}"))
                .into_iter()
                .map(|(name, value)| {
                    let name = name.strip_prefix("ABI_").unwrap_or_else(|| {
                        panic!("{name} in enum cw_abi_constants lacks its ABI_ prefix")
                    });
                    (name.to_string(), value)
                })
                .collect();

        let mut defines = header_defines();
        for (name, why) in NOT_CONSTANTS {
            let before = defines.len();
            defines.retain(|(d, _)| d != name);
            assert!(
                before > defines.len(),
                "{name} ({why}) is no longer defined; drop it from NOT_CONSTANTS"
            );
        }
        let defines: Vec<String> = defines
            .into_iter()
            .map(|(name, function_like)| {
                assert!(
                    !function_like,
                    "{name} is a function-like macro, not a value the test can compare; \
                     list it in NOT_CONSTANTS with the reason"
                );
                name
            })
            .collect();
        for name in &defines {
            assert!(
                c.contains_key(name),
                "#define {name} of ebpf/ciwatch.h is missing from enum cw_abi_constants in ebpf/abi_check.bpf.c"
            );
            assert!(
                rust.contains_key(name.as_str()),
                "#define {name} of ebpf/ciwatch.h has no Rust counterpart: \
                 add it to src/bpf/abi.rs and to the table in constants_match_c"
            );
        }
        for name in c.keys() {
            assert!(
                defines.contains(name),
                "ABI_{name} of enum cw_abi_constants is not a #define of ebpf/ciwatch.h"
            );
        }
        for (name, value) in &rust {
            assert!(
                defines.iter().any(|d| d == name),
                "{name}, checked for src/bpf/abi.rs, is not a #define of ebpf/ciwatch.h"
            );
            assert_eq!(
                c.get(*name),
                Some(value),
                "{name} differs between ebpf/ciwatch.h and src/bpf/abi.rs"
            );
        }
    }

    #[test]
    fn comm_keys_are_truncated_like_task_names() {
        assert_eq!(
            &CommKey::new("containerd-shim-runc-v2").comm[..],
            b"containerd-shim\0"
        );
        assert_eq!(&CommKey::new("Runner.Worker").comm[..13], b"Runner.Worker");
    }

    #[test]
    fn name_key_rejects_what_the_kernel_cannot_match() {
        assert!(NameKey::new(b"id_rsa").is_some());
        assert!(NameKey::new(b"").is_none());
        assert!(NameKey::new(&[b'a'; NAME_KEY]).is_none());
        assert!(NameKey::new(b"a\0b").is_none());
    }
}
