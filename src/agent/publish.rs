//! What happens to a sealed trace on a host daemon: it is signed, then
//! uploaded, in order. A trace whose signing fails keeps the failure in its
//! summary; a failed upload stays on disk and is retried at the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::attest::{SignMode, SignOptions, ENVELOPE_FILE};
use crate::health::Metrics;
use crate::store::TraceStore;

/// How long a stopping daemon waits for the last traces to be signed and uploaded.
pub const GRACE: Duration = Duration::from_secs(60);

pub struct Publisher {
    pub sign: SignOptions,
    pub store: Option<TraceStore>,
    /// Keep each trace on disk after a successful upload.
    pub keep_local: bool,
    pub metrics: Arc<Metrics>,
}

impl Publisher {
    /// Starts the worker; it first takes the traces a previous run left
    /// unsigned or not uploaded under `root`, then each directory sent to it.
    pub fn spawn(self, root: &Path) -> (mpsc::UnboundedSender<PathBuf>, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
        for dir in unfinished(root, self.store.is_some()) {
            let _ = tx.send(dir);
        }
        let root = root.to_path_buf();
        self.count_pending(&root);
        let worker = tokio::spawn(async move {
            while let Some(dir) = rx.recv().await {
                self.publish(&dir).await;
                self.count_pending(&root);
            }
        });
        (tx, worker)
    }

    /// Sealed traces on disk that are not in the store yet: queued, or failed and kept.
    fn count_pending(&self, root: &Path) {
        if self.store.is_some() {
            let pending = crate::store::pending_uploads(root).unwrap_or_default();
            self.metrics.set_pending_uploads(pending.len() as u64);
        }
    }

    async fn publish(&self, dir: &Path) {
        if !dir.join(ENVELOPE_FILE).exists() {
            sign_sealed(dir, &self.sign).await;
        }
        let Some(store) = &self.store else { return };
        match store.upload(dir, self.keep_local).await {
            Ok(_) => self.metrics.set_output_ok(true),
            Err(e) => {
                tracing::error!(
                    "upload of {} failed (kept on disk): {}",
                    dir.display(),
                    crate::error::chain(&e)
                );
                self.metrics.output_error(e.failure());
            }
        }
    }
}

/// Sealed traces a previous run left unsigned (or, with a store, not uploaded).
fn unfinished(root: &Path, uploading: bool) -> Vec<PathBuf> {
    let mut dirs = if uploading {
        crate::store::pending_uploads(root).unwrap_or_default()
    } else {
        Vec::new()
    };
    let sealed = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    for dir in sealed {
        let signed = dir.join(ENVELOPE_FILE).exists();
        if !signed && dir.join("events.ndjson").exists() && !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// Signs one sealed trace and adds the outcome to its summary.
async fn sign_sealed(dir: &Path, sign: &SignOptions) {
    if sign.mode == SignMode::None {
        return;
    }
    let signed = crate::attest::sign_trace(dir, sign).await;
    match &signed {
        Ok(_) => tracing::info!("signed {}", dir.display()),
        Err(e) => tracing::error!(
            "signing {} failed: {}",
            dir.display(),
            crate::error::chain(e)
        ),
    }
    let summary = dir.join("summary.md");
    let text = std::fs::read_to_string(&summary).unwrap_or_default()
        + &crate::attest::summary_markdown(&signed, dir);
    if let Err(e) = crate::sink::write_atomically(&summary, text.as_bytes()) {
        tracing::error!(
            "cannot add the signing result to {}: {}",
            summary.display(),
            crate::error::chain(&e)
        );
    }
}
