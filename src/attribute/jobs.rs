//! Kernel job and step ids → the platform's names for them.
//!
//! The kernel hands out a job id per launcher and a step id per step root
//! (and per container process); this registry learns, from each root's
//! environment and argv, which logical job and step that is. Identity never
//! comes from a descendant that disagrees with its lineage tag.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::env::StepEnv;
use super::platform::{self, detect, JobIdentity, Platform, StepIdentity};
use crate::bpf::abi;
use crate::decode::{Common, EnvReason};

/// Where an event belongs, once resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Placement {
    pub job: String,
    pub step: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepInfo {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Started by the runner for itself, not a user step.
    pub internal: bool,
    /// The root process of each execution of this step.
    pub roots: Vec<Root>,
    /// How it was attributed: lineage (the launcher's child), or container environment.
    pub source: &'static str,
    pub first_ns: u64,
    pub last_ns: u64,
    /// What is missing from this step's identity, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<String>,
    pub counts: StepCounts,
}

/// A process that started an execution of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Root {
    pub tgid: u32,
    pub start_ns: u64,
    /// The kernel's id of the launcher's job it inherited (0 for a container's process).
    #[serde(skip)]
    pub kernel_job: u32,
}

/// A step display name the runner's log gave a pid: which Worker's log, read when (boot clock).
#[derive(Debug, Clone)]
pub struct LogName {
    pub name: String,
    pub worker: u32,
    pub read_ns: u64,
}

impl Root {
    fn of(common: &Common) -> Self {
        Self {
            tgid: common.tgid,
            start_ns: common.proc_start_ns,
            kernel_job: common.job,
        }
    }
}

impl LogName {
    /// The log is the job's to write, so it names only what the lineage supports:
    /// a step root its own Worker launched (`worker_job`, the Worker's kernel job),
    /// which already ran when the line was read.
    fn may_name(&self, root: &Root, worker_job: Option<u32>) -> bool {
        let ok = worker_job == Some(root.kernel_job) && root.start_ns <= self.read_ns;
        if !ok {
            tracing::debug!(
                "runner log line naming {} {:?} ignored: its job {} is not Worker {}'s ({worker_job:?}), \
                 or it started at {}, after the line was read at {}",
                root.tgid,
                self.name,
                root.kernel_job,
                self.worker,
                root.start_ns,
                self.read_ns
            );
        }
        ok
    }
}

/// Names read before their process was seen, kept for this many pids at most.
const PENDING_NAMES: usize = 4096;

#[derive(Debug, Clone, Default, Serialize)]
pub struct StepCounts {
    pub exec: u64,
    pub connect: u64,
    pub dns: u64,
    pub file: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobInfo {
    pub key: String,
    pub identity: JobIdentity,
    /// Platforms whose variables were present too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Platform>,
    /// True where the platform has no step concept and the job is its only step.
    pub job_is_step: bool,
    /// Started by a step launcher (false: a job seen only in containers).
    pub has_launcher: bool,
    /// Its launcher runs many jobs over its life (gitlab-runner, a Jenkins agent): its exit does
    /// not end this job; the daemon ends it when none of its steps has run for a while.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub launcher_serves_many: bool,
    pub launcher_exited: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip)]
    pub step_order: Vec<String>,
    #[serde(skip)]
    pub steps: HashMap<String, StepInfo>,
}

/// One launcher instance in the kernel.
#[derive(Debug, Default)]
struct KernelJob {
    platform: Option<Platform>,
    /// The launcher's tgid, where known.
    launcher: Option<u32>,
    /// Its own events and its children's before they exec belong to this job (one job per launcher).
    job: Option<String>,
    /// The launcher runs many jobs over its life (gitlab-runner, a Jenkins agent).
    long_lived: bool,
    /// Its exit may be read before its first step root names the job: a
    /// vforked step execs after the launcher has resumed, and maybe exited.
    exited: bool,
}

/// A root whose environment arrived; its exec record (argv) completes it.
struct PendingRoot {
    reason: EnvReason,
    env: StepEnv,
    job: u32,
    step: u32,
}

pub struct Registry {
    jobs: BTreeMap<String, JobInfo>,
    kernel_jobs: HashMap<u32, KernelJob>,
    kernel_steps: HashMap<u32, Placement>,
    /// Container processes that belong to no job we watch.
    foreign_steps: std::collections::HashSet<u32>,
    pending: HashMap<u32, PendingRoot>,
    /// Step display names from the runner's log, by pid, until the pid's root is seen.
    names_by_pid: HashMap<u32, LogName>,
    names_order: std::collections::VecDeque<u32>,
    /// Per job: runner-log lines that named a process the lineage does not support.
    names_rejected: HashMap<String, u64>,
    /// Steps to number in order, per job.
    ordinals: HashMap<String, u32>,
    /// Events that belong to no watched job (foreign containers, long-lived launchers' own traffic).
    pub unattributed: u64,
    /// Launchers the kernel found since the last drain.
    new_launchers: Vec<NewLauncher>,
}

pub const RUNNER_STEP: &str = "runner";

/// A launcher the kernel recognised by name at its exec.
#[derive(Debug, Clone)]
pub struct NewLauncher {
    pub tgid: u32,
    pub platform: Option<Platform>,
    /// The path it was exec'd from (argv[0]), e.g. <runner>/bin/Runner.Worker.
    pub program: String,
}

impl Registry {
    pub fn new() -> Self {
        Self {
            jobs: BTreeMap::new(),
            kernel_jobs: HashMap::new(),
            kernel_steps: HashMap::new(),
            foreign_steps: Default::default(),
            pending: HashMap::new(),
            names_by_pid: HashMap::new(),
            names_order: Default::default(),
            names_rejected: HashMap::new(),
            ordinals: HashMap::new(),
            unattributed: 0,
            new_launchers: Vec::new(),
        }
    }

    /// A job known before any of its processes ran (`ciwatch run`, `ciwatch start`).
    pub fn register_job(
        &mut self,
        kernel_job: u32,
        identity: JobIdentity,
        conflicts: Vec<Platform>,
    ) -> String {
        let key = identity.id.clone();
        let job_is_step = platform::detector(identity.platform).is_some_and(|d| !d.has_steps());
        self.jobs.entry(key.clone()).or_insert_with(|| JobInfo {
            key: key.clone(),
            identity: identity.clone(),
            conflicts,
            job_is_step,
            has_launcher: true,
            launcher_serves_many: false,
            launcher_exited: false,
            notes: Vec::new(),
            step_order: Vec::new(),
            steps: HashMap::new(),
        });
        let kj = self.kernel_jobs.entry(kernel_job).or_default();
        kj.platform = Some(identity.platform);
        kj.job = Some(key.clone());
        key
    }

    /// A step known up front: `ciwatch run`'s command.
    pub fn register_step(
        &mut self,
        kernel_step: u32,
        job: &str,
        identity: StepIdentity,
        source: &'static str,
    ) -> Placement {
        let step = self.add_step(job, identity, source);
        let placement = Placement {
            job: job.to_string(),
            step,
        };
        self.kernel_steps.insert(kernel_step, placement.clone());
        placement
    }

    /// A launcher registered by userspace (ciwatch start), for a platform.
    /// A launcher known before any of its steps ran; `tgid` where it was found.
    pub fn register_launcher(
        &mut self,
        kernel_job: u32,
        platform: Platform,
        long_lived: bool,
        tgid: Option<u32>,
    ) {
        let kj = self.kernel_jobs.entry(kernel_job).or_default();
        kj.platform = Some(platform);
        kj.long_lived = long_lived;
        kj.launcher = tgid;
    }

    pub fn set_job_name(&mut self, job: &str, name: &str) {
        if let Some(j) = self.jobs.get_mut(job) {
            j.identity.name.get_or_insert_with(|| name.to_string());
        }
    }

    pub fn job_note(&mut self, job: &str, note: String) {
        if let Some(j) = self.jobs.get_mut(job) {
            j.notes.push(note);
        }
    }

    pub fn jobs(&self) -> impl Iterator<Item = &JobInfo> {
        self.jobs.values()
    }

    pub fn job(&self, key: &str) -> Option<&JobInfo> {
        self.jobs.get(key)
    }

    pub fn steps_of(&self, job: &str) -> Vec<&StepInfo> {
        self.jobs.get(job).map_or_else(Vec::new, |j| {
            j.step_order.iter().filter_map(|s| j.steps.get(s)).collect()
        })
    }

    /// An environment record: kept until the same process's exec record brings argv.
    pub fn environment(&mut self, common: &Common, reason: EnvReason, env: StepEnv) {
        self.pending.insert(
            common.tgid,
            PendingRoot {
                reason,
                env,
                job: common.job,
                step: common.step,
            },
        );
    }

    /// An exec: completes a pending root, if this process is one.
    pub fn exec(&mut self, common: &Common, argv: &[String]) {
        let Some(root) = self.pending.remove(&common.tgid) else {
            return;
        };
        let env = root.env;
        match root.reason {
            EnvReason::Launcher => {
                let platform = self.launcher_started(root.job, argv);
                self.kernel_jobs.entry(root.job).or_default().launcher = Some(common.tgid);
                let program = argv.first().cloned().unwrap_or_default();
                self.new_launchers.push(NewLauncher {
                    tgid: common.tgid,
                    platform,
                    program,
                });
            }
            EnvReason::StepRoot => self.step_root(root.job, root.step, common, &env, argv),
            EnvReason::Container => self.container_root(root.step, common, &env, argv),
            EnvReason::Detached => {
                self.env_root(root.step, common, &env, argv, "detached step (argv)")
            }
            EnvReason::Unknown(_) => {}
        }
    }

    fn launcher_started(&mut self, kernel_job: u32, argv: &[String]) -> Option<Platform> {
        let platform = launcher_platform(argv);
        let kj = self.kernel_jobs.entry(kernel_job).or_default();
        kj.platform = platform;
        kj.long_lived = is_long_lived(platform, argv);
        platform
    }

    pub fn has_new_launchers(&self) -> bool {
        !self.new_launchers.is_empty()
    }

    /// Launchers found by the kernel since the last call.
    pub fn drain_new_launchers(&mut self) -> Vec<NewLauncher> {
        std::mem::take(&mut self.new_launchers)
    }

    /// The step a live process belongs to, from its kernel tag.
    pub fn step_of(&self, tag: &abi::Tag) -> Option<&str> {
        self.kernel_steps.get(&tag.step).map(|p| p.step.as_str())
    }

    /// The job a live process belongs to, from its kernel tag.
    pub fn job_of(&self, tag: &abi::Tag) -> Option<&str> {
        if let Some(p) = self.kernel_steps.get(&tag.step) {
            return Some(&p.job);
        }
        let kj = self.kernel_jobs.get(&tag.job)?;
        if kj.long_lived {
            None
        } else {
            kj.job.as_deref()
        }
    }

    fn step_root(
        &mut self,
        kernel_job: u32,
        kernel_step: u32,
        common: &Common,
        env: &StepEnv,
        argv: &[String],
    ) {
        let kj = self.kernel_jobs.entry(kernel_job).or_default();
        let detection = detect(env, argv, kj.platform);
        let long_lived = kj.long_lived;
        let known_job = kj.job.clone();
        let job = match (&detection.job, known_job) {
            (Some(identity), Some(job)) if identity.id != job && !long_lived => {
                // One job per launcher: a root claiming another job disagrees with its lineage.
                self.job_note(
                    &job,
                    format!(
                        "a step root claimed job {:?}; kept in this job by lineage",
                        identity.id
                    ),
                );
                job
            }
            (Some(identity), _) => {
                let key = self.ensure_job(identity.clone(), detection.conflicts.clone());
                let exited = self.kernel_jobs.get(&kernel_job).is_some_and(|k| k.exited);
                if let Some(j) = self.jobs.get_mut(&key) {
                    j.has_launcher = true;
                    j.launcher_serves_many |= long_lived;
                    j.launcher_exited |= exited && !long_lived;
                }
                if !long_lived {
                    self.kernel_jobs.entry(kernel_job).or_default().job = Some(key.clone());
                }
                key
            }
            (None, Some(job)) => job,
            (None, None) => {
                self.unattributed += 1;
                return;
            }
        };
        let platform = self
            .jobs
            .get(&job)
            .map_or(Platform::None, |j| j.identity.platform);
        let mut identity = platform::detector(platform)
            .and_then(|d| d.step(env, argv))
            .unwrap_or_default();
        let root = Root::of(common);
        if let Some(named) = self.names_by_pid.remove(&root.tgid) {
            if named.may_name(&root, self.kernel_job_of_launcher(named.worker)) {
                apply_display_name(&mut identity, &named.name);
            } else {
                *self.names_rejected.entry(job.clone()).or_default() += 1;
            }
        }
        let step = self.add_step(&job, identity, "lineage");
        self.note_root(&job, &step, common);
        self.kernel_steps
            .insert(kernel_step, Placement { job, step });
    }

    /// A process a container runtime started: it belongs to a job only if its environment says so.
    fn container_root(
        &mut self,
        kernel_step: u32,
        common: &Common,
        env: &StepEnv,
        argv: &[String],
    ) {
        if let Some(placement) = self.match_known_step(env) {
            self.note_root(&placement.job, &placement.step, common);
            self.kernel_steps.insert(kernel_step, placement);
            return;
        }
        self.env_root(kernel_step, common, env, argv, "container environment");
    }

    /// A step root no lineage leads to: its environment names its job, or it belongs to none.
    fn env_root(
        &mut self,
        kernel_step: u32,
        common: &Common,
        env: &StepEnv,
        argv: &[String],
        source: &'static str,
    ) {
        let detection = detect(env, argv, None);
        let Some(identity) = detection.job else {
            self.foreign_steps.insert(kernel_step);
            return;
        };
        if identity.platform == Platform::GithubActions && !self.jobs.contains_key(&identity.id) {
            // A GitHub step's container without a step we know: another job's, on a shared host.
            self.foreign_steps.insert(kernel_step);
            return;
        }
        let job = self.ensure_job(identity.clone(), detection.conflicts);
        let step_identity = platform::detector(identity.platform)
            .and_then(|d| d.step(env, argv))
            .unwrap_or_default();
        let step = self.add_step(&job, step_identity, source);
        self.note_root(&job, &step, common);
        self.kernel_steps
            .insert(kernel_step, Placement { job, step });
    }

    /// A container process carrying a known GitHub step's file-command GUID (or, failing that,
    /// the GITHUB_ACTION of exactly one step) joins that step.
    fn match_known_step(&mut self, env: &StepEnv) -> Option<Placement> {
        let step = platform::detector(Platform::GithubActions)?.step(env, &[])?;
        if step.internal {
            return None;
        }
        let key = step.key?;
        for job in self.jobs.values() {
            if job.steps.contains_key(&key) {
                return Some(Placement {
                    job: job.key.clone(),
                    step: key,
                });
            }
        }
        let action = step.action?;
        let candidates: Vec<Placement> = self
            .jobs
            .values()
            .flat_map(|j| {
                j.steps
                    .values()
                    .filter(|s| s.action.as_deref() == Some(&action))
                    .map(|s| Placement {
                        job: j.key.clone(),
                        step: s.id.clone(),
                    })
            })
            .collect();
        match candidates.as_slice() {
            [one] => {
                let one = one.clone();
                if let Some(s) = self
                    .jobs
                    .get_mut(&one.job)
                    .and_then(|j| j.steps.get_mut(&one.step))
                {
                    s.degraded.push(format!("a container process joined by GITHUB_ACTION={action} (its file-command GUID {key} is unknown)"));
                }
                Some(one)
            }
            _ => None,
        }
    }

    fn ensure_job(&mut self, identity: JobIdentity, conflicts: Vec<Platform>) -> String {
        let key = identity.id.clone();
        if !self.jobs.contains_key(&key) {
            let job_is_step = platform::detector(identity.platform).is_some_and(|d| !d.has_steps());
            let notes = conflicts
                .iter()
                .map(|p| {
                    format!(
                        "variables of {} are present too; attributed to {}",
                        p.name(),
                        identity.platform.name()
                    )
                })
                .collect();
            self.jobs.insert(
                key.clone(),
                JobInfo {
                    key: key.clone(),
                    identity,
                    conflicts,
                    job_is_step,
                    has_launcher: false,
                    launcher_serves_many: false,
                    launcher_exited: false,
                    notes,
                    step_order: Vec::new(),
                    steps: HashMap::new(),
                },
            );
        }
        key
    }

    /// Adds (or finds) a step; returns its id.
    fn add_step(&mut self, job: &str, identity: StepIdentity, source: &'static str) -> String {
        let Some(info) = self.jobs.get_mut(job) else {
            return String::new();
        };
        if info.job_is_step {
            let id = "job".to_string();
            info.steps.entry(id.clone()).or_insert_with(|| {
                new_step(
                    &id,
                    StepIdentity {
                        name: info.identity.name.clone(),
                        notes: vec![format!(
                            "{} has no step below the job: the job is the step",
                            info.identity.platform.name()
                        )],
                        ..identity
                    },
                    source,
                )
            });
            if !info.step_order.contains(&id) {
                info.step_order.push(id.clone());
            }
            return id;
        }
        let id = match &identity.key {
            Some(key) => key.clone(),
            None => {
                let n = self.ordinals.entry(job.to_string()).or_default();
                *n += 1;
                format!("step-{n}")
            }
        };
        if let Some(existing) = info.steps.get_mut(&id) {
            existing.name = existing.name.take().or(identity.name);
            existing.stage = existing.stage.take().or(identity.stage);
        } else {
            info.steps
                .insert(id.clone(), new_step(&id, identity, source));
            info.step_order.push(id.clone());
        }
        id
    }

    fn note_root(&mut self, job: &str, step: &str, common: &Common) {
        if let Some(s) = self.jobs.get_mut(job).and_then(|j| j.steps.get_mut(step)) {
            s.roots.push(Root::of(common));
            if s.first_ns == 0 || common.ktime_ns < s.first_ns {
                s.first_ns = common.ktime_ns;
            }
        }
    }

    /// Where a record belongs, or None when no watched job owns it.
    pub fn place(&mut self, common: &Common) -> Option<Placement> {
        if let Some(p) = self.kernel_steps.get(&common.step) {
            let p = p.clone();
            self.touch(&p, common.ktime_ns);
            return Some(p);
        }
        if common.step == 0 || common.tag_flags & abi::TAG_LAUNCHER != 0 {
            let kj = self.kernel_jobs.get(&common.job)?;
            if kj.long_lived {
                self.unattributed += 1;
                return None;
            }
            let job = kj.job.clone()?;
            let step = self.add_step(
                &job,
                StepIdentity {
                    key: Some(RUNNER_STEP.into()),
                    name: Some("runner".into()),
                    internal: true,
                    ..Default::default()
                },
                "launcher",
            );
            return Some(Placement { job, step });
        }
        self.unattributed += 1;
        None
    }

    fn touch(&mut self, p: &Placement, ktime_ns: u64) {
        if let Some(s) = self
            .jobs
            .get_mut(&p.job)
            .and_then(|j| j.steps.get_mut(&p.step))
        {
            s.last_ns = s.last_ns.max(ktime_ns);
            if s.first_ns == 0 {
                s.first_ns = ktime_ns;
            }
        }
    }

    pub fn count(&mut self, p: &Placement, kind: crate::kind::Kind) {
        use crate::kind::Kind;
        if let Some(s) = self
            .jobs
            .get_mut(&p.job)
            .and_then(|j| j.steps.get_mut(&p.step))
        {
            match kind {
                Kind::Exec => s.counts.exec += 1,
                Kind::Connect => s.counts.connect += 1,
                Kind::Dns => s.counts.dns += 1,
                Kind::File => s.counts.file += 1,
                Kind::Fork
                | Kind::Exit
                | Kind::Env
                | Kind::Denied
                | Kind::DnsRefused
                | Kind::Socket
                | Kind::SocketDenied => {}
            }
        }
    }

    /// The runner's log named the step a pid started. The first name the lineage
    /// supports wins; a name it does not support is counted against the job, never applied.
    pub fn display_name(&mut self, pid: u32, named: LogName) {
        let worker_job = self.kernel_job_of_launcher(named.worker);
        let mut seen = false;
        for job in self.jobs.values_mut() {
            for step in job.steps.values_mut() {
                let Some(root) = step.roots.iter().find(|r| r.tgid == pid) else {
                    continue;
                };
                seen = true;
                if !named.may_name(root, worker_job) {
                    *self.names_rejected.entry(job.key.clone()).or_default() += 1;
                } else if step.name.is_none() {
                    let mut identity = StepIdentity {
                        name: None,
                        stage: step.stage.clone(),
                        ..Default::default()
                    };
                    apply_display_name(&mut identity, &named.name);
                    step.name = identity.name;
                    step.stage = identity.stage;
                }
            }
        }
        if !seen {
            self.remember_name(pid, named);
        }
    }

    fn kernel_job_of_launcher(&self, tgid: u32) -> Option<u32> {
        self.kernel_jobs
            .iter()
            .find_map(|(id, kj)| (kj.launcher == Some(tgid)).then_some(*id))
    }

    /// Keeps a name until its process is seen; the oldest go first, so junk lines stay bounded.
    fn remember_name(&mut self, pid: u32, named: LogName) {
        if self.names_by_pid.insert(pid, named).is_none() {
            self.names_order.push_back(pid);
        }
        while self.names_order.len() > PENDING_NAMES {
            if let Some(old) = self.names_order.pop_front() {
                self.names_by_pid.remove(&old);
            }
        }
    }

    /// The launcher of `kernel_job` exited.
    pub fn launcher_exited(&mut self, kernel_job: u32) {
        let kj = self.kernel_jobs.entry(kernel_job).or_default();
        kj.exited = true;
        if let Some(job) = kj.job.clone() {
            if let Some(j) = self.jobs.get_mut(&job) {
                j.launcher_exited = true;
            }
        }
    }

    /// Marks what a step's identity lacks (called when sealing).
    pub fn finalize(&mut self, job: &str, missing_name_reason: Option<&str>) {
        let Some(j) = self.jobs.get_mut(job) else {
            return;
        };
        if let Some(n) = self.names_rejected.remove(job) {
            j.notes.push(format!(
                "{n} lines of the runner's log named a process that its Worker did not start, \
                 or before it started: ignored (the log is writable by the job)"
            ));
        }
        // GitHub names steps only in the runner's log; say so when it did not.
        let reason = missing_name_reason.map(String::from).or_else(|| {
            (j.identity.platform == Platform::GithubActions)
                .then(|| "the runner's _diag/Worker_*.log did not name it (missing, unreadable, or no entry for its process)".to_string())
        });
        let Some(reason) = reason else { return };
        for s in j.steps.values_mut() {
            if s.name.is_none()
                && !s.internal
                && !s.degraded.iter().any(|d| d.starts_with("no display name"))
            {
                s.degraded.push(format!("no display name: {reason}"));
            }
        }
    }

    /// Every step the kernel numbered, with what is known of it.
    pub fn kernel_steps(&self) -> impl Iterator<Item = (u32, &StepInfo)> {
        self.kernel_steps
            .iter()
            .filter_map(|(id, p)| Some((*id, self.jobs.get(&p.job)?.steps.get(&p.step)?)))
    }

    pub fn is_foreign(&self, kernel_step: u32) -> bool {
        self.foreign_steps.contains(&kernel_step)
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

fn new_step(id: &str, identity: StepIdentity, source: &'static str) -> StepInfo {
    StepInfo {
        id: id.to_string(),
        name: identity.name,
        stage: identity.stage,
        action: identity.action,
        internal: identity.internal,
        roots: Vec::new(),
        source,
        first_ns: 0,
        last_ns: 0,
        degraded: identity.notes,
        counts: StepCounts::default(),
    }
}

/// GitHub names pre and post stages "Pre X" and "Post X".
fn apply_display_name(identity: &mut StepIdentity, name: &str) {
    identity.name = Some(name.to_string());
    if identity.stage.is_none() {
        identity.stage = Some(
            if name.starts_with("Pre ") {
                "pre"
            } else if name.starts_with("Post ") {
                "post"
            } else {
                "main"
            }
            .to_string(),
        );
    }
}

/// Launchers that run many jobs over their life, so their own traffic is no job's.
pub fn is_long_lived(platform: Option<Platform>, argv: &[String]) -> bool {
    matches!(
        platform,
        Some(Platform::GitlabCi | Platform::Drone | Platform::Jenkins)
    ) || (platform == Some(Platform::Buildkite) && argv.iter().any(|a| a == "start"))
}

/// The platform of a launcher from its own argv (comm matched one of these).
fn launcher_platform(argv: &[String]) -> Option<Platform> {
    let program = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    platform::detectors()
        .iter()
        .find(|d| {
            d.launcher_comms()
                .iter()
                .any(|c| !program.is_empty() && (program == *c || program.starts_with(c)))
        })
        .map(|d| d.platform())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::env::StepEnv;

    fn common(tgid: u32, job: u32, step: u32, tag_flags: u32) -> Common {
        Common {
            flags: 0,
            ktime_ns: 1,
            pid: tgid,
            tgid,
            proc_start_ns: 1,
            cgroup_id: 0,
            uid: 0,
            job,
            step,
            tag_flags,
            comm: b"x".to_vec(),
        }
    }

    fn github_env() -> StepEnv {
        StepEnv::parse(
            b"GITHUB_ACTIONS=true\0GITHUB_REPOSITORY=acme/app\0GITHUB_RUN_ID=1\0GITHUB_JOB=build\0RUNNER_TRACKING_ID=github_x\0",
            false,
        )
    }

    /// A launcher that vforks a step and exits at once: its exit record comes
    /// before the step root's exec, which is what names the job.
    #[test]
    fn a_launcher_exit_read_before_its_first_step_still_ends_the_job() {
        let mut r = Registry::new();
        let launcher = common(10, 1001, 0, abi::TAG_LAUNCHER);
        r.environment(&launcher, EnvReason::Launcher, github_env());
        r.exec(&launcher, &["/runner/bin/Runner.Worker".into()]);
        r.launcher_exited(1001);

        let root = common(11, 1001, 1001, abi::TAG_STEP_ROOT);
        r.environment(&root, EnvReason::StepRoot, github_env());
        r.exec(&root, &["/usr/bin/bash".into()]);
        let job = r.place(&root).expect("the step is placed").job;
        let info = r.job(&job).expect("the job is known");
        assert!(info.has_launcher);
        assert!(info.launcher_exited, "the early exit is not forgotten");
    }

    /// Worker pid 10 starts a user step with root `tgid` (started at boot-clock time 1).
    fn start_steps(r: &mut Registry, tgids: &[u32]) -> String {
        let launcher = common(10, 1001, 0, abi::TAG_LAUNCHER);
        r.environment(&launcher, EnvReason::Launcher, github_env());
        r.exec(&launcher, &["/runner/bin/Runner.Worker".into()]);
        for &tgid in tgids {
            let root = common(tgid, 1001, 2000 + tgid, abi::TAG_STEP_ROOT);
            let guid = format!("00000000-0000-0000-0000-0000000000{tgid}");
            let env = format!(
                "GITHUB_ACTIONS=true\0GITHUB_REPOSITORY=acme/app\0GITHUB_RUN_ID=1\0GITHUB_JOB=build\0\
                 RUNNER_TRACKING_ID=github_x\0GITHUB_ACTION=__run_{tgid}\0\
                 GITHUB_OUTPUT=/w/_temp/_runner_file_commands/set_output_{guid}\0"
            );
            r.environment(&root, EnvReason::StepRoot, StepEnv::parse(env.as_bytes(), false));
            r.exec(&root, &["/usr/bin/bash".into()]);
        }
        r.place(&common(tgids[0], 1001, 2000 + tgids[0], 0)).unwrap().job
    }

    fn github_job_with_steps() -> (Registry, String) {
        let mut r = Registry::new();
        let job = start_steps(&mut r, &[11, 12]);
        (r, job)
    }

    fn step_names(r: &Registry, job: &str) -> Vec<Option<String>> {
        r.steps_of(job).iter().map(|s| s.name.clone()).collect()
    }

    fn named(name: &str, worker: u32, read_ns: u64) -> LogName {
        LogName {
            name: name.into(),
            worker,
            read_ns,
        }
    }

    #[test]
    fn runner_log_names_never_contradict_the_lineage() {
        let (mut r, job) = github_job_with_steps();
        r.display_name(11, named("Build", 10, 5));
        r.display_name(11, named("Publish", 10, 6)); // a second, forged line: the first wins
        r.display_name(12, named("Publish", 99, 5)); // another Worker's log
        r.display_name(12, named("Publish", 10, 0)); // read before the process started
        assert_eq!(step_names(&r, &job), [Some("Build".into()), None]);
        r.finalize(&job, None);
        let notes = &r.job(&job).unwrap().notes;
        assert!(
            notes.iter().any(|n| n.starts_with("2 lines of the runner's log")),
            "{notes:?}"
        );
    }

    #[test]
    fn a_name_read_before_its_process_was_seen_applies_only_if_the_lineage_agrees() {
        let mut r = Registry::new();
        r.display_name(11, named("Build", 10, 5));
        r.display_name(12, named("Forged", 10, 0)); // written before pid 12 existed
        let job = start_steps(&mut r, &[11, 12]);
        assert_eq!(step_names(&r, &job), [Some("Build".into()), None]);
    }

    #[test]
    fn names_for_processes_never_seen_stay_bounded() {
        let mut r = Registry::new();
        for pid in 0..12_288 {
            r.display_name(pid, named("junk", 10, 5));
        }
        assert_eq!(r.names_by_pid.len(), PENDING_NAMES);
        assert_eq!(r.names_order.len(), PENDING_NAMES);
    }
}
