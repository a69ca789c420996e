//! Where sealed traces go so that `ciwatch learn` can read N jobs across a
//! fleet: a local directory (the default) and, when `output.url` is set, an
//! object store (S3-compatible, GCS, Azure Blob, or `file://`) through the
//! `object_store` crate. The daemon writes through this module and `learn`
//! reads through it, so both see one layout.
//!
//! An uploaded trace is `<prefix>/<trace id>/<file>` for every file of the
//! sealed directory, then `<prefix>/<trace id>/ciwatch-manifest.json` with
//! each file's size and SHA-256. The manifest goes last, so a reader that
//! only lists traces with a manifest never sees a half-uploaded one, and
//! every fetched file is checked against it.
//!
//! By job: [`config`] builds the client from `[output]`, [`upload`] sends
//! sealed traces up, [`source`] lists and fetches them for `learn`, and
//! [`http`] is the HTTP stack the cloud clients use.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

use crate::health::OutputFailure;

pub mod config;
pub mod http;
pub mod source;
pub mod upload;

#[cfg(test)]
mod tests;

pub use config::OutputConfig;
pub use http::HyperConnector;
pub use source::{TraceEntry, TraceSource};
pub use upload::pending_uploads;

/// Where the daemon keeps traces when its configuration names no directory:
/// below systemd's `StateDirectory=`, else /var/lib/ciwatch.
pub fn default_trace_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY").map_or_else(
        || PathBuf::from("/var/lib/ciwatch/traces"),
        |d| PathBuf::from(d).join("traces"),
    )
}

/// The manifest that marks an uploaded trace complete.
pub const MANIFEST: &str = "ciwatch-manifest.json";
/// Left in a local trace directory once it is in the object store.
pub const UPLOADED_MARK: &str = ".uploaded";
const SEALED_FILE: &str = "events.ndjson";

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("the output volume is full writing {path}; free space there (the trace is kept and retried)")]
    NoSpace {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}; check the output directory's permissions and that it is not read-only")]
    Unwritable {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
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
    #[error("object store {url}")]
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

/// Traces in an object store under a prefix.
pub struct TraceStore {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    url: String,
}

impl TraceStore {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: StorePath, url: String) -> Self {
        Self { store, prefix, url }
    }

    fn key(&self, id: &str, name: &str) -> StorePath {
        self.prefix.clone().join(id).join(name)
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

/// A sealed directory's name, which is its trace id in the store.
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
