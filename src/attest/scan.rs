//! One streaming pass over a sealed events.ndjson: the SHA-256 of its exact
//! bytes and the predicate summary.
//!
//! A reader thread reads fixed-size chunks, hashes them in file order, counts
//! lines and cuts each chunk after its last newline (the partial line is
//! carried into the next chunk). Worker threads summarise whole-line chunks
//! in parallel, each with its own [`Summariser`]; they are merged at the end.
//! JSON parsing is the expensive part, so it is what runs in parallel.
//! Memory is a fixed pool of chunk buffers plus the summaries, whatever the
//! log size.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use sha2::{Digest, Sha256};

use super::predicate::{LogFacts, Summariser, Summary, SummaryError};

const CHUNK: usize = 1 << 20;
/// A longer line is not a record ciwatch writes; it is skipped (but hashed).
const MAX_LINE: usize = 16 << 20;
/// Summarising threads at most (the reader is one more).
const MAX_WORKERS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read event log {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("event log {path}")]
    Summary { path: String, source: SummaryError },
}

#[derive(Debug, Clone)]
pub struct Scanned {
    pub sha256: String,
    pub bytes: u64,
    pub lines: u64,
    pub summary: Summary,
}

/// Whole lines for a worker: `first` holds the log's first line.
struct Chunk {
    data: Vec<u8>,
    first: bool,
    /// Over-long lines the reader dropped before this chunk.
    skipped: u64,
}

struct ReadTotals {
    sha256: String,
    bytes: u64,
    /// Newlines the reader itself dropped (inside over-long lines); workers count the rest.
    dropped_newlines: u64,
    /// The file is not empty and does not end with a newline: one more line.
    unterminated: bool,
}

/// Hashes and summarises the log at `path`; `name` is how the statement names it.
pub fn scan_log(path: &Path, name: &str) -> Result<Scanned, ScanError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_WORKERS);
    scan_with(path, name, workers)
}

fn scan_with(path: &Path, name: &str, workers: usize) -> Result<Scanned, ScanError> {
    let read_err = |source| ScanError::Read {
        path: path.display().to_string(),
        source,
    };
    let summary_err = |source| ScanError::Summary {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    let (work_tx, work_rx) = mpsc::sync_channel::<Chunk>(workers);
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (pool_tx, pool_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..2 * workers + 2 {
        let _ = pool_tx.send(Vec::with_capacity(CHUNK * 2));
    }

    std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_hash_split(file, &work_tx, &pool_rx));
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = Arc::clone(&work_rx);
                let pool = pool_tx.clone();
                scope.spawn(move || summarise_chunks(&rx, &pool))
            })
            .collect();
        drop(pool_tx);
        let totals = reader
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("reader thread panicked")))
            .map_err(read_err)?;
        let mut merged = Summariser::new();
        let mut failure = None;
        let mut lines = totals.dropped_newlines + u64::from(totals.unterminated);
        for h in handles {
            match h.join() {
                Ok(Ok((s, newlines))) => {
                    merged.merge(s);
                    lines += newlines;
                }
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => {
                    failure = failure.or(Some(SummaryError::BadRecord {
                        record: "any",
                        message: "worker panicked".into(),
                    }))
                }
            }
        }
        if let Some(e) = failure {
            return Err(summary_err(e));
        }
        let facts = LogFacts {
            name: name.to_string(),
            sha256: totals.sha256.clone(),
            bytes: totals.bytes,
            lines,
        };
        let summary = merged.finish(facts).map_err(summary_err)?;
        Ok(Scanned {
            sha256: totals.sha256,
            bytes: totals.bytes,
            lines,
            summary,
        })
    })
}

/// Reads the file in order, hashing every byte, and hands out whole-line
/// chunks. It does as little else as possible: hashing is the one part that
/// cannot run in parallel, so this thread bounds the throughput.
fn read_hash_split(
    mut file: File,
    work: &mpsc::SyncSender<Chunk>,
    pool: &mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<ReadTotals> {
    let mut hasher = Sha256::new();
    let (mut bytes, mut dropped_newlines) = (0u64, 0u64);
    let mut carry: Vec<u8> = Vec::new();
    let mut skipping = false;
    let mut skipped = 0u64;
    let mut first = true;
    let mut last_byte = b'\n';
    // Workers return buffers when done; a closed pool means they all stopped.
    while let Ok(mut buf) = pool.recv() {
        buf.clear();
        buf.extend_from_slice(&carry);
        carry.clear();
        let start = buf.len();
        buf.resize(start + CHUNK, 0);
        let n = read_full(&mut file, &mut buf[start..])?;
        buf.truncate(start + n);
        if n == 0 {
            // End of file: a last line without a newline is still a line.
            if skipping {
                skipped += 1;
                buf.clear();
            }
            if !buf.is_empty() || skipped > 0 {
                let _ = work.send(Chunk {
                    data: buf,
                    first,
                    skipped,
                });
            }
            break;
        }
        let fresh = &buf[start..];
        hasher.update(fresh);
        bytes += n as u64;
        last_byte = fresh[n - 1];
        if skipping {
            // Inside an over-long line: drop everything up to its newline.
            match memchr::memchr(b'\n', &buf) {
                Some(nl) => {
                    skipping = false;
                    skipped += 1;
                    dropped_newlines += 1;
                    buf.drain(..=nl);
                }
                None => {
                    buf.clear();
                    let _ = return_buffer(buf, work);
                    continue;
                }
            }
        }
        match memchr::memrchr(b'\n', &buf) {
            Some(last) => {
                carry.extend_from_slice(&buf[last + 1..]);
                buf.truncate(last + 1);
                if work
                    .send(Chunk {
                        data: buf,
                        first,
                        skipped,
                    })
                    .is_err()
                {
                    break;
                }
                first = false;
                skipped = 0;
            }
            None if buf.len() > MAX_LINE => {
                skipping = true;
                buf.clear();
                let _ = return_buffer(buf, work);
            }
            None => {
                // No newline yet: all of it is carried; recycle the buffer.
                std::mem::swap(&mut carry, &mut buf);
                let _ = return_buffer(buf, work);
            }
        }
    }
    Ok(ReadTotals {
        sha256: hex::encode(hasher.finalize()),
        bytes,
        dropped_newlines,
        unterminated: bytes > 0 && last_byte != b'\n',
    })
}

/// Sends an empty chunk so that a worker hands the buffer back to the pool.
fn return_buffer(buf: Vec<u8>, work: &mpsc::SyncSender<Chunk>) -> Result<(), ()> {
    work.send(Chunk {
        data: buf,
        first: false,
        skipped: 0,
    })
    .map_err(|_| ())
}

/// Returns the summary of the chunks this worker got and the newlines in them.
fn summarise_chunks(
    work: &Mutex<mpsc::Receiver<Chunk>>,
    pool: &mpsc::Sender<Vec<u8>>,
) -> Result<(Summariser, u64), SummaryError> {
    let mut summariser = Summariser::new();
    let mut newlines = 0u64;
    let mut failed = None;
    loop {
        let next = work
            .lock()
            .map_err(|_| ())
            .and_then(|rx| rx.recv().map_err(|_| ()));
        let Ok(chunk) = next else { break };
        if failed.is_none() {
            match summarise_chunk(&chunk, &mut summariser) {
                Ok(n) => newlines += n,
                Err(e) => failed = Some(e),
            }
        }
        let _ = pool.send(chunk.data);
    }
    failed.map_or(Ok((summariser, newlines)), Err)
}

/// Summarises the lines of one chunk; returns how many newlines it held.
fn summarise_chunk(chunk: &Chunk, s: &mut Summariser) -> Result<u64, SummaryError> {
    for _ in 0..chunk.skipped {
        s.skipped_line();
    }
    let mut first = chunk.first;
    let mut start = 0;
    let mut newlines = 0;
    let data = &chunk.data;
    for nl in memchr::memchr_iter(b'\n', data) {
        s.line(&data[start..nl], first)?;
        first = false;
        start = nl + 1;
        newlines += 1;
    }
    // Only the file's last chunk may end without a newline.
    if start < data.len() {
        s.line(&data[start..], first)?;
    }
    Ok(newlines)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn big_log(dir: &Path, trailing_newline: bool) -> (std::path::PathBuf, String, u64) {
        let path = dir.join("events.ndjson");
        let start = r#"{"type":"trace_start","schema":"ciwatch.events/v1","time":"t0","agent":{},"host":"h","kernel":"k","mode":"observe","job":{"platform":"none","id":"j"},"hooks":[]}"#;
        let mut body = format!("{start}\n");
        // Enough events to cross several chunk boundaries at odd offsets.
        let mut i = 0u64;
        while body.len() < 3 * CHUNK + 12345 {
            body.push_str(&format!(
                r#"{{"type":"dns","seq":{i},"job":{{"platform":"none","id":"j"}},"step":{{"id":"s{}"}},"host":"h{}.example","ret":0}}"#,
                i % 3,
                i % 97
            ));
            body.push('\n');
            i += 1;
        }
        body.push_str(r#"{"type":"trace_end","time":"t1","lost":{},"lost_total":0,"undecodable":0,"file_filtered":0,"complete":true}"#);
        if trailing_newline {
            body.push('\n');
        }
        std::fs::write(&path, &body).unwrap();
        (path, body, i)
    }

    #[test]
    fn hash_and_line_count_match_the_bytes_across_chunk_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        for trailing_newline in [true, false] {
            let (path, body, events) = big_log(dir.path(), trailing_newline);
            for workers in [1, 3] {
                let scanned = scan_with(&path, "events.ndjson", workers).unwrap();
                assert_eq!(scanned.sha256, hex::encode(Sha256::digest(body.as_bytes())));
                assert_eq!(scanned.bytes, body.len() as u64);
                assert_eq!(scanned.lines, events + 2);
                let p = &scanned.summary.predicate;
                assert_eq!(p.counts.events["dns"], events, "workers {workers}");
                assert_eq!(p.dns.len(), 97);
                assert_eq!(p.dns.iter().map(|d| d.count).sum::<u64>(), events);
                assert_eq!(p.ci.steps.len(), 3);
                assert_eq!(p.ci.steps[0]["id"], "s0");
                assert_eq!(p.ci.foreign_job_events, 0);
                assert!(p.event_log.complete);
            }
        }
    }

    #[test]
    fn over_long_lines_are_skipped_but_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let start = r#"{"type":"trace_start","job":{"platform":"none","id":"j"},"hooks":[]}"#;
        let end = r#"{"type":"trace_end","complete":true}"#;
        let long = "x".repeat(MAX_LINE + 3 * CHUNK);
        let body = format!("{start}\n{long}\n{end}\n");
        std::fs::write(&path, &body).unwrap();
        let scanned = scan_with(&path, "events.ndjson", 2).unwrap();
        assert_eq!(scanned.sha256, hex::encode(Sha256::digest(body.as_bytes())));
        assert_eq!(scanned.lines, 3);
        assert_eq!(scanned.summary.predicate.event_log.unparsed_lines, 1);
    }

    #[test]
    fn missing_file_is_a_read_error_and_empty_file_is_not_a_log() {
        let err = scan_log(Path::new("/nonexistent/events.ndjson"), "events.ndjson").unwrap_err();
        assert!(matches!(err, ScanError::Read { .. }), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("events.ndjson");
        std::fs::write(&empty, "").unwrap();
        let err = scan_log(&empty, "events.ndjson").unwrap_err();
        assert!(
            matches!(
                err,
                ScanError::Summary {
                    source: SummaryError::NoTraceStart { .. },
                    ..
                }
            ),
            "{err}"
        );
    }
}
