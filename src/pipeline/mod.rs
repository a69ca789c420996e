//! ring buffer → consumer, as two tasks joined by a bounded channel. A slow
//! consumer slows the reader, the ring fills, and the kernel counts what it
//! could not queue: nothing is dropped silently.

pub mod reader;

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::event::{Event, Totals};

/// Batches of raw records in flight between reader and consumer.
const RAW_BATCHES: usize = 8;

/// Records read from the ring in one go.
#[derive(Debug)]
pub struct Batch {
    pub records: Vec<Vec<u8>>,
    /// When the drain this batch belongs to began.
    pub drain_started: Instant,
    /// The ring was empty after this batch: every record the kernel had
    /// committed before `drain_started` has now been delivered.
    pub drained: bool,
}

/// Decodes, attributes and writes records; also does periodic work (sealing ended jobs).
pub trait Consumer: Send + 'static {
    fn batch(&mut self, batch: Batch);
    fn tick(&mut self);
}

pub struct Pipeline<C> {
    stop: watch::Sender<bool>,
    reader: JoinHandle<Result<(), reader::ReaderError>>,
    consumer: JoinHandle<C>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("ring-buffer reader failed")]
    Reader(#[from] reader::ReaderError),
    #[error("a pipeline task panicked")]
    Task(#[from] tokio::task::JoinError),
}

impl<C: Consumer> Pipeline<C> {
    pub fn start(
        ring: aya::maps::RingBuf<aya::maps::MapData>,
        drain_interval: Duration,
        tick_interval: Duration,
        consumer: C,
    ) -> std::io::Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let (raw_tx, raw_rx) = mpsc::channel::<Batch>(RAW_BATCHES);
        let reader = reader::spawn(ring, drain_interval, raw_tx, stop_rx)?;
        let consumer = tokio::spawn(consume(raw_rx, consumer, tick_interval));
        Ok(Self {
            stop,
            reader,
            consumer,
        })
    }

    /// Drains what the kernel has queued, stops both tasks and returns the consumer.
    pub async fn finish(self) -> Result<C, PipelineError> {
        let _ = self.stop.send(true);
        self.reader.await??;
        Ok(self.consumer.await?)
    }
}

async fn consume<C: Consumer>(
    mut raw: mpsc::Receiver<Batch>,
    mut consumer: C,
    every: Duration,
) -> C {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            batch = raw.recv() => match batch {
                Some(batch) => consumer.batch(batch),
                None => return consumer,
            },
            _ = tick.tick() => consumer.tick(),
        }
    }
}

/// Per-kind totals of what reached the log.
pub fn count(totals: &mut Totals, event: &Event) {
    *totals.events.entry(event.body.kind()).or_default() += 1;
}
