//! Where learn's traces come from on disk: a directory of sealed trace
//! directories, `.ndjson` logs and downloaded artifact `.zip`s.

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
