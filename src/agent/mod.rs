//! The running agent: preflight, loaded probes, the maps userspace steers the
//! kernel with, and the engine that routes each job's events to its output.

pub mod control;
pub mod engine;
pub mod out_dir;
pub mod output;
pub mod publish;
pub mod recovered;
pub mod report;
pub mod seal;
pub mod session;
pub mod state_dir;
pub mod sudo;
pub mod trace;

use std::path::Path;

use crate::bpf::abi::{self, CommKey, Launcher, Tag};
use crate::bpf::loader::{self, KernelLosses, LoadError, LoadOptions, Probes};
use crate::bpf::pin::{self, PinError};
use crate::bpf::preflight::{self, Environment, PreflightError};
use crate::config::{Config, ConfigError};
use crate::event::Totals;
use crate::filter::sensitive::SensitivePaths;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot update kernel map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error(transparent)]
    Enforce(#[from] crate::enforce::EnforceError),
    #[error(transparent)]
    Pin(#[from] PinError),
}

impl AgentError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Config(_) => crate::exit::CONFIG,
            AgentError::Preflight(e) => crate::exit::preflight(e),
            AgentError::Load(_) => crate::exit::HOOKS,
            AgentError::Map { .. } => crate::exit::INTERNAL,
            AgentError::Enforce(_) => crate::exit::CONFIG,
            AgentError::Pin(e) => e.exit_code(),
        }
    }
}

/// Task names of container runtimes; a process they exec may be a job's container step.
pub const CONTAINER_RUNTIMES: &[&str] = &[
    "containerd-shim",
    "containerd-shim-runc-v2",
    "runc",
    "crun",
    "conmon",
    "docker-init",
];

/// Ids handed out by userspace; the kernel's counters start above them.
pub const FIRST_KERNEL_ID: u32 = 1000;

pub struct Agent {
    pub probes: Probes,
    pub env: Environment,
    pub sensitive: SensitivePaths,
    /// Enforce mode with step-scoped rules: the groups the engine keeps the kernel told of.
    pub scopes: Option<crate::enforce::Scopes>,
}

/// What loading the agent needs: the configuration, where it came from, and the mode.
pub struct AgentOptions<'a> {
    pub config: &'a Config,
    /// How messages name the configuration.
    pub config_name: &'a str,
    /// Kernel BTF instead of /sys/kernel/btf/vmlinux.
    pub btf: Option<&'a Path>,
    /// Fail when a hook has no working implementation.
    pub require_all: bool,
    pub plan: &'a crate::enforce::plan::Plan,
}

impl Agent {
    /// Loads and attaches the hooks and, in enforce mode, the policy, before
    /// any process of the job is tagged: no job process runs unjudged.
    pub fn load(opts: &AgentOptions<'_>) -> Result<Self, AgentError> {
        let sensitive = opts
            .config
            .sensitive_paths()
            .map_err(|source| ConfigError::Rule {
                path: opts.config_name.to_string(),
                source,
            })?;
        let env = preflight::check(opts.btf)?;
        let probes = loader::load(&load_options(
            opts.config,
            &env,
            &sensitive,
            opts.plan.enforcement(),
            opts.require_all,
        ))?;
        let mut agent = Self {
            probes,
            env,
            sensitive,
            scopes: None,
        };
        agent.start_kernel_ids()?;
        if opts.plan.enforce() {
            agent.scopes = Some(agent.install_policy(opts.plan)?);
        }
        Ok(agent)
    }

    fn start_kernel_ids(&mut self) -> Result<(), AgentError> {
        for index in 0..2 {
            self.probes
                .next_ids
                .set(index, FIRST_KERNEL_ID, 0)
                .map_err(map_err("next_ids"))?;
        }
        Ok(())
    }

    /// Puts a process (and, through fork, its descendants) into a job.
    pub fn tag(&mut self, tgid: u32, tag: Tag) -> Result<(), AgentError> {
        let mut tasks = self
            .probes
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tasks.insert(tgid, tag, 0).map_err(map_err("tasks"))
    }

    /// Makes `tgid` a step launcher: each process it execs starts a step of `job`.
    pub fn add_launcher(&mut self, tgid: u32, job: u32, platform: u32) -> Result<(), AgentError> {
        self.probes
            .launchers
            .insert(
                tgid,
                Launcher {
                    job,
                    platform,
                    flags: 0,
                    _pad: 0,
                },
                0,
            )
            .map_err(map_err("launchers"))?;
        self.tag(
            tgid,
            Tag {
                job,
                step: 0,
                flags: abi::TAG_LAUNCHER,
                platform,
            },
        )
    }

    /// Lets the kernel recognise launchers by task name (daemon mode).
    pub fn watch_launcher_names(&mut self, names: &[(&str, u32)]) -> Result<(), AgentError> {
        for (name, platform) in names {
            self.probes
                .launcher_names
                .insert(CommKey::new(name), *platform, 0)
                .map_err(map_err("launcher_names"))?;
        }
        Ok(())
    }

    /// Daemon start-up: launchers already running keep having their later
    /// steps attributed, each as a job of its own (ids from 2).
    pub fn adopt_running_launchers(
        &mut self,
        registry: &mut crate::attribute::jobs::Registry,
        names: &[(&str, u32)],
    ) -> Result<Vec<crate::attribute::launcher::Found>, AgentError> {
        let found = crate::attribute::launcher::running(names);
        for (job, launcher) in (2..).zip(&found) {
            self.add_launcher(launcher.pid, job, launcher.platform.id())?;
            registry.register_launcher(
                job,
                launcher.platform,
                crate::attribute::jobs::is_long_lived(Some(launcher.platform), &launcher.argv),
                Some(launcher.pid),
            );
            tracing::info!(
                "adopted running {} (pid {}) as a {} launcher",
                launcher.comm,
                launcher.pid,
                launcher.platform.name()
            );
        }
        Ok(found)
    }

    pub fn watch_container_runtimes(&mut self) -> Result<(), AgentError> {
        for name in CONTAINER_RUNTIMES {
            self.probes
                .container_parents
                .insert(CommKey::new(name), 1, 0)
                .map_err(map_err("container_parents"))?;
        }
        Ok(())
    }

    /// Loads an enforce plan's allowlist; returns the step groups the engine keeps up to date.
    fn install_policy(
        &mut self,
        plan: &crate::enforce::plan::Plan,
    ) -> Result<crate::enforce::Scopes, AgentError> {
        match &plan.compiled {
            Some(compiled) => Ok(crate::enforce::install(&mut self.probes.allow, compiled)?),
            None => Ok(crate::enforce::Scopes::default()),
        }
    }

    /// Pins the hooks, so that the job stays enforced if this agent dies, until
    /// `ciwatch finish --out OUT` records the end (src/bpf/pin.rs).
    /// `state` is the job's root-only state directory (src/agent/state_dir.rs).
    pub fn pin_enforcement(&mut self, state: &Path) -> Result<pin::Pinned, AgentError> {
        let dir = pin::dir_for(state);
        // The agent that last recorded into `state`, if it still runs: its pins are not stale.
        let earlier = report::live_agent(state).ok().flatten();
        let pinned = pin::pin_all(&mut self.probes, &dir, earlier)?;
        tracing::info!(
            "pinned the hooks at {}: they enforce until `ciwatch finish`",
            dir.display()
        );
        Ok(pinned)
    }

    /// Live processes by kernel (job, step) tag.
    pub fn live_tags(&self) -> Vec<(u32, Tag)> {
        live_tags(&self.probes.tasks)
    }

    pub fn lost(&self, totals: &mut Totals) {
        read_lost(&self.probes.lost, totals);
    }
}

/// The loader's options as a configuration and the preflight checks decide them.
pub fn load_options<'a>(
    config: &Config,
    env: &'a Environment,
    sensitive: &'a SensitivePaths,
    enforce: loader::Enforcement,
    require_all: bool,
) -> LoadOptions<'a> {
    LoadOptions {
        ring_bytes: config.ring.size_bytes,
        wakeup_bytes: config.ring.wakeup_bytes,
        btf: &env.btf,
        sensitive,
        cgroup2: env.cgroup2.as_deref(),
        enabled: loader::HookSwitches {
            connect: config.hooks.connect,
            file: config.hooks.file,
            dns: config.hooks.dns,
        },
        enforce,
        require_all,
        max_processes: config.lineage.max_processes,
    }
}

/// Fills `totals.lost` and `totals.untracked` from the kernel's counters.
pub fn read_lost(lost: &loader::Lost, totals: &mut Totals) {
    let counters = lost
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    read_losses(&counters, totals);
}

/// What a dead agent's pinned hooks left (src/bpf/pin.rs): the records the
/// kernel could not queue and those it queued that no agent read, both lost to the log.
pub fn leftover_totals(left: &pin::Leftover) -> Totals {
    let mut totals = Totals::default();
    read_losses(&left.losses, &mut totals);
    for (kind, n) in &left.unread {
        *totals.lost.entry(kind).or_default() += n;
        totals.lost_total += n;
    }
    totals.undecodable = left.undecodable;
    totals
}

fn read_losses(counters: &KernelLosses, totals: &mut Totals) {
    totals.untracked = counters.untracked.get(&0, 0).unwrap_or(0);
    totals.lost.clear();
    totals.lost_total = 0;
    for kind in crate::kind::Kind::ALL {
        let lost: u64 = counters
            .records
            .get(&u32::from(kind.abi()), 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0);
        totals.lost.insert(kind.name(), lost);
        totals.lost_total += lost;
    }
}

/// The processes of `job` among `live` (launchers aside: they are not left behind by the job).
pub fn survivors(
    live: &[(u32, Tag)],
    registry: &crate::attribute::jobs::Registry,
    job: &str,
) -> Vec<crate::event::Survivor> {
    live.iter()
        .filter(|(_, tag)| tag.flags & abi::TAG_LAUNCHER == 0 && registry.job_of(tag) == Some(job))
        .take(crate::event::MAX_SURVIVORS)
        .map(|(tgid, tag)| crate::event::Survivor {
            tgid: *tgid,
            comm: crate::attribute::procfs::comm(*tgid),
            step: registry.step_of(tag).map(String::from),
        })
        .collect()
}

/// Live processes of every watched job, by tgid.
pub fn live_tags(tasks: &loader::Tasks) -> Vec<(u32, Tag)> {
    let tasks = tasks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    tasks.iter().filter_map(Result::ok).collect()
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> AgentError {
    move |e| AgentError::Map {
        map,
        reason: crate::error::chain(&e),
    }
}
