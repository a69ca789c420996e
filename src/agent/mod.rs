//! The running agent: preflight, loaded probes, the maps userspace steers the
//! kernel with, and the engine that routes each job's events to its output.

pub mod engine;
pub mod output;
pub mod report;
pub mod seal;

use std::path::Path;

use crate::bpf::abi::{self, CommKey, Launcher, Tag};
use crate::bpf::loader::{self, LoadError, LoadOptions, Probes};
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
}

impl AgentError {
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Config(_) => crate::exit::CONFIG,
            AgentError::Preflight(e) => crate::exit::preflight(e),
            AgentError::Load(_) => crate::exit::HOOKS,
            AgentError::Map { .. } => crate::exit::INTERNAL,
            AgentError::Enforce(_) => crate::exit::CONFIG,
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
}

impl Agent {
    pub fn load(
        config: &Config,
        config_name: &str,
        btf: Option<&Path>,
        require_all: bool,
        enforce: loader::Enforcement,
    ) -> Result<Self, AgentError> {
        let sensitive = config
            .sensitive_paths()
            .map_err(|source| ConfigError::Rule {
                path: config_name.to_string(),
                source,
            })?;
        let env = preflight::check(btf)?;
        let probes = loader::load(&LoadOptions::new(
            config,
            &env,
            &sensitive,
            enforce,
            require_all,
        ))?;
        let mut agent = Self {
            probes,
            env,
            sensitive,
        };
        agent.start_kernel_ids()?;
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
                _pad: 0,
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
    pub fn install_policy(
        &mut self,
        plan: &crate::enforce::plan::Plan,
    ) -> Result<crate::enforce::Scopes, AgentError> {
        match &plan.compiled {
            Some(compiled) => Ok(crate::enforce::install(&mut self.probes.allow, compiled)?),
            None => Ok(crate::enforce::Scopes::default()),
        }
    }

    /// Live processes by kernel (job, step) tag.
    pub fn live_tags(&self) -> Vec<(u32, Tag)> {
        live_tags(&self.probes.tasks)
    }

    pub fn lost(&self, totals: &mut Totals) {
        read_lost(&self.probes.lost, totals);
    }
}

/// Fills `totals.lost` from the kernel's per-CPU counters.
pub fn read_lost(lost: &loader::Lost, totals: &mut Totals) {
    let counters = lost
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    totals.lost.clear();
    totals.lost_total = 0;
    {
        for (kind, name) in [
            (abi::KIND_EXEC, "exec"),
            (abi::KIND_FORK, "fork"),
            (abi::KIND_EXIT, "exit"),
            (abi::KIND_CONNECT, "connect"),
            (abi::KIND_FILE, "file"),
            (abi::KIND_DNS, "dns"),
            (abi::KIND_ENV, "env"),
            (abi::KIND_DENIED, "denied"),
            (abi::KIND_DNS_REFUSED, "dns_refused"),
        ] {
            let lost: u64 = counters
                .get(&u32::from(kind), 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0);
            totals.lost.insert(name, lost);
            totals.lost_total += lost;
        }
    }
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
        reason: loader::chain(&e),
    }
}
