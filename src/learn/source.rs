//! Where learn's traces come from: a directory of sealed trace directories,
//! `.ndjson` logs and downloaded artifact `.zip`s, or the trace store a
//! fleet's daemons upload to.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::policy::trace::{self, Trace, TraceError};

/// An event log inside an artifact is read up to this size: a zip bomb must
/// not exhaust memory.
pub const MAX_LOG_BYTES: u64 = 1 << 30;
/// Directory levels searched below `--dir`.
const MAX_DEPTH: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Store(#[from] crate::store::OutputError),
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: not a readable zip archive")]
    Zip {
        origin: String,
        source: zip::result::ZipError,
    },
    #[error("{origin}: {entry} is over {limit} bytes uncompressed")]
    TooLarge {
        origin: String,
        entry: String,
        limit: u64,
    },
}

/// Traces read, and inputs passed over (with the reason).
#[derive(Debug, Default)]
pub struct Collected {
    pub traces: Vec<Trace>,
    pub skipped: Vec<String>,
}

impl Collected {
    /// Adds a trace unless the same log (same SHA-256) is already in.
    pub fn push(&mut self, trace: Trace) {
        if self.traces.iter().any(|t| t.sha256 == trace.sha256) {
            self.skipped
                .push(format!("{}: the same log as another input", trace.origin));
        } else {
            self.traces.push(trace);
        }
    }

    fn skip(&mut self, e: &TraceError) {
        self.skipped.push(crate::error::chain(&e));
    }
}

/// The newest `limit` sealed traces of a store (or of the daemon's local
/// trace directory), each downloaded into `scratch` first when remote.
pub async fn from_store(
    source: &crate::store::TraceSource,
    limit: usize,
    scratch: &Path,
) -> Result<Collected, SourceError> {
    let mut out = Collected::default();
    for entry in source.list(limit).await? {
        let dir = match source.fetch(&entry.id, scratch).await {
            Ok(dir) => dir,
            Err(e) => {
                out.skipped.push(crate::error::chain(&e));
                continue;
            }
        };
        match trace::read_path(&dir.join("events.ndjson")) {
            Ok(t) => out.push(t),
            Err(e) => out.skip(&e),
        }
    }
    Ok(out)
}

/// Every sealed log below `dir`: `*.ndjson` files (a trace directory's
/// `events.ndjson` among them) and the logs inside `*.zip` artifacts, in path
/// order. Unsealed or malformed logs are skipped, with the reason.
pub fn from_dir(dir: &Path) -> Result<Collected, SourceError> {
    let mut files = Vec::new();
    walk(dir, 0, &mut files)?;
    files.sort();
    let mut out = Collected::default();
    for file in files {
        let name = file.display().to_string();
        if file.extension().is_some_and(|e| e == "zip") {
            let bytes = std::fs::read(&file).map_err(|source| SourceError::Read {
                path: name.clone(),
                source,
            })?;
            from_zip(&bytes, &name, &mut out)?;
        } else if file.extension().is_some_and(|e| e == "partial") {
            out.skipped.push(format!(
                "{name}: not sealed (the agent was killed; `ciwatch finish` seals it)"
            ));
        } else {
            match trace::read_path(&file) {
                Ok(t) => out.push(t),
                Err(e) => out.skip(&e),
            }
        }
    }
    Ok(out)
}

fn walk(dir: &Path, depth: usize, files: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    let read_err = |source| SourceError::Read {
        path: dir.display().to_string(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        if path.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, files)?;
            }
        } else if is_log(&path) || path.extension().is_some_and(|e| e == "zip") {
            files.push(path);
        }
    }
    Ok(())
}

fn is_log(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.ends_with(".ndjson") || name.ends_with(".ndjson.partial")
}

/// The sealed logs inside an artifact zip (`events.ndjson`, or any `.ndjson`).
pub fn from_zip(bytes: &[u8], origin: &str, out: &mut Collected) -> Result<(), SourceError> {
    let zip_err = |source| SourceError::Zip {
        origin: origin.into(),
        source,
    };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(zip_err)?;
    let mut found = false;
    for i in 0..archive.len() {
        let file = archive.by_index(i).map_err(zip_err)?;
        // A name that is not UTF-8 (or unsafe) is no log of ours.
        let Ok(name) = file.name().map(|n| n.to_string()) else {
            continue;
        };
        if !file.is_file() || !is_log(Path::new(&name)) {
            continue;
        }
        found = true;
        let entry_origin = format!("{origin}!{name}");
        if name.ends_with(".partial") {
            out.skipped.push(format!("{entry_origin}: not sealed"));
            continue;
        }
        // Read at most one byte past the limit to tell "too large" apart.
        let mut limited = file.take(MAX_LOG_BYTES + 1);
        let mut data = Vec::new();
        limited
            .read_to_end(&mut data)
            .map_err(|source| SourceError::Read {
                path: entry_origin.clone(),
                source,
            })?;
        if data.len() as u64 > MAX_LOG_BYTES {
            return Err(SourceError::TooLarge {
                origin: origin.into(),
                entry: name,
                limit: MAX_LOG_BYTES,
            });
        }
        match trace::read(BufReader::new(data.as_slice()), &entry_origin) {
            Ok(t) => out.push(t),
            Err(e) => out.skip(&e),
        }
    }
    if !found {
        out.skipped
            .push(format!("{origin}: no .ndjson event log inside"));
    }
    Ok(())
}

#[cfg(test)]
mod store_tests {
    use super::*;
    use crate::store::{OutputConfig, TraceSource, TraceStore};

    fn fixture_runs() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy/runs")
    }

    /// Learn reads back what the daemons uploaded: the newest N, each checked against its manifest.
    #[tokio::test]
    async fn the_newest_traces_of_a_store_are_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("file://{}", tmp.path().join("store").display());
        let config = OutputConfig {
            url: Some(url),
            ..OutputConfig::default()
        };
        let store = TraceStore::from_config(&config).unwrap().unwrap();
        for run in 1..=5 {
            let local = tmp.path().join("local").join(format!("run-{run}"));
            std::fs::create_dir_all(&local).unwrap();
            std::fs::copy(
                fixture_runs().join(format!("run-{run}/events.ndjson")),
                local.join("events.ndjson"),
            )
            .unwrap();
            store.upload(&local, true).await.unwrap();
        }
        let source = TraceSource::from_config(&config, Path::new("/unused")).unwrap();
        let scratch = tmp.path().join("scratch");
        let got = from_store(&source, 3, &scratch).await.unwrap();
        assert_eq!(got.traces.len(), 3, "skipped: {:?}", got.skipped);
        assert!(got.skipped.is_empty(), "{:?}", got.skipped);
        let all = from_store(&source, 10, &scratch).await.unwrap();
        assert_eq!(all.traces.len(), 5);
    }
}
