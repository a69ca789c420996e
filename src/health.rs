//! The daemon's small HTTP endpoint: `/healthz` (liveness), `/readyz`
//! (readiness) and `/metrics` (Prometheus text format 0.0.4), served from a
//! shared [`Metrics`] whose counters and gauges the pipeline updates without
//! locks on the hot path.
//!
//! The metrics are `prometheus-client` types in one [`Registry`], which also
//! writes the exposition. HTTP is hyper 1 with hyper-util's Tokio glue,
//! HTTP/1.1 only: kube already brings hyper in, and no HTTP is parsed by hand.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{prometheus_text, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::kind::Kind;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot listen on {addr} for /healthz, /readyz and /metrics")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Why writing output failed; one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFailure {
    /// ENOSPC/EDQUOT on the output volume.
    NoSpace,
    /// EACCES, EPERM or EROFS.
    Unwritable,
    /// The object store refused or could not be reached.
    Upload,
    Other,
}

impl OutputFailure {
    const ALL: [OutputFailure; 4] = [
        OutputFailure::NoSpace,
        OutputFailure::Unwritable,
        OutputFailure::Upload,
        OutputFailure::Other,
    ];

    fn name(self) -> &'static str {
        match self {
            OutputFailure::NoSpace => "no_space",
            OutputFailure::Unwritable => "unwritable",
            OutputFailure::Upload => "upload",
            OutputFailure::Other => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HookState {
    implementation: String,
    attached: bool,
}

/// Every record kind: events are counted per event kind, losses per record kind.
const KINDS: usize = Kind::ALL.len();
const FAILURES: usize = OutputFailure::ALL.len();

/// Everything `/metrics`, `/healthz` and `/readyz` report. Counters are
/// monotonic; the daemon owns one `Arc<Metrics>` and hands clones around.
///
/// The fields are handles onto the same atomics the registry encodes
/// (prometheus-client metrics are `Arc`s inside), indexed by `Kind as usize`
/// and `OutputFailure as usize`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    events: [Counter; KINDS],
    lost: [Counter; KINDS],
    undecodable: Counter,
    denied: Counter,
    jobs_active: Gauge,
    jobs_completed: Counter,
    output_errors: [Counter; FAILURES],
    output_ok: Gauge,
    pending_uploads: Gauge<u64, AtomicU64>,
    /// -1 unknown (not on Kubernetes), 0 down, 1 up.
    kube_api: Gauge,
    hooks: Hooks,
    ready: Gauge,
    not_ready: Mutex<String>,
    /// Unix milliseconds of the pipeline's last heartbeat; 0 before the first.
    heartbeat_ms: AtomicU64,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let events: [Counter; KINDS] = Default::default();
        let lost: [Counter; KINDS] = Default::default();
        let undecodable = Counter::default();
        let denied = Counter::default();
        let jobs_active = Gauge::default();
        let jobs_completed = Counter::default();
        let output_errors: [Counter; FAILURES] = Default::default();
        let output_ok = Gauge::default();
        // No write has failed yet.
        output_ok.set(1);
        let pending_uploads = Gauge::<u64, AtomicU64>::default();
        let kube_api = Gauge::default();
        kube_api.set(-1);
        let hooks = Hooks::default();
        let ready = Gauge::default();

        // Registered in the order the hand-written exposition had. Counter
        // names go without `_total`: the encoder appends it (and `register`
        // appends the final period of the help text).
        let mut registry = Registry::default();
        registry.register(
            "ciwatch_events",
            "Events written, by kind",
            ByLabel::new(
                "kind",
                Kind::events()
                    .map(|k| (k.name(), events[k as usize].clone()))
                    .collect(),
            ),
        );
        registry.register(
            "ciwatch_lost",
            "Records the kernel could not queue (ring buffer full), by kind",
            ByLabel::new(
                "kind",
                Kind::ALL
                    .map(|k| (k.name(), lost[k as usize].clone()))
                    .into(),
            ),
        );
        registry.register(
            "ciwatch_lost_all",
            "Sum of ciwatch_lost_total",
            SumOf(lost.clone()),
        );
        registry.register(
            "ciwatch_undecodable",
            "Records that could not be decoded",
            undecodable.clone(),
        );
        registry.register(
            "ciwatch_denied",
            "Connects refused by enforce mode",
            denied.clone(),
        );
        registry.register(
            "ciwatch_jobs_active",
            "Jobs being recorded now",
            jobs_active.clone(),
        );
        registry.register(
            "ciwatch_jobs_completed",
            "Jobs whose trace was sealed",
            jobs_completed.clone(),
        );
        registry.register(
            "ciwatch_output_errors",
            "Failed writes or uploads of traces, by reason",
            ByLabel::new(
                "reason",
                OutputFailure::ALL
                    .map(|f| (f.name(), output_errors[f as usize].clone()))
                    .into(),
            ),
        );
        registry.register(
            "ciwatch_output_ok",
            "1 when the last trace write or upload succeeded",
            output_ok.clone(),
        );
        registry.register(
            "ciwatch_uploads_pending",
            "Sealed traces not yet in the object store",
            pending_uploads.clone(),
        );
        registry.register(
            "ciwatch_kube_api_up",
            "1 when the Kubernetes API answered the last list or watch",
            KnownGauge(kube_api.clone()),
        );
        registry.register(
            "ciwatch_hook_attached",
            "1 when the hook is attached, with the implementation in use",
            hooks.clone(),
        );
        registry.register(
            "ciwatch_ready",
            "1 when every hook is attached and the daemon records",
            ready.clone(),
        );

        Arc::new(Metrics {
            registry,
            events,
            lost,
            undecodable,
            denied,
            jobs_active,
            jobs_completed,
            output_errors,
            output_ok,
            pending_uploads,
            kube_api,
            hooks,
            ready,
            not_ready: Mutex::new("starting".to_string()),
            heartbeat_ms: AtomicU64::new(0),
        })
    }

    pub fn count_event(&self, kind: Kind) {
        self.events[kind as usize].inc();
    }

    /// Sets the kernel's running total of records it could not queue.
    pub fn set_lost(&self, kind: Kind, total: u64) {
        // The kernel keeps the total, so the counter is stored, not incremented.
        self.lost[kind as usize]
            .inner()
            .store(total, Ordering::Relaxed);
    }

    pub fn count_undecodable(&self) {
        self.undecodable.inc();
    }

    /// A connect refused by enforce mode.
    pub fn count_denied(&self) {
        self.denied.inc();
    }

    pub fn job_started(&self) {
        self.jobs_active.inc();
    }

    /// A job's trace was sealed (or abandoned): it is no longer active.
    pub fn job_finished(&self) {
        // Never below zero: an unmatched finish must not hide the next start.
        // Err only means it was already zero.
        let _ = self
            .jobs_active
            .inner()
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n > 0).then(|| n - 1)
            });
        self.jobs_completed.inc();
    }

    pub fn output_error(&self, why: OutputFailure) {
        self.output_errors[why as usize].inc();
        self.set_output_ok(false);
    }

    /// Whether the last write to the output succeeded.
    pub fn set_output_ok(&self, ok: bool) {
        self.output_ok.set(i64::from(ok));
    }

    /// Sealed traces still waiting to reach the object store.
    pub fn set_pending_uploads(&self, n: u64) {
        self.pending_uploads.set(n);
    }

    /// Whether the Kubernetes API answered the last list or watch.
    pub fn set_kube_api_up(&self, up: bool) {
        self.kube_api.set(i64::from(up));
    }

    /// Records what a hook attached (or that it did not).
    pub fn set_hook(&self, hook: &str, implementation: &str, attached: bool) {
        lock(&self.hooks.0).insert(
            hook.to_string(),
            HookState {
                implementation: implementation.to_string(),
                attached,
            },
        );
    }

    pub fn set_ready(&self) {
        self.ready.set(1);
    }

    pub fn set_not_ready(&self, reason: &str) {
        *lock(&self.not_ready) = reason.to_string();
        self.ready.set(0);
    }

    fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }

    /// Called by the pipeline each time it drains the ring; `/healthz`
    /// fails when this stops.
    pub fn heartbeat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn stalled_for(&self) -> Option<Duration> {
        match self.heartbeat_ms.load(Ordering::Relaxed) {
            0 => None,
            last => Some(Duration::from_millis(now_ms().saturating_sub(last))),
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            // Not expected: writing to a String cannot fail and no metric
            // here fails on its own. Serve what was written and say so.
            tracing::error!(error = %e, "encoding /metrics failed");
        }
        out
    }
}

/// One series per label value, in a fixed order. A `Family` would keep them
/// in a `HashMap` behind a lock: random order, and a lock on the hot path.
#[derive(Debug)]
struct ByLabel<M> {
    key: &'static str,
    series: Vec<(&'static str, M)>,
}

impl<M> ByLabel<M> {
    fn new(key: &'static str, series: Vec<(&'static str, M)>) -> Self {
        Self { key, series }
    }
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for ByLabel<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (value, metric) in &self.series {
            metric.encode(encoder.encode_family(&[(self.key, *value)])?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// A counter whose value is the sum of others at scrape time.
#[derive(Debug)]
struct SumOf<const N: usize>([Counter; N]);

impl<const N: usize> EncodeMetric for SumOf<N> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        ConstCounter::new(self.0.iter().map(Counter::get).sum::<u64>()).encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A gauge left out of the exposition while negative (unknown), as
/// `ciwatch_kube_api_up` is off Kubernetes.
#[derive(Debug)]
struct KnownGauge(Gauge);

impl EncodeMetric for KnownGauge {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }

    fn is_empty(&self) -> bool {
        self.0.get() < 0
    }
}

/// `ciwatch_hook_attached{hook,implementation}`, sorted by hook. Keyed by
/// hook alone, so re-attaching with another implementation replaces the
/// series (a `Family` keyed by both labels would keep the stale one).
#[derive(Debug, Default, Clone)]
struct Hooks(Arc<Mutex<BTreeMap<String, HookState>>>);

impl EncodeMetric for Hooks {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (hook, state) in lock(&self.0).iter() {
            let labels = [
                ("hook", hook.as_str()),
                ("implementation", state.implementation.as_str()),
            ];
            ConstGauge::new(i64::from(state.attached)).encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take the health endpoint down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The `[health]` section of the config file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Address of the endpoint; absent turns it off. On Kubernetes the pod
    /// listens on 0.0.0.0 so the kubelet's probes reach it.
    pub listen: Option<SocketAddr>,
    /// `/healthz` fails once the pipeline heartbeat is older than this.
    pub stall_after_secs: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            stall_after_secs: 30,
        }
    }
}

impl HealthConfig {
    pub fn options(&self) -> HealthOptions {
        HealthOptions {
            stall_after: Duration::from_secs(self.stall_after_secs.max(1)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HealthOptions {
    /// `/healthz` fails once the pipeline's heartbeat is older than this.
    pub stall_after: Duration,
}

impl Default for HealthOptions {
    fn default() -> Self {
        Self {
            stall_after: Duration::from_secs(30),
        }
    }
}

/// A running endpoint; dropping it does not stop it, [`HealthServer::shutdown`] does.
pub struct HealthServer {
    pub local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HealthServer {
    /// Binds `addr` (port 0 picks a free port) and serves in a background task.
    pub async fn start(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        options: HealthOptions,
    ) -> Result<Self, HealthError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HealthError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| HealthError::Bind { addr, source })?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stopped.changed() => return,
                };
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "health endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let metrics = metrics.clone();
                let options = options.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let reply = respond(&req, &metrics, &options);
                        async move { Ok::<_, Infallible>(reply) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "health endpoint: connection ended with an error");
                    }
                });
            }
        });
        Ok(Self {
            local_addr,
            stop,
            task,
        })
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    options: &HealthOptions,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".into(),
        );
    }
    let stalled = metrics.stalled_for().filter(|d| *d > options.stall_after);
    match req.uri().path() {
        "/healthz" => match stalled {
            Some(d) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("stalled: no pipeline heartbeat for {} s\n", d.as_secs()),
            ),
            None => reply(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        },
        "/readyz" => {
            if let Some(d) = stalled {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!("not ready: no pipeline heartbeat for {} s\n", d.as_secs()),
                )
            } else if metrics.is_ready() {
                reply(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    "ready\n".into(),
                )
            } else {
                let why = lock(&metrics.not_ready).clone();
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!("not ready: {why}\n"),
                )
            }
        }
        "/metrics" => reply(
            StatusCode::OK,
            prometheus_text::CONTENT_TYPE,
            metrics.render(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A raw HTTP/1.1 request over loopback, so the test client shares no code with the server.
    async fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8(buf).unwrap();
        let status = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    async fn server(options: HealthOptions) -> (Arc<Metrics>, HealthServer) {
        let metrics = Metrics::new();
        let server = HealthServer::start("127.0.0.1:0".parse().unwrap(), metrics.clone(), options)
            .await
            .unwrap();
        (metrics, server)
    }

    /// The sections this module and its siblings own in the shipped example
    /// config parse with their structs.
    #[test]
    fn shipped_config_sections_parse() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd/config.toml");
        let table: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let health: HealthConfig = table["health"].clone().try_into().unwrap();
        assert_eq!(health.listen, Some("127.0.0.1:9090".parse().unwrap()));
        let output: crate::store::OutputConfig = table["output"].clone().try_into().unwrap();
        assert_eq!(
            output.dir.as_deref(),
            Some(std::path::Path::new("/var/lib/ciwatch/traces"))
        );
        assert_eq!(
            HealthConfig::default().options().stall_after,
            Duration::from_secs(30)
        );
    }

    #[tokio::test]
    async fn readiness_follows_the_daemon() {
        let (metrics, server) = server(HealthOptions::default()).await;
        let addr = server.local_addr;
        assert_eq!(get(addr, "GET", "/healthz").await.0, 200);
        let (code, body) = get(addr, "GET", "/readyz").await;
        assert_eq!((code, body.as_str()), (503, "not ready: starting\n"));
        metrics.set_not_ready("attaching hooks");
        assert!(get(addr, "GET", "/readyz")
            .await
            .1
            .contains("attaching hooks"));
        metrics.set_ready();
        assert_eq!(
            get(addr, "GET", "/readyz").await,
            (200, "ready\n".to_string())
        );
        assert_eq!(get(addr, "GET", "/nope").await.0, 404);
        assert_eq!(get(addr, "POST", "/healthz").await.0, 405);
        server.shutdown().await;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still listening after shutdown"
        );
    }

    #[tokio::test]
    async fn a_stalled_pipeline_fails_liveness() {
        let (metrics, server) = server(HealthOptions {
            stall_after: Duration::from_millis(50),
        })
        .await;
        metrics.set_ready();
        metrics.heartbeat();
        assert_eq!(get(server.local_addr, "GET", "/healthz").await.0, 200);
        tokio::time::sleep(Duration::from_millis(120)).await;
        let (code, body) = get(server.local_addr, "GET", "/healthz").await;
        assert_eq!(code, 503, "{body}");
        assert_eq!(get(server.local_addr, "GET", "/readyz").await.0, 503);
        metrics.heartbeat();
        assert_eq!(get(server.local_addr, "GET", "/healthz").await.0, 200);
        server.shutdown().await;
    }

    /// One metric family of a parsed exposition.
    #[derive(Debug)]
    struct Family {
        name: String,
        kind: String,
        help: String,
        samples: Vec<(Vec<(String, String)>, f64)>,
    }

    /// Parses a text exposition (0.0.4) strictly: every family is `# HELP`
    /// then `# TYPE`, declared once; every sample line belongs to the family
    /// declared just before it (counters and gauges have no suffixed
    /// samples), has well-formed, escaped labels, a number and no timestamp;
    /// no series repeats; nothing else (blank lines, `# EOF`) appears.
    fn parse_exposition(body: &str) -> Vec<Family> {
        fn is_name(s: &str) -> bool {
            let mut chars = s.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        }
        assert!(body.ends_with('\n'), "no final newline");
        let mut families: Vec<Family> = Vec::new();
        let mut lines = body.lines();
        while let Some(line) = lines.next() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect(line);
                assert!(is_name(name), "bad name in {line:?}");
                let ty = lines.next().expect("HELP without TYPE");
                let kind = ty
                    .strip_prefix(&format!("# TYPE {name} "))
                    .unwrap_or_else(|| panic!("{ty:?} does not follow HELP of {name}"));
                assert!(
                    matches!(kind, "counter" | "gauge"),
                    "type {kind:?} of {name}"
                );
                assert!(
                    families.iter().all(|f| f.name != name),
                    "{name} declared twice"
                );
                families.push(Family {
                    name: name.to_string(),
                    kind: kind.to_string(),
                    help: help.to_string(),
                    samples: Vec::new(),
                });
                continue;
            }
            assert!(!line.starts_with('#'), "stray comment {line:?}");
            let family = families
                .last_mut()
                .unwrap_or_else(|| panic!("sample before any family: {line:?}"));
            let rest = line
                .strip_prefix(family.name.as_str())
                .unwrap_or_else(|| panic!("{line:?} is not in family {}", family.name));
            let mut labels = Vec::new();
            let mut chars = rest.chars().peekable();
            if chars.peek() == Some(&'{') {
                chars.next();
                loop {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert!(is_name(&key), "bad label name {key:?} in {line:?}");
                    assert_eq!(chars.next(), Some('"'), "unquoted value in {line:?}");
                    let mut value = String::new();
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some('\\') => match chars.next() {
                                Some('\\') => value.push('\\'),
                                Some('"') => value.push('"'),
                                Some('n') => value.push('\n'),
                                c => panic!("bad escape {c:?} in {line:?}"),
                            },
                            Some(c) => value.push(c),
                            None => panic!("unterminated value in {line:?}"),
                        }
                    }
                    assert!(
                        labels.iter().all(|(k, _): &(String, String)| *k != key),
                        "label {key} twice in {line:?}"
                    );
                    labels.push((key, value));
                    match chars.next() {
                        Some(',') => continue,
                        Some('}') => break,
                        c => panic!("{c:?} after a label in {line:?}"),
                    }
                }
            }
            assert_eq!(
                chars.next(),
                Some(' '),
                "no space before the value: {line:?}"
            );
            let value: String = chars.collect();
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value (or a timestamp) in {line:?}"));
            if family.kind == "counter" {
                assert!(value >= 0.0, "negative counter {line:?}");
            }
            assert!(
                family.samples.iter().all(|(l, _)| *l != labels),
                "series repeated: {line:?}"
            );
            family.samples.push((labels, value));
        }
        families
    }

    fn family<'a>(families: &'a [Family], name: &str) -> &'a Family {
        families
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no family {name}"))
    }

    /// `name{labels}` → value, for the lines a test expects.
    fn series(families: &[Family]) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for f in families {
            for (labels, value) in &f.samples {
                let labels: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                let key = match labels.is_empty() {
                    true => f.name.clone(),
                    false => format!("{}{{{}}}", f.name, labels.join(",")),
                };
                out.insert(key, *value);
            }
        }
        out
    }

    /// The families dashboards rely on, with their type, in exposition order.
    const FAMILIES: [(&str, &str); 13] = [
        ("ciwatch_events_total", "counter"),
        ("ciwatch_lost_total", "counter"),
        ("ciwatch_lost_all_total", "counter"),
        ("ciwatch_undecodable_total", "counter"),
        ("ciwatch_denied_total", "counter"),
        ("ciwatch_jobs_active", "gauge"),
        ("ciwatch_jobs_completed_total", "counter"),
        ("ciwatch_output_errors_total", "counter"),
        ("ciwatch_output_ok", "gauge"),
        ("ciwatch_uploads_pending", "gauge"),
        ("ciwatch_kube_api_up", "gauge"),
        ("ciwatch_hook_attached", "gauge"),
        ("ciwatch_ready", "gauge"),
    ];

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let (metrics, server) = server(HealthOptions::default()).await;
        for _ in 0..3 {
            metrics.count_event(Kind::Exec);
        }
        metrics.count_event(Kind::from_name("dns").unwrap());
        metrics.count_event(Kind::from_name("denied").unwrap());
        metrics.count_event(Kind::from_name("dns_refused").unwrap());
        metrics.count_event(Kind::DnsRefused);
        metrics.set_lost(Kind::Connect, 7);
        metrics.set_lost(Kind::Denied, 2);
        metrics.set_lost(Kind::DnsRefused, 5);
        metrics.set_lost(Kind::DnsRefused, 6);
        metrics.count_denied();
        metrics.count_undecodable();
        metrics.set_pending_uploads(4);
        metrics.job_started();
        metrics.job_started();
        metrics.job_finished();
        metrics.output_error(OutputFailure::NoSpace);
        metrics.set_hook("file", "tracepoint/syscalls/sys_enter_openat", true);
        metrics.set_hook("dns", "kprobe", true);
        // Re-attached another way: the series is replaced, not added.
        metrics.set_hook("dns", "uprobe \"libc\"", false);
        metrics.set_hook("exec", "back\\slash\nnewline", true);
        metrics.set_kube_api_up(false);
        let (code, body) = get(server.local_addr, "GET", "/metrics").await;
        assert_eq!(code, 200);
        let families = parse_exposition(&body);
        let declared: Vec<(&str, &str)> = families
            .iter()
            .map(|f| (f.name.as_str(), f.kind.as_str()))
            .collect();
        assert_eq!(declared, FAMILIES, "in\n{body}");
        assert_eq!(
            family(&families, "ciwatch_events_total").help,
            "Events written, by kind."
        );
        // One series per event kind, and one lost series per record kind.
        for (name, kinds) in [
            ("ciwatch_events_total", Kind::events().collect::<Vec<_>>()),
            ("ciwatch_lost_total", Kind::ALL.to_vec()),
        ] {
            let got: Vec<(String, String)> = family(&families, name)
                .samples
                .iter()
                .flat_map(|(labels, _)| labels.clone())
                .collect();
            let expected: Vec<(String, String)> = kinds
                .iter()
                .map(|k| ("kind".to_string(), k.name().to_string()))
                .collect();
            assert_eq!(got, expected, "{name}");
        }
        let got = series(&families);
        for (key, value) in [
            ("ciwatch_events_total{kind=\"exec\"}", 3.0),
            ("ciwatch_events_total{kind=\"fork\"}", 0.0),
            ("ciwatch_events_total{kind=\"dns\"}", 1.0),
            ("ciwatch_events_total{kind=\"denied\"}", 1.0),
            ("ciwatch_events_total{kind=\"dns_refused\"}", 2.0),
            ("ciwatch_lost_total{kind=\"connect\"}", 7.0),
            ("ciwatch_lost_total{kind=\"denied\"}", 2.0),
            ("ciwatch_lost_total{kind=\"dns_refused\"}", 6.0),
            ("ciwatch_lost_all_total", 15.0),
            ("ciwatch_undecodable_total", 1.0),
            ("ciwatch_denied_total", 1.0),
            ("ciwatch_jobs_active", 1.0),
            ("ciwatch_jobs_completed_total", 1.0),
            ("ciwatch_output_errors_total{reason=\"no_space\"}", 1.0),
            ("ciwatch_output_errors_total{reason=\"other\"}", 0.0),
            ("ciwatch_output_ok", 0.0),
            ("ciwatch_uploads_pending", 4.0),
            ("ciwatch_kube_api_up", 0.0),
            ("ciwatch_hook_attached{hook=\"dns\",implementation=\"uprobe \\\"libc\\\"\"}", 0.0),
            ("ciwatch_hook_attached{hook=\"exec\",implementation=\"back\\\\slash\\nnewline\"}", 1.0),
            ("ciwatch_hook_attached{hook=\"file\",implementation=\"tracepoint/syscalls/sys_enter_openat\"}", 1.0),
            ("ciwatch_ready", 0.0),
        ] {
            assert_eq!(got.get(key), Some(&value), "{key} in\n{body}");
        }
        assert_eq!(family(&families, "ciwatch_hook_attached").samples.len(), 3);
        // The escaping on the wire, as Prometheus reads it.
        assert!(
            body.lines().any(|l| l
                == "ciwatch_hook_attached{hook=\"dns\",implementation=\"uprobe \\\"libc\\\"\"} 0"),
            "{body}"
        );
        server.shutdown().await;
    }

    /// Before anything is known: every kind at zero, the output counted as
    /// fine, no Kubernetes gauge, and no hook series yet.
    #[test]
    fn fresh_metrics() {
        let metrics = Metrics::new();
        let body = metrics.render();
        let families = parse_exposition(&body);
        let declared: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        let expected: Vec<&str> = FAMILIES
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| *name != "ciwatch_kube_api_up")
            .collect();
        assert_eq!(declared, expected, "in\n{body}");
        let got = series(&families);
        for k in Kind::events() {
            assert_eq!(
                got[&format!("ciwatch_events_total{{kind=\"{}\"}}", k.name())],
                0.0
            );
        }
        for k in Kind::ALL {
            assert_eq!(
                got[&format!("ciwatch_lost_total{{kind=\"{}\"}}", k.name())],
                0.0
            );
        }
        assert_eq!(got["ciwatch_output_ok"], 1.0);
        assert!(family(&families, "ciwatch_hook_attached")
            .samples
            .is_empty());
        // An unmatched finish does not drive the gauge below zero.
        metrics.job_finished();
        metrics.job_started();
        assert!(metrics
            .render()
            .lines()
            .any(|l| l == "ciwatch_jobs_active 1"));
        metrics.set_ready();
        assert!(metrics.is_ready());
        metrics.set_not_ready("stopping");
        assert!(!metrics.is_ready());
    }

    /// The check above is only worth its name if it refuses what Prometheus would.
    #[test]
    fn the_strict_parse_refuses_bad_expositions() {
        let head = "# HELP a_total A.\n# TYPE a_total counter\n";
        for bad in [
            "a_total 1\n".to_string(),
            format!("{head}b_total 1\n"),
            format!("{head}a_total{{k=\"v\"}} 1\na_total{{k=\"v\"}} 2\n"),
            format!("{head}a_total{{k=v}} 1\n"),
            format!("{head}a_total{{k=\"a\\qb\"}} 1\n"),
            format!("{head}a_total one\n"),
            format!("{head}a_total 1 1700000000\n"),
            format!("{head}a_total -1\n"),
            format!("{head}# EOF\n"),
            format!("{head}{head}"),
            "# HELP a A.\n# TYPE a summary\n".to_string(),
            format!("{head}\na_total 1\n"),
        ] {
            let parsed = std::panic::catch_unwind(|| parse_exposition(&bad));
            assert!(parsed.is_err(), "accepted {bad:?}");
        }
        assert_eq!(
            parse_exposition(&format!("{head}a_total 1\n"))[0]
                .samples
                .len(),
            1
        );
    }

    #[test]
    fn events_are_counted_for_every_event_kind() {
        let names: Vec<&str> = Kind::events().map(|k| k.name()).collect();
        assert_eq!(
            names,
            [
                "exec",
                "fork",
                "exit",
                "connect",
                "file",
                "dns",
                "denied",
                "dns_refused",
                "socket",
                "socket_denied"
            ]
        );
    }
}
