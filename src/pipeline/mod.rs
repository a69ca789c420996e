//! ring buffer → decode and attribute → sinks, as three tasks joined by
//! bounded channels. A slow sink slows the reader, the ring fills, and the
//! kernel counts what it could not queue: nothing is dropped silently.

pub mod reader;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::attribute::Attributor;
use crate::decode::decode;
use crate::event::{Event, Totals};
use crate::sink::Sinks;

/// Batches of raw records in flight between reader and processor.
const RAW_BATCHES: usize = 8;
/// Events in flight between processor and sinks.
const EVENTS: usize = 4096;

pub struct Pipeline {
    stop: watch::Sender<bool>,
    reader: JoinHandle<Result<(), reader::ReaderError>>,
    processor: JoinHandle<(Attributor, u64)>,
    writer: JoinHandle<Result<Sinks, crate::sink::SinkError>>,
}

/// What the pipeline hands back once drained.
pub struct Drained {
    pub sinks: Sinks,
    pub attributor: Attributor,
    pub undecodable: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("ring-buffer reader failed: {0}")]
    Reader(#[from] reader::ReaderError),
    #[error("{0}")]
    Sink(#[from] crate::sink::SinkError),
    #[error("a pipeline task panicked: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Pipeline {
    pub fn start(
        ring: aya::maps::RingBuf<aya::maps::MapData>,
        drain_interval: std::time::Duration,
        attributor: Attributor,
        sinks: Sinks,
    ) -> std::io::Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let (raw_tx, raw_rx) = mpsc::channel(RAW_BATCHES);
        let (event_tx, event_rx) = mpsc::channel(EVENTS);
        let reader = reader::spawn(ring, drain_interval, raw_tx, stop_rx)?;
        let processor = tokio::spawn(process(raw_rx, event_tx, attributor));
        let writer = tokio::spawn(write(event_rx, sinks));
        Ok(Self { stop, reader, processor, writer })
    }

    /// Drains what the kernel has queued, then stops every stage in order.
    pub async fn finish(self) -> Result<Drained, PipelineError> {
        let _ = self.stop.send(true);
        self.reader.await??;
        let (attributor, undecodable) = self.processor.await?;
        let sinks = self.writer.await??;
        Ok(Drained { sinks, attributor, undecodable })
    }
}

async fn process(
    mut raw: mpsc::Receiver<Vec<Vec<u8>>>,
    events: mpsc::Sender<Event>,
    mut attributor: Attributor,
) -> (Attributor, u64) {
    let mut undecodable = 0u64;
    while let Some(batch) = raw.recv().await {
        for bytes in batch {
            match decode(&bytes) {
                Ok(record) => {
                    if let Some(event) = attributor.event(record) {
                        if events.send(event).await.is_err() {
                            return (attributor, undecodable);
                        }
                    }
                }
                Err(e) => {
                    undecodable += 1;
                    tracing::debug!("undecodable record: {e}");
                }
            }
        }
    }
    (attributor, undecodable)
}

async fn write(mut events: mpsc::Receiver<Event>, mut sinks: Sinks) -> Result<Sinks, crate::sink::SinkError> {
    while let Some(event) = events.recv().await {
        sinks.event(&event)?;
    }
    Ok(sinks)
}

/// Per-kind totals of what reached the log.
pub fn count(totals: &mut Totals, event: &Event) {
    *totals.events.entry(event.body.kind()).or_default() += 1;
}
