//! Ring-buffer bytes to typed records. Pure, total and panic-free: every
//! length is checked before a read, and unknown kinds are an error value the
//! caller counts.

use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::bpf::abi;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than its {need}-byte {what}")]
    Short {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
    #[error("record says it is {claimed} bytes but {len} arrived")]
    SizeMismatch { claimed: u32, len: usize },
}

/// Identity and lineage fields every record carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Common {
    pub flags: u16,
    pub ktime_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub proc_start_ns: u64,
    pub cgroup_id: u64,
    pub uid: u32,
    pub job: u32,
    pub step: u32,
    pub tag_flags: u32,
    pub comm: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Exec(Exec),
    Fork(Fork),
    Exit(Exit),
    Connect(Connect),
    File(File),
    Dns(Dns),
    Env(Env),
    /// A connect or send the enforce hook refused.
    Denied(Connect),
    /// A DNS query the enforce hook dropped before it left.
    DnsRefused(DnsRefused),
    /// A raw, packet or ping socket a job process opened.
    Socket(Socket),
    /// One the enforce hook refused.
    SocketDenied(Socket),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub common: Common,
    pub ppid: u32,
    pub parent_start_ns: u64,
    pub filename: Vec<u8>,
    /// argv as captured, one entry per NUL-terminated string.
    pub argv: Vec<Vec<u8>>,
    pub args_total: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    pub common: Common,
    pub child_tgid: u32,
    pub child_start_ns: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub common: Common,
    /// The kernel's wait status: code << 8 | signal.
    pub status: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectSource {
    Syscall,
    CgroupConnect,
    CgroupSendmsg,
    Unknown(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub common: Common,
    pub addr: IpAddr,
    pub port: u16,
    pub sock_type: u16,
    pub source: ConnectSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub common: Common,
    pub hook: u16,
    pub dirfd: i32,
    pub open_flags: u32,
    /// The path as the kernel reported it, in order (leaf-last).
    pub path: Vec<u8>,
    /// For a relative path: the directory it was opened from.
    pub base_dir: Option<Vec<u8>>,
}

/// Why the kernel sent a process's environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvReason {
    StepRoot,
    Launcher,
    Container,
    /// A CI step its launcher detached (Jenkins' durable task), recognised by its argv.
    Detached,
    Unknown(u32),
}

/// A step root's, launcher's or container process's environment at exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub common: Common,
    pub reason: EnvReason,
    pub ppid: u32,
    /// The NUL-separated `KEY=VALUE` block as captured.
    pub block: Vec<u8>,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    pub common: Common,
    pub host: Vec<u8>,
    pub ret: i32,
    pub latency_ns: u64,
    pub addrs: Vec<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// No name rule in scope for the step lists the name.
    Unlisted,
    /// Not one plain query the kernel could read; refused rather than trusted.
    Unreadable,
    Unknown(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRefused {
    pub common: Common,
    /// The resolver the query was sent to.
    pub resolver: IpAddr,
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    pub reason: RefusalReason,
    /// Lower-case, dot-separated, as far as it could be read.
    pub name: Vec<u8>,
    pub qtype: u16,
}

/// The sockets whose traffic no connect/sendmsg hook judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketClass {
    Raw,
    Packet,
    Ping,
    Unknown(u8),
}

/// How the enforce hook refused a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRefusal {
    /// socket() failed with EPERM.
    Eperm,
    /// The caller was sent SIGKILL before socket() returned.
    Killed,
    /// The kernel would not send that signal.
    KillFailed,
    Unknown(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketSource {
    CgroupSockCreate,
    Syscall,
    Unknown(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    pub common: Common,
    pub family: u16,
    /// Without SOCK_NONBLOCK and SOCK_CLOEXEC.
    pub sock_type: u16,
    /// socket()'s protocol argument, as the caller passed it.
    pub protocol: u32,
    pub class: SocketClass,
    /// None when the socket was allowed.
    pub refusal: Option<SocketRefusal>,
    pub source: SocketSource,
}

impl Record {
    pub fn kind(&self) -> crate::kind::Kind {
        use crate::kind::Kind;
        match self {
            Record::Exec(_) => Kind::Exec,
            Record::Fork(_) => Kind::Fork,
            Record::Exit(_) => Kind::Exit,
            Record::Connect(_) => Kind::Connect,
            Record::File(_) => Kind::File,
            Record::Dns(_) => Kind::Dns,
            Record::Env(_) => Kind::Env,
            Record::Denied(_) => Kind::Denied,
            Record::DnsRefused(_) => Kind::DnsRefused,
            Record::Socket(_) => Kind::Socket,
            Record::SocketDenied(_) => Kind::SocketDenied,
        }
    }

    pub fn common(&self) -> &Common {
        match self {
            Record::Exec(r) => &r.common,
            Record::Fork(r) => &r.common,
            Record::Exit(r) => &r.common,
            Record::Connect(r) => &r.common,
            Record::File(r) => &r.common,
            Record::Dns(r) => &r.common,
            Record::Env(r) => &r.common,
            Record::Denied(r) => &r.common,
            Record::DnsRefused(r) => &r.common,
            Record::Socket(r) | Record::SocketDenied(r) => &r.common,
        }
    }
}

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let header: abi::Header = read(bytes, "header")?;
    if header.size as usize != bytes.len() {
        return Err(DecodeError::SizeMismatch {
            claimed: header.size,
            len: bytes.len(),
        });
    }
    let common = common(&header);
    Ok(match header.kind {
        abi::KIND_EXEC => Record::Exec(exec(read(bytes, "exec record")?, common)),
        abi::KIND_FORK => {
            let r: abi::Fork = read(bytes, "fork record")?;
            Record::Fork(Fork {
                common,
                child_tgid: r.child_tgid,
                child_start_ns: r.child_start_ns,
            })
        }
        abi::KIND_EXIT => {
            let r: abi::Exit = read(bytes, "exit record")?;
            Record::Exit(Exit {
                common,
                status: r.exit_code,
            })
        }
        abi::KIND_CONNECT => Record::Connect(connect(read(bytes, "connect record")?, common)),
        abi::KIND_DENIED => Record::Denied(connect(read(bytes, "denied record")?, common)),
        abi::KIND_DNS_REFUSED => {
            Record::DnsRefused(dns_refused(read(bytes, "dns_refused record")?, common))
        }
        abi::KIND_SOCKET => Record::Socket(socket(read(bytes, "socket record")?, common)),
        abi::KIND_SOCKET_DENIED => {
            Record::SocketDenied(socket(read(bytes, "socket_denied record")?, common))
        }
        abi::KIND_FILE => Record::File(file(read(bytes, "file record")?, common)),
        abi::KIND_DNS => Record::Dns(dns(read(bytes, "dns record")?, common)),
        abi::KIND_ENV => Record::Env(env(read_boxed(bytes, "env record")?, common)),
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

/// The size of T, if `bytes` hold at least that much.
fn long_enough<T>(bytes: &[u8], what: &'static str) -> Result<usize, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            what,
            len: bytes.len(),
            need,
        });
    }
    Ok(need)
}

/// Copies a `#[repr(C)]` plain-data struct out of possibly unaligned bytes.
fn read<T: bytemuck::Pod>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    let need = long_enough::<T>(bytes, what)?;
    Ok(bytemuck::pod_read_unaligned(&bytes[..need]))
}

/// Like `read`, for records too large for the stack.
fn read_boxed<T: bytemuck::Pod>(bytes: &[u8], what: &'static str) -> Result<Box<T>, DecodeError> {
    let need = long_enough::<T>(bytes, what)?;
    let mut boxed: Box<T> = bytemuck::zeroed_box();
    bytemuck::bytes_of_mut(&mut *boxed).copy_from_slice(&bytes[..need]);
    Ok(boxed)
}

fn env(r: Box<abi::Env>, common: Common) -> Env {
    let reason = match r.reason {
        abi::ENV_STEP_ROOT => EnvReason::StepRoot,
        abi::ENV_LAUNCHER => EnvReason::Launcher,
        abi::ENV_CONTAINER => EnvReason::Container,
        abi::ENV_DETACHED => EnvReason::Detached,
        other => EnvReason::Unknown(other),
    };
    let block = prefix(&r.env, r.env_len as usize).to_vec();
    Env {
        common,
        reason,
        ppid: r.ppid,
        truncated: r.env_total > r.env_len,
        block,
    }
}

fn common(h: &abi::Header) -> Common {
    Common {
        flags: h.flags,
        ktime_ns: h.ktime_ns,
        pid: h.pid,
        tgid: h.tgid,
        proc_start_ns: h.proc_start_ns,
        cgroup_id: h.cgroup_id,
        uid: h.uid,
        job: h.job,
        step: h.step,
        tag_flags: h.tag_flags,
        comm: until_nul(&h.comm).to_vec(),
    }
}

/// The bytes before the first NUL, or all of them.
pub fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// The first `len` bytes of a fixed buffer, clamped to its size.
fn prefix(bytes: &[u8], len: usize) -> &[u8] {
    &bytes[..len.min(bytes.len())]
}

fn exec(r: abi::Exec, common: Common) -> Exec {
    let args = prefix(&r.args, r.args_len as usize);
    let mut argv: Vec<Vec<u8>> = args.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
    // A complete argv ends in NUL, which leaves one empty tail to drop.
    if args.last() == Some(&0) || argv.last().is_some_and(Vec::is_empty) {
        argv.pop();
    }
    Exec {
        common,
        ppid: r.ppid,
        parent_start_ns: r.parent_start_ns,
        filename: until_nul(prefix(&r.filename, r.filename_len as usize)).to_vec(),
        argv,
        args_total: r.args_total,
    }
}

fn ip(family: u16, addr: &[u8; 16]) -> IpAddr {
    if family == 10 {
        IpAddr::V6(Ipv6Addr::from(*addr))
    } else {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    }
}

fn connect(r: abi::Connect, common: Common) -> Connect {
    let source = match r.source {
        abi::SRC_SYSCALL => ConnectSource::Syscall,
        abi::SRC_CGROUP_CONNECT => ConnectSource::CgroupConnect,
        abi::SRC_CGROUP_SENDMSG => ConnectSource::CgroupSendmsg,
        other => ConnectSource::Unknown(other),
    };
    Connect {
        common,
        addr: ip(r.family, &r.addr),
        port: r.port,
        sock_type: r.sock_type,
        source,
    }
}

fn dns_refused(r: abi::DnsRefused, common: Common) -> DnsRefused {
    let reason = match r.reason {
        abi::REFUSED_UNLISTED => RefusalReason::Unlisted,
        abi::REFUSED_UNREADABLE => RefusalReason::Unreadable,
        other => RefusalReason::Unknown(other),
    };
    DnsRefused {
        common,
        resolver: ip(r.family, &r.addr),
        port: r.port,
        proto: r.proto,
        reason,
        name: until_nul(prefix(&r.name, r.name_len as usize)).to_vec(),
        qtype: r.qtype,
    }
}

fn socket(r: abi::Socket, common: Common) -> Socket {
    let class = match r.class {
        abi::SOCKET_RAW => SocketClass::Raw,
        abi::SOCKET_PACKET => SocketClass::Packet,
        abi::SOCKET_PING => SocketClass::Ping,
        other => SocketClass::Unknown(other),
    };
    let refusal = match r.refusal {
        0 => None,
        abi::SOCKET_EPERM => Some(SocketRefusal::Eperm),
        abi::SOCKET_KILLED => Some(SocketRefusal::Killed),
        abi::SOCKET_KILL_FAILED => Some(SocketRefusal::KillFailed),
        other => Some(SocketRefusal::Unknown(other)),
    };
    let source = match r.source {
        abi::SOCKET_SRC_CGROUP => SocketSource::CgroupSockCreate,
        abi::SOCKET_SRC_SYSCALL => SocketSource::Syscall,
        other => SocketSource::Unknown(other),
    };
    Socket {
        common,
        family: r.family,
        sock_type: r.sock_type,
        protocol: r.protocol,
        class,
        refusal,
        source,
    }
}

/// Turns the kernel's leaf-first "c/b/a" into "/a/b/c".
fn unreverse(components: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(components.len() + 1);
    for part in components.rsplit(|&b| b == b'/') {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

fn file(r: abi::File, common: Common) -> File {
    let raw_path = until_nul(prefix(&r.path, r.path_len as usize));
    let path = if r.h.flags & abi::F_PATH_REVERSED != 0 {
        unreverse(raw_path)
    } else {
        raw_path.to_vec()
    };
    let base_dir = (r.h.flags & abi::F_CWD_REVERSED != 0)
        .then(|| unreverse(until_nul(prefix(&r.cwd, r.cwd_len as usize))));
    File {
        common,
        hook: r.hook,
        dirfd: r.dirfd,
        open_flags: r.open_flags,
        path,
        base_dir,
    }
}

fn dns(r: abi::Dns, common: Common) -> Dns {
    let count = (r.naddrs as usize).min(abi::DNS_ADDRS);
    let addrs = r.addrs[..count]
        .iter()
        .map(|a| ip(a.family, &a.addr))
        .collect();
    Dns {
        common,
        host: until_nul(prefix(&r.host, r.host_len as usize)).to_vec(),
        ret: r.ret,
        latency_ns: r.latency_ns,
        addrs,
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "test records and generated inputs are small by construction"
)]
pub(crate) mod tests {
    use super::*;

    /// Serialises an abi struct the way the kernel lays it out.
    pub(crate) fn bytes_of<T: bytemuck::Pod>(value: &T) -> Vec<u8> {
        bytemuck::bytes_of(value).to_vec()
    }

    pub(crate) fn header(kind: u16, size: usize) -> abi::Header {
        let mut comm = [0u8; abi::COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        abi::Header {
            kind,
            flags: 0,
            size: size as u32,
            ktime_ns: 5_000_000_000,
            pid: 4243,
            tgid: 4242,
            proc_start_ns: 4_000_000_000,
            cgroup_id: 77,
            uid: 1001,
            job: 1,
            step: 0,
            tag_flags: 0,
            comm,
        }
    }

    pub(crate) fn exec_record(filename: &[u8], args: &[u8]) -> abi::Exec {
        let mut r = abi::Exec {
            h: header(abi::KIND_EXEC, size_of::<abi::Exec>()),
            ppid: 4000,
            filename_len: filename.len() as u32,
            parent_start_ns: 3_000_000_000,
            args_len: args.len() as u32,
            args_total: args.len() as u32,
            filename: [0; abi::PATH_MAX],
            args: [0; abi::ARGS_MAX],
        };
        r.filename[..filename.len()].copy_from_slice(filename);
        r.args[..args.len()].copy_from_slice(args);
        r
    }

    pub(crate) fn connect_record(family: u16, addr: &[u8], port: u16) -> abi::Connect {
        let mut a = [0u8; 16];
        a[..addr.len()].copy_from_slice(addr);
        abi::Connect {
            h: header(abi::KIND_CONNECT, size_of::<abi::Connect>()),
            family,
            port,
            sock_type: 1,
            source: abi::SRC_SYSCALL,
            _pad0: 0,
            addr: a,
            fd: 3,
            _pad1: 0,
        }
    }

    #[test]
    fn exec_round_trip() {
        let raw = exec_record(b"/usr/bin/curl", b"curl\0-s\0http://x\0");
        let Record::Exec(e) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not exec")
        };
        assert_eq!(e.filename, b"/usr/bin/curl");
        assert_eq!(
            e.argv,
            vec![b"curl".to_vec(), b"-s".to_vec(), b"http://x".to_vec()]
        );
        assert_eq!((e.common.pid, e.common.tgid, e.ppid), (4243, 4242, 4000));
        assert_eq!(e.common.comm, b"curl");
    }

    #[test]
    fn truncated_argv_keeps_the_partial_last_argument() {
        let raw = exec_record(b"/bin/echo", b"echo\0abc");
        let Record::Exec(e) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not exec")
        };
        assert_eq!(e.argv, vec![b"echo".to_vec(), b"abc".to_vec()]);
    }

    #[test]
    fn connect_v4_and_v6() {
        let v4 = connect_record(2, &[127, 0, 0, 2], 8080);
        let Record::Connect(c) = decode(&bytes_of(&v4)).unwrap() else {
            panic!("not connect")
        };
        assert_eq!(c.addr, "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(c.port, 8080);
        let mut loopback6 = [0u8; 16];
        loopback6[15] = 1;
        let v6 = connect_record(10, &loopback6, 443);
        let Record::Connect(c) = decode(&bytes_of(&v6)).unwrap() else {
            panic!("not connect")
        };
        assert_eq!(c.addr, "::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn refused_query_keeps_its_name_resolver_and_reason() {
        let mut name = [0u8; abi::NAME_MAX];
        name[..12].copy_from_slice(b"blocked.test");
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[127, 53, 0, 1]);
        let raw = abi::DnsRefused {
            h: header(abi::KIND_DNS_REFUSED, size_of::<abi::DnsRefused>()),
            family: 2,
            port: 53,
            proto: 17,
            reason: abi::REFUSED_UNLISTED,
            name_len: 200,
            qtype: 28,
            _pad0: 0,
            _pad1: 0,
            addr,
            name,
        };
        let Record::DnsRefused(r) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not dns_refused")
        };
        assert_eq!(r.name, b"blocked.test", "length clamped, NUL-terminated");
        assert_eq!(r.resolver, "127.53.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((r.port, r.proto, r.qtype), (53, 17, 28));
        assert_eq!(r.reason, RefusalReason::Unlisted);
    }

    pub(crate) fn socket_record(kind: u16, class: u8, refusal: u8) -> abi::Socket {
        abi::Socket {
            h: header(kind, size_of::<abi::Socket>()),
            protocol: 1,
            family: 2,
            sock_type: 2,
            class,
            refusal,
            source: abi::SOCKET_SRC_CGROUP,
            _pad0: 0,
            _pad1: 0,
        }
    }

    #[test]
    fn sockets_keep_their_class_and_how_they_were_refused() {
        let ping = socket_record(abi::KIND_SOCKET, abi::SOCKET_PING, 0);
        let Record::Socket(s) = decode(&bytes_of(&ping)).unwrap() else {
            panic!("not socket")
        };
        assert_eq!(
            (s.family, s.sock_type, s.protocol, s.class, s.refusal),
            (2, 2, 1, SocketClass::Ping, None)
        );
        assert_eq!(s.source, SocketSource::CgroupSockCreate);
        assert_eq!(s.common.tgid, 4242);

        let mut packet = socket_record(
            abi::KIND_SOCKET_DENIED,
            abi::SOCKET_PACKET,
            abi::SOCKET_KILLED,
        );
        (packet.family, packet.sock_type, packet.protocol) = (17, 3, 0x0300);
        packet.source = abi::SOCKET_SRC_SYSCALL;
        let Record::SocketDenied(s) = decode(&bytes_of(&packet)).unwrap() else {
            panic!("not socket_denied")
        };
        assert_eq!(
            (s.class, s.refusal, s.source),
            (
                SocketClass::Packet,
                Some(SocketRefusal::Killed),
                SocketSource::Syscall
            )
        );

        let odd = socket_record(abi::KIND_SOCKET_DENIED, 99, 77);
        let Record::SocketDenied(s) = decode(&bytes_of(&odd)).unwrap() else {
            panic!("not socket_denied")
        };
        assert_eq!(
            (s.class, s.refusal),
            (SocketClass::Unknown(99), Some(SocketRefusal::Unknown(77))),
            "values from a newer kernel object are kept, not guessed"
        );
        let full = bytes_of(&ping);
        for cut in 0..full.len() {
            assert!(decode(&full[..cut]).is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn reversed_paths_are_put_back_in_order() {
        assert_eq!(unreverse(b"id_rsa/.ssh/root"), b"/root/.ssh/id_rsa");
        assert_eq!(unreverse(b""), b"/");
    }

    #[test]
    fn garbage_never_panics() {
        assert!(matches!(decode(&[]), Err(DecodeError::Short { .. })));
        assert!(matches!(decode(&[1, 2, 3]), Err(DecodeError::Short { .. })));
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..3000 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn every_kind_survives_truncation_and_wrong_sizes() {
        let full = bytes_of(&exec_record(b"/bin/true", b"true\0"));
        for cut in 0..full.len() {
            assert!(decode(&full[..cut]).is_err(), "cut at {cut} decoded");
        }
        let mut lying = full.clone();
        lying[4..8].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(
            decode(&lying),
            Err(DecodeError::SizeMismatch { .. })
        ));
    }

    #[test]
    fn unknown_kind_is_an_error_value() {
        let mut raw = connect_record(2, &[1, 2, 3, 4], 1);
        raw.h.kind = 99;
        assert_eq!(decode(&bytes_of(&raw)), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn out_of_range_lengths_are_clamped() {
        let mut raw = exec_record(b"/bin/x", b"x\0");
        raw.filename_len = u32::MAX;
        raw.args_len = u32::MAX;
        let Record::Exec(e) = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not exec")
        };
        assert_eq!(e.filename, b"/bin/x");
        let mut dns = abi::Dns {
            h: header(abi::KIND_DNS, size_of::<abi::Dns>()),
            ret: 0,
            naddrs: 500,
            host_len: 9000,
            latency_ns: 1,
            addrs: [abi::DnsAddr {
                family: 2,
                _pad0: 0,
                _pad1: 0,
                addr: [0; 16],
            }; abi::DNS_ADDRS],
            host: [b'a'; abi::HOST_MAX],
        };
        dns.h.size = size_of::<abi::Dns>() as u32;
        let Record::Dns(d) = decode(&bytes_of(&dns)).unwrap() else {
            panic!("not dns")
        };
        assert_eq!(d.addrs.len(), abi::DNS_ADDRS);
        assert_eq!(d.host.len(), abi::HOST_MAX);
    }
}
