//! Drains the ring buffer on the kernel's (rare) wakeups and on a short
//! timer, in byte-bounded batches.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Upper bound of one batch, so memory stays flat under a flood.
const BATCH_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("waiting on the ring buffer failed")]
    Poll(#[source] std::io::Error),
}

enum Wake {
    Ready,
    Tick,
    Stop,
}

pub fn spawn(
    ring: RingBuf<MapData>,
    interval: Duration,
    out: mpsc::Sender<super::Batch>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<Result<(), ReaderError>>> {
    tracing::debug!("ring buffer fd {}", ring.as_raw_fd());
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged
    // until the AsyncFd (which owns the RingBuf) is dropped.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = tokio::select! {
                ready = fd.readable_mut() => {
                    // Clear before draining: a record submitted after this re-arms readiness.
                    ready.map_err(ReaderError::Poll)?.clear_ready();
                    Wake::Ready
                }
                _ = tick.tick() => Wake::Tick,
                _ = stop.changed() => Wake::Stop,
            };
            if !drain(fd.get_mut(), &out).await {
                return Ok(());
            }
            if matches!(wake, Wake::Stop) {
                return Ok(());
            }
            if matches!(wake, Wake::Ready) {
                tracing::trace!("drained on wakeup");
            }
        }
    }))
}

/// Sends everything queued now, ending with a batch marked `drained` (empty
/// when the ring was), so the consumer knows how far the log has caught up
/// with the kernel. False once the processor has gone away.
async fn drain(ring: &mut RingBuf<MapData>, out: &mpsc::Sender<super::Batch>) -> bool {
    let drain_started = Instant::now();
    loop {
        let mut records = Vec::new();
        let mut bytes = 0;
        while bytes < BATCH_BYTES {
            let Some(item) = ring.next() else { break };
            bytes += item.len();
            records.push(item.to_vec());
        }
        let drained = bytes < BATCH_BYTES;
        let batch = super::Batch {
            records,
            drain_started,
            drained,
        };
        if out.send(batch).await.is_err() {
            return false;
        }
        if drained {
            return true;
        }
    }
}
