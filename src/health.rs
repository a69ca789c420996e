//! The daemon's small HTTP endpoint: `/healthz` (liveness), `/readyz`
//! (readiness) and `/metrics` (Prometheus text format 0.0.4), served from a
//! shared [`Metrics`] of atomics that the pipeline updates without locks on
//! the hot path.
//!
//! hyper 1 with hyper-util's Tokio glue, HTTP/1.1 only: kube already brings
//! hyper in, so this costs no new crates, and no HTTP is parsed by hand.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot listen on {addr} for /healthz, /readyz and /metrics: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Event kinds, in the order of docs/events.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Exec,
    Fork,
    Exit,
    Connect,
    File,
    Dns,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Exec,
        Kind::Fork,
        Kind::Exit,
        Kind::Connect,
        Kind::File,
        Kind::Dns,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Fork => "fork",
            Kind::Exit => "exit",
            Kind::Connect => "connect",
            Kind::File => "file",
            Kind::Dns => "dns",
        }
    }

    /// The kind for an event's `type` field.
    pub fn from_type(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
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

/// Everything `/metrics`, `/healthz` and `/readyz` report. Counters are
/// monotonic; the daemon owns one `Arc<Metrics>` and hands clones around.
#[derive(Debug, Default)]
pub struct Metrics {
    events: [AtomicU64; 6],
    lost: [AtomicU64; 6],
    undecodable: AtomicU64,
    denied: AtomicU64,
    jobs_active: AtomicI64,
    jobs_completed: AtomicU64,
    output_errors: [AtomicU64; 4],
    output_ok: AtomicBool,
    output_ok_set: AtomicBool,
    pending_uploads: AtomicU64,
    /// -1 unknown (not on Kubernetes), 0 down, 1 up.
    kube_api: AtomicI64,
    hooks: Mutex<BTreeMap<String, HookState>>,
    ready: AtomicBool,
    not_ready: Mutex<String>,
    /// Unix milliseconds of the pipeline's last heartbeat; 0 before the first.
    heartbeat_ms: AtomicU64,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let m = Metrics::default();
        m.kube_api.store(-1, Ordering::Relaxed);
        *lock(&m.not_ready) = "starting".to_string();
        Arc::new(m)
    }

    pub fn count_event(&self, kind: Kind) {
        self.events[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the kernel's running total of records it could not queue.
    pub fn set_lost(&self, kind: Kind, total: u64) {
        self.lost[kind as usize].store(total, Ordering::Relaxed);
    }

    pub fn count_undecodable(&self) {
        self.undecodable.fetch_add(1, Ordering::Relaxed);
    }

    /// A connect refused by enforce mode.
    pub fn count_denied(&self) {
        self.denied.fetch_add(1, Ordering::Relaxed);
    }

    pub fn job_started(&self) {
        self.jobs_active.fetch_add(1, Ordering::Relaxed);
    }

    /// A job's trace was sealed (or abandoned): it is no longer active.
    pub fn job_finished(&self) {
        self.jobs_active.fetch_sub(1, Ordering::Relaxed);
        self.jobs_completed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn output_error(&self, why: OutputFailure) {
        let i = OutputFailure::ALL
            .iter()
            .position(|f| *f == why)
            .unwrap_or(3);
        self.output_errors[i].fetch_add(1, Ordering::Relaxed);
        self.set_output_ok(false);
    }

    /// Whether the last write to the output succeeded.
    pub fn set_output_ok(&self, ok: bool) {
        self.output_ok.store(ok, Ordering::Relaxed);
        self.output_ok_set.store(true, Ordering::Relaxed);
    }

    /// Sealed traces still waiting to reach the object store.
    pub fn set_pending_uploads(&self, n: u64) {
        self.pending_uploads.store(n, Ordering::Relaxed);
    }

    /// Whether the Kubernetes API answered the last list or watch.
    pub fn set_kube_api_up(&self, up: bool) {
        self.kube_api.store(i64::from(up), Ordering::Relaxed);
    }

    /// Records what a hook attached (or that it did not).
    pub fn set_hook(&self, hook: &str, implementation: &str, attached: bool) {
        lock(&self.hooks).insert(
            hook.to_string(),
            HookState {
                implementation: implementation.to_string(),
                attached,
            },
        );
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn set_not_ready(&self, reason: &str) {
        *lock(&self.not_ready) = reason.to_string();
        self.ready.store(false, Ordering::Release);
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
        let mut out = String::with_capacity(2048);
        let r = Ordering::Relaxed;
        family(
            &mut out,
            "ciwatch_events_total",
            "counter",
            "Events written, by kind.",
        );
        for k in Kind::ALL {
            let _ = writeln!(
                out,
                "ciwatch_events_total{{kind=\"{}\"}} {}",
                k.name(),
                self.events[k as usize].load(r)
            );
        }
        family(
            &mut out,
            "ciwatch_lost_total",
            "counter",
            "Records the kernel could not queue (ring buffer full), by kind.",
        );
        for k in Kind::ALL {
            let _ = writeln!(
                out,
                "ciwatch_lost_total{{kind=\"{}\"}} {}",
                k.name(),
                self.lost[k as usize].load(r)
            );
        }
        let lost_sum: u64 = self.lost.iter().map(|a| a.load(r)).sum();
        simple(
            &mut out,
            "ciwatch_lost_all_total",
            "counter",
            "Sum of ciwatch_lost_total.",
            lost_sum,
        );
        simple(
            &mut out,
            "ciwatch_undecodable_total",
            "counter",
            "Records that could not be decoded.",
            self.undecodable.load(r),
        );
        simple(
            &mut out,
            "ciwatch_denied_total",
            "counter",
            "Connects refused by enforce mode.",
            self.denied.load(r),
        );
        simple(
            &mut out,
            "ciwatch_jobs_active",
            "gauge",
            "Jobs being recorded now.",
            self.jobs_active.load(r).max(0) as u64,
        );
        simple(
            &mut out,
            "ciwatch_jobs_completed_total",
            "counter",
            "Jobs whose trace was sealed.",
            self.jobs_completed.load(r),
        );
        family(
            &mut out,
            "ciwatch_output_errors_total",
            "counter",
            "Failed writes or uploads of traces, by reason.",
        );
        for f in OutputFailure::ALL {
            let i = OutputFailure::ALL.iter().position(|x| *x == f).unwrap_or(3);
            let _ = writeln!(
                out,
                "ciwatch_output_errors_total{{reason=\"{}\"}} {}",
                f.name(),
                self.output_errors[i].load(r)
            );
        }
        let output_ok = !self.output_ok_set.load(r) || self.output_ok.load(r);
        simple(
            &mut out,
            "ciwatch_output_ok",
            "gauge",
            "1 when the last trace write or upload succeeded.",
            u64::from(output_ok),
        );
        simple(
            &mut out,
            "ciwatch_uploads_pending",
            "gauge",
            "Sealed traces not yet in the object store.",
            self.pending_uploads.load(r),
        );
        let kube = self.kube_api.load(r);
        if kube >= 0 {
            simple(
                &mut out,
                "ciwatch_kube_api_up",
                "gauge",
                "1 when the Kubernetes API answered the last list or watch.",
                kube as u64,
            );
        }
        family(
            &mut out,
            "ciwatch_hook_attached",
            "gauge",
            "1 when the hook is attached, with the implementation in use.",
        );
        for (hook, state) in lock(&self.hooks).iter() {
            let _ = writeln!(
                out,
                "ciwatch_hook_attached{{hook=\"{}\",implementation=\"{}\"}} {}",
                escape(hook),
                escape(&state.implementation),
                u8::from(state.attached)
            );
        }
        simple(
            &mut out,
            "ciwatch_ready",
            "gauge",
            "1 when every hook is attached and the daemon records.",
            u64::from(self.ready.load(Ordering::Acquire)),
        );
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn simple(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not take the health endpoint down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
            } else if metrics.ready.load(Ordering::Acquire) {
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
            "text/plain; version=0.0.4; charset=utf-8",
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

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let (metrics, server) = server(HealthOptions::default()).await;
        for _ in 0..3 {
            metrics.count_event(Kind::Exec);
        }
        metrics.count_event(Kind::from_type("dns").unwrap());
        metrics.set_lost(Kind::Connect, 7);
        metrics.count_denied();
        metrics.job_started();
        metrics.job_started();
        metrics.job_finished();
        metrics.output_error(OutputFailure::NoSpace);
        metrics.set_hook("file", "tracepoint/syscalls/sys_enter_openat", true);
        metrics.set_hook("dns", "uprobe \"libc\"", false);
        metrics.set_kube_api_up(false);
        let (code, body) = get(server.local_addr, "GET", "/metrics").await;
        assert_eq!(code, 200);
        for line in [
            "ciwatch_events_total{kind=\"exec\"} 3",
            "ciwatch_events_total{kind=\"dns\"} 1",
            "ciwatch_lost_total{kind=\"connect\"} 7",
            "ciwatch_lost_all_total 7",
            "ciwatch_denied_total 1",
            "ciwatch_jobs_active 1",
            "ciwatch_jobs_completed_total 1",
            "ciwatch_output_errors_total{reason=\"no_space\"} 1",
            "ciwatch_output_ok 0",
            "ciwatch_kube_api_up 0",
            "ciwatch_hook_attached{hook=\"file\",implementation=\"tracepoint/syscalls/sys_enter_openat\"} 1",
            "ciwatch_hook_attached{hook=\"dns\",implementation=\"uprobe \\\"libc\\\"\"} 0",
            "# TYPE ciwatch_events_total counter",
        ] {
            assert!(body.lines().any(|l| l == line), "missing {line:?} in\n{body}");
        }
        // Every sample line is `name{labels} value` with a numeric value.
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample {line:?}");
        }
        server.shutdown().await;
    }
}
