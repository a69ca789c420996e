//! Container id → pod namespace, name, uid, labels and container name, from
//! the Kubernetes API, and the CI job a pod runs (Tekton, GitLab's
//! Kubernetes executor, Actions Runner Controller, Buildkite's
//! agent-stack-k8s).
//!
//! [`watch_pods`] lists and then watches the pods of one node
//! (`fieldSelector=spec.nodeName=<node>`; RBAC cannot restrict a
//! ServiceAccount to its own node, so the daemon must ask for it) and feeds a
//! [`PodCache`]. The cache never blocks the event path and never drops an
//! event: an unknown container stays `Pending` (events keep the container
//! id) until its pod appears; a pod deleted before its metadata was fetched
//! ends `Gone`, with the container id only; deleted pods stay resolvable for
//! a while so that late events of exiting processes still get their pod.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use serde::Serialize;
use tokio::sync::watch;

use crate::health::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot configure the Kubernetes client: {reason}")]
    Config { reason: String },
    #[error("the node name is unknown: set NODE_NAME from the downward API (spec.nodeName)")]
    NoNodeName,
}

/// Annotations worth keeping: CI identity only (the rest can be large, such
/// as kubectl's last-applied-configuration).
const ANNOTATION_PREFIXES: [&str; 4] = [
    "job.runner.gitlab.com/",
    "tekton.dev/",
    "buildkite.com/",
    "actions.github.com/",
];
/// Environment variables read from the pod spec: CI identity only, never the
/// rest (which may hold secrets).
const ENV_KEYS: [&str; 10] = [
    "CI_JOB_ID",
    "CI_PIPELINE_ID",
    "CI_SERVER_URL",
    "CI_PROJECT_PATH",
    "CI_JOB_NAME",
    "BUILDKITE_JOB_ID",
    "BUILDKITE_BUILD_ID",
    "BUILDKITE_STEP_KEY",
    "BUILDKITE_PIPELINE_SLUG",
    "ACTIONS_RUNNER_POD_NAME",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The pod was deleted; kept so late events still resolve.
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerMeta {
    #[serde(serialize_with = "arc_pod")]
    pub pod: Arc<PodMeta>,
    /// `None` while the pod is known (from the cgroup's pod uid) but its
    /// status does not list this container id yet.
    pub container: Option<String>,
    pub init: bool,
    /// `containerd`, `cri-o` or `docker`, from the status' `containerID`.
    pub runtime: Option<String>,
    pub image: Option<String>,
    /// Literal CI-identity values from the container's spec (`ENV_KEYS`).
    pub env: BTreeMap<String, String>,
}

fn arc_pod<S: serde::Serializer>(pod: &Arc<PodMeta>, s: S) -> Result<S::Ok, S::Error> {
    pod.as_ref().serialize(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GoneReason {
    /// The pod was deleted before the API told us about it.
    PodDeleted,
    /// No pod ever listed this container (a container the node runs outside
    /// Kubernetes, such as a docker-in-docker child).
    NotAPod,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Known(ContainerMeta),
    /// Not in any pod yet: keep the container id, ask again later.
    Pending,
    /// Never to be resolved; the container id is all there is.
    Gone {
        pod_uid: Option<String>,
        reason: GoneReason,
    },
}

#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// How long deleted pods (and `Gone` verdicts) stay resolvable.
    pub retain_deleted: Duration,
    /// A pending container whose pod uid is unknown turns `NotAPod` after
    /// this long with the API answering.
    pub orphan_after: Duration,
    /// Bound on pending entries; the oldest go `NotAPod` first.
    pub max_pending: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            retain_deleted: Duration::from_secs(600),
            orphan_after: Duration::from_secs(120),
            max_pending: 10_000,
        }
    }
}

struct PendingEntry {
    pod_uid: Option<String>,
    since: Instant,
}

struct PodEntry {
    meta: Arc<PodMeta>,
    containers: Vec<(String, ContainerMeta)>,
    deleted_at: Option<Instant>,
    /// Succeeded, Failed or deleted: announced once on `PodCache::ended`.
    ended: bool,
}

#[derive(Default)]
struct State {
    pods: HashMap<String, PodEntry>,
    by_container: HashMap<String, ContainerMeta>,
    pending: HashMap<String, PendingEntry>,
    gone: HashMap<String, (Option<String>, GoneReason, Instant)>,
    api_up: bool,
    synced_at: Option<Instant>,
}

/// Pod metadata of this node, shared between the watcher and the pipeline.
pub struct PodCache {
    options: CacheOptions,
    state: Mutex<State>,
    ended: tokio::sync::broadcast::Sender<Arc<PodMeta>>,
}

impl PodCache {
    pub fn new(options: CacheOptions) -> Arc<Self> {
        let (ended, _) = tokio::sync::broadcast::channel(1024);
        Arc::new(Self {
            options,
            state: Mutex::new(State::default()),
            ended,
        })
    }

    /// Pods that ended (phase Succeeded or Failed, or deleted), once each:
    /// on Kubernetes a job ends with its pod (a TaskRun's, a GitLab or
    /// Buildkite job's), and the daemon seals its trace then.
    pub fn ended(&self) -> tokio::sync::broadcast::Receiver<Arc<PodMeta>> {
        self.ended.subscribe()
    }

    fn announce(&self, ended: Vec<Arc<PodMeta>>) {
        for pod in ended {
            // No receiver yet is fine: nobody is sealing.
            let _ = self.ended.send(pod);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is known of container `id` (from `attribute::container::parse`,
    /// with the pod uid its cgroup path gave). An unknown id is remembered as
    /// pending, so a later list can tell whether its pod was deleted.
    pub fn resolve(&self, id: &str, pod_uid: Option<&str>) -> Resolution {
        let mut s = self.lock();
        if let Some(meta) = s.by_container.get(id) {
            return Resolution::Known(meta.clone());
        }
        if let Some((uid, reason, _)) = s.gone.get(id) {
            return Resolution::Gone {
                pod_uid: uid.clone(),
                reason: *reason,
            };
        }
        if s.pending.len() >= self.options.max_pending && !s.pending.contains_key(id) {
            evict_oldest(&mut s);
        }
        let entry = s
            .pending
            .entry(id.to_string())
            .or_insert_with(|| PendingEntry {
                pod_uid: None,
                since: Instant::now(),
            });
        if entry.pod_uid.is_none() {
            entry.pod_uid = pod_uid.map(str::to_string);
        }
        // The pod is known but its status does not list this container yet
        // (status lags container start): give the pod now, refine later.
        if let Some(pod) = pod_uid.and_then(|u| s.pods.get(u)) {
            return Resolution::Known(ContainerMeta {
                pod: pod.meta.clone(),
                container: None,
                init: false,
                runtime: None,
                image: None,
                env: BTreeMap::new(),
            });
        }
        Resolution::Pending
    }

    /// Whether the API answered the last list or watch.
    pub fn api_up(&self) -> bool {
        self.lock().api_up
    }

    pub fn pending_count(&self) -> usize {
        self.lock().pending.len()
    }

    fn set_api_up(&self, up: bool) {
        self.lock().api_up = up;
    }

    /// Replaces the view with a full list taken at `listed_at`: pods missing
    /// from it were deleted while we were not watching.
    pub fn apply_list(&self, pods: Vec<Pod>, listed_at: Instant) {
        let mut ended = Vec::new();
        let mut s = self.lock();
        let live: std::collections::HashSet<String> =
            pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        let vanished: Vec<String> = s
            .pods
            .iter()
            .filter(|(uid, e)| e.deleted_at.is_none() && !live.contains(*uid))
            .map(|(u, _)| u.clone())
            .collect();
        for uid in vanished {
            ended.extend(mark_deleted(&mut s, &uid, listed_at));
        }
        for pod in pods {
            ended.extend(upsert(&mut s, pod, false, listed_at));
        }
        // Pending containers seen before this list whose pod is not in it:
        // the pod was deleted before its metadata reached us.
        let gone: Vec<(String, Option<String>)> = s
            .pending
            .iter()
            .filter(|(_, p)| {
                p.since <= listed_at
                    && p.pod_uid
                        .as_ref()
                        .is_some_and(|u| !live.contains(u) && !s.pods.contains_key(u))
            })
            .map(|(id, p)| (id.clone(), p.pod_uid.clone()))
            .collect();
        for (id, uid) in gone {
            s.pending.remove(&id);
            tracing::info!(container = %id, pod_uid = ?uid, "pod deleted before its metadata was fetched; keeping the container id only");
            s.gone.insert(id, (uid, GoneReason::PodDeleted, listed_at));
        }
        s.api_up = true;
        s.synced_at = Some(listed_at);
        self.expire_locked(&mut s, listed_at);
        drop(s);
        self.announce(ended);
    }

    pub fn apply_event(&self, event: WatchEvent<Pod>) {
        let now = Instant::now();
        let mut s = self.lock();
        let ended = match event {
            WatchEvent::Added(pod) | WatchEvent::Modified(pod) => upsert(&mut s, pod, false, now),
            WatchEvent::Deleted(pod) => upsert(&mut s, pod, true, now),
            WatchEvent::Bookmark(_) | WatchEvent::Error(_) => None,
        };
        s.api_up = true;
        s.synced_at = Some(now);
        drop(s);
        self.announce(ended.into_iter().collect());
    }

    /// Drops what outlived `retain_deleted` and turns long-pending ids with
    /// no pod uid into `NotAPod`. Call it now and then (the watcher does).
    pub fn expire(&self) {
        let mut s = self.lock();
        self.expire_locked(&mut s, Instant::now());
    }

    fn expire_locked(&self, s: &mut State, now: Instant) {
        let keep = self.options.retain_deleted;
        let old: Vec<String> = s
            .pods
            .iter()
            .filter(|(_, e)| {
                e.deleted_at
                    .is_some_and(|t| now.saturating_duration_since(t) > keep)
            })
            .map(|(u, _)| u.clone())
            .collect();
        for uid in old {
            if let Some(entry) = s.pods.remove(&uid) {
                for (id, _) in entry.containers {
                    s.by_container.remove(&id);
                }
            }
        }
        s.gone
            .retain(|_, (_, _, at)| now.saturating_duration_since(*at) <= keep);
        // Only while the API answers: an outage must not turn ids into orphans.
        if s.api_up {
            let orphan_after = self.options.orphan_after;
            let orphans: Vec<String> = s
                .pending
                .iter()
                .filter(|(_, p)| {
                    p.pod_uid.is_none() && now.saturating_duration_since(p.since) > orphan_after
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in orphans {
                s.pending.remove(&id);
                s.gone.insert(id, (None, GoneReason::NotAPod, now));
            }
        }
    }
}

fn evict_oldest(s: &mut State) {
    if let Some(id) = s
        .pending
        .iter()
        .min_by_key(|(_, p)| p.since)
        .map(|(id, _)| id.clone())
    {
        let p = s.pending.remove(&id).expect("present");
        s.gone
            .insert(id, (p.pod_uid, GoneReason::NotAPod, Instant::now()));
    }
}

fn mark_deleted(s: &mut State, uid: &str, at: Instant) -> Option<Arc<PodMeta>> {
    let entry = s.pods.get_mut(uid)?;
    let mut meta = (*entry.meta).clone();
    meta.deleted = true;
    let meta = Arc::new(meta);
    entry.meta = meta.clone();
    entry.deleted_at = Some(at);
    for (id, c) in &mut entry.containers {
        c.pod = meta.clone();
        s.by_container.insert(id.clone(), c.clone());
    }
    let newly = !entry.ended;
    entry.ended = true;
    newly.then_some(meta)
}

/// Stores a pod; returns it when this is the first sign that it ended.
fn upsert(s: &mut State, pod: Pod, deleted: bool, now: Instant) -> Option<Arc<PodMeta>> {
    let uid = pod.metadata.uid.clone()?;
    let finished = deleted
        || pod
            .status
            .as_ref()
            .and_then(|st| st.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
    let meta = Arc::new(PodMeta {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: uid.clone(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        annotations: pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| ANNOTATION_PREFIXES.iter().any(|p| k.starts_with(p)))
            .collect(),
        deleted,
    });
    let containers = containers_of(&pod, &meta);
    let mut was_ended = false;
    if let Some(old) = s.pods.remove(&uid) {
        was_ended = old.ended;
        for (id, _) in old.containers {
            s.by_container.remove(&id);
        }
    }
    for (id, c) in &containers {
        s.pending.remove(id);
        s.gone.remove(id);
        s.by_container.insert(id.clone(), c.clone());
    }
    s.pods.insert(
        uid,
        PodEntry {
            meta: meta.clone(),
            containers,
            deleted_at: deleted.then_some(now),
            ended: finished || was_ended,
        },
    );
    (finished && !was_ended).then_some(meta)
}

/// Every container of the pod that has an id in its status (a restarted
/// container has a new id, and its previous one can still have events).
fn containers_of(pod: &Pod, meta: &Arc<PodMeta>) -> Vec<(String, ContainerMeta)> {
    let (Some(spec), Some(status)) = (&pod.spec, &pod.status) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    type Group<'a> = (&'a [Container], Option<&'a Vec<ContainerStatus>>, bool);
    let groups: [Group<'_>; 2] = [
        (&spec.containers, status.container_statuses.as_ref(), false),
        (
            spec.init_containers.as_deref().unwrap_or(&[]),
            status.init_container_statuses.as_ref(),
            true,
        ),
    ];
    for (specs, statuses, init) in groups {
        for st in statuses.into_iter().flatten() {
            let spec = specs.iter().find(|c| c.name == st.name);
            let env = spec
                .and_then(|c| c.env.as_ref())
                .into_iter()
                .flatten()
                .filter(|e| ENV_KEYS.contains(&e.name.as_str()))
                .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
                .collect::<BTreeMap<_, _>>();
            let mut ids: Vec<&str> = Vec::new();
            if let Some(id) = st.container_id.as_deref() {
                ids.push(id);
            }
            if let Some(id) = st
                .last_state
                .as_ref()
                .and_then(|l| l.terminated.as_ref())
                .and_then(|t| t.container_id.as_deref())
            {
                ids.push(id);
            }
            for full in ids {
                let (runtime, id) = match full.split_once("://") {
                    Some((r, id)) => (Some(r.to_string()), id),
                    None => (None, full),
                };
                out.push((
                    id.to_ascii_lowercase(),
                    ContainerMeta {
                        pod: meta.clone(),
                        container: Some(st.name.clone()),
                        init,
                        runtime,
                        image: spec.and_then(|c| c.image.clone()),
                        env: env.clone(),
                    },
                ));
            }
        }
    }
    out
}

const RELIST_MAX_WAIT: Duration = Duration::from_secs(30);

/// Between failed lists and watches: 250 ms doubling up to 30 s, no jitter, no
/// end (it never returns `None`); a successful list starts it over.
const RELIST_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(250))
    .with_max_delay(RELIST_MAX_WAIT)
    .without_max_times();

/// Lists then watches the pods of `node`, keeping `cache` current until
/// `stop` turns true. Never returns an error: an unreachable API is retried
/// with backoff while the cache keeps serving what it has.
pub async fn watch_pods(
    client: kube::Client,
    node: String,
    cache: Arc<PodCache>,
    metrics: Option<Arc<Metrics>>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Pod> = Api::all(client);
    let selector = format!("spec.nodeName={node}");
    let mut backoff = RELIST_BACKOFF.build();
    let report = |up: bool| {
        cache.set_api_up(up);
        if let Some(m) = &metrics {
            m.set_kube_api_up(up);
        }
    };
    'relist: loop {
        if *stop.borrow() {
            return;
        }
        let listed_at = Instant::now();
        let list_params = ListParams::default().fields(&selector);
        let list = tokio::select! {
            r = api.list(&list_params) => r,
            _ = stop.changed() => return,
        };
        let mut version = match list {
            Ok(list) => {
                tracing::debug!(pods = list.items.len(), node = %node, "listed pods");
                cache.apply_list(list.items, listed_at);
                report(true);
                backoff = RELIST_BACKOFF.build();
                list.metadata.resource_version.unwrap_or_default()
            }
            Err(e) => {
                report(false);
                let wait = backoff.next().unwrap_or(RELIST_MAX_WAIT);
                tracing::warn!(error = %e, retry_in = ?wait, "Kubernetes API unreachable; events keep their container ids");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue 'relist,
                    _ = stop.changed() => return,
                }
            }
        };
        loop {
            // Servers end a watch after `timeout`; it is re-opened from the
            // last version seen. 290 s stays under kube's 295 s limit.
            // Bookmarks (kube's default) keep that version fresh.
            let params = WatchParams::default().fields(&selector).timeout(290);
            let stream = tokio::select! {
                s = api.watch(&params, &version) => s,
                _ = stop.changed() => return,
            };
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    report(false);
                    tracing::warn!(error = %e, "Kubernetes watch failed; listing again");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next().unwrap_or(RELIST_MAX_WAIT)) => continue 'relist,
                        _ = stop.changed() => return,
                    }
                }
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                let item = tokio::select! {
                    i = stream.next() => i,
                    _ = stop.changed() => return,
                };
                match item {
                    None => break,
                    Some(Ok(WatchEvent::Error(status))) => {
                        // 410 Gone: our version is too old; anything else: start over too.
                        tracing::debug!(code = status.code, reason = %status.reason, "watch error; listing again");
                        continue 'relist;
                    }
                    Some(Ok(event)) => {
                        if let Some(v) = event_version(&event) {
                            version = v;
                        }
                        cache.apply_event(event);
                        report(true);
                    }
                    Some(Err(e)) => {
                        report(false);
                        tracing::warn!(error = %e, "Kubernetes watch broke; listing again");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.next().unwrap_or(RELIST_MAX_WAIT)) => continue 'relist,
                            _ = stop.changed() => return,
                        }
                    }
                }
            }
            cache.expire();
        }
    }
}

fn event_version(event: &WatchEvent<Pod>) -> Option<String> {
    match event {
        WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p) => {
            p.metadata.resource_version.clone()
        }
        WatchEvent::Bookmark(b) => Some(b.metadata.resource_version.clone()),
        WatchEvent::Error(_) => None,
    }
}

/// The `[kubernetes]` section of the config file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeConfig {
    /// Watch this node's pods for container attribution (the DaemonSet sets it).
    pub enabled: bool,
    /// The node to watch; default `NODE_NAME` from the downward API.
    pub node_name: Option<String>,
    pub retain_deleted_secs: u64,
    pub orphan_after_secs: u64,
}

impl Default for KubeConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_name: None,
            retain_deleted_secs: 600,
            orphan_after_secs: 120,
        }
    }
}

impl KubeConfig {
    pub fn cache_options(&self) -> CacheOptions {
        CacheOptions {
            retain_deleted: Duration::from_secs(self.retain_deleted_secs),
            orphan_after: Duration::from_secs(self.orphan_after_secs),
            ..CacheOptions::default()
        }
    }

    pub fn node(&self) -> Result<String, KubeError> {
        match &self.node_name {
            Some(n) if !n.is_empty() => Ok(n.clone()),
            _ => node_name(),
        }
    }
}

/// The in-cluster client (ServiceAccount token and CA), or kubeconfig when
/// run outside a cluster.
pub async fn client() -> Result<kube::Client, KubeError> {
    crate::tls::install_default_provider();
    kube::Client::try_default()
        .await
        .map_err(|e| KubeError::Config {
            reason: e.to_string(),
        })
}

/// The node to watch: `NODE_NAME` (set from `spec.nodeName` by the downward API).
pub fn node_name() -> Result<String, KubeError> {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .ok_or(KubeError::NoNodeName)
}

/// The CI job a pod's container belongs to, from pod labels, annotations,
/// container names and spec env.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CiJob {
    /// `tekton`, `gitlab`, `github` or `buildkite`.
    pub platform: &'static str,
    /// `None` where the job is decided inside the pod (ARC runner pods:
    /// the Runner.Worker logic applies there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// Which label, annotation, env or name said so.
    pub source: &'static str,
    /// An ARC runner pod: a GitHub runner runs inside; attribute its events
    /// with the GitHub detector, not from pod metadata.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub runner_pod: bool,
}

pub fn ci_job(meta: &ContainerMeta) -> Option<CiJob> {
    let pod = &meta.pod;
    let label = |k: &str| pod.labels.get(k).cloned();
    let scoped = |name: String| format!("{}/{}", pod.namespace, name);
    let container = meta.container.as_deref();
    // Tekton (tektoncd/pipeline pkg/pod): the TaskRun is the job; each
    // `step-<name>` container is a step.
    if let Some(task_run) = label("tekton.dev/taskRun") {
        return Some(CiJob {
            platform: "tekton",
            job_id: Some(scoped(task_run)),
            step: container
                .and_then(|c| c.strip_prefix("step-"))
                .map(str::to_string),
            pipeline: label("tekton.dev/pipelineRun").map(scoped),
            source: "label tekton.dev/taskRun",
            runner_pod: false,
        });
    }
    // GitLab Runner's Kubernetes executor: annotation job.runner.gitlab.com/id
    // (15.9+), else CI_JOB_ID in the build/helper container env; the stage
    // comes from the script path in argv, not from here.
    let gitlab_pod = pod.labels.contains_key("job.runner.gitlab.com/pod");
    if let Some(id) = pod.annotations.get("job.runner.gitlab.com/id") {
        return Some(gitlab(
            id.clone(),
            meta,
            "annotation job.runner.gitlab.com/id",
        ));
    }
    if gitlab_pod && !meta.env.contains_key("CI_JOB_ID") {
        return Some(CiJob {
            platform: "gitlab",
            job_id: None,
            step: None,
            pipeline: None,
            source: "label job.runner.gitlab.com/pod",
            runner_pod: false,
        });
    }
    // Buildkite agent-stack-k8s (api/api.go UUIDLabel); a Buildkite step is a job.
    if let Some(uuid) = label("buildkite.com/job-uuid") {
        return Some(buildkite(uuid, "label buildkite.com/job-uuid"));
    }
    // Actions Runner Controller scale-set runner pods
    // (actions.github.com/scale-set-name, app.kubernetes.io/component=runner).
    if pod.labels.contains_key("actions.github.com/scale-set-name")
        && pod
            .labels
            .get("app.kubernetes.io/component")
            .is_some_and(|c| c == "runner")
    {
        return Some(CiJob {
            platform: "github",
            job_id: None,
            step: None,
            pipeline: None,
            source: "label actions.github.com/scale-set-name",
            runner_pod: true,
        });
    }
    // Labels and annotations come from the controller that made the pod;
    // the container env is the fallback (a user-made pod could carry it).
    if let Some(id) = meta.env.get("CI_JOB_ID") {
        return Some(gitlab(id.clone(), meta, "env CI_JOB_ID"));
    }
    if let Some(uuid) = meta.env.get("BUILDKITE_JOB_ID") {
        return Some(buildkite(uuid.clone(), "env BUILDKITE_JOB_ID"));
    }
    // ARC kubernetes mode: runner-container-hooks label the job's workflow
    // pod `runner-pod=<runner pod>`; the runner's job owns it.
    if let Some(runner) = label("runner-pod") {
        return Some(CiJob {
            platform: "github",
            job_id: None,
            step: None,
            pipeline: Some(scoped(runner)),
            source: "label runner-pod (runner-container-hooks)",
            runner_pod: false,
        });
    }
    None
}

fn gitlab(id: String, meta: &ContainerMeta, source: &'static str) -> CiJob {
    let job_id = match meta.env.get("CI_SERVER_URL") {
        Some(server) => format!("{}/-/jobs/{id}", server.trim_end_matches('/')),
        None => id,
    };
    CiJob {
        platform: "gitlab",
        job_id: Some(job_id),
        step: None,
        pipeline: meta.env.get("CI_PIPELINE_ID").cloned(),
        source,
        runner_pod: false,
    }
}

fn buildkite(uuid: String, source: &'static str) -> CiJob {
    CiJob {
        platform: "buildkite",
        job_id: Some(uuid.clone()),
        step: Some(uuid),
        pipeline: None,
        source,
        runner_pod: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;
    use serde_json::{json, Value};
    use std::convert::Infallible;
    use tokio::sync::mpsc;

    const NODE: &str = "node-a";
    const C1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const C2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const C3: &str = "3333333333333333333333333333333333333333333333333333333333333333";

    fn pod(name: &str, uid: &str, labels: Value, containers: &[(&str, &str)], rv: u64) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ci", "uid": uid, "resourceVersion": rv.to_string(), "labels": labels,
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{…}"}},
            "spec": {"nodeName": NODE, "containers": containers.iter().map(|(n, _)| json!({
                "name": n, "image": "alpine:3",
                "env": [{"name": "CI_JOB_ID", "value": "4242"}, {"name": "CI_SERVER_URL", "value": "https://gitlab.example"},
                        {"name": "SECRET_TOKEN", "value": "hunter2"}, {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
            })).collect::<Vec<_>>()},
            "status": {"containerStatuses": containers.iter().map(|(n, id)| json!({
                "name": n, "containerID": format!("containerd://{id}"), "image": "alpine:3", "imageID": "", "ready": true, "restartCount": 0
            })).collect::<Vec<_>>()}
        })
    }

    /// A fake API server: `GET /api/v1/pods` lists, `…&watch=true` streams
    /// events pushed by the test; `up = false` answers 500 to everything (a
    /// failing apiserver; kube's client retries 503 itself).
    #[derive(Default)]
    struct Fake {
        up: bool,
        pods: Vec<Value>,
        rv: u64,
        watchers: Vec<mpsc::UnboundedSender<Bytes>>,
        selectors: Vec<String>,
        lists: usize,
    }

    async fn serve(fake: Arc<Mutex<Fake>>) -> std::net::SocketAddr {
        serve_on(fake, "127.0.0.1:0".parse().unwrap()).await
    }

    async fn serve_on(fake: Arc<Mutex<Fake>>, addr: std::net::SocketAddr) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let fake = fake.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let fake = fake.clone();
                            async move { Ok::<_, Infallible>(handle(&fake, req)) }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

    fn handle(
        fake: &Arc<Mutex<Fake>>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Body> {
        let mut f = fake.lock().unwrap();
        let query: HashMap<String, String> =
            url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let json_reply = |code: u16, v: Value| {
            hyper::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(v.to_string())).boxed())
                .unwrap()
        };
        if !f.up {
            return json_reply(
                500,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500, "reason": "InternalError", "message": "down"}),
            );
        }
        if req.uri().path() != "/api/v1/pods" {
            return json_reply(
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "nope"}),
            );
        }
        f.selectors
            .push(query.get("fieldSelector").cloned().unwrap_or_default());
        if query.get("watch").map(String::as_str) == Some("true") {
            let (tx, rx) = mpsc::unbounded_channel();
            f.watchers.push(tx);
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            return hyper::Response::builder()
                .header("content-type", "application/json")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap();
        }
        f.lists += 1;
        let items = f.pods.clone();
        let rv = f.rv;
        json_reply(
            200,
            json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
        )
    }

    fn push(fake: &Arc<Mutex<Fake>>, kind: &str, object: Value) {
        let mut f = fake.lock().unwrap();
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        f.watchers
            .retain(|w| w.send(Bytes::from(line.clone())).is_ok());
    }

    async fn start(
        fake: Arc<Mutex<Fake>>,
        options: CacheOptions,
    ) -> (
        Arc<PodCache>,
        Arc<Metrics>,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let addr = serve(fake).await;
        start_at(addr, options)
    }

    fn start_at(
        addr: std::net::SocketAddr,
        options: CacheOptions,
    ) -> (
        Arc<PodCache>,
        Arc<Metrics>,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        crate::tls::install_default_provider();
        let client = kube::Client::try_from(config).unwrap();
        let cache = PodCache::new(options);
        let metrics = Metrics::new();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(watch_pods(
            client,
            NODE.into(),
            cache.clone(),
            Some(metrics.clone()),
            stopped,
        ));
        (cache, metrics, stop, task)
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn known(r: Resolution) -> ContainerMeta {
        match r {
            Resolution::Known(m) => m,
            other => panic!("expected Known, got {other:?}"),
        }
    }

    #[test]
    fn relist_backoff_doubles_exactly_up_to_30s_without_end() {
        let ms = Duration::from_millis;
        let waits: Vec<Duration> = RELIST_BACKOFF.build().take(10).collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000].map(ms)
        );
    }

    #[tokio::test]
    async fn list_then_watch_fills_metadata() {
        let fake = Arc::new(Mutex::new(Fake {
            up: true,
            rv: 5,
            ..Fake::default()
        }));
        fake.lock().unwrap().pods.push(pod(
            "build-abc-pod",
            "aaaaaaaa-0000-0000-0000-000000000001",
            json!({"tekton.dev/taskRun": "build-abc", "tekton.dev/pipelineRun": "ci-run-1"}),
            &[("step-compile", C1), ("step-test", C2)],
            5,
        ));
        let (cache, metrics, stop, task) = start(fake.clone(), CacheOptions::default()).await;
        let mut ended = cache.ended();
        until("the list", || cache.api_up()).await;
        let m = known(cache.resolve(C1, None));
        assert_eq!(
            (
                m.pod.name.as_str(),
                m.pod.namespace.as_str(),
                m.container.as_deref()
            ),
            ("build-abc-pod", "ci", Some("step-compile"))
        );
        assert_eq!(m.runtime.as_deref(), Some("containerd"));
        assert!(!m
            .pod
            .annotations
            .contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        // Only CI identity leaves the spec's env; valueFrom is never read.
        assert_eq!(
            m.env.keys().collect::<Vec<_>>(),
            ["CI_JOB_ID", "CI_SERVER_URL"]
        );
        let job = ci_job(&m).unwrap();
        assert_eq!(
            (job.platform, job.job_id.as_deref(), job.step.as_deref()),
            ("tekton", Some("ci/build-abc"), Some("compile"))
        );
        assert_eq!(job.pipeline.as_deref(), Some("ci/ci-run-1"));
        assert!(metrics.render().contains("ciwatch_kube_api_up 1"));
        // The daemon asked for its node only.
        assert!(fake
            .lock()
            .unwrap()
            .selectors
            .iter()
            .all(|s| s == "spec.nodeName=node-a"));

        // A pod that starts later arrives through the watch.
        assert_eq!(
            cache.resolve(C3, Some("bbbbbbbb-0000-0000-0000-000000000002")),
            Resolution::Pending
        );
        until("the watch", || !fake.lock().unwrap().watchers.is_empty()).await;
        let later = pod(
            "runner-x-project-1-concurrent-0",
            "bbbbbbbb-0000-0000-0000-000000000002",
            json!({"job.runner.gitlab.com/pod": "runner-x"}),
            &[("build", C3)],
            6,
        );
        push(&fake, "ADDED", later.clone());
        until("C3 resolved", || {
            matches!(cache.resolve(C3, None), Resolution::Known(_))
        })
        .await;
        let job = ci_job(&known(cache.resolve(C3, None))).unwrap();
        assert_eq!(
            (job.platform, job.job_id.as_deref()),
            ("gitlab", Some("https://gitlab.example/-/jobs/4242"))
        );

        // A pod that finishes ends its job, announced once; deleted pods
        // stay resolvable, marked.
        let mut done = later.clone();
        done["status"]["phase"] = json!("Succeeded");
        push(&fake, "MODIFIED", done);
        push(&fake, "DELETED", later);
        until("deletion", || known(cache.resolve(C3, None)).pod.deleted).await;
        let pod = tokio::time::timeout(Duration::from_secs(5), ended.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pod.name, "runner-x-project-1-concurrent-0");
        assert!(ended.try_recv().is_err(), "an ended pod is announced once");
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn api_down_keeps_ids_and_fills_in_when_it_returns() {
        let fake = Arc::new(Mutex::new(Fake {
            up: true,
            rv: 9,
            ..Fake::default()
        }));
        let uid = "cccccccc-0000-0000-0000-000000000003";
        fake.lock().unwrap().pods.push(pod(
            "bk-job",
            uid,
            json!({"buildkite.com/job-uuid": "0190-abcd"}),
            &[("container-0", C1)],
            9,
        ));
        // Unreachable: nothing listens on the API's address yet.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (cache, metrics, stop, task) = start_at(
            addr,
            CacheOptions {
                orphan_after: Duration::ZERO,
                ..CacheOptions::default()
            },
        );
        // Events during the outage keep their container ids.
        until("a failed list", || {
            metrics.render().contains("ciwatch_kube_api_up 0")
        })
        .await;
        assert!(!cache.api_up());
        assert_eq!(cache.resolve(C1, Some(uid)), Resolution::Pending);
        assert_eq!(cache.resolve(C2, None), Resolution::Pending);
        cache.expire();
        assert_eq!(
            cache.resolve(C2, None),
            Resolution::Pending,
            "no orphan verdicts while the API is down"
        );
        // The API returns: metadata fills in.
        serve_on(fake.clone(), addr).await;
        until("the API to return", || cache.api_up()).await;
        let job = ci_job(&known(cache.resolve(C1, Some(uid)))).unwrap();
        assert_eq!(
            (job.platform, job.job_id.as_deref()),
            ("buildkite", Some("0190-abcd"))
        );
        // An id no pod ever listed, with no pod uid, becomes NotAPod once the API answers.
        cache.expire();
        assert_eq!(
            cache.resolve(C2, None),
            Resolution::Gone {
                pod_uid: None,
                reason: GoneReason::NotAPod
            }
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn pod_deleted_before_its_metadata_was_fetched() {
        let fake = Arc::new(Mutex::new(Fake {
            up: false,
            rv: 3,
            ..Fake::default()
        }));
        let (cache, _metrics, stop, task) = start(fake.clone(), CacheOptions::default()).await;
        // A short-lived pod's container runs while the API is down...
        let uid = "dddddddd-0000-0000-0000-000000000004";
        assert_eq!(cache.resolve(C2, Some(uid)), Resolution::Pending);
        // ...and the pod is gone by the time the API answers.
        fake.lock().unwrap().up = true;
        until("the list", || cache.api_up()).await;
        assert_eq!(
            cache.resolve(C2, Some(uid)),
            Resolution::Gone {
                pod_uid: Some(uid.into()),
                reason: GoneReason::PodDeleted
            }
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_broken_watch_relists() {
        let fake = Arc::new(Mutex::new(Fake {
            up: true,
            rv: 1,
            ..Fake::default()
        }));
        let (cache, _m, stop, task) = start(fake.clone(), CacheOptions::default()).await;
        until("the watch", || !fake.lock().unwrap().watchers.is_empty()).await;
        // 410 Gone: the version is too old, so the watcher lists again and
        // finds a pod it never saw an event for.
        fake.lock().unwrap().pods.push(pod(
            "p",
            "eeeeeeee-0000-0000-0000-000000000005",
            json!({}),
            &[("main", C3)],
            2,
        ));
        push(
            &fake,
            "ERROR",
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired", "message": "too old"}),
        );
        until("relist", || {
            matches!(cache.resolve(C3, None), Resolution::Known(_))
        })
        .await;
        assert!(fake.lock().unwrap().lists >= 2);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    fn meta(
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
        container: &str,
        env: &[(&str, &str)],
    ) -> ContainerMeta {
        let map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        ContainerMeta {
            pod: Arc::new(PodMeta {
                namespace: "ns".into(),
                name: "pod".into(),
                uid: "u".into(),
                labels: map(labels),
                annotations: map(annotations),
                deleted: false,
            }),
            container: Some(container.into()),
            init: false,
            runtime: None,
            image: None,
            env: map(env),
        }
    }

    #[test]
    fn ci_jobs_from_pod_metadata() {
        let j = ci_job(&meta(
            &[("tekton.dev/taskRun", "tr")],
            &[],
            "sidecar-db",
            &[],
        ))
        .unwrap();
        assert_eq!((j.job_id.as_deref(), j.step), (Some("ns/tr"), None));
        let j = ci_job(&meta(
            &[("job.runner.gitlab.com/pod", "runner-1")],
            &[("job.runner.gitlab.com/id", "77")],
            "helper",
            &[],
        ))
        .unwrap();
        assert_eq!(
            (j.platform, j.job_id.as_deref(), j.source),
            ("gitlab", Some("77"), "annotation job.runner.gitlab.com/id")
        );
        let j = ci_job(&meta(
            &[("job.runner.gitlab.com/pod", "runner-1")],
            &[],
            "svc-0",
            &[],
        ))
        .unwrap();
        assert_eq!((j.platform, j.job_id), ("gitlab", None));
        let j = ci_job(&meta(
            &[],
            &[],
            "container-0",
            &[("BUILDKITE_JOB_ID", "j-1")],
        ))
        .unwrap();
        assert_eq!(
            (j.platform, j.job_id.as_deref(), j.step.as_deref()),
            ("buildkite", Some("j-1"), Some("j-1"))
        );
        let j = ci_job(&meta(
            &[
                ("actions.github.com/scale-set-name", "arc"),
                ("app.kubernetes.io/component", "runner"),
            ],
            &[],
            "runner",
            &[],
        ))
        .unwrap();
        assert!(j.runner_pod && j.platform == "github" && j.job_id.is_none());
        // The listener pod of the same scale set is not a runner.
        assert_eq!(
            ci_job(&meta(
                &[
                    ("actions.github.com/scale-set-name", "arc"),
                    ("app.kubernetes.io/component", "runner-scale-set-listener")
                ],
                &[],
                "listener",
                &[]
            )),
            None
        );
        let j = ci_job(&meta(&[("runner-pod", "arc-runner-abc")], &[], "job", &[])).unwrap();
        assert_eq!(
            (j.platform, j.pipeline.as_deref(), j.runner_pod),
            ("github", Some("ns/arc-runner-abc"), false)
        );
        assert_eq!(ci_job(&meta(&[("app", "nginx")], &[], "nginx", &[])), None);
    }
}
