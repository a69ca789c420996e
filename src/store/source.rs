//! Listing and reading sealed traces, from the store or a local directory:
//! what `learn` reads.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};

use super::{
    classify_io, sealed_traces, store_error, trace_id, Manifest, OutputConfig, OutputError,
    TraceStore, MANIFEST, SEALED_FILE,
};

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

impl TraceStore {
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
