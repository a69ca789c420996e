//! One job's output directory while the job runs: the live event log and the
//! summary accumulator. The first write error is kept and reported at seal;
//! events after it are counted, not silently dropped.

use std::path::{Path, PathBuf};

use crate::event::{Event, TraceStart};
use crate::sink::ndjson::NdjsonLog;
use crate::sink::summary::Summary;
use crate::sink::SinkError;

pub struct JobOutput {
    pub dir: PathBuf,
    pub log: NdjsonLog,
    pub summary: Summary,
    pub write_error: Option<SinkError>,
    /// Events that could not be written after the first error.
    pub unwritten: u64,
}

impl JobOutput {
    pub fn create(dir: &Path, header: &TraceStart) -> Result<Self, SinkError> {
        std::fs::create_dir_all(dir).map_err(|source| SinkError::Create {
            path: dir.display().to_string(),
            source,
        })?;
        let mut log = NdjsonLog::create(dir)?;
        log.write(header)?;
        log.flush()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            log,
            summary: Summary::default(),
            write_error: None,
            unwritten: 0,
        })
    }

    /// Hands what is buffered to the kernel: an agent killed later loses at
    /// most the batch it was reading, and `finish` recovers the rest.
    pub fn flush(&mut self) {
        if self.write_error.is_some() {
            return;
        }
        if let Err(e) = self.log.flush() {
            tracing::error!(
                "{}; further events of this job are counted but not written",
                crate::error::chain(&e)
            );
            self.write_error = Some(e);
        }
    }

    pub fn write(&mut self, event: &Event) {
        self.summary.add(event);
        if self.write_error.is_some() {
            self.unwritten += 1;
            return;
        }
        if let Err(e) = self.log.write(event) {
            tracing::error!(
                "{}; further events of this job are counted but not written",
                crate::error::chain(&e)
            );
            self.write_error = Some(e);
            self.unwritten += 1;
        }
    }
}
