//! Where events go: the NDJSON log and the job summary.

pub mod ndjson;
pub mod object_store;
pub mod summary;

use crate::event::Event;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error("writing {path} failed: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("cannot serialise an event: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// Every sink a run writes to, fed in event order.
pub struct Sinks {
    pub log: ndjson::NdjsonLog,
    pub summary: summary::Summary,
}

impl Sinks {
    pub fn event(&mut self, event: &Event) -> Result<(), SinkError> {
        self.summary.add(event);
        self.log.write(event)
    }
}
