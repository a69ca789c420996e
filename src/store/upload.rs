//! Sealed trace directories up into the store, and the scan for those not
//! yet there.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use object_store::buffered::BufWriter;
use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    classify_io, sealed_traces, store_error, trace_id, Manifest, ManifestFile, OutputError,
    TraceStore, MANIFEST, UPLOADED_MARK,
};

impl TraceStore {
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
}

/// Sealed traces not yet uploaded: what the daemon retries after an outage.
pub fn pending_uploads(root: &Path) -> Result<Vec<PathBuf>, OutputError> {
    Ok(sealed_traces(root)?
        .into_iter()
        .filter(|p| !p.join(UPLOADED_MARK).exists())
        .collect())
}
