//! Where sealed traces go so that `ciwatch learn` can read N jobs across a
//! fleet: a local directory (the default) and, when `output.url` is set, an
//! object store (S3-compatible, GCS, Azure Blob, or `file://`) through the
//! `object_store` crate.
//!
//! An uploaded trace is `<prefix>/<trace id>/<file>` for every file of the
//! sealed directory, then `<prefix>/<trace id>/ciwatch-manifest.json` with
//! each file's size and SHA-256. The manifest goes last, so a reader that
//! only lists traces with a manifest never sees a half-uploaded one, and
//! every fetched file is checked against it.
//!
//! object_store's own HTTP stack (reqwest) would bring aws-lc-sys and a second
//! TLS provider; its `*-base` features take a connector instead, and
//! [`HyperConnector`] is one over hyper-util + hyper-rustls (ring, the
//! system's CA roots), the stack kube already uses.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::BodyExt;
use object_store::buffered::BufWriter;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody,
    HttpResponse, HttpResponseBody, HttpService,
};
use object_store::path::Path as StorePath;
use object_store::{
    ClientConfigKey, ClientOptions, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::health::OutputFailure;

/// The manifest that marks an uploaded trace complete.
pub const MANIFEST: &str = "ciwatch-manifest.json";
/// Left in a local trace directory once it is in the object store.
pub const UPLOADED_MARK: &str = ".uploaded";
const SEALED_FILE: &str = "events.ndjson";

/// The `[output]` section of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Local directory of sealed trace directories. Under systemd the unit's
    /// `StateDirectory=` gives `$STATE_DIRECTORY`; `traces/` below it is the default.
    pub dir: Option<PathBuf>,
    /// Object store for the fleet: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`, or `file:///shared/dir`.
    pub url: Option<String>,
    /// Builder options of that store (`aws_endpoint`, `aws_region`,
    /// `aws_allow_http`, `google_service_account`, `azure_storage_account_name`,
    /// …). Credentials are better left to the environment (`AWS_*`,
    /// `GOOGLE_*`, `AZURE_*`), which is read too.
    pub options: BTreeMap<String, String>,
    /// Keep the local copy once uploaded.
    pub keep_local: bool,
    /// Retries of a failed request (object_store's default: 10).
    pub max_retries: Option<usize>,
    /// Give up retrying a request after this long (default 3 min), e.g. "30s".
    pub retry_timeout: Option<String>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            dir: None,
            url: None,
            options: BTreeMap::new(),
            keep_local: true,
            max_retries: None,
            retry_timeout: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("the output volume is full writing {path}; free space there (the trace is kept and retried): {source}")]
    NoSpace {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}; check the output directory's permissions and that it is not read-only")]
    Unwritable {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("output.url = {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("output.options: {key:?} is not an option of {store}")]
    BadOption { store: &'static str, key: String },
    #[error("{path} is not a sealed trace (it has no {SEALED_FILE})")]
    NotSealed { path: String },
    #[error("trace {id} in the object store is incomplete or damaged: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("object store {url}: {source}")]
    Store {
        url: String,
        source: object_store::Error,
    },
}

impl OutputError {
    /// The `/metrics` reason this error counts under.
    pub fn failure(&self) -> OutputFailure {
        match self {
            OutputError::NoSpace { .. } => OutputFailure::NoSpace,
            OutputError::Unwritable { .. } => OutputFailure::Unwritable,
            OutputError::Store { .. } | OutputError::Corrupt { .. } => OutputFailure::Upload,
            _ => OutputFailure::Other,
        }
    }
}

/// Sorts an I/O error on `path` into full, unwritable or other.
pub fn classify_io(path: &Path, source: std::io::Error) -> OutputError {
    let path = path.display().to_string();
    match source.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => OutputError::NoSpace { path, source },
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => OutputError::Unwritable { path, source },
        _ if source.kind() == ErrorKind::PermissionDenied => {
            OutputError::Unwritable { path, source }
        }
        _ => OutputError::Read { path, source },
    }
}

/// A store error whose cause is a local full or read-only disk (the
/// `file://` store) becomes the same error a local write gives.
fn store_error(url: &str, path: &Path, source: object_store::Error) -> OutputError {
    match disk_errno(&source) {
        Some(code) => classify_io(path, std::io::Error::from_raw_os_error(code)),
        None => OutputError::Store {
            url: url.to_string(),
            source,
        },
    }
}

/// ENOSPC, EDQUOT, EACCES, EPERM or EROFS anywhere in an error's causes,
/// including errors wrapped inside an `io::Error` (whose `source()` skips
/// the wrapped error itself).
fn disk_errno(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    if let Some(io) = error.downcast_ref::<std::io::Error>() {
        if let Some(
            code @ (libc::ENOSPC | libc::EDQUOT | libc::EACCES | libc::EPERM | libc::EROFS),
        ) = io.raw_os_error()
        {
            return Some(code);
        }
        if let Some(found) = io.get_ref().and_then(|inner| disk_errno(inner)) {
            return Some(found);
        }
    }
    error.source().and_then(disk_errno)
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub schema: String,
    pub id: String,
    pub uploaded_at: String,
    pub files: Vec<ManifestFile>,
}

/// One trace a reader can fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEntry {
    pub id: String,
    /// Seconds since the epoch: when it was sealed (local) or uploaded (store).
    pub modified_unix: i64,
}

/// The `limit` newest entries, newest first (ties by id, so the order is stable).
fn newest_first(mut found: Vec<TraceEntry>, limit: usize) -> Vec<TraceEntry> {
    found.sort_by(|a, b| {
        b.modified_unix
            .cmp(&a.modified_unix)
            .then_with(|| b.id.cmp(&a.id))
    });
    found.truncate(limit);
    found
}

/// Traces in an object store under a prefix.
pub struct TraceStore {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    url: String,
}

impl TraceStore {
    /// The store `output.url` names, or `None` when it is not set.
    pub fn from_config(config: &OutputConfig) -> Result<Option<Self>, OutputError> {
        let Some(url) = config.url.as_deref() else {
            return Ok(None);
        };
        let bad = |reason: String| OutputError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| bad(e.to_string()))?;
        let opts = &config.options;
        let mut retry = object_store::RetryConfig::default();
        if let Some(n) = config.max_retries {
            retry.max_retries = n;
        }
        if let Some(t) = &config.retry_timeout {
            retry.retry_timeout =
                humantime::parse_duration(t).map_err(|e| OutputError::BadOption {
                    store: "output",
                    key: format!("retry_timeout = {t:?} ({e})"),
                })?;
        }
        // The three cloud builders share no trait, but take the same steps.
        macro_rules! cloud_store {
            ($builder:path, $name:literal) => {{
                let mut b = <$builder>::from_env().with_url(url);
                for (k, v) in opts {
                    let key = k.parse().map_err(|_| OutputError::BadOption {
                        store: $name,
                        key: k.clone(),
                    })?;
                    b = b.with_config(key, v);
                }
                Arc::new(
                    b.with_retry(retry.clone())
                        .with_http_connector(HyperConnector)
                        .build()
                        .map_err(|e| bad(e.to_string()))?,
                )
            }};
        }
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::AmazonS3 => {
                cloud_store!(object_store::aws::AmazonS3Builder, "s3")
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                cloud_store!(object_store::gcp::GoogleCloudStorageBuilder, "gcs")
            }
            ObjectStoreScheme::MicrosoftAzure => {
                cloud_store!(object_store::azure::MicrosoftAzureBuilder, "azure")
            }
            ObjectStoreScheme::Local => {
                if let Some(k) = opts.keys().next() {
                    return Err(OutputError::BadOption {
                        store: "file",
                        key: k.clone(),
                    });
                }
                let dir = PathBuf::from(parsed.path());
                std::fs::create_dir_all(&dir).map_err(|e| classify_io(&dir, e))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| bad(e.to_string()))?;
                return Ok(Some(Self::new(
                    Arc::new(fs),
                    StorePath::default(),
                    url.to_string(),
                )));
            }
            other => {
                return Err(bad(format!(
                    "{other:?} is not a supported trace store; use s3://, gs://, az:// or file://"
                )))
            }
        };
        Ok(Some(Self::new(store, prefix, url.to_string())))
    }

    pub fn new(store: Arc<dyn ObjectStore>, prefix: StorePath, url: String) -> Self {
        Self { store, prefix, url }
    }

    fn key(&self, id: &str, name: &str) -> StorePath {
        self.prefix.clone().join(id).join(name)
    }

    /// Uploads a sealed trace directory, manifest last; marks it uploaded
    /// locally, and removes it when `keep_local` is false. On error the local
    /// copy is untouched, so the upload can be retried.
    pub async fn upload(&self, dir: &Path, keep_local: bool) -> Result<Manifest, OutputError> {
        let id = trace_id(dir)?;
        let mut names = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| classify_io(dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| classify_io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Unsealed leftovers and local marks stay local.
            if name.starts_with('.') || name.ends_with(".partial") || name == MANIFEST {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                names.push(name);
            }
        }
        names.sort();
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let path = dir.join(&name);
            let (bytes, sha256) = self.put_file(&path, &self.key(&id, &name)).await?;
            files.push(ManifestFile {
                name,
                bytes,
                sha256,
            });
        }
        let manifest = Manifest {
            schema: "ciwatch.trace-manifest/v1".into(),
            id: id.clone(),
            uploaded_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            files,
        };
        let body = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
        let key = self.key(&id, MANIFEST);
        self.store
            .put(&key, PutPayload::from(body))
            .await
            .map_err(|e| store_error(&self.url, dir, e))?;
        tracing::info!(trace = %id, url = %self.url, files = manifest.files.len(), "trace uploaded");
        if keep_local {
            let mark = dir.join(UPLOADED_MARK);
            std::fs::write(&mark, format!("{}\n", self.url)).map_err(|e| classify_io(&mark, e))?;
        } else {
            std::fs::remove_dir_all(dir).map_err(|e| classify_io(dir, e))?;
        }
        Ok(manifest)
    }

    /// Streams a file up (multipart above the buffer size), hashing it on the way.
    async fn put_file(&self, path: &Path, key: &StorePath) -> Result<(u64, String), OutputError> {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| classify_io(path, e))?;
        let mut writer = BufWriter::with_capacity(self.store.clone(), key.clone(), 8 << 20);
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .await
                .map_err(|e| classify_io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
            if let Err(e) = writer.put(Bytes::copy_from_slice(&buf[..n])).await {
                let _ = writer.abort().await;
                return Err(store_error(&self.url, path, e));
            }
        }
        if let Err(e) = writer.shutdown().await {
            // BufWriter reports store errors through io::Error. (It cannot be
            // aborted after shutdown; S3 expires abandoned multipart parts by
            // lifecycle rule.)
            return Err(match e.raw_os_error() {
                Some(_) => classify_io(path, e),
                None => store_error(
                    &self.url,
                    path,
                    object_store::Error::Generic {
                        store: "upload",
                        source: Box::new(e),
                    },
                ),
            });
        }
        Ok((total, hex::encode(hasher.finalize())))
    }

    /// Up to `limit` complete traces, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<TraceEntry>, OutputError> {
        let mut stream = self.store.list(Some(&self.prefix));
        let mut found = Vec::new();
        let here = Path::new(".");
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| store_error(&self.url, here, e))?;
            if meta.location.filename() != Some(MANIFEST) {
                continue;
            }
            let parts: Vec<_> = meta.location.parts().collect();
            if parts.len() < 2 {
                continue;
            }
            let id = parts[parts.len() - 2].as_ref().to_string();
            found.push(TraceEntry {
                id,
                modified_unix: meta.last_modified.timestamp(),
            });
        }
        Ok(newest_first(found, limit))
    }

    /// Downloads trace `id` into `dest/<id>/`, checking every file against
    /// the manifest; returns that directory.
    pub async fn fetch(&self, id: &str, dest: &Path) -> Result<PathBuf, OutputError> {
        let corrupt = |reason: String| OutputError::Corrupt {
            id: id.to_string(),
            reason,
        };
        let raw = self.get_bytes(&self.key(id, MANIFEST), dest).await?;
        let manifest: Manifest =
            serde_json::from_slice(&raw).map_err(|e| corrupt(format!("manifest: {e}")))?;
        let dir = dest.join(id);
        std::fs::create_dir_all(&dir).map_err(|e| classify_io(&dir, e))?;
        for file in &manifest.files {
            if file.name.contains('/') || file.name.starts_with('.') {
                return Err(corrupt(format!("bad file name {:?}", file.name)));
            }
            let data = self.get_bytes(&self.key(id, &file.name), dest).await?;
            let sha = hex::encode(Sha256::digest(&data));
            if data.len() as u64 != file.bytes || sha != file.sha256 {
                return Err(corrupt(format!(
                    "{} does not match its manifest entry",
                    file.name
                )));
            }
            let target = dir.join(&file.name);
            let partial = dir.join(format!("{}.partial", file.name));
            tokio::fs::write(&partial, &data)
                .await
                .map_err(|e| classify_io(&partial, e))?;
            tokio::fs::rename(&partial, &target)
                .await
                .map_err(|e| classify_io(&target, e))?;
        }
        Ok(dir)
    }

    async fn get_bytes(&self, key: &StorePath, dest: &Path) -> Result<Bytes, OutputError> {
        let got = self
            .store
            .get(key)
            .await
            .map_err(|e| store_error(&self.url, dest, e))?;
        got.bytes()
            .await
            .map_err(|e| store_error(&self.url, dest, e))
    }
}

/// Where `learn` reads traces from: the same sink the daemon writes.
pub enum TraceSource {
    Dir(PathBuf),
    Store(TraceStore),
}

impl TraceSource {
    /// The object store when `output.url` is set, else the local directory.
    pub fn from_config(config: &OutputConfig, default_dir: &Path) -> Result<Self, OutputError> {
        Ok(match TraceStore::from_config(config)? {
            Some(store) => TraceSource::Store(store),
            None => TraceSource::Dir(
                config
                    .dir
                    .clone()
                    .unwrap_or_else(|| default_dir.to_path_buf()),
            ),
        })
    }

    /// Up to `limit` sealed traces, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<TraceEntry>, OutputError> {
        match self {
            TraceSource::Store(s) => s.list(limit).await,
            TraceSource::Dir(dir) => {
                let mut found = Vec::new();
                for path in sealed_traces(dir)? {
                    let modified = std::fs::metadata(path.join(SEALED_FILE))
                        .and_then(|m| m.modified())
                        .ok();
                    let secs = modified
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs() as i64);
                    found.push(TraceEntry {
                        id: trace_id(&path)?,
                        modified_unix: secs,
                    });
                }
                Ok(newest_first(found, limit))
            }
        }
    }

    /// A local directory holding trace `id` (downloaded into `scratch` for a store).
    pub async fn fetch(&self, id: &str, scratch: &Path) -> Result<PathBuf, OutputError> {
        match self {
            TraceSource::Store(s) => s.fetch(id, scratch).await,
            TraceSource::Dir(dir) => {
                let path = dir.join(id);
                if path.join(SEALED_FILE).is_file() {
                    Ok(path)
                } else {
                    Err(OutputError::NotSealed {
                        path: path.display().to_string(),
                    })
                }
            }
        }
    }
}

/// Sealed trace directories directly under `root`.
pub fn sealed_traces(root: &Path) -> Result<Vec<PathBuf>, OutputError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(OutputError::Read {
                path: root.display().to_string(),
                source: e,
            })
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.join(SEALED_FILE).is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Sealed traces not yet uploaded: what the daemon retries after an outage.
pub fn pending_uploads(root: &Path) -> Result<Vec<PathBuf>, OutputError> {
    Ok(sealed_traces(root)?
        .into_iter()
        .filter(|p| !p.join(UPLOADED_MARK).exists())
        .collect())
}

fn trace_id(dir: &Path) -> Result<String, OutputError> {
    if !dir.join(SEALED_FILE).is_file() {
        return Err(OutputError::NotSealed {
            path: dir.display().to_string(),
        });
    }
    dir.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .map(str::to_string)
        .ok_or_else(|| OutputError::NotSealed {
            path: dir.display().to_string(),
        })
}

/// object_store's HTTP through hyper-util + hyper-rustls (ring).
#[derive(Debug, Clone, Copy, Default)]
pub struct HyperConnector;

type HyperClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    HttpRequestBody,
>;

#[derive(Debug)]
struct HyperService {
    client: HyperClient,
    timeout: Duration,
}

impl HttpConnector for HyperConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let generic = |e: String| object_store::Error::Generic {
            store: "http",
            source: e.into(),
        };
        let allow_http = options
            .get_config_value(&ClientConfigKey::AllowHttp)
            .is_some_and(|v| v == "true");
        let timeout = options
            .get_config_value(&ClientConfigKey::Timeout)
            .and_then(|t| humantime::parse_duration(&t).ok())
            .unwrap_or(Duration::from_secs(60));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| generic(format!("TLS setup (system CA roots): {e}")))?;
        // Plain http only where the config allows it (a local S3 endpoint).
        let builder = if allow_http {
            builder.https_or_http()
        } else {
            builder.https_only()
        };
        let connector = builder.enable_http1().build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(HttpClient::new(HyperService { client, timeout }))
    }
}

#[async_trait::async_trait]
impl HttpService for HyperService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let response = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(elapsed) => return Err(HttpError::new(HttpErrorKind::Timeout, elapsed)),
            Ok(Err(e)) => {
                let kind = if e.is_connect() {
                    HttpErrorKind::Connect
                } else {
                    HttpErrorKind::Request
                };
                return Err(HttpError::new(kind, e));
            }
            Ok(Ok(r)) => r,
        };
        let (parts, body) = response.into_parts();
        let body = body.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e));
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed_dir(root: &Path, id: &str, events: &[u8]) -> PathBuf {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(SEALED_FILE), events).unwrap();
        std::fs::write(dir.join("summary.md"), b"| step | execs |\n").unwrap();
        std::fs::write(dir.join("attestation.intoto.jsonl"), b"{}\n").unwrap();
        dir
    }

    fn config(url: &str) -> OutputConfig {
        OutputConfig {
            url: Some(url.to_string()),
            ..OutputConfig::default()
        }
    }

    /// Upload, list, fetch: the same checks against any store.
    async fn roundtrip(store: &TraceStore) {
        let local = tempfile::tempdir().unwrap();
        // Bigger than the 8 MiB buffer, so the multipart path runs too.
        let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
        let a = sealed_dir(
            local.path(),
            "host1-github-111",
            b"{\"type\":\"trace_start\"}\n",
        );
        let b = sealed_dir(local.path(), "host1-github-222", &big);
        std::fs::write(b.join("events.ndjson.partial"), b"never uploaded").unwrap();
        let unsealed = local.path().join("host1-github-333");
        std::fs::create_dir_all(&unsealed).unwrap();
        std::fs::write(unsealed.join("events.ndjson.partial"), b"in flight").unwrap();

        assert_eq!(
            pending_uploads(local.path()).unwrap(),
            vec![a.clone(), b.clone()]
        );
        let m = store.upload(&a, true).await.unwrap();
        assert_eq!(
            m.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["attestation.intoto.jsonl", "events.ndjson", "summary.md"]
        );
        assert_eq!(pending_uploads(local.path()).unwrap(), vec![b.clone()]);
        store.upload(&b, false).await.unwrap();
        assert!(!b.exists(), "keep_local = false removes the local copy");
        assert!(matches!(
            store.upload(&unsealed, true).await,
            Err(OutputError::NotSealed { .. })
        ));

        let listed = store.list(10).await.unwrap();
        let mut ids: Vec<_> = listed.iter().map(|e| e.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["host1-github-111", "host1-github-222"]);
        assert_eq!(store.list(1).await.unwrap().len(), 1);

        let scratch = tempfile::tempdir().unwrap();
        let got = store
            .fetch("host1-github-222", scratch.path())
            .await
            .unwrap();
        assert_eq!(std::fs::read(got.join(SEALED_FILE)).unwrap(), big);
        assert!(!got.join("events.ndjson.partial").exists());
        let got = store
            .fetch("host1-github-111", scratch.path())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(got.join("summary.md")).unwrap(),
            b"| step | execs |\n"
        );
        assert!(store.fetch("nope", scratch.path()).await.is_err());
    }

    #[tokio::test]
    async fn file_store_roundtrip() {
        let remote = tempfile::tempdir().unwrap();
        let url = format!("file://{}", remote.path().join("fleet").display());
        let store = TraceStore::from_config(&config(&url)).unwrap().unwrap();
        roundtrip(&store).await;
        // A damaged object is caught by the manifest.
        std::fs::write(
            remote.path().join("fleet/host1-github-111/summary.md"),
            b"tampered",
        )
        .unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let err = store
            .fetch("host1-github-111", scratch.path())
            .await
            .unwrap_err();
        assert!(matches!(err, OutputError::Corrupt { .. }), "{err}");
    }

    #[tokio::test]
    async fn local_dir_source() {
        let root = tempfile::tempdir().unwrap();
        sealed_dir(root.path(), "job-a", b"x\n");
        std::fs::create_dir_all(root.path().join("job-b")).unwrap();
        let source = TraceSource::from_config(&OutputConfig::default(), root.path()).unwrap();
        let listed = source.list(5).await.unwrap();
        assert_eq!(
            listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["job-a"]
        );
        assert_eq!(
            source
                .fetch("job-a", Path::new("/nonexistent"))
                .await
                .unwrap(),
            root.path().join("job-a")
        );
        assert!(matches!(
            source.fetch("job-b", Path::new("/x")).await,
            Err(OutputError::NotSealed { .. })
        ));
    }

    #[test]
    fn config_errors_are_named() {
        let e = TraceStore::from_config(&config("ftp://x/y"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ftp://x/y"), "{e}");
        let mut c = config("s3://bucket/prefix");
        c.options
            .insert("aws_endpoint_typo".into(), "http://127.0.0.1:1".into());
        let e = TraceStore::from_config(&c).err().unwrap().to_string();
        assert!(e.contains("aws_endpoint_typo") && e.contains("s3"), "{e}");
        let parsed: OutputConfig = toml::from_str("url = \"gs://b/p\"\nkeep_local = false\n[options]\ngoogle_service_account = \"/k.json\"\n").unwrap();
        assert_eq!(parsed.url.as_deref(), Some("gs://b/p"));
        assert!(!parsed.keep_local);
        assert!(toml::from_str::<OutputConfig>("bucket = \"x\"\n").is_err());
    }

    #[test]
    fn io_errors_are_classified() {
        let p = Path::new("/out");
        assert!(matches!(
            classify_io(p, std::io::Error::from_raw_os_error(libc::ENOSPC)),
            OutputError::NoSpace { .. }
        ));
        assert!(matches!(
            classify_io(p, std::io::Error::from_raw_os_error(libc::EROFS)),
            OutputError::Unwritable { .. }
        ));
        let e = classify_io(p, std::io::Error::from_raw_os_error(libc::EDQUOT));
        assert_eq!(e.failure(), OutputFailure::NoSpace);
        assert!(e.to_string().contains("full"), "{e}");
    }

    /// A tmpfs of a few pages mounted under a temp dir; unmounted on drop.
    struct SmallFs(tempfile::TempDir);
    impl SmallFs {
        fn mount(options: &str) -> Option<Self> {
            if unsafe { libc::geteuid() } != 0 {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must run the full-disk test as root"
                );
                eprintln!("skipped: mounting a small tmpfs needs root");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let status = std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    options,
                    "ciwatch-test",
                    dir.path().to_str().unwrap(),
                ])
                .status()
                .unwrap();
            assert!(status.success(), "mount tmpfs");
            Some(Self(dir))
        }
    }
    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    #[tokio::test]
    async fn full_and_read_only_output_volumes() {
        let Some(full) = SmallFs::mount("size=64k") else {
            return;
        };
        let local = tempfile::tempdir().unwrap();
        let trace = sealed_dir(local.path(), "job-full", &vec![b'x'; 512 << 10]);
        let store = TraceStore::from_config(&config(&format!(
            "file://{}",
            full.0.path().join("out").display()
        )))
        .unwrap()
        .unwrap();
        let err = store.upload(&trace, false).await.unwrap_err();
        assert!(matches!(err, OutputError::NoSpace { .. }), "{err:?}");
        assert_eq!(err.failure(), OutputFailure::NoSpace);
        assert!(
            trace.join(SEALED_FILE).is_file(),
            "the trace stays for a retry"
        );
        assert_eq!(pending_uploads(local.path()).unwrap(), vec![trace.clone()]);

        let Some(ro) = SmallFs::mount("size=64k,ro") else {
            return;
        };
        let err = TraceStore::from_config(&config(&format!(
            "file://{}",
            ro.0.path().join("out").display()
        )))
        .err()
        .unwrap();
        assert!(matches!(err, OutputError::Unwritable { .. }), "{err:?}");
        // Fetching into a full scratch volume says so too.
        let ok = TraceStore::from_config(&config(&format!(
            "file://{}",
            local.path().join("store").display()
        )))
        .unwrap()
        .unwrap();
        let big = sealed_dir(local.path(), "job-big", &vec![b'y'; 512 << 10]);
        ok.upload(&big, true).await.unwrap();
        let err = ok
            .fetch("job-big", &full.0.path().join("scratch"))
            .await
            .unwrap_err();
        assert!(matches!(err, OutputError::NoSpace { .. }), "{err:?}");
    }

    /// Against moto's S3 server on loopback, started from the peers venv
    /// (scripts/install-deploy-peers). Skipped when moto is absent, except
    /// under CI, where that fails.
    #[tokio::test]
    async fn s3_roundtrip_against_moto() {
        let Some(moto) = moto::Moto::start() else {
            return;
        };
        let bucket = "ciwatch-traces";
        moto.create_bucket(bucket).await;
        let mut c = config(&format!("s3://{bucket}/fleet/traces"));
        for (k, v) in [
            ("aws_endpoint", moto.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "testing"),
            ("aws_secret_access_key", "testing"),
        ] {
            c.options.insert(k.into(), v.into());
        }
        let store = TraceStore::from_config(&c).unwrap().unwrap();
        roundtrip(&store).await;
        // The same bucket seen through a second client, as learn on another host would.
        let again = TraceSource::from_config(&c, Path::new("/unused")).unwrap();
        assert_eq!(again.list(10).await.unwrap().len(), 2);
        // A store that cannot be reached is a Store error counted as an upload failure.
        let mut down = c.clone();
        down.options
            .insert("aws_endpoint".into(), "http://127.0.0.1:9".into());
        down.max_retries = Some(0);
        down.retry_timeout = Some("1s".into());
        let local = tempfile::tempdir().unwrap();
        let t = sealed_dir(local.path(), "job-x", b"1\n");
        let err = TraceStore::from_config(&down)
            .unwrap()
            .unwrap()
            .upload(&t, false)
            .await
            .unwrap_err();
        assert_eq!(err.failure(), OutputFailure::Upload, "{err}");
        assert!(t.exists());
    }

    mod moto {
        use std::net::TcpListener;
        use std::path::PathBuf;
        use std::process::{Child, Command, Stdio};
        use std::time::{Duration, Instant};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        pub struct Moto {
            child: Child,
            pub endpoint: String,
            port: u16,
        }

        impl Moto {
            pub fn start() -> Option<Self> {
                let bin = std::env::var_os("CIWATCH_MOTO_SERVER")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| {
                        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                            .join(".cache/peers/venv/bin/moto_server")
                    });
                if !bin.is_file() {
                    assert!(
                        std::env::var_os("CI").is_none(),
                        "{} is missing: run scripts/install-deploy-peers",
                        bin.display()
                    );
                    eprintln!(
                        "skipped: {} is missing (scripts/install-deploy-peers installs it)",
                        bin.display()
                    );
                    return None;
                }
                let port = TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                let child = Command::new(&bin)
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start moto_server");
                let deadline = Instant::now() + Duration::from_secs(30);
                while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                    assert!(
                        Instant::now() < deadline,
                        "moto_server did not listen on {port} within 30 s"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                Some(Self {
                    child,
                    endpoint: format!("http://127.0.0.1:{port}"),
                    port,
                })
            }

            /// moto accepts an unsigned CreateBucket.
            pub async fn create_bucket(&self, bucket: &str) {
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .unwrap();
                let req = format!("PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.port);
                s.write_all(req.as_bytes()).await.unwrap();
                let mut reply = Vec::new();
                s.read_to_end(&mut reply).await.unwrap();
                let text = String::from_utf8_lossy(&reply);
                assert!(
                    text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"),
                    "create bucket: {text}"
                );
            }
        }

        impl Drop for Moto {
            fn drop(&mut self) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}
