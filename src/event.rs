//! The event log's records: one JSON object per line, documented in
//! docs/events.md. The first line is a `trace_start`, the last a `trace_end`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::kind::Kind;
use crate::text::Text;

/// Bumped on any incompatible change to the records below.
pub const SCHEMA: &str = "ciwatch.events/v1";

#[derive(Debug, Clone, Serialize)]
pub struct Proc {
    pub pid: u32,
    pub tgid: u32,
    /// Process start, ns since boot: with tgid, the process identity.
    pub start_ns: u64,
    pub comm: Text,
    pub uid: u32,
    pub cgroup_id: u64,
}

/// Where an event belongs. Filled by attribution; see docs/events.md.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct JobRef {
    pub platform: String,
    pub id: String,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct StepRef {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub seq: u64,
    pub time: String,
    pub ktime_ns: u64,
    pub job: JobRef,
    pub step: StepRef,
    pub proc: Proc,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    Exec(ExecBody),
    Fork(ForkBody),
    Exit(ExitBody),
    Connect(ConnectBody),
    File(FileBody),
    Dns(DnsBody),
    /// Egress the enforce hook refused; the caller got EPERM.
    Denied(ConnectBody),
    /// A DNS query the enforce hook dropped before it left (`dns.refuse-unlisted`).
    DnsRefused(DnsRefusedBody),
    /// A raw, packet or ping socket: its traffic passes no connect/sendmsg hook.
    Socket(SocketBody),
    /// One the enforce hook refused (`refusal` says how).
    SocketDenied(SocketBody),
}

#[derive(Debug, Clone, Serialize)]
pub struct SocketBody {
    /// `raw`, `packet` or `ping`: what the policy's `sockets:` names.
    pub class: &'static str,
    /// `ipv4`, `ipv6` or `packet`.
    pub family: &'static str,
    /// `raw`, `dgram` or `packet` (the obsolete `SOCK_PACKET`).
    pub socket_type: &'static str,
    /// An IP protocol number, or a packet socket's ethertype (3 is every protocol).
    /// Not `protocol`: that name is a connect's `tcp`/`udp` to every reader of the log.
    pub protocol_number: u32,
    /// Which hook saw it: `cgroup_sock_create` or `syscall`.
    pub source: &'static str,
    /// `socket_denied` only: `eperm`, `killed` or `kill_failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<&'static str>,
    /// Refused because the caller was a job process the lineage map had no room for.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub untracked: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DnsRefusedBody {
    /// Lower-case and dot-separated, as far as the kernel could read it.
    pub host: Text,
    /// `unlisted` (no name rule in scope for the step) or `unreadable` (not one plain query).
    pub reason: &'static str,
    /// The query type (1 A, 28 AAAA, …); 0 when unreadable.
    pub qtype: u16,
    pub resolver: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub host_truncated: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExecBody {
    pub filename: Text,
    pub argv: Vec<Text>,
    pub argv_truncated: bool,
    pub argv_policy: crate::redact::CaptureArgs,
    pub ppid: u32,
    pub parent_start_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForkBody {
    pub child_tgid: u32,
    pub child_start_ns: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExitBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Raw,
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectBody {
    pub family: &'static str,
    pub protocol: Protocol,
    pub addr: IpAddr,
    pub port: u16,
    /// Which hook saw it: syscall, cgroup_connect or cgroup_sendmsg.
    pub source: &'static str,
    /// Names this job resolved to the address, most recent first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Denied because the sender was a job process the lineage map had no room for.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub untracked: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileBody {
    /// Absolute path, after joining a relative path to its directory.
    pub path: Text,
    /// The path exactly as the program passed it, when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_path: Option<Text>,
    pub access: &'static str,
    pub open_flags: u32,
    pub hook: &'static str,
    /// The sensitive-path pattern that matched.
    pub rule: String,
    pub path_truncated: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DnsBody {
    pub host: Text,
    /// The "name" was an address literal: no resolution happened.
    pub numeric: bool,
    pub addrs: Vec<IpAddr>,
    pub ret: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    pub latency_us: u64,
    pub host_truncated: bool,
    /// Enforce mode only: whether a name rule in scope for the step lists the name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listed: Option<bool>,
}

impl Body {
    pub fn event_kind(&self) -> Kind {
        match self {
            Body::Exec(_) => Kind::Exec,
            Body::Fork(_) => Kind::Fork,
            Body::Exit(_) => Kind::Exit,
            Body::Connect(_) => Kind::Connect,
            Body::File(_) => Kind::File,
            Body::Dns(_) => Kind::Dns,
            Body::Denied(_) => Kind::Denied,
            Body::DnsRefused(_) => Kind::DnsRefused,
            Body::Socket(_) => Kind::Socket,
            Body::SocketDenied(_) => Kind::SocketDenied,
        }
    }

    /// The line's `type`.
    pub fn kind(&self) -> &'static str {
        self.event_kind().name()
    }
}

/// How one hook was implemented on this kernel.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HookStatus {
    pub hook: &'static str,
    /// The program(s) attached, e.g. "tracepoint/syscalls/sys_enter_openat".
    pub implementation: String,
    /// Implementations tried first that this kernel refused, with the reason.
    pub skipped: Vec<SkippedImpl>,
    /// Extra facts (for dns: which libcs were probed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    pub attached: bool,
    /// Switched off in the configuration.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SkippedImpl {
    pub implementation: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceStart {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub schema: &'static str,
    pub time: String,
    pub agent: Agent,
    pub host: String,
    pub kernel: String,
    pub mode: String,
    pub job: JobRef,
    pub command: Vec<Text>,
    pub hooks: Vec<HookStatus>,
    /// The mode asked for, when the effective `mode` differs (a policy error fell back to observe).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode_fallback: Option<String>,
    /// The policy in force: its version and the SHA-256 of its exact bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    pub capture_args: crate::redact::CaptureArgs,
    pub sensitive_paths: Vec<String>,
    pub ignore_paths: Vec<String>,
    /// `start --disable-sudo`: whose sudo was taken away, and what was left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sudo_disabled: Option<crate::agent::sudo::SudoDisabled>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PolicyRef {
    /// Where it came from: a file path, or "--allow" for command-line endpoints.
    pub source: String,
    pub version: u32,
    pub sha256: String,
    pub rules: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Agent {
    pub name: &'static str,
    pub version: &'static str,
}

impl Agent {
    pub fn this() -> Self {
        Self {
            name: "ciwatch",
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// Totals for the whole trace; nothing lost or skipped goes unmentioned.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    pub events: BTreeMap<&'static str, u64>,
    /// Records the kernel could not queue because the ring buffer was full.
    pub lost: BTreeMap<&'static str, u64>,
    pub lost_total: u64,
    /// Records that arrived but could not be decoded.
    pub undecodable: u64,
    /// File candidates dropped by the full patterns or the ignore list.
    pub file_filtered: u64,
    /// Events of no watched job (another job's containers, a long-lived runner's own traffic).
    pub unattributed: u64,
    /// Job processes the lineage map had no room for (`[lineage] max_processes`): none of
    /// their events were recorded, and under enforce their egress was denied.
    pub untracked: u64,
}

impl Totals {
    /// Nothing the kernel saw went missing on its way to the log.
    pub fn nothing_lost(&self) -> bool {
        self.lost_total == 0 && self.undecodable == 0 && self.untracked == 0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceEnd {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    #[serde(flatten)]
    pub totals: Totals,
    /// The watched command's exit code, or the signal that ended it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    /// Processes of the job still alive when the trace was sealed.
    pub still_running: u64,
    /// Which they were, with their steps (at most [`MAX_SURVIVORS`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub survivors: Vec<Survivor>,
    /// Events that could not be written (after a write error such as a full disk).
    pub unwritten: u64,
    /// `ok`, or `died` when the agent was gone before it could seal (recovered by `finish`),
    /// or `stopped` when it was stopped while the job still ran.
    pub agent_status: String,
    pub complete: bool,
}

/// A process a job left running when its trace was sealed (a build daemon, a server).
#[derive(Debug, Clone, Serialize)]
pub struct Survivor {
    pub tgid: u32,
    pub comm: String,
    /// The step that started it, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

pub const MAX_SURVIVORS: usize = 64;

/// Nanoseconds-precise UTC timestamp, RFC 3339.
pub fn rfc3339(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_nanos(time).to_string()
}
