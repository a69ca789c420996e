//! Where events go: the NDJSON log and the job summary.

pub mod ndjson;
pub mod summary;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create {path}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("writing {path} failed")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot serialise an event")]
    Serialize(#[from] serde_json::Error),
}

/// Writes a small file whole or not at all: a temporary name, then a rename.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<(), SinkError> {
    let partial = path.with_extension("partial");
    let err = |source| SinkError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(&partial, bytes).map_err(err)?;
    std::fs::rename(&partial, path).map_err(err)
}
