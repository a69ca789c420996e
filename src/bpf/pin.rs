//! Enforcement that outlives the agent (`ciwatch start` in enforce mode).
//!
//! Every hook's bpf_link is pinned in a root-only bpffs directory per job, so
//! a killed agent leaves the job's processes under the kernel's verdicts (the
//! lineage hooks keep new processes tagged, the cgroup hooks keep judging them)
//! until `ciwatch finish` has recorded the end and detached them. The links
//! hold their programs and the programs their maps; only the maps `finish`
//! reads are pinned: the ring buffer, whose records no agent read any more,
//! and the loss counters.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aya::maps::{IterableMap, Map, MapData, PerCpuArray, RingBuf};
use aya::programs::links::PinnedLink;
use sha2::{Digest, Sha256};

use super::loader::{KernelLosses, Probes};
use crate::error::chain;

/// Where ciwatch's bpffs is mounted (docs/architecture.md).
pub const BPFFS: &str = "/sys/fs/bpf";
/// include/uapi/linux/magic.h
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const LINK_PREFIX: &str = "link-";
const EVENTS: &str = "map-events";
const LOST: &str = "map-lost";
const UNTRACKED: &str = "map-untracked";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "enforcement must outlive the agent, but {BPFFS} is not a BPF filesystem; \
         mount one with: mount -t bpf bpf {BPFFS}"
    )]
    NoBpffs,
    #[error("{path} {reason}; remove it (it is not one ciwatch made)")]
    Foreign { path: PathBuf, reason: String },
    #[error(
        "an agent (pid {pid}) still enforces for this output directory; \
         run `ciwatch finish` for it first"
    )]
    AgentRunning { pid: u32 },
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot pin {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
    #[error("cannot read pinned map {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot unpin {path}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl PinError {
    pub fn exit_code(&self) -> u8 {
        match self {
            PinError::NoBpffs => crate::exit::MOUNT,
            PinError::AgentRunning { .. } => crate::exit::OUTPUT_DIR,
            _ => crate::exit::HOOKS,
        }
    }
}

/// The pin directory of the job whose root-only state directory is `state`.
/// `start` and `finish` both name that directory, and the job cannot change it.
pub fn dir_for(state: &Path) -> PathBuf {
    let state = std::path::absolute(state).unwrap_or_else(|_| state.to_path_buf());
    let digest = Sha256::digest(state.as_os_str().as_bytes());
    Path::new(BPFFS)
        .join("ciwatch")
        .join(hex::encode(&digest[..8]))
}

/// Pins every link of `probes`, and the maps `finish` reads, into `dir`.
/// `earlier` is the live agent that last wrote to the same output directory:
/// its pins are refused, a dead one's are stale and removed. On failure
/// nothing stays pinned.
pub fn pin_all(probes: &mut Probes, dir: &Path, earlier: Option<u32>) -> Result<Pinned, PinError> {
    require_bpffs()?;
    fresh_dir(dir, earlier)?;
    let pinned = Pinned {
        dir: dir.to_path_buf(),
        armed: true,
    };
    pin_links(probes, dir)?;
    pin_maps(probes, dir)?;
    Ok(pinned)
}

/// Pins that are released when dropped, until kept: a start that fails
/// after pinning leaves nothing behind.
pub struct Pinned {
    dir: PathBuf,
    armed: bool,
}

impl Pinned {
    /// From here on only `release` removes them; returns where they are.
    pub fn keep(mut self) -> PathBuf {
        self.armed = false;
        std::mem::take(&mut self.dir)
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = release(&self.dir) {
                tracing::warn!("{}", chain(&e));
            }
        }
    }
}

/// What a dead agent's hooks left for `finish`: their loss counters, and the
/// records they queued that no agent read, by kind.
pub struct Leftover {
    pub losses: KernelLosses,
    pub unread: BTreeMap<&'static str, u64>,
    pub undecodable: u64,
}

/// For `finish` after the agent died: detaches the job's hooks (nothing is
/// counted after this), then reads what they left. None when nothing was
/// pinned (observe and learn, or a job whose agent released its pins).
pub fn detach(dir: &Path) -> Result<Option<Leftover>, PinError> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(None);
    }
    let events = open_map(dir, EVENTS)?;
    let losses = KernelLosses {
        records: PerCpuArray::try_from(open_map(dir, LOST)?).map_err(read_err(dir, LOST))?,
        untracked: aya::maps::Array::try_from(open_map(dir, UNTRACKED)?)
            .map_err(read_err(dir, UNTRACKED))?,
    };
    for path in entries(dir)?.into_iter().filter(|p| is_link(p)) {
        unpin(&path)?;
    }
    let mut ring = RingBuf::try_from(events).map_err(read_err(dir, EVENTS))?;
    let mut unread = BTreeMap::new();
    let mut undecodable = 0;
    while let Some(record) = ring.next() {
        match crate::decode::decode(&record) {
            Ok(r) => *unread.entry(r.kind().name()).or_default() += 1,
            Err(_) => undecodable += 1,
        }
    }
    Ok(Some(Leftover {
        losses,
        unread,
        undecodable,
    }))
}

/// Unpins everything in `dir` and removes it: a link whose last holder this
/// was is detached before this returns. Nothing to do when `dir` is absent.
pub fn release(dir: &Path) -> Result<(), PinError> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    let mut first_error = None;
    for path in entries(dir)? {
        if let Err(e) = unpin(&path) {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    std::fs::remove_dir(dir).map_err(|source| PinError::Remove {
        path: dir.to_path_buf(),
        source,
    })
}

fn require_bpffs() -> Result<(), PinError> {
    match rustix::fs::statfs(BPFFS) {
        Ok(fs) if fs.f_type == BPF_FS_MAGIC => Ok(()),
        _ => Err(PinError::NoBpffs),
    }
}

/// Creates `dir` (and its parent) for this agent alone, mode 0700. The parent
/// must be ours: bpffs is often world-writable, and whoever owns a directory
/// may unlink what is pinned in it.
fn fresh_dir(dir: &Path, earlier: Option<u32>) -> Result<(), PinError> {
    if let Some(root) = dir.parent() {
        own_dir(root)?;
    }
    if std::fs::symlink_metadata(dir).is_ok() {
        if let Some(pid) = earlier {
            return Err(PinError::AgentRunning { pid });
        }
        tracing::warn!(
            "removing stale pins at {}: an earlier job for the same output directory never ran `ciwatch finish`",
            dir.display()
        );
        release(dir)?;
    }
    make_dir(dir)
}

fn own_dir(dir: &Path) -> Result<(), PinError> {
    match std::fs::symlink_metadata(dir) {
        Err(_) => make_dir(dir),
        Ok(meta) if !meta.is_dir() => Err(foreign(dir, "is not a directory".into())),
        Ok(meta) if meta.uid() != rustix::process::geteuid().as_raw() => {
            Err(foreign(dir, format!("belongs to uid {}", meta.uid())))
        }
        Ok(meta) if meta.mode() & 0o077 != 0 => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| PinError::Create {
                    path: dir.to_path_buf(),
                    source,
                },
            )
        }
        Ok(_) => Ok(()),
    }
}

fn make_dir(dir: &Path) -> Result<(), PinError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|source| PinError::Create {
            path: dir.to_path_buf(),
            source,
        })
}

fn foreign(path: &Path, reason: String) -> PinError {
    PinError::Foreign {
        path: path.to_path_buf(),
        reason,
    }
}

fn pin_links(probes: &mut Probes, dir: &Path) -> Result<(), PinError> {
    // The agent keeps its own descriptors: it holds the links as long as the pins do.
    let links = std::mem::take(&mut probes.links);
    for (n, (program, link)) in links.into_iter().enumerate() {
        let path = dir.join(format!("{LINK_PREFIX}{n:02}-{program}"));
        let pinned = link.pin(&path).map_err(|e| PinError::Pin {
            path,
            reason: chain(&e),
        })?;
        probes.links.push((program, pinned.into()));
    }
    Ok(())
}

fn pin_maps(probes: &Probes, dir: &Path) -> Result<(), PinError> {
    let lost = probes
        .lost
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let ring = probes.ring.as_ref().map(AsFd::as_fd);
    for (name, fd) in [
        (EVENTS, ring),
        (LOST, Some(lost.records.map().fd().as_fd())),
        (UNTRACKED, Some(lost.untracked.map().fd().as_fd())),
    ] {
        let path = dir.join(name);
        let pin_err = |reason: String| PinError::Pin {
            path: path.clone(),
            reason,
        };
        let fd = fd.ok_or_else(|| pin_err("the ring buffer was already taken".into()))?;
        map_data(fd)
            .and_then(|map| map.pin(&path).map_err(|e| chain(&e)))
            .map_err(pin_err)?;
    }
    Ok(())
}

/// A second handle on a map, for pinning it.
fn map_data(fd: BorrowedFd<'_>) -> Result<MapData, String> {
    let owned = fd.try_clone_to_owned().map_err(|e| e.to_string())?;
    MapData::from_fd(owned).map_err(|e| chain(&e))
}

fn open_map(dir: &Path, name: &'static str) -> Result<Map, PinError> {
    MapData::from_pin(dir.join(name))
        .and_then(Map::from_map_data)
        .map_err(read_err(dir, name))
}

fn read_err<'a>(
    dir: &'a Path,
    name: &'static str,
) -> impl Fn(aya::maps::MapError) -> PinError + 'a {
    move |e| PinError::Read {
        path: dir.join(name),
        reason: chain(&e),
    }
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>, PinError> {
    let remove_err = |source| PinError::Remove {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::read_dir(dir)
        .map_err(remove_err)?
        .map(|entry| entry.map(|e| e.path()).map_err(remove_err))
        .collect()
}

fn is_link(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_bytes().starts_with(LINK_PREFIX.as_bytes()))
}

/// Removes one pin. A link is opened first and closed last, so that it is
/// detached when this returns rather than later from a kernel work queue.
fn unpin(path: &Path) -> Result<(), PinError> {
    let removed = match is_link(path).then(|| PinnedLink::from_pin(path)) {
        Some(Ok(link)) => link.unpin().map(drop),
        _ => std::fs::remove_file(path),
    };
    removed.map_err(|source| PinError::Remove {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stale(root: &Path) -> PathBuf {
        let dir = root.join("ciwatch").join("0123456789abcdef");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        for name in [EVENTS, LOST, "link-00-fork_btf"] {
            std::fs::write(dir.join(name), b"").unwrap_or_else(|e| panic!("{e}"));
        }
        dir
    }

    #[test]
    fn the_pins_of_a_dead_agent_are_stale_and_removed() {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = stale(root.path());
        fresh_dir(&dir, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(entries(&dir).map(|e| e.len()).ok(), Some(0));
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.mode() & 0o777).ok();
        assert_eq!(mode(&dir), Some(0o700));
        assert_eq!(mode(dir.parent().unwrap_or(&dir)), Some(0o700));
    }

    #[test]
    fn the_pins_of_a_live_agent_are_refused_and_kept() {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = stale(root.path());
        let err = fresh_dir(&dir, Some(4242)).expect_err("a live agent's pins were replaced");
        assert!(matches!(err, PinError::AgentRunning { pid: 4242 }), "{err}");
        assert!(err.to_string().contains("ciwatch finish"), "{err}");
        assert_eq!(entries(&dir).map(|e| e.len()).ok(), Some(3));
    }

    #[test]
    fn a_parent_that_is_not_our_directory_is_refused() {
        let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(&elsewhere, root.path().join("ciwatch"))
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = root.path().join("ciwatch").join("0123456789abcdef");
        let err = fresh_dir(&dir, None).expect_err("pinned through a symlink");
        assert!(matches!(err, PinError::Foreign { .. }), "{err}");
        assert!(!elsewhere.join("0123456789abcdef").exists());
    }

    #[test]
    fn start_and_finish_name_the_same_directory_from_a_relative_or_absolute_out() {
        let cwd = std::env::current_dir().unwrap_or_else(|e| panic!("{e}"));
        let dir = dir_for(Path::new("ciwatch-out"));
        assert_eq!(dir, dir_for(&cwd.join("ciwatch-out")));
        assert_ne!(dir, dir_for(&cwd.join("other-out")));
        assert!(dir.starts_with("/sys/fs/bpf/ciwatch"), "{}", dir.display());
    }
}
