//! Turns decoded records into log events: names the job and step, fills in
//! what a hook could not see (process start for cgroup hooks, host names for
//! addresses), resolves and filters file paths, and applies the argv policy.

pub mod clock;
pub mod container;
pub mod env;
pub mod github_log;
pub mod jobs;
pub mod kube;
pub mod launcher;
pub mod names;
pub mod platform;
pub mod procfs;
pub mod procs;

use std::net::IpAddr;

use crate::bpf::abi;
use crate::decode::{self, ConnectSource, Record};
use crate::event::{
    Body, ConnectBody, DnsBody, DnsRefusedBody, Event, ExecBody, ExitBody, FileBody, ForkBody,
    JobRef, Proc, Protocol, SocketBody, StepRef, Totals,
};
use crate::filter::glob::normalize;
use crate::filter::sensitive::{SensitivePaths, Verdict};
use crate::redact::{self, CaptureArgs};
use crate::text::Text;
use jobs::{Placement, Registry};

pub struct Attributor {
    pub registry: Registry,
    capture: CaptureArgs,
    sensitive: SensitivePaths,
    clock: clock::BootClock,
    procs: procs::ProcTable,
    names: names::NameCache,
    seq: u64,
    /// Candidates the kernel sent that the full patterns or ignore list dropped.
    pub file_filtered: u64,
}

impl Attributor {
    pub fn new(registry: Registry, capture: CaptureArgs, sensitive: SensitivePaths) -> Self {
        Self {
            registry,
            capture,
            sensitive,
            clock: clock::BootClock::now(),
            procs: procs::ProcTable::default(),
            names: names::NameCache::default(),
            seq: 0,
            file_filtered: 0,
        }
    }

    /// The event for a record and the job it belongs to, or None when the
    /// record is filtered out or belongs to no watched job.
    pub fn event(&mut self, record: Record) -> Option<(Placement, Event)> {
        self.procs.observe(&record);
        let common = record.common().clone();
        match &record {
            Record::Env(env) => {
                self.registry.environment(
                    &common,
                    env.reason,
                    env::StepEnv::parse(&env.block, env.truncated),
                );
                return None;
            }
            Record::Exec(exec) => {
                let argv: Vec<String> = exec
                    .argv
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                self.registry.exec(&common, &argv);
            }
            Record::Exit(_) if common.tag_flags & abi::TAG_LAUNCHER != 0 => {
                self.registry.launcher_exited(common.job)
            }
            _ => {}
        }
        let placement = self.registry.place(&common)?;
        let body = match record {
            Record::Env(_) => return None,
            Record::Exec(r) => Body::Exec(self.exec(r)),
            Record::Fork(r) => Body::Fork(ForkBody {
                child_tgid: r.child_tgid,
                child_start_ns: r.child_start_ns,
            }),
            Record::Exit(r) => Body::Exit(exit_body(r.status)),
            Record::Connect(r) => Body::Connect(self.connect(r)),
            Record::File(r) => Body::File(self.file(r)?),
            Record::Dns(r) => Body::Dns(self.dns(r)),
            Record::Denied(r) => Body::Denied(self.connect(r)),
            Record::DnsRefused(r) => Body::DnsRefused(dns_refused(r)),
            Record::Socket(r) => Body::Socket(socket(&r)),
            Record::SocketDenied(r) => Body::SocketDenied(socket(&r)),
        };
        self.registry.count(&placement, body.event_kind());
        self.seq += 1;
        let (job, step) = self.refs(&placement);
        let event = Event {
            seq: self.seq,
            time: self.clock.rfc3339(common.ktime_ns),
            ktime_ns: common.ktime_ns,
            job,
            step,
            proc: Proc {
                pid: common.pid,
                tgid: common.tgid,
                start_ns: self.procs.start_of(common.tgid, common.proc_start_ns),
                comm: Text::new(common.comm),
                uid: common.uid,
                cgroup_id: common.cgroup_id,
            },
            body,
        };
        Some((placement, event))
    }

    /// The job and step as the log names them, from what is known now.
    pub fn refs(&self, p: &Placement) -> (JobRef, StepRef) {
        refs(&self.registry, p)
    }

    pub fn clock(&self) -> clock::BootClock {
        self.clock
    }

    fn exec(&self, r: decode::Exec) -> ExecBody {
        let truncated = r.common.flags & abi::F_TRUNC_ARGS != 0;
        ExecBody {
            filename: Text::new(r.filename),
            argv: redact::apply(self.capture, r.argv)
                .into_iter()
                .map(Text::new)
                .collect(),
            argv_truncated: truncated,
            argv_policy: self.capture,
            ppid: r.ppid,
            parent_start_ns: r.parent_start_ns,
        }
    }

    fn connect(&self, r: decode::Connect) -> ConnectBody {
        ConnectBody {
            family: if r.addr.is_ipv4() { "ipv4" } else { "ipv6" },
            protocol: protocol(r.sock_type),
            addr: r.addr,
            port: r.port,
            source: match r.source {
                ConnectSource::Syscall => "syscall",
                ConnectSource::CgroupConnect => "cgroup_connect",
                ConnectSource::CgroupSendmsg => "cgroup_sendmsg",
                ConnectSource::Unknown(_) => "unknown",
            },
            hosts: self.names.hosts(&r.addr),
            untracked: r.common.flags & crate::bpf::abi::F_UNTRACKED != 0,
        }
    }

    fn file(&mut self, r: decode::File) -> Option<FileBody> {
        let absolute = match &r.base_dir {
            Some(dir) if !r.path.starts_with(b"/") => {
                let mut joined = dir.clone();
                joined.push(b'/');
                joined.extend_from_slice(&r.path);
                normalize(&joined)
            }
            _ => normalize(&r.path),
        };
        let rule = match self.sensitive.classify(&absolute, r.common.tgid) {
            Verdict::Sensitive(rule) => rule,
            Verdict::Ignored | Verdict::NotSensitive => {
                self.file_filtered += 1;
                return None;
            }
        };
        let raw_path = (absolute != r.path).then(|| Text::new(r.path.clone()));
        let truncated = r.common.flags & (abi::F_TRUNC_PATH | abi::F_TRUNC_CWD) != 0;
        Some(FileBody {
            path: Text::new(absolute),
            raw_path,
            access: access(r.open_flags),
            open_flags: r.open_flags,
            hook: file_hook(r.hook),
            rule,
            path_truncated: truncated,
        })
    }

    fn dns(&mut self, r: decode::Dns) -> DnsBody {
        let host = String::from_utf8_lossy(&r.host).into_owned();
        let numeric = host.parse::<IpAddr>().is_ok();
        if !numeric {
            for addr in &r.addrs {
                self.names.learn(*addr, &host);
            }
        }
        let judged = r.common.flags & abi::F_DNS_JUDGED != 0 && !numeric;
        DnsBody {
            listed: judged.then_some(r.common.flags & abi::F_DNS_UNLISTED == 0),
            host: Text::new(r.host),
            numeric,
            addrs: r.addrs,
            ret: r.ret,
            error: gai_error(r.ret),
            latency_us: r.latency_ns / 1000,
            host_truncated: r.common.flags & abi::F_TRUNC_HOST != 0,
        }
    }

    /// Names the job resolved to `addr`.
    pub fn hosts_for(&self, addr: &IpAddr) -> Vec<String> {
        self.names.hosts(addr)
    }

    pub fn totals_base(&self) -> Totals {
        Totals {
            file_filtered: self.file_filtered,
            unattributed: self.registry.unattributed,
            ..Totals::default()
        }
    }
}

/// The job and step references events carry, as the registry knows them.
pub fn refs(registry: &Registry, p: &Placement) -> (JobRef, StepRef) {
    let job = registry.job(&p.job);
    let job_ref = JobRef {
        platform: job
            .map_or("none", |j| j.identity.platform.name())
            .to_string(),
        id: p.job.clone(),
    };
    let step = job.and_then(|j| j.steps.get(&p.step));
    let step_ref = StepRef {
        id: p.step.clone(),
        stage: step.and_then(|s| s.stage.clone()),
        name: step.and_then(|s| s.name.clone()),
    };
    (job_ref, step_ref)
}

fn exit_body(status: i32) -> ExitBody {
    let signal = status & 0x7f;
    if signal == 0 {
        ExitBody {
            exit_code: Some((status >> 8) & 0xff),
            signal: None,
        }
    } else {
        ExitBody {
            exit_code: None,
            signal: Some(signal),
        }
    }
}

fn dns_refused(r: decode::DnsRefused) -> DnsRefusedBody {
    DnsRefusedBody {
        host_truncated: r.common.flags & abi::F_TRUNC_HOST != 0,
        host: Text::new(r.name),
        reason: match r.reason {
            decode::RefusalReason::Unlisted => "unlisted",
            decode::RefusalReason::Unreadable => "unreadable",
            decode::RefusalReason::Unknown(_) => "unknown",
        },
        qtype: r.qtype,
        resolver: r.resolver,
        port: r.port,
        protocol: match r.proto {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            _ => Protocol::Unknown,
        },
    }
}

fn socket(r: &decode::Socket) -> SocketBody {
    use decode::{SocketClass, SocketRefusal, SocketSource};
    let (class, protocol_number) = match r.class {
        SocketClass::Raw => ("raw", r.protocol),
        // socket() takes a packet socket's ethertype in network order (htons(ETH_P_ALL)).
        SocketClass::Packet => (
            "packet",
            u16::try_from(r.protocol & 0xffff).map_or(0, |p| u32::from(u16::from_be(p))),
        ),
        SocketClass::Ping => ("ping", r.protocol),
        SocketClass::Unknown(_) => ("unknown", r.protocol),
    };
    SocketBody {
        class,
        family: match r.family {
            2 => "ipv4",
            10 => "ipv6",
            17 => "packet",
            _ => "unknown",
        },
        socket_type: match r.sock_type {
            2 => "dgram",
            3 => "raw",
            10 => "packet",
            _ => "unknown",
        },
        protocol_number,
        source: match r.source {
            SocketSource::CgroupSockCreate => "cgroup_sock_create",
            SocketSource::Syscall => "syscall",
            SocketSource::Unknown(_) => "unknown",
        },
        refusal: r.refusal.map(|how| match how {
            SocketRefusal::Eperm => "eperm",
            SocketRefusal::Killed => "killed",
            SocketRefusal::KillFailed => "kill_failed",
            SocketRefusal::Unknown(_) => "unknown",
        }),
        untracked: r.common.flags & abi::F_UNTRACKED != 0,
    }
}

fn protocol(sock_type: u16) -> Protocol {
    // The low bits; SOCK_NONBLOCK and SOCK_CLOEXEC live above them.
    match sock_type & 0xf {
        1 => Protocol::Tcp,
        2 => Protocol::Udp,
        3 => Protocol::Raw,
        _ => Protocol::Unknown,
    }
}

fn access(flags: u32) -> &'static str {
    match flags & 3 {
        0 => "read",
        1 => "write",
        _ => "read-write",
    }
}

fn file_hook(hook: u16) -> &'static str {
    match hook {
        abi::FILE_KPROBE => "kprobe/security_file_open",
        abi::FILE_FENTRY => "fentry/security_file_open",
        abi::FILE_TP_OPENAT => "tracepoint/syscalls/sys_enter_openat",
        abi::FILE_TP_OPENAT2 => "tracepoint/syscalls/sys_enter_openat2",
        abi::FILE_TP_OPEN => "tracepoint/syscalls/sys_enter_open",
        _ => "unknown",
    }
}

/// glibc and musl share these EAI_* values.
fn gai_error(ret: i32) -> Option<&'static str> {
    Some(match ret {
        0 => return None,
        -1 => "EAI_BADFLAGS",
        -2 => "EAI_NONAME",
        -3 => "EAI_AGAIN",
        -4 => "EAI_FAIL",
        -5 => "EAI_NODATA",
        -6 => "EAI_FAMILY",
        -7 => "EAI_SOCKTYPE",
        -8 => "EAI_SERVICE",
        -9 => "EAI_ADDRFAMILY",
        -10 => "EAI_MEMORY",
        -11 => "EAI_SYSTEM",
        -12 => "EAI_OVERFLOW",
        _ => "EAI_UNKNOWN",
    })
}
