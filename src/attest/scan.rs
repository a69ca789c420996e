//! One streaming pass over a sealed events.ndjson: SHA-256 of the exact bytes
//! and the predicate summary. A reader thread reads and hashes fixed-size
//! chunks; the calling thread splits them into lines and summarises. Memory
//! is a few chunks plus one carried-over partial line, whatever the log size.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use super::predicate::{LogFacts, Summariser, Summary, SummaryError};

const CHUNK: usize = 1 << 20;
/// Chunks in flight between the reader and the summariser.
const IN_FLIGHT: usize = 4;
/// A longer line is not a record ciwatch writes; it is skipped (but hashed).
const MAX_LINE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read event log {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("event log {path}: {source}")]
    Summary { path: String, source: SummaryError },
}

#[derive(Debug, Clone)]
pub struct Scanned {
    pub sha256: String,
    pub bytes: u64,
    pub lines: u64,
    pub summary: Summary,
}

/// Hashes and summarises the log at `path`; `name` is how the statement names it.
pub fn scan_log(path: &Path, name: &str) -> Result<Scanned, ScanError> {
    let read_err = |source| ScanError::Read { path: path.display().to_string(), source };
    let file = File::open(path).map_err(read_err)?;
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(IN_FLIGHT);
    let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..IN_FLIGHT + 1 {
        let _ = empty_tx.send(vec![0u8; CHUNK]);
    }

    std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_and_hash(file, &full_tx, &empty_rx));
        let mut lines = LineSplitter::new();
        let mut summariser = Summariser::new();
        let mut failed = None;
        for (buf, n) in full_rx.iter() {
            if failed.is_none() {
                if let Err(e) = lines.feed(&buf[..n], &mut summariser) {
                    failed = Some(e);
                }
            }
            // The reader may already be gone after an error; nothing to return to then.
            let _ = empty_tx.send(buf);
        }
        let (sha256, bytes) = reader.join().unwrap_or_else(|_| Err(std::io::Error::other("reader thread panicked")))
            .map_err(read_err)?;
        let summary_err = |source| ScanError::Summary { path: path.display().to_string(), source };
        if let Some(e) = failed {
            return Err(summary_err(e));
        }
        let line_count = lines.finish(&mut summariser).map_err(summary_err)?;
        let facts = LogFacts { name: name.to_string(), sha256: sha256.clone(), bytes, lines: line_count };
        let summary = summariser.finish(facts).map_err(summary_err)?;
        Ok(Scanned { sha256, bytes, lines: line_count, summary })
    })
}

/// Reads the whole file in chunks, hashing each before handing it on.
fn read_and_hash(
    mut file: File,
    full: &mpsc::SyncSender<(Vec<u8>, usize)>,
    empty: &mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let Ok(mut buf) = empty.recv() else { break };
        let n = read_full(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        if full.send((buf, n)).is_err() {
            break;
        }
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// Fills `buf` unless the file ends first; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Splits a byte stream into lines, carrying a partial line across chunks.
struct LineSplitter {
    carry: Vec<u8>,
    /// Inside an over-long line: drop bytes until the next newline.
    skipping: bool,
    lines: u64,
}

impl LineSplitter {
    fn new() -> Self {
        Self { carry: Vec::new(), skipping: false, lines: 0 }
    }

    fn feed(&mut self, chunk: &[u8], sink: &mut Summariser) -> Result<(), SummaryError> {
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            self.lines += 1;
            let piece = &chunk[start..nl];
            start = nl + 1;
            if self.skipping {
                self.skipping = false;
                sink.skipped_line();
            } else if self.carry.is_empty() {
                sink.line(piece)?;
            } else {
                self.carry.extend_from_slice(piece);
                let line = std::mem::take(&mut self.carry);
                sink.line(&line)?;
                self.carry = line;
                self.carry.clear();
            }
        }
        let rest = &chunk[start..];
        if !self.skipping && !rest.is_empty() {
            if self.carry.len() + rest.len() > MAX_LINE {
                self.carry = Vec::new();
                self.skipping = true;
            } else {
                self.carry.extend_from_slice(rest);
            }
        }
        Ok(())
    }

    /// A last line without a newline still counts.
    fn finish(mut self, sink: &mut Summariser) -> Result<u64, SummaryError> {
        if self.skipping {
            self.lines += 1;
            sink.skipped_line();
        } else if !self.carry.is_empty() {
            self.lines += 1;
            let line = std::mem::take(&mut self.carry);
            sink.line(&line)?;
        }
        Ok(self.lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_line_count_match_the_bytes_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let start = r#"{"type":"trace_start","schema":"ciwatch.events/v1","time":"t0","agent":{},"host":"h","kernel":"k","mode":"observe","job":{"platform":"none","id":"j"},"hooks":[]}"#;
        let mut body = format!("{start}\n");
        // Enough events to cross several chunk boundaries at odd offsets.
        let mut i = 0u64;
        while body.len() < 3 * CHUNK + 12345 {
            body.push_str(&format!(
                r#"{{"type":"dns","seq":{i},"job":{{"platform":"none","id":"j"}},"step":{{"id":"s"}},"host":"h{}.example","ret":0}}"#,
                i % 97
            ));
            body.push('\n');
            i += 1;
        }
        body.push_str(r#"{"type":"trace_end","time":"t1","lost":{},"lost_total":0,"undecodable":0,"file_filtered":0,"complete":true}"#);
        body.push('\n');
        std::fs::write(&path, &body).unwrap();

        let scanned = scan_log(&path, "events.ndjson").unwrap();
        assert_eq!(scanned.sha256, hex::encode(Sha256::digest(body.as_bytes())));
        assert_eq!(scanned.bytes, body.len() as u64);
        assert_eq!(scanned.lines, i + 2);
        let p = &scanned.summary.predicate;
        assert_eq!(p.counts.events["dns"], i);
        assert_eq!(p.dns.len(), 97);
        assert_eq!(p.dns.iter().map(|d| d.count).sum::<u64>(), i);
        assert!(p.event_log.complete);
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = scan_log(Path::new("/nonexistent/events.ndjson"), "events.ndjson").unwrap_err();
        assert!(matches!(err, ScanError::Read { .. }), "{err}");
    }
}
