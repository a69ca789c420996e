//! The job's root-only state directory, `/run/ciwatch/<key>`: the agent's
//! live log, pid and control socket, the signing choices and key fixed at
//! `start`, and the sealed trace until `finish` publishes it. The job's user
//! can neither read nor write it, so nothing in it is the job's to plant.
//!
//! Every component of its path is opened with O_NOFOLLOW and checked (owned
//! by root or this user, writable by nobody else unless sticky), the
//! directory itself is made fresh by mkdirat under a random key and must be
//! this user's and mode 0700: a path someone else made, or a symlink, is
//! refused rather than reused. `finish --out DIR` finds it again through an
//! index in the same root-only tree.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, Stat};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::out_dir::JobUser;

/// Where every job's state lives; `bin/` beside the jobs holds the Action's root-owned binary.
pub const ROOT: &str = "/run/ciwatch";
/// `by-out/<sha256 of the absolute --out path>` holds the key of the newest job for that path.
const INDEX: &str = "by-out";
/// The background agent's log.
pub const AGENT_LOG: &str = "agent.log";
/// What `start` fixed for `finish` besides signing (`JobRecord`).
const RECORD: &str = "job.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path} is not a safe place for the job's state: {why}")]
    Untrusted { path: String, why: &'static str },
    #[error("cannot create or open {path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("no agent was started for {out} (no state for it under {root}); did `ciwatch start --out` name it?")]
    NoJob { out: String, root: String },
    #[error("the job's record {path} is unreadable")]
    Record {
        path: String,
        source: std::io::Error,
    },
}

/// What `start` fixed for `finish`: where the public files go, as whom, and
/// the SHA-256 of the token `finish` must be shown (when one was given).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub out: PathBuf,
    pub user: JobUser,
    pub finish_token_sha256: Option<String>,
}

impl JobRecord {
    pub fn write(&self, state: &StateDir) -> Result<(), StateError> {
        let path = state.file(RECORD);
        let record_err = |source| StateError::Record {
            path: path.display().to_string(),
            source,
        };
        let json = serde_json::to_vec(self).map_err(|e| record_err(e.into()))?;
        std::fs::write(&path, json).map_err(record_err)
    }

    pub fn read(state: &StateDir) -> Result<Self, StateError> {
        let path = state.file(RECORD);
        let record_err = |source| StateError::Record {
            path: path.display().to_string(),
            source,
        };
        let bytes = std::fs::read(&path).map_err(record_err)?;
        serde_json::from_slice(&bytes).map_err(|e| record_err(e.into()))
    }
}

/// One job's state directory, held open.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    _fd: OwnedFd,
}

impl StateDir {
    /// A fresh directory under `root` for the job that publishes to `out`.
    pub fn create(root: &Path, out: &Path) -> Result<Self, StateError> {
        let root_fd = open_root(root, true)?;
        let key = random_key()?;
        let path = root.join(&key);
        mkdirat(&root_fd, &key, 0o700, &path)?;
        let dir = Self::open(&path)?;
        index(&root_fd, root, out, &key)?;
        Ok(dir)
    }

    /// An existing state directory, checked again from `/` down.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let fd = walk(path)?;
        let st = fstat(&fd, path)?;
        let untrusted = |why| StateError::Untrusted {
            path: path.display().to_string(),
            why,
        };
        if st.st_uid != rustix::process::geteuid().as_raw() {
            return Err(untrusted("it is owned by another user"));
        }
        if st.st_mode & 0o7777 != 0o700 {
            return Err(untrusted("its mode is not 0700"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            _fd: fd,
        })
    }

    /// The newest job's state for `out` (`finish --out DIR`).
    pub fn for_out(root: &Path, out: &Path) -> Result<Self, StateError> {
        let no_job = || StateError::NoJob {
            out: out.display().to_string(),
            root: root.display().to_string(),
        };
        let root_fd = open_root(root, false).map_err(|_| no_job())?;
        let index = openat(&root_fd, INDEX.as_ref(), &root.join(INDEX)).map_err(|_| no_job())?;
        let entry = index_name(out);
        let file = rustix::fs::openat(
            &index,
            entry.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|_| no_job())?;
        // An entry holds a key, never more.
        let mut key = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(std::fs::File::from(file), 128),
            &mut key,
        )
        .map_err(|_| no_job())?;
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(no_job());
        }
        Self::open(&root.join(key))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file of the job's state.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// `root` itself, created 0755 when `create` and missing, checked like every component.
fn open_root(root: &Path, create: bool) -> Result<OwnedFd, StateError> {
    if create {
        if let (Some(parent), Some(name)) = (root.parent(), root.file_name()) {
            let parent_fd = walk(parent)?;
            match rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(io_error(root, e)),
            }
        }
    }
    walk(root)
}

/// Opens `path` component by component without following a symlink, checking each directory.
fn walk(path: &Path) -> Result<OwnedFd, StateError> {
    let untrusted = |why| StateError::Untrusted {
        path: path.display().to_string(),
        why,
    };
    if !path.is_absolute() {
        return Err(untrusted("it is not an absolute path"));
    }
    let mut fd =
        rustix::fs::open("/", dir_flags(), Mode::empty()).map_err(|e| io_error(path, e))?;
    check_component(&fd, Path::new("/"))?;
    let mut so_far = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(name) => {
                so_far.push(name);
                fd = openat(&fd, name, &so_far)?;
                check_component(&fd, &so_far)?;
            }
            _ => return Err(untrusted("it has `.` or `..` components")),
        }
    }
    Ok(fd)
}

fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

fn openat(dir: &OwnedFd, name: &OsStr, path: &Path) -> Result<OwnedFd, StateError> {
    rustix::fs::openat(dir, name, dir_flags(), Mode::empty()).map_err(|e| match e {
        // O_NOFOLLOW on a symlink, with O_PATH|O_DIRECTORY, fails ENOTDIR.
        Errno::LOOP | Errno::NOTDIR => StateError::Untrusted {
            path: path.display().to_string(),
            why: "it is a symlink or not a directory",
        },
        e => io_error(path, e),
    })
}

/// Owned by root or by this user, and writable by nobody else unless sticky
/// (then only entries that pass this check themselves are followed).
fn check_component(fd: &OwnedFd, path: &Path) -> Result<(), StateError> {
    let st = fstat(fd, path)?;
    let euid = rustix::process::geteuid().as_raw();
    let why = if st.st_uid != 0 && st.st_uid != euid {
        Some("it is owned by another user")
    } else if st.st_mode & 0o022 != 0 && st.st_mode & 0o1000 == 0 {
        Some("other users can write to it")
    } else {
        None
    };
    why.map_or(Ok(()), |why| {
        Err(StateError::Untrusted {
            path: path.display().to_string(),
            why,
        })
    })
}

fn fstat(fd: &OwnedFd, path: &Path) -> Result<Stat, StateError> {
    rustix::fs::fstat(fd).map_err(|e| io_error(path, e))
}

fn mkdirat(dir: &OwnedFd, name: &str, mode: u32, path: &Path) -> Result<(), StateError> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)).map_err(|e| io_error(path, e))
}

fn io_error(path: &Path, e: Errno) -> StateError {
    StateError::Io {
        path: path.display().to_string(),
        source: e.into(),
    }
}

fn random_key() -> Result<String, StateError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| StateError::Io {
        path: "the random key of the job's state".into(),
        source: std::io::Error::other("no randomness"),
    })?;
    Ok(hex::encode(bytes))
}

/// The index entry of an output directory: the same absolute path gives the same name.
fn index_name(out: &Path) -> String {
    let absolute = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    hex::encode(Sha256::digest(absolute.as_os_str().as_bytes()))
}

/// Points `out`'s index entry at `key`, replacing an older job's.
fn index(root_fd: &OwnedFd, root: &Path, out: &Path, key: &str) -> Result<(), StateError> {
    let dir_path = root.join(INDEX);
    match rustix::fs::mkdirat(root_fd, INDEX, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(io_error(&dir_path, e)),
    }
    let dir = index_dir(root_fd, &dir_path)?;
    let name = index_name(out);
    let partial = format!("{name}.{key}");
    let file = rustix::fs::openat(
        &dir,
        partial.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| io_error(&dir_path.join(&partial), e))?;
    std::io::Write::write_all(&mut std::fs::File::from(file), key.as_bytes()).map_err(
        |source| StateError::Io {
            path: dir_path.join(&partial).display().to_string(),
            source,
        },
    )?;
    rustix::fs::renameat(&dir, partial.as_str(), &dir, name.as_str())
        .map_err(|e| io_error(&dir_path.join(&name), e))
}

/// The index directory: this user's, 0700, not a symlink.
fn index_dir(root_fd: &OwnedFd, path: &Path) -> Result<OwnedFd, StateError> {
    let fd = rustix::fs::openat(
        root_fd,
        INDEX,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_error(path, e))?;
    let st = fstat(&fd, path)?;
    if st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o077 != 0 {
        return Err(StateError::Untrusted {
            path: path.display().to_string(),
            why: "it is not this user's alone",
        });
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn root() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ciwatch");
        (tmp, root)
    }

    #[test]
    fn creates_a_fresh_0700_directory_and_finds_it_by_out() {
        let (_tmp, root) = root();
        let out = Path::new("/work/some/out");
        let made = StateDir::create(&root, out).unwrap();
        let mode = std::fs::metadata(made.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o700);
        assert_eq!(made.path().parent(), Some(root.as_path()));
        let found = StateDir::for_out(&root, out).unwrap();
        assert_eq!(found.path(), made.path());
        // A second job for the same out gets its own directory, and the index follows it.
        let second = StateDir::create(&root, out).unwrap();
        assert_ne!(second.path(), made.path());
        assert_eq!(StateDir::for_out(&root, out).unwrap().path(), second.path());
        assert!(matches!(
            StateDir::for_out(&root, Path::new("/elsewhere")),
            Err(StateError::NoJob { .. })
        ));
    }

    #[test]
    fn refuses_a_symlink_a_loose_mode_or_a_group_writable_parent() {
        let (tmp, root) = root();
        let out = Path::new("/o");
        let real = StateDir::create(&root, out).unwrap();
        let link = root.join("link");
        std::os::unix::fs::symlink(real.path(), &link).unwrap();
        assert!(matches!(
            StateDir::open(&link),
            Err(StateError::Untrusted { .. })
        ));
        let loose = root.join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            StateDir::open(&loose),
            Err(StateError::Untrusted { .. })
        ));
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            StateDir::create(&shared.join("ciwatch"), out),
            Err(StateError::Untrusted { .. })
        ));
        assert!(matches!(
            StateDir::open(Path::new("relative")),
            Err(StateError::Untrusted { .. })
        ));
    }

    #[test]
    fn a_symlinked_root_is_refused() {
        let (tmp, root) = root();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &root).unwrap();
        assert!(matches!(
            StateDir::create(&root, Path::new("/o")),
            Err(StateError::Untrusted { .. })
        ));
    }
}
