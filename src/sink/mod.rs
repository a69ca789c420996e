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
/// The temporary file is made fresh, never opened through a planted symlink.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<(), SinkError> {
    use std::io::Write;
    let partial = path.with_extension("partial");
    let err = |source| SinkError::Write {
        path: path.display().to_string(),
        source,
    };
    create_fresh(&partial)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(err)?;
    std::fs::rename(&partial, path).map_err(err)
}

/// Removes whatever `path` is (a stale file, a symlink) and creates it anew,
/// with O_EXCL|O_NOFOLLOW: a root writer never writes through someone's link.
pub fn create_fresh(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}
