//! The event log: one JSON object per line, written to `<name>.partial` and
//! renamed into place only when sealed, so a reader never sees a half file.
//! The SHA-256 of the exact bytes is computed as they are written.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::SinkError;

pub const FILE_NAME: &str = "events.ndjson";
/// The live log while a job runs; sealing turns it into FILE_NAME.
pub const LIVE_NAME: &str = "events.ndjson.partial";
const SEALING_NAME: &str = "events.ndjson.sealing";

pub struct NdjsonLog {
    partial: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
    lines: u64,
}

/// What a sealed log is, for the summary and the attestation.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub path: PathBuf,
    pub sha256: String,
    pub bytes: u64,
    pub lines: u64,
}

impl NdjsonLog {
    /// The live log of a running job.
    pub fn create(dir: &Path) -> Result<Self, SinkError> {
        Self::open(dir.join(LIVE_NAME), dir.join(LIVE_NAME))
    }

    /// The final log, written whole and then renamed to events.ndjson.
    pub fn create_final(dir: &Path) -> Result<Self, SinkError> {
        Self::open(dir.join(SEALING_NAME), dir.join(FILE_NAME))
    }

    fn open(partial: PathBuf, path: PathBuf) -> Result<Self, SinkError> {
        let file = super::create_fresh(&partial).map_err(|source| SinkError::Create {
            path: partial.display().to_string(),
            source,
        })?;
        Ok(Self {
            partial,
            path,
            out: BufWriter::with_capacity(1 << 16, file),
            hasher: Sha256::new(),
            bytes: 0,
            lines: 0,
        })
    }

    /// Writes one record as one line; the line is built whole before any byte is written.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<(), SinkError> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        self.write_line(&line)
    }

    /// Writes an already serialised line, which must end in a newline.
    pub fn write_line(&mut self, line: &[u8]) -> Result<(), SinkError> {
        self.out.write_all(line).map_err(|e| self.write_error(e))?;
        self.hasher.update(line);
        self.bytes += line.len() as u64;
        self.lines += 1;
        Ok(())
    }

    /// Where the log is being written (the `.partial` file until sealed).
    pub fn live_path(&self) -> &Path {
        &self.partial
    }

    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| self.write_error(e))
    }

    /// Flushes, syncs and renames the log into place.
    pub fn seal(mut self) -> Result<Sealed, SinkError> {
        self.flush()?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|e| self.write_error(e))?;
        if self.partial != self.path {
            std::fs::rename(&self.partial, &self.path).map_err(|e| self.write_error(e))?;
        }
        if let Some(dir) = self.path.parent() {
            // Persist the rename too; a failure here loses nothing already written.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(Sealed {
            path: self.path,
            sha256: hex::encode(self.hasher.finalize()),
            bytes: self.bytes,
            lines: self.lines,
        })
    }

    fn write_error(&self, source: std::io::Error) -> SinkError {
        SinkError::Write {
            path: self.partial.display().to_string(),
            source,
        }
    }
}
