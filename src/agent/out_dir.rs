//! The job-visible output directory (`--out`): made at `start` and filled at
//! `finish` with the public files of the sealed job, always *as the job's
//! user*. A root process writing into a directory the job controls would
//! follow whatever symlink the job planted there; a thread holding the job's
//! credentials can only reach what the job could reach anyway. Each file is
//! also written under a fresh name (O_CREAT|O_EXCL|O_NOFOLLOW) and renamed
//! into place, which replaces a planted symlink instead of writing through it.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum OutDirError {
    #[error("cannot write to output directory {path}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot take the credentials of uid {uid} to write {path}")]
    Credentials {
        uid: u32,
        path: String,
        source: std::io::Error,
    },
}

/// Whom the job runs as: whoever ran `start` (through sudo, the user sudo was run by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUser {
    pub uid: u32,
    pub gid: u32,
}

impl JobUser {
    /// sudo sets SUDO_UID/SUDO_GID itself; without sudo the job is this process's own user.
    pub fn invoking() -> Self {
        let own = Self {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        };
        let var = |name| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
        match (own.uid, var("SUDO_UID"), var("SUDO_GID")) {
            (0, Some(uid), Some(gid)) => Self { uid, gid },
            _ => own,
        }
    }

    /// Runs `f` on a thread that holds only this user's credentials (no
    /// supplementary groups), so every path it opens is checked as the job's would be.
    fn run_as<T: Send>(
        self,
        path: &Path,
        f: impl FnOnce() -> Result<T, OutDirError> + Send,
    ) -> Result<T, OutDirError> {
        let cred_err = |e: Errno| OutDirError::Credentials {
            uid: self.uid,
            path: path.display().to_string(),
            source: e.into(),
        };
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    if self.uid != rustix::process::geteuid().as_raw() {
                        // Per-thread syscalls: the rest of the process keeps its own.
                        let gid = rustix::process::Gid::from_raw(self.gid);
                        let uid = rustix::process::Uid::from_raw(self.uid);
                        rustix::thread::set_thread_groups(&[]).map_err(cred_err)?;
                        rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(cred_err)?;
                        rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(cred_err)?;
                    }
                    f()
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(OutDirError::Write {
                        path: path.display().to_string(),
                        source: std::io::Error::other("the writing thread panicked"),
                    })
                })
        })
    }
}

/// `start`: makes `out` as the job's user and checks that it can write there.
pub fn prepare(out: &Path, user: JobUser) -> Result<(), OutDirError> {
    user.run_as(out, || {
        std::fs::create_dir_all(out).map_err(write_err(out))?;
        let dir = open_dir(out)?;
        let probe = ".ciwatch-write-probe";
        let file = create_fresh(&dir, probe, out)?;
        drop(file);
        rustix::fs::unlinkat(&dir, probe, rustix::fs::AtFlags::empty())
            .map_err(|e| write_err(out)(e.into()))
    })
}

/// `finish`: copies each `(name, source)` into `out` as the job's user.
/// The sources are opened here, by the caller's own credentials.
pub fn publish(
    out: &Path,
    user: JobUser,
    files: &[(&str, PathBuf)],
) -> Result<Vec<PathBuf>, OutDirError> {
    let mut sources = Vec::new();
    for (name, path) in files {
        match File::open(path) {
            Ok(file) => sources.push((*name, file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(path)(e)),
        }
    }
    user.run_as(out, move || {
        std::fs::create_dir_all(out).map_err(write_err(out))?;
        let dir = open_dir(out)?;
        sources
            .into_iter()
            .map(|(name, mut source)| {
                copy_into(&dir, out, name, &mut source)?;
                Ok(out.join(name))
            })
            .collect()
    })
}

fn open_dir(out: &Path) -> Result<OwnedFd, OutDirError> {
    rustix::fs::open(
        out,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| write_err(out)(e.into()))
}

/// `name` whole or not at all: a fresh `.name.partial`, then a rename over whatever `name` was.
fn copy_into(dir: &OwnedFd, out: &Path, name: &str, source: &mut File) -> Result<(), OutDirError> {
    let partial = format!(".{name}.partial");
    let path = out.join(name);
    let err = write_err(&path);
    let mut file = create_fresh(dir, &partial, out)?;
    std::io::copy(source, &mut file).map_err(&err)?;
    file.flush().map_err(&err)?;
    rustix::fs::renameat(dir, partial.as_str(), dir, name).map_err(|e| err(e.into()))
}

/// Creates `name` in `dir`, removing what was there first: never opens an existing file or a symlink.
fn create_fresh(dir: &OwnedFd, name: &str, out: &Path) -> Result<File, OutDirError> {
    match rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => return Err(write_err(&out.join(name))(e.into())),
    }
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map(File::from)
    .map_err(|e| write_err(&out.join(name))(e.into()))
}

fn write_err(path: &Path) -> impl Fn(std::io::Error) -> OutDirError + '_ {
    move |source| OutDirError::Write {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> JobUser {
        JobUser {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    #[test]
    fn publishes_over_planted_symlinks_without_writing_through_them() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        prepare(&out, me()).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, out.join("events.ndjson")).unwrap();
        std::os::unix::fs::symlink(&victim, out.join(".summary.md.partial")).unwrap();
        let src = tmp.path().join("state");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("events.ndjson"), "{\"type\":\"trace_start\"}\n").unwrap();
        std::fs::write(src.join("summary.md"), "# summary\n").unwrap();
        let written = publish(
            &out,
            me(),
            &[
                ("events.ndjson", src.join("events.ndjson")),
                ("summary.md", src.join("summary.md")),
                ("absent.json", src.join("absent.json")),
            ],
        )
        .unwrap();
        assert_eq!(
            written,
            vec![out.join("events.ndjson"), out.join("summary.md")]
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(!std::fs::symlink_metadata(out.join("events.ndjson"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(out.join("summary.md")).unwrap(),
            "# summary\n"
        );
    }

    #[test]
    fn refuses_an_output_directory_that_is_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let out = tmp.path().join("out");
        std::os::unix::fs::symlink(&elsewhere, &out).unwrap();
        assert!(publish(&out, me(), &[]).is_err());
    }

    #[test]
    fn writes_as_the_job_user_when_root() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        // nobody cannot write into a root-owned 0755 directory: root would have.
        let tmp = tempfile::tempdir().unwrap();
        let nobody = JobUser {
            uid: 65534,
            gid: 65534,
        };
        let e = prepare(&tmp.path().join("out"), nobody).unwrap_err();
        assert!(matches!(e, OutDirError::Write { .. }), "{e}");
        assert!(!tmp.path().join("out").exists());
    }
}
