//! Loads the embedded object and attaches each hook with the best
//! implementation this kernel accepts, recording what was chosen and why the
//! better ones were skipped.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::links::FdLink;
use aya::programs::uprobe::UProbeScope;
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, Program,
    ProgramError,
};
use aya::{Btf, Ebpf, EbpfLoader, Endianness};

use crate::bpf::abi::{CommKey, Launcher, NameKey, Tag};
use crate::bpf::libc_paths::{self, Libc};
use crate::error::chain;
use crate::event::{HookStatus, SkippedImpl};
use crate::filter::sensitive::{KernelKey, SensitivePaths};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this ciwatch was built with CIWATCH_BPF_STUBS=1 and carries no BPF programs; \
         rebuild it without that variable (clang is needed)"
    )]
    StubObject,
    #[error(
        "the embedded BPF object speaks ABI version {object} but this ciwatch expects {expected}; \
         rebuild ciwatch so that build.rs recompiles ebpf/"
    )]
    AbiMismatch { object: u32, expected: u32 },
    #[error("cannot read the ABI version of the embedded BPF object: {0}; rebuild ciwatch")]
    AbiUnreadable(String),
    #[error("cannot read kernel BTF from {path}: {reason}")]
    Btf { path: PathBuf, reason: String },
    #[error("the kernel refused ciwatch's BPF object: {0}")]
    Object(String),
    #[error("map `{0}` is missing from the BPF object (a build mismatch)")]
    MissingMap(&'static str),
    #[error("cannot use map `{map}`: {reason}")]
    Map { map: &'static str, reason: String },
    #[error(
        "hook `{hook}` could not be attached on this kernel: {reasons}. \
         Run `ciwatch check` for details, or pass --allow-partial to record without it"
    )]
    Required { hook: &'static str, reasons: String },
    #[error(
        "enforce mode needs hook `{hook}` in full, but {reasons}. Enforcement is never \
         weakened to start: fix that, or run in observe mode"
    )]
    EnforceNeeds { hook: &'static str, reasons: String },
}

pub struct LoadOptions<'a> {
    pub ring_bytes: u32,
    pub wakeup_bytes: u64,
    pub btf: &'a Path,
    pub sensitive: &'a SensitivePaths,
    pub cgroup2: Option<&'a Path>,
    pub enabled: HookSwitches,
    /// What the connect/sendmsg hooks deny.
    pub enforce: Enforcement,
    /// Fail when a hook has no working implementation (the default).
    pub require_all: bool,
    /// Room in the lineage map (`[lineage] max_processes`).
    pub max_processes: u32,
}

/// Hooks that may be left out; exec and lineage always attach. A hook left out
/// is reported as disabled, never silently missing.
#[derive(Debug, Clone, Copy)]
pub struct HookSwitches {
    pub connect: bool,
    pub file: bool,
    pub dns: bool,
}

/// What enforce mode asks of the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enforcement {
    /// Deny connects and sends the allowlist does not allow.
    pub egress: bool,
    /// Drop DNS queries for names no rule lists (`dns.refuse-unlisted`). Without `egress`
    /// (`ciwatch check`) the filter is only tried and reported, never required.
    pub refuse_dns: bool,
}

/// The hook behind `dns.refuse-unlisted`, needed only in enforce mode.
pub const DNS_REFUSAL: &str = "dns_refusal";
/// Raw, packet and ping sockets: recorded in every mode, refused in enforce.
pub const SOCKET: &str = "socket";

/// The lineage map: tgid → job tag.
pub type Tasks = std::sync::Arc<std::sync::Mutex<HashMap<MapData, u32, Tag>>>;
/// What the kernel could not record, shared with the engine that seals.
pub type Lost = std::sync::Arc<std::sync::Mutex<KernelLosses>>;

pub struct KernelLosses {
    /// Per-CPU counts of records the kernel could not queue, by kind.
    pub records: PerCpuArray<MapData, u64>,
    /// Job processes the lineage map had no room for.
    pub untracked: aya::maps::Array<MapData, u64>,
}

/// Every attachment, as a bpf_link by program name: src/bpf/pin.rs can pin them.
pub type Links = Vec<(&'static str, FdLink)>;

/// Loaded programs and the maps userspace talks through. Dropping it detaches
/// everything that is not pinned (src/bpf/pin.rs).
pub struct Probes {
    pub hooks: Vec<HookStatus>,
    pub(super) links: Links,
    pub(super) ring: Option<RingBuf<MapData>>,
    /// Shared with the engine, which needs to know which processes of a job still live.
    pub tasks: Tasks,
    pub lost: Lost,
    pub launchers: HashMap<MapData, u32, Launcher>,
    pub launcher_names: HashMap<MapData, CommKey, u32>,
    pub container_parents: HashMap<MapData, CommKey, u32>,
    pub next_ids: aya::maps::Array<MapData, u32>,
    pub allow: AllowMaps,
    _ebpf: Ebpf,
}

/// The maps enforcement reads; see ebpf/enforce.bpf.h.
pub struct AllowMaps {
    pub nets: aya::maps::LpmTrie<MapData, [u8; 16], crate::bpf::abi::AllowVal>,
    pub names: HashMap<MapData, crate::bpf::abi::HostKey, crate::bpf::abi::AllowVal>,
    pub suffixes: HashMap<MapData, crate::bpf::abi::HostKey, crate::bpf::abi::AllowVal>,
    /// Shared with the engine, which learns each step's identity and so its groups.
    pub step_groups: std::sync::Arc<std::sync::Mutex<HashMap<MapData, u32, u32>>>,
    /// The `steps:` patterns the exec hook matches itself; see ebpf/step_scope.bpf.h.
    pub step_patterns: aya::maps::Array<MapData, crate::bpf::abi::StepPattern>,
    pub step_vars: aya::maps::Array<MapData, crate::bpf::abi::StepVar>,
    /// Socket class → the step groups it is allowed in; see ebpf/socket.bpf.h.
    pub sockets: aya::maps::Array<MapData, u32>,
}

pub fn load(opts: &LoadOptions<'_>) -> Result<Probes, LoadError> {
    check_abi(crate::bpf::OBJECT, crate::bpf::abi::ABI_VERSION)?;
    let btf = read_btf(opts.btf)?;
    // 1024: a u32 by construction.
    let args_max = u32::try_from(crate::bpf::abi::ARGS_MAX).unwrap_or(u32::MAX);
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .override_global("cw_wakeup_bytes", &opts.wakeup_bytes, true)
        .override_global("cw_args_max", &args_max, true)
        .override_global("cw_enforce", &u32::from(opts.enforce.egress), true)
        .override_global("cw_dns_refuse", &u32::from(opts.enforce.refuse_dns), true)
        .map_max_entries("events", opts.ring_bytes)
        .map_max_entries("tasks", opts.max_processes)
        .load(crate::bpf::OBJECT)
        .map_err(|e| LoadError::Object(chain(&e)))?;

    fill_sensitive_maps(&mut ebpf, opts.sensitive)?;
    let on = opts.enabled;
    let mut links = Links::new();
    let mut hooks = vec![
        attach_lineage(&mut ebpf, &btf, &mut links),
        attach_exec(&mut ebpf, &mut links),
        if on.connect {
            attach_connect(&mut ebpf, opts.cgroup2, opts.enforce.egress, &mut links)
        } else {
            disabled("connect")
        },
        if on.file {
            attach_file(&mut ebpf, &btf, &mut links)
        } else {
            disabled("file")
        },
        if on.dns {
            attach_dns(&mut ebpf, &libc_paths::discover(), &mut links)
        } else {
            disabled("dns")
        },
    ];
    let socket = attach_socket(&mut ebpf, opts.cgroup2, &mut links);
    hooks.push(socket);
    if opts.enforce.egress {
        // Enforcement asked for is never dropped, not even for a partial run: without the
        // socket hook, raw, packet and ping sockets would pass enforce unjudged.
        require_enforcing(&hooks, "connect")?;
        require_enforcing(&hooks, "socket")?;
    }
    if opts.enforce.refuse_dns {
        let refusal = attach_dns_refusal(&mut ebpf, opts.cgroup2, &mut links);
        if !refusal.attached && opts.enforce.egress {
            return Err(LoadError::EnforceNeeds {
                hook: refusal.hook,
                reasons: join(skipped_reasons(&refusal)),
            });
        }
        hooks.push(refusal);
    }
    if opts.require_all {
        if let Some(missing) = hooks.iter().find(|h| !h.attached && !h.disabled) {
            return Err(LoadError::Required {
                hook: missing.hook,
                reasons: join(skipped_reasons(missing)),
            });
        }
    }
    release_load_memory();
    let ring = RingBuf::try_from(take(&mut ebpf, "events")?).map_err(map_err("events"))?;
    let tasks = HashMap::try_from(take(&mut ebpf, "tasks")?).map_err(map_err("tasks"))?;
    let lost = KernelLosses {
        records: PerCpuArray::try_from(take(&mut ebpf, "lost")?).map_err(map_err("lost"))?,
        untracked: aya::maps::Array::try_from(take(&mut ebpf, "untracked")?)
            .map_err(map_err("untracked"))?,
    };
    let launchers =
        HashMap::try_from(take(&mut ebpf, "launchers")?).map_err(map_err("launchers"))?;
    let launcher_names =
        HashMap::try_from(take(&mut ebpf, "launcher_names")?).map_err(map_err("launcher_names"))?;
    let container_parents = HashMap::try_from(take(&mut ebpf, "container_parents")?)
        .map_err(map_err("container_parents"))?;
    let next_ids =
        aya::maps::Array::try_from(take(&mut ebpf, "next_ids")?).map_err(map_err("next_ids"))?;
    let allow = AllowMaps {
        nets: aya::maps::LpmTrie::try_from(take(&mut ebpf, "allow_nets")?)
            .map_err(map_err("allow_nets"))?,
        names: HashMap::try_from(take(&mut ebpf, "allow_names")?)
            .map_err(map_err("allow_names"))?,
        suffixes: HashMap::try_from(take(&mut ebpf, "allow_suffixes")?)
            .map_err(map_err("allow_suffixes"))?,
        step_groups: std::sync::Arc::new(std::sync::Mutex::new(
            HashMap::try_from(take(&mut ebpf, "step_groups")?).map_err(map_err("step_groups"))?,
        )),
        step_patterns: aya::maps::Array::try_from(take(&mut ebpf, "step_patterns")?)
            .map_err(map_err("step_patterns"))?,
        step_vars: aya::maps::Array::try_from(take(&mut ebpf, "step_vars")?)
            .map_err(map_err("step_vars"))?,
        sockets: aya::maps::Array::try_from(take(&mut ebpf, "sock_allow")?)
            .map_err(map_err("sock_allow"))?,
    };
    Ok(Probes {
        hooks,
        links,
        ring: Some(ring),
        tasks: std::sync::Arc::new(std::sync::Mutex::new(tasks)),
        lost: std::sync::Arc::new(std::sync::Mutex::new(lost)),
        launchers,
        launcher_names,
        container_parents,
        next_ids,
        allow,
        _ebpf: ebpf,
    })
}

impl Probes {
    /// The ring buffer, for the one reader that drains it.
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }
}

/// Refuses a stub object, or one built against another ABI than `expected`, before
/// the kernel sees it: either would fail later with a far less clear error.
fn check_abi(object: &[u8], expected: u32) -> Result<(), LoadError> {
    use object::{Object, ObjectSection, ObjectSymbol};

    if object.is_empty() {
        return Err(LoadError::StubObject);
    }
    let unreadable = |reason: &str| LoadError::AbiUnreadable(reason.to_string());
    let file = object::File::parse(object).map_err(|e| unreadable(&e.to_string()))?;
    let symbol = file
        .symbol_by_name("cw_abi_version")
        .ok_or_else(|| unreadable("it has no cw_abi_version"))?;
    let section = symbol
        .section_index()
        .and_then(|index| file.section_by_index(index).ok())
        .ok_or_else(|| unreadable("cw_abi_version has no section"))?;
    let data = section.data().map_err(|e| unreadable(&e.to_string()))?;
    // In a relocatable object a symbol's address is its offset in its section.
    let bytes = usize::try_from(symbol.address())
        .ok()
        .and_then(|at| data.get(at..at.checked_add(4)?))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .filter(|_| symbol.size() == 4)
        .ok_or_else(|| unreadable("cw_abi_version is not a 4-byte value"))?;
    let version = match file.endianness() {
        Endianness::Little => u32::from_le_bytes(bytes),
        Endianness::Big => u32::from_be_bytes(bytes),
    };
    if version != expected {
        return Err(LoadError::AbiMismatch {
            object: version,
            expected,
        });
    }
    Ok(())
}

/// Parsing kernel BTF for CO-RE peaks the heap; give those pages back once loaded.
fn release_load_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn read_btf(path: &Path) -> Result<Btf, LoadError> {
    let parsed = if path == Path::new(crate::bpf::preflight::SYS_BTF) {
        Btf::from_sys_fs()
    } else {
        Btf::parse_file(path, Endianness::default())
    };
    parsed.map_err(|e| LoadError::Btf {
        path: path.to_path_buf(),
        reason: chain(&e),
    })
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::MissingMap(name))
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> LoadError {
    move |e| LoadError::Map {
        map,
        reason: chain(&e),
    }
}

fn fill_sensitive_maps(ebpf: &mut Ebpf, sensitive: &SensitivePaths) -> Result<(), LoadError> {
    for (map_name, want_dir) in [("sensitive_base", false), ("sensitive_dir", true)] {
        let map = ebpf
            .map_mut(map_name)
            .ok_or(LoadError::MissingMap(map_name))?;
        let mut map: HashMap<_, NameKey, u32> =
            HashMap::try_from(map).map_err(map_err(map_name))?;
        for key in sensitive.kernel_keys() {
            let name = match (key, want_dir) {
                (KernelKey::Basename(name), false) | (KernelKey::ParentDir(name), true) => name,
                _ => continue,
            };
            map.insert(name, 1, 0).map_err(map_err(map_name))?;
        }
    }
    Ok(())
}

/// One way to implement (part of) a hook: a program and where it attaches.
struct Candidate<'a> {
    label: String,
    program: &'static str,
    attach: Attach<'a>,
}

enum Attach<'a> {
    TracePoint(&'static str, &'static str),
    BtfTracePoint(&'static str, &'a Btf),
    RawTracePoint(&'static str),
    KProbe(&'static str),
    FEntry(&'static str, &'a Btf),
    Cgroup(Option<&'a Path>),
    CgroupEgress(Option<&'a Path>),
    CgroupSockCreate(Option<&'a Path>),
    UProbe(&'a Path),
}

impl Candidate<'_> {
    fn new<'a>(
        label: impl Into<String>,
        program: &'static str,
        attach: Attach<'a>,
    ) -> Candidate<'a> {
        Candidate {
            label: label.into(),
            program,
            attach,
        }
    }
}

/// Loads (once) and attaches one candidate, returning its link; the error is a one-line reason.
fn try_attach(ebpf: &mut Ebpf, c: &Candidate<'_>) -> Result<FdLink, String> {
    let program = ebpf
        .program_mut(c.program)
        .ok_or_else(|| format!("program {} missing", c.program))?;
    let loaded = program.fd().is_ok();
    let result = match (&c.attach, program) {
        (Attach::TracePoint(category, name), Program::TracePoint(p)) => {
            load_once(loaded, || p.load())
                .and_then(|()| p.attach(category, name))
                .and_then(|id| p.take_link(id))
                .and_then(held)
        }
        (Attach::BtfTracePoint(name, btf), Program::BtfTracePoint(p)) => {
            load_once(loaded, || p.load(name, btf))
                .and_then(|()| p.attach())
                .and_then(|id| p.take_link(id))
                .and_then(held)
        }
        (Attach::RawTracePoint(name), Program::RawTracePoint(p)) => load_once(loaded, || p.load())
            .and_then(|()| p.attach(name))
            .and_then(|id| p.take_link(id))
            .and_then(held),
        (Attach::KProbe(function), Program::KProbe(p)) => load_once(loaded, || p.load())
            .and_then(|()| p.attach(*function, 0))
            .and_then(|id| p.take_link(id))
            .and_then(held),
        (Attach::FEntry(function, btf), Program::FEntry(p)) => {
            load_once(loaded, || p.load(function, btf))
                .and_then(|()| p.attach())
                .and_then(|id| p.take_link(id))
                .and_then(held)
        }
        (Attach::Cgroup(root), Program::CgroupSockAddr(p)) => attach_cgroup(p, *root, loaded),
        (Attach::CgroupEgress(root), Program::CgroupSkb(p)) => attach_egress(p, *root, loaded),
        (Attach::CgroupSockCreate(root), Program::CgroupSock(p)) => {
            attach_sock_create(p, *root, loaded)
        }
        (Attach::UProbe(target), Program::UProbe(p)) => load_once(loaded, || p.load())
            .and_then(|()| p.attach("getaddrinfo", target, UProbeScope::AllProcesses))
            .and_then(|id| p.take_link(id))
            .and_then(held),
        _ => return Err(format!("program {} has an unexpected type", c.program)),
    };
    result.map_err(|e| reason(&e))
}

fn load_once(
    loaded: bool,
    load: impl FnOnce() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    if loaded {
        Ok(())
    } else {
        load()
    }
}

/// The attachment as a bpf_link, which can be pinned. Every hook gives one on
/// the kernels ciwatch supports (perf-event links since 5.15, cgroup links since 5.7).
fn held<L>(link: L) -> Result<FdLink, ProgramError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    FdLink::try_from(link).map_err(|e| {
        ProgramError::IOError(std::io::Error::other(format!(
            "the kernel gave no bpf_link for it ({e})"
        )))
    })
}

fn cgroup_dir(root: Option<&Path>) -> Result<std::fs::File, ProgramError> {
    let root = root.ok_or_else(|| {
        ProgramError::IOError(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no cgroup v2 hierarchy is mounted",
        ))
    })?;
    std::fs::File::open(root).map_err(ProgramError::IOError)
}

// A cgroup bpf_link is always multi-attach, so other agents keep their programs.
fn attach_cgroup(
    p: &mut CgroupSockAddr,
    root: Option<&Path>,
    loaded: bool,
) -> Result<FdLink, ProgramError> {
    let dir = cgroup_dir(root)?;
    load_once(loaded, || p.load())?;
    let id = p.attach(dir, CgroupAttachMode::Single)?;
    held(p.take_link(id)?)
}

fn attach_egress(
    p: &mut CgroupSkb,
    root: Option<&Path>,
    loaded: bool,
) -> Result<FdLink, ProgramError> {
    let dir = cgroup_dir(root)?;
    load_once(loaded, || p.load())?;
    let id = p.attach(dir, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)?;
    held(p.take_link(id)?)
}

fn attach_sock_create(
    p: &mut CgroupSock,
    root: Option<&Path>,
    loaded: bool,
) -> Result<FdLink, ProgramError> {
    let dir = cgroup_dir(root)?;
    load_once(loaded, || p.load())?;
    let id = p.attach(dir, CgroupAttachMode::Single)?;
    held(p.take_link(id)?)
}

/// A short reason: the error chain, with any verifier log reduced to its verdict
/// (the last line before the statistics the verifier appends).
fn reason(e: &ProgramError) -> String {
    if let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = e
    {
        tracing::debug!("verifier log:\n{verifier_log}");
        let last = verifier_log
            .to_string()
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !is_verifier_statistics(l))
            .unwrap_or("")
            .to_string();
        return format!(
            "load refused ({io_error}){}",
            if last.is_empty() {
                String::new()
            } else {
                format!(": {last}")
            }
        );
    }
    chain(e)
}

fn is_verifier_statistics(line: &str) -> bool {
    ["processed ", "verification time ", "stack depth "]
        .iter()
        .any(|p| line.starts_with(p))
}

/// Tries candidates in order and stops at the first that attaches, keeping its link.
fn first_of(
    ebpf: &mut Ebpf,
    candidates: &[Candidate<'_>],
    skipped: &mut Vec<SkippedImpl>,
    links: &mut Links,
) -> Option<String> {
    for c in candidates {
        match try_attach(ebpf, c) {
            Ok(link) => {
                links.push((c.program, link));
                return Some(c.label.clone());
            }
            Err(reason) => skipped.push(SkippedImpl {
                implementation: c.label.clone(),
                reason,
            }),
        }
    }
    None
}

fn status(
    hook: &'static str,
    attached: Vec<String>,
    skipped: Vec<SkippedImpl>,
    all_needed: bool,
    n: usize,
) -> HookStatus {
    let ok = if all_needed {
        attached.len() == n
    } else {
        !attached.is_empty()
    };
    HookStatus {
        hook,
        implementation: attached.join(" + "),
        skipped,
        targets: Vec::new(),
        attached: ok,
        disabled: false,
    }
}

fn disabled(hook: &'static str) -> HookStatus {
    HookStatus {
        hook,
        implementation: String::new(),
        skipped: vec![SkippedImpl {
            implementation: "all".into(),
            reason: format!("disabled in the configuration (hooks.{hook} = false)"),
        }],
        targets: Vec::new(),
        attached: false,
        disabled: true,
    }
}

fn attach_lineage(ebpf: &mut Ebpf, btf: &Btf, links: &mut Links) -> HookStatus {
    let mut skipped = Vec::new();
    let mut attached = Vec::new();
    for (tp, btf_prog, raw_prog) in [
        ("sched_process_fork", "fork_btf", "fork_raw"),
        ("sched_process_exit", "exit_btf", "exit_raw"),
    ] {
        let candidates = [
            Candidate::new(
                format!("tp_btf/{tp}"),
                btf_prog,
                Attach::BtfTracePoint(tp, btf),
            ),
            Candidate::new(format!("raw_tp/{tp}"), raw_prog, Attach::RawTracePoint(tp)),
        ];
        attached.extend(first_of(ebpf, &candidates, &mut skipped, links));
    }
    status("lineage", attached, skipped, true, 2)
}

fn attach_exec(ebpf: &mut Ebpf, links: &mut Links) -> HookStatus {
    let mut skipped = Vec::new();
    let candidates = [Candidate::new(
        "tracepoint/sched/sched_process_exec",
        "exec_tp",
        Attach::TracePoint("sched", "sched_process_exec"),
    )];
    let attached = first_of(ebpf, &candidates, &mut skipped, links)
        .into_iter()
        .collect();
    status("exec", attached, skipped, true, 1)
}

/// The syscall tracepoint plus every cgroup sock_addr hook that attaches.
/// Under enforce, `hook` must be attached in full: never disabled, never partial.
fn require_enforcing(hooks: &[HookStatus], hook: &'static str) -> Result<(), LoadError> {
    let Some(status) = hooks.iter().find(|h| h.hook == hook) else {
        return Ok(());
    };
    let reasons = if status.disabled {
        format!("the config switches it off (`[hooks] {hook} = false`)")
    } else if !status.attached {
        format!(
            "it did not attach in full: {}",
            join(skipped_reasons(status))
        )
    } else {
        return Ok(());
    };
    Err(LoadError::EnforceNeeds { hook, reasons })
}

/// The syscall tracepoint only records; the four cgroup programs are what deny,
/// so under enforce the hook counts as attached only with all four.
fn attach_connect(
    ebpf: &mut Ebpf,
    cgroup2: Option<&Path>,
    enforce: bool,
    links: &mut Links,
) -> HookStatus {
    let mut skipped = Vec::new();
    let mut attached = Vec::new();
    let mut parts = vec![Candidate::new(
        "tracepoint/syscalls/sys_enter_connect",
        "connect_tp",
        Attach::TracePoint("syscalls", "sys_enter_connect"),
    )];
    for (section, program) in [
        ("cgroup/connect4", "connect4_cg"),
        ("cgroup/connect6", "connect6_cg"),
        ("cgroup/sendmsg4", "sendmsg4_cg"),
        ("cgroup/sendmsg6", "sendmsg6_cg"),
    ] {
        parts.push(Candidate::new(section, program, Attach::Cgroup(cgroup2)));
    }
    let mut cgroup_parts = 0;
    for part in &parts {
        if let Some(label) = first_of(ebpf, std::slice::from_ref(part), &mut skipped, links) {
            cgroup_parts += usize::from(matches!(part.attach, Attach::Cgroup(_)));
            attached.push(label);
        }
    }
    let mut hook = status("connect", attached, skipped, false, parts.len());
    hook.attached &= !enforce || cgroup_parts == parts.len() - 1;
    if let Some(root) = cgroup2 {
        hook.targets
            .push(format!("cgroup v2 root {}", root.display()));
    }
    hook
}

/// Both halves are needed: sock_create sees IPv4 and IPv6 sockets, the tracepoint packet sockets.
fn attach_socket(ebpf: &mut Ebpf, cgroup2: Option<&Path>, links: &mut Links) -> HookStatus {
    let mut skipped = Vec::new();
    let parts = [
        Candidate::new(
            "cgroup/sock_create",
            "sock_create_cg",
            Attach::CgroupSockCreate(cgroup2),
        ),
        Candidate::new(
            "tracepoint/syscalls/sys_enter_socket",
            "socket_tp",
            Attach::TracePoint("syscalls", "sys_enter_socket"),
        ),
    ];
    let mut attached = Vec::new();
    for part in &parts {
        attached.extend(first_of(
            ebpf,
            std::slice::from_ref(part),
            &mut skipped,
            links,
        ));
    }
    status(SOCKET, attached, skipped, true, parts.len())
}

/// The packet filter behind `dns.refuse-unlisted`; see ebpf/dns_refuse.bpf.h.
fn attach_dns_refusal(ebpf: &mut Ebpf, cgroup2: Option<&Path>, links: &mut Links) -> HookStatus {
    let mut skipped = Vec::new();
    let candidate = Candidate::new(
        "cgroup_skb/egress",
        "dns_egress",
        Attach::CgroupEgress(cgroup2),
    );
    let attached = first_of(ebpf, std::slice::from_ref(&candidate), &mut skipped, links)
        .into_iter()
        .collect();
    status(DNS_REFUSAL, attached, skipped, true, 1)
}

fn attach_file(ebpf: &mut Ebpf, btf: &Btf, links: &mut Links) -> HookStatus {
    let mut skipped = Vec::new();
    let kernel_hooks = [
        Candidate::new(
            "kprobe/security_file_open",
            "file_open_kprobe",
            Attach::KProbe("security_file_open"),
        ),
        Candidate::new(
            "fentry/security_file_open",
            "file_open_fentry",
            Attach::FEntry("security_file_open", btf),
        ),
    ];
    if let Some(chosen) = first_of(ebpf, &kernel_hooks, &mut skipped, links) {
        return status("file", vec![chosen], skipped, false, 1);
    }
    let mut attached = Vec::new();
    let openat = Candidate::new(
        "tracepoint/syscalls/sys_enter_openat",
        "openat_tp",
        Attach::TracePoint("syscalls", "sys_enter_openat"),
    );
    let Some(chosen) = first_of(ebpf, std::slice::from_ref(&openat), &mut skipped, links) else {
        return status("file", attached, skipped, false, 1);
    };
    attached.push(chosen);
    // openat2 (5.6+) and open (x86_64 only) complete the syscall fallback where they exist.
    for extra in [
        Candidate::new(
            "tracepoint/syscalls/sys_enter_openat2",
            "openat2_tp",
            Attach::TracePoint("syscalls", "sys_enter_openat2"),
        ),
        Candidate::new(
            "tracepoint/syscalls/sys_enter_open",
            "open_tp",
            Attach::TracePoint("syscalls", "sys_enter_open"),
        ),
    ] {
        attached.extend(first_of(
            ebpf,
            std::slice::from_ref(&extra),
            &mut skipped,
            links,
        ));
    }
    status("file", attached, skipped, false, 1)
}

fn attach_dns(ebpf: &mut Ebpf, libcs: &[Libc], links: &mut Links) -> HookStatus {
    let mut skipped = Vec::new();
    let mut attached = Vec::new();
    let mut targets = Vec::new();
    if libcs.is_empty() {
        skipped.push(SkippedImpl {
            implementation: "uprobe:libc:getaddrinfo".into(),
            reason: "no glibc in /etc/ld.so.cache and no musl found".into(),
        });
    }
    for libc in libcs {
        let path = libc.path.as_path();
        let entry = [
            Candidate::new(
                format!("uprobe.s:{}:getaddrinfo", path.display()),
                "gai_enter_sleepable",
                Attach::UProbe(path),
            ),
            Candidate::new(
                format!("uprobe:{}:getaddrinfo", path.display()),
                "gai_enter",
                Attach::UProbe(path),
            ),
        ];
        let exit = Candidate::new(
            format!("uretprobe:{}:getaddrinfo", path.display()),
            "gai_exit",
            Attach::UProbe(path),
        );
        let Some(entry) = first_of(ebpf, &entry, &mut skipped, links) else {
            continue;
        };
        if let Some(exit) = first_of(ebpf, std::slice::from_ref(&exit), &mut skipped, links) {
            attached.push(format!("{entry} + {exit}"));
            targets.push(format!("{} {}", libc.flavor, path.display()));
        }
    }
    let mut hook = status("dns", attached, skipped, false, 1);
    hook.targets = targets;
    hook
}

fn skipped_reasons(hook: &HookStatus) -> Vec<String> {
    hook.skipped
        .iter()
        .map(|s| format!("{}: {}", s.implementation, s.reason))
        .collect()
}

fn join(parts: Vec<String>) -> String {
    if parts.is_empty() {
        "no implementation is available".into()
    } else {
        parts.join("; ")
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::abi::ABI_VERSION;
    use crate::bpf::OBJECT;

    #[test]
    fn the_embedded_object_carries_this_abi_version() {
        check_abi(OBJECT, ABI_VERSION).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn another_abi_version_is_refused_naming_both() {
        let err = check_abi(OBJECT, ABI_VERSION + 1).expect_err("a mismatch loads");
        let LoadError::AbiMismatch { object, expected } = err else {
            panic!("{err}");
        };
        assert_eq!((object, expected), (ABI_VERSION, ABI_VERSION + 1));
        let message = err.to_string();
        assert!(
            message.contains(&format!("version {ABI_VERSION} ")),
            "{message}"
        );
        assert!(message.contains("rebuild"), "{message}");
    }

    #[test]
    fn a_stub_object_is_refused_naming_the_switch() {
        let err = check_abi(&[], ABI_VERSION).expect_err("a stub loads");
        assert!(err.to_string().contains("CIWATCH_BPF_STUBS=1"), "{err}");
    }
}
