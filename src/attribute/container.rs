//! Which container a process runs in, from its cgroup path.
//!
//! Processes of a container job (GitHub `container:`, a Tekton step, a GitLab
//! Kubernetes build) live under containerd-shim, outside the runner's process
//! tree. Their cgroup still names the container: the runtime and cgroup driver
//! decide how. [`parse`] knows containerd, CRI-O, docker and podman under the
//! cgroupfs and systemd drivers, on cgroup v1 and v2 (the path layout is the
//! same in both; v1 repeats it once per controller). Anything else is `None`,
//! and callers keep the raw path.
//!
//! [`CgroupPaths`] maps a cgroup v2 id (what `bpf_get_current_cgroup_id()`
//! returns: the inode number of the cgroup's directory) back to its path by
//! walking the cgroup2 mount found in `/proc/self/mountinfo`.

use std::collections::HashMap;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("no cgroup2 file system is mounted (none in /proc/self/mountinfo); mount one, or on Kubernetes mount the host's /sys/fs/cgroup")]
    NoCgroup2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
    Crio,
    Docker,
    Podman,
    /// A bare id under the cgroupfs driver: kubelet's layout names the pod,
    /// not the runtime. The pod's `containerStatuses[].containerID`
    /// (`containerd://…`, `cri-o://…`) tells, see `attribute::kube`.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// `*.slice`/`*.scope` units.
    Systemd,
    /// Plain directories.
    Cgroupfs,
}

/// What the cgroup path says about where the container was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// Under `kubepods`: a Kubernetes pod's container.
    Kubepods,
    /// Under `actions_job`: the GitHub runner's job or service container.
    ActionsJob,
    /// Under `docker/buildx`: a buildx `docker-container` builder.
    Buildx,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerRef {
    /// 64 lowercase hex digits, as the runtime names the container.
    pub id: String,
    pub runtime: Runtime,
    pub driver: Driver,
    pub placement: Placement,
    /// The pod's uid with dashes (the systemd driver writes `_`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// `guaranteed`, `burstable` or `besteffort`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<&'static str>,
    /// A container nested in this one (docker-in-docker, a BuildKit RUN step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inner: Option<String>,
    /// The process is the runtime's monitor for the container (CRI-O's and
    /// podman's conmon), not inside it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub monitor: bool,
}

/// The container a cgroup path belongs to; `None` for host services, user
/// sessions and layouts this parser does not know.
pub fn parse(path: &str) -> Option<ContainerRef> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let kube_at = parts
        .iter()
        .position(|p| *p == "kubepods" || *p == "kubepods.slice");
    let mut pod_uid = None;
    let mut qos = None;
    let mut pod_at = None;
    if let Some(k) = kube_at {
        for (i, part) in parts.iter().enumerate().skip(k + 1) {
            if let Some(q) = qos_of(part) {
                qos = Some(q);
            }
            if let Some(uid) = pod_segment(part) {
                pod_uid = Some(uid);
                pod_at = Some(i);
                qos.get_or_insert("guaranteed");
                break;
            }
        }
    }
    // Container segments, outermost first. With a pod in the path the
    // container the kubelet knows is the first one below the pod (a kind
    // node's own container sits above `kubepods`).
    let start = pod_at.map_or(0, |p| p + 1);
    let mut found: Vec<(usize, Segment)> = Vec::new();
    for (i, part) in parts.iter().enumerate().skip(start) {
        if let Some(seg) = segment(&parts, i, part) {
            found.push((i, seg));
        }
    }
    let (first_at, first) = found.first()?.clone();
    let inner = found.iter().skip(1).last().map(|(_, s)| s.id.clone());
    let placement = if pod_uid.is_some() || kube_at.is_some_and(|k| k < first_at) {
        Placement::Kubepods
    } else if first_at > 0 && parts[first_at - 1] == "actions_job"
        || parts.first() == Some(&"actions_job.slice")
    {
        Placement::ActionsJob
    } else if first_at > 1 && parts[first_at - 1] == "buildx" && parts[first_at - 2] == "docker" {
        Placement::Buildx
    } else {
        Placement::Other
    };
    let mut runtime = first.runtime;
    if runtime == Runtime::Unknown && matches!(placement, Placement::ActionsJob | Placement::Buildx)
    {
        runtime = Runtime::Docker;
    }
    // A pod slice means kubelet runs the systemd driver even where the
    // runtime left `.scope` off the container's cgroup.
    let driver = match pod_at {
        Some(p) if parts[p].ends_with(".slice") => Driver::Systemd,
        _ => first.driver,
    };
    Some(ContainerRef {
        id: first.id,
        runtime,
        driver,
        placement,
        pod_uid,
        qos: if placement == Placement::Kubepods {
            qos
        } else {
            None
        },
        inner,
        monitor: first.monitor,
    })
}

#[derive(Debug, Clone)]
struct Segment {
    id: String,
    runtime: Runtime,
    driver: Driver,
    monitor: bool,
}

fn segment(parts: &[&str], i: usize, part: &str) -> Option<Segment> {
    let unit = part.strip_suffix(".scope");
    let name = unit.unwrap_or(part);
    let seg = |id: &str, runtime, driver, monitor| {
        hex64(id).map(|id| Segment {
            id,
            runtime,
            driver,
            monitor,
        })
    };
    // containerd's systemd-style cgroupsPath written verbatim by a cgroupfs
    // manager: `kubepods-…-pod<uid>.slice:cri-containerd:<id>`.
    if let Some((_, id)) = part.rsplit_once(":cri-containerd:") {
        return seg(id, Runtime::Containerd, Driver::Systemd, false);
    }
    let prefixed: [(&str, Runtime, bool); 7] = [
        ("cri-containerd-", Runtime::Containerd, false),
        ("crio-conmon-", Runtime::Crio, true),
        ("crio-", Runtime::Crio, false),
        ("docker-", Runtime::Docker, false),
        ("libpod-conmon-", Runtime::Podman, true),
        ("libpod-", Runtime::Podman, false),
        ("nerdctl-", Runtime::Containerd, false),
    ];
    for (prefix, runtime, monitor) in prefixed {
        if let Some(id) = name.strip_prefix(prefix) {
            // `crio-<id>` without `.scope` is CRI-O under cgroupfs.
            let driver = if unit.is_some() {
                Driver::Systemd
            } else {
                Driver::Cgroupfs
            };
            return seg(id, runtime, driver, monitor);
        }
    }
    if unit.is_some() {
        return None;
    }
    // A bare id: docker (`/docker/<id>`, and its `--cgroup-parent`s), or a
    // CRI runtime under kubelet's cgroupfs layout.
    let runtime = if i > 0 && parts[i - 1] == "docker" {
        Runtime::Docker
    } else {
        Runtime::Unknown
    };
    if let Some(s) = seg(part, runtime, Driver::Cgroupfs, false) {
        return Some(s);
    }
    // BuildKit's runc worker puts each RUN step in `buildkit/<random id>`.
    if i > 0
        && parts[i - 1] == "buildkit"
        && part.len() >= 20
        && part.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Some(Segment {
            id: part.to_string(),
            runtime: Runtime::Unknown,
            driver: Driver::Cgroupfs,
            monitor: false,
        });
    }
    None
}

fn hex64(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

fn qos_of(part: &str) -> Option<&'static str> {
    match part {
        "burstable" | "kubepods-burstable.slice" => Some("burstable"),
        "besteffort" | "kubepods-besteffort.slice" => Some("besteffort"),
        _ => None,
    }
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid>.slice` (systemd, with
/// `_` for `-` because `-` separates slice levels). Static pods have a 32-hex
/// uid (the config hash) without dashes.
fn pod_segment(part: &str) -> Option<String> {
    let raw = if let Some(slice) = part.strip_suffix(".slice") {
        slice.rsplit_once("-pod")?.1
    } else {
        part.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-").to_ascii_lowercase();
    let hex_and_dashes = uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let dashed = uid.len() == 36 && [8, 13, 18, 23].iter().all(|&i| uid.as_bytes()[i] == b'-');
    let hash = uid.len() == 32 && !uid.contains('-');
    (hex_and_dashes && (dashed || hash)).then_some(uid)
}

/// The cgroup path to parse from a `/proc/<pid>/cgroup` file: the cgroup v2
/// entry (`0::<path>`) when it names a container, else the first v1
/// controller line that does (hybrid hosts keep containers in v1 only).
pub fn path_from_proc_cgroup(text: &str) -> Option<String> {
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(_controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == "0" {
            v2 = Some(path.to_string());
        } else if v1.is_none() && parse(path).is_some() {
            v1 = Some(path.to_string());
        }
    }
    match (v2, v1) {
        (Some(p), _) if parse(&p).is_some() => Some(p),
        (_, Some(p)) => Some(p),
        (p, None) => p,
    }
}

/// Maps cgroup v2 ids to paths relative to the cgroup2 root.
pub struct CgroupPaths {
    mount: PathBuf,
    /// Prepended to paths under `mount` when the mount is a bind of a subtree.
    prefix: String,
    index: HashMap<u64, String>,
    last_walk: Option<Instant>,
    /// Misses within this interval of a walk do not walk again.
    pub min_rewalk: Duration,
}

impl CgroupPaths {
    /// Finds the cgroup2 mount in `/proc/self/mountinfo` (on this kind of
    /// hybrid host it is `/sys/fs/cgroup/unified`; on pure v2, `/sys/fs/cgroup`).
    pub fn discover() -> Result<Self, ContainerError> {
        let path = "/proc/self/mountinfo";
        let text = std::fs::read_to_string(path).map_err(|source| ContainerError::Read {
            path: path.to_string(),
            source,
        })?;
        Self::from_mountinfo(&text)
    }

    pub fn from_mountinfo(text: &str) -> Result<Self, ContainerError> {
        let (mount, root) = cgroup2_mount(text).ok_or(ContainerError::NoCgroup2)?;
        // A root of `/..` means the mount shows cgroups above our own cgroup
        // namespace (a host bind mount in a pod): paths under it are taken as
        // the host's. A plain subtree root is prepended to what the walk finds.
        let prefix = if root == "/" || root.starts_with("/..") {
            String::new()
        } else {
            root
        };
        Ok(Self::at(PathBuf::from(mount), prefix))
    }

    pub fn at(mount: PathBuf, prefix: String) -> Self {
        Self {
            mount,
            prefix,
            index: HashMap::new(),
            last_walk: None,
            min_rewalk: Duration::from_millis(100),
        }
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The path (`/kubepods.slice/…`) of cgroup `id`, walking the hierarchy
    /// again on a miss unless a walk just happened.
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.index.get(&id) {
            return Some(p.clone());
        }
        if self
            .last_walk
            .is_some_and(|t| t.elapsed() < self.min_rewalk)
        {
            return None;
        }
        self.walk();
        self.index.get(&id).cloned()
    }

    /// The container of cgroup `id`, if its path names one.
    pub fn container_of(&mut self, id: u64) -> Option<ContainerRef> {
        self.path_of(id).and_then(|p| parse(&p))
    }

    /// Records a cgroup learnt elsewhere (a cgroup_mkdir tracepoint, say).
    pub fn insert(&mut self, id: u64, path: String) {
        self.index.insert(id, path);
    }

    /// Rebuilds the index from the file system; removed cgroups drop out.
    pub fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        let mut index = HashMap::with_capacity(self.index.len().max(64));
        let root_path = if self.prefix.is_empty() {
            "/".to_string()
        } else {
            self.prefix.clone()
        };
        if let Ok(meta) = std::fs::metadata(&self.mount) {
            index.insert(meta.ino(), root_path);
        }
        let mut stack = vec![(self.mount.clone(), self.prefix.clone())];
        while let Some((dir, rel)) = stack.pop() {
            // A cgroup removed mid-walk is simply not indexed.
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = format!("{rel}/{name}");
                // For kernfs, readdir's d_ino is the cgroup id; no stat needed.
                index.insert(entry.ino(), child.clone());
                stack.push((entry.path(), child));
            }
        }
        tracing::debug!(cgroups = index.len(), mount = %self.mount.display(), "indexed cgroup v2 hierarchy");
        self.index = index;
    }
}

/// (mount point, root) of the cgroup2 mount to walk. Prefers a mount that
/// reaches above our cgroup namespace, else one of its whole hierarchy; the
/// last of equals wins, as it shadows the earlier ones.
fn cgroup2_mount(mountinfo: &str) -> Option<(String, String)> {
    let mut best: Option<(u8, String, String)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        if fields.len() < 5 {
            continue;
        }
        let root = unescape(fields[3]);
        let mount = unescape(fields[4]);
        let rank = if root.starts_with("/..") {
            3
        } else if root == "/" {
            2
        } else {
            1
        };
        if best.as_ref().is_none_or(|(r, _, _)| rank >= *r) {
            best = Some((rank, mount, root));
        }
    }
    best.map(|(_, m, r)| (m, r))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "c74b0f5062f0bc726cae1e9369ad4a95deed6b298d247f0407475adb23fa3190";

    fn check(
        path: &str,
        id: &str,
        runtime: Runtime,
        driver: Driver,
        placement: Placement,
        pod: Option<&str>,
    ) -> ContainerRef {
        let c = parse(path).unwrap_or_else(|| panic!("no container in {path}"));
        assert_eq!(
            (c.id.as_str(), c.runtime, c.driver, c.placement),
            (id, runtime, driver, placement),
            "{path}"
        );
        assert_eq!(c.pod_uid.as_deref(), pod, "{path}");
        c
    }

    // Samples from coroot/coroot-node-agent cgroup/cgroup_test.go (commit
    // 0789560003c8), taken from real nodes of each runtime and driver.
    #[test]
    fn containerd() {
        // systemd driver; a static pod (32-hex config-hash uid); no `.scope`.
        let c = check(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3e61c214bc3ed9ff81e21474dd6cba17.slice/cri-containerd-c74b0f5062f0bc726cae1e9369ad4a95deed6b298d247f0407475adb23fa3190",
            ID, Runtime::Containerd, Driver::Systemd, Placement::Kubepods, Some("3e61c214bc3ed9ff81e21474dd6cba17"),
        );
        assert_eq!(c.qos, Some("burstable"));
        // The systemd-style cgroupsPath kept verbatim by a cgroupfs manager.
        check(
            "/system.slice/containerd.service/kubepods-burstable-pod4ed02c0b_0df8_4d14_a30e_fd589ee4143a.slice:cri-containerd:d4a9f9195eaf7e4a729f24151101e1de61f1398677e7b82acfb936dff0b4ce55",
            "d4a9f9195eaf7e4a729f24151101e1de61f1398677e7b82acfb936dff0b4ce55", Runtime::Containerd, Driver::Systemd, Placement::Other, None,
        );
        // systemd driver on cgroup v2 (the common kubeadm/GKE/EKS layout):
        // containerd's cgroupsPath `kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`
        // becomes a `.scope` unit (runc libcontainer/cgroups/systemd).
        let c = check(
            &format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8712f785_1a3e_41ec_a00b_e2dcc77431cb.slice/cri-containerd-{ID}.scope"),
            ID, Runtime::Containerd, Driver::Systemd, Placement::Kubepods, Some("8712f785-1a3e-41ec-a00b-e2dcc77431cb"),
        );
        assert_eq!(c.qos, Some("besteffort"));
        // A guaranteed pod has no QoS slice.
        let c = check(
            &format!("/kubepods.slice/kubepods-pod8712f785_1a3e_41ec_a00b_e2dcc77431cb.slice/cri-containerd-{ID}.scope"),
            ID, Runtime::Containerd, Driver::Systemd, Placement::Kubepods, Some("8712f785-1a3e-41ec-a00b-e2dcc77431cb"),
        );
        assert_eq!(c.qos, Some("guaranteed"));
    }

    #[test]
    fn kubelet_cgroupfs_names_no_runtime() {
        // cgroupfs driver (v1 controller path, same on v2): a bare id.
        let c = check(
            "/kubepods/burstable/pod6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e/17db96a24ae1e9dd57143e62b1cb0d2d35e693c65c774c7470e87b0572e07c1a",
            "17db96a24ae1e9dd57143e62b1cb0d2d35e693c65c774c7470e87b0572e07c1a", Runtime::Unknown, Driver::Cgroupfs, Placement::Kubepods,
            Some("6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e"),
        );
        assert_eq!(c.qos, Some("burstable"));
        // A sub-cgroup inside the container keeps the container.
        check(
            "/kubepods/besteffort/pod0d08203e-255a-11e9-8cd9-0007cb0b2cc8/671a50f5d60566556912f61511d0ec9e4d5c78d53fbc4676727180438bbbbc55/kube-proxy",
            "671a50f5d60566556912f61511d0ec9e4d5c78d53fbc4676727180438bbbbc55", Runtime::Unknown, Driver::Cgroupfs, Placement::Kubepods,
            Some("0d08203e-255a-11e9-8cd9-0007cb0b2cc8"),
        );
        let c = check(
            "/kubepods/poda38c12e8-255a-11e9-8cd9-0007cb0b2cc8/32c562ed81a2622b37b80cb216859820ba51bd694f60ee4cf10d07a4011266f8",
            "32c562ed81a2622b37b80cb216859820ba51bd694f60ee4cf10d07a4011266f8", Runtime::Unknown, Driver::Cgroupfs, Placement::Kubepods,
            Some("a38c12e8-255a-11e9-8cd9-0007cb0b2cc8"),
        );
        assert_eq!(c.qos, Some("guaranteed"));
    }

    #[test]
    fn crio() {
        check(
            "/kubepods/poda48c12e8-255a-11e9-8cd9-0007cb0b2cc8/crio-63425c4a8b4291744a79dd9011fddc7a1f8ffda61f65d72196aa01d00cae2e2e",
            "63425c4a8b4291744a79dd9011fddc7a1f8ffda61f65d72196aa01d00cae2e2e", Runtime::Crio, Driver::Cgroupfs, Placement::Kubepods,
            Some("a48c12e8-255a-11e9-8cd9-0007cb0b2cc8"),
        );
        check(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2942c55e_c9cb_428a_93f4_eaf89c1f3ce0.slice/crio-49f9e8e5395d57c1083996c09e2e6f042d5fe1ec0310facab32f94912b35ce59.scope",
            "49f9e8e5395d57c1083996c09e2e6f042d5fe1ec0310facab32f94912b35ce59", Runtime::Crio, Driver::Systemd, Placement::Kubepods,
            Some("2942c55e-c9cb-428a-93f4-eaf89c1f3ce0"),
        );
        // CRI-O on cgroup v2 puts the processes in a `container` sub-cgroup.
        check(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podea19ff5d_943a_4466_a07e_a71e9e50cc62.slice/crio-21572039dd8398ff8272b031fa5422a40165145ab37f2f8794e1e7f844fe8118.scope/container",
            "21572039dd8398ff8272b031fa5422a40165145ab37f2f8794e1e7f844fe8118", Runtime::Crio, Driver::Systemd, Placement::Kubepods,
            Some("ea19ff5d-943a-4466-a07e-a71e9e50cc62"),
        );
        // conmon, CRI-O's monitor, in its own scope beside the container's.
        let c = parse(&format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podea19ff5d_943a_4466_a07e_a71e9e50cc62.slice/crio-conmon-{ID}.scope")).unwrap();
        assert!(c.monitor && c.runtime == Runtime::Crio && c.id == ID);
    }

    #[test]
    fn docker() {
        check(
            "/docker/63425c4a8b4291744a79dd9011fddc7a1f8ffda61f65d72196aa01d00cae2e2d",
            "63425c4a8b4291744a79dd9011fddc7a1f8ffda61f65d72196aa01d00cae2e2d",
            Runtime::Docker,
            Driver::Cgroupfs,
            Placement::Other,
            None,
        );
        check(
            "/system.slice/docker-cf87ba651579c9231db817909e7865e5747bd7abcac0c57ce23cf4abbaee046b.scope",
            "cf87ba651579c9231db817909e7865e5747bd7abcac0c57ce23cf4abbaee046b", Runtime::Docker, Driver::Systemd, Placement::Other, None,
        );
        // dockershim/cri-dockerd under the systemd driver.
        check(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8712f785_1a3e_41ec_a00b_e2dcc77431cb.slice/docker-73051af271105c07e1f493b34856a77e665e3b0b4fc72f76c807dfbffeb881bd.scope",
            "73051af271105c07e1f493b34856a77e665e3b0b4fc72f76c807dfbffeb881bd", Runtime::Docker, Driver::Systemd, Placement::Kubepods,
            Some("8712f785-1a3e-41ec-a00b-e2dcc77431cb"),
        );
    }

    #[test]
    fn ci_layouts() {
        // GitHub-hosted runners start job and service containers under the
        // `actions_job` cgroup parent (castai/kvisor cgroup.go; the
        // step-security/agent eventhandler.go reads the same segment).
        check(
            &format!("/actions_job/{ID}"),
            ID,
            Runtime::Docker,
            Driver::Cgroupfs,
            Placement::ActionsJob,
            None,
        );
        // buildx's docker-container driver uses `/docker/buildx` under
        // cgroupfs (docker/buildx driver/docker-container/driver.go).
        check(
            &format!("/docker/buildx/{ID}"),
            ID,
            Runtime::Docker,
            Driver::Cgroupfs,
            Placement::Buildx,
            None,
        );
        // A BuildKit RUN step inside that builder.
        let c = parse(&format!(
            "/docker/buildx/{ID}/buildkit/k2vq9x1tmb4lr0xw1z6o1mkdj"
        ))
        .unwrap();
        assert_eq!(
            (c.id.as_str(), c.inner.as_deref()),
            (ID, Some("k2vq9x1tmb4lr0xw1z6o1mkdj"))
        );
        // podman (castai/kvisor cgroup.go `libpod-`).
        check(
            &format!("/machine.slice/libpod-{ID}.scope"),
            ID,
            Runtime::Podman,
            Driver::Systemd,
            Placement::Other,
            None,
        );
    }

    #[test]
    fn nested_containers() {
        // A kind node: the node is a docker container, the pod's container is inside it.
        let node = "0e612005fd07e7f47e2cd07df99a2b4e909446814d71d0b5e4efc7159dd51252";
        let c = check(
            &format!("/system.slice/docker-{node}.scope/kubepods/besteffort/pod0d08203e-255a-11e9-8cd9-0007cb0b2cc8/{ID}"),
            ID, Runtime::Unknown, Driver::Cgroupfs, Placement::Kubepods, Some("0d08203e-255a-11e9-8cd9-0007cb0b2cc8"),
        );
        assert_eq!(c.inner, None);
        // docker-in-docker: the outer container is the one the host knows.
        let inner = "63425c4a8b4291744a79dd9011fddc7a1f8ffda61f65d72196aa01d00cae2e2d";
        let c = parse(&format!("/system.slice/docker-{ID}.scope/docker/{inner}")).unwrap();
        assert_eq!((c.id.as_str(), c.inner.as_deref()), (ID, Some(inner)));
    }

    #[test]
    fn unknown_layouts_are_none() {
        for path in [
            "/",
            "/init.scope",
            "/system.slice/ssh.service",
            "/system.slice/docker.service",
            "/user.slice/user-1000.slice/session-2.scope",
            "/kubepods.slice/kubepods-besteffort.slice",
            "/kubepods/burstable/pod6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e",
            "/docker/not-an-id",
            "/system.slice/docker-abc.scope",
            "/lxc/mysql-primary-db",
        ] {
            assert_eq!(parse(path), None, "{path}");
        }
    }

    #[test]
    fn proc_cgroup_files() {
        // Hybrid host: the container is only in the v1 controllers.
        let hybrid = format!(
            "12:memory:/kubepods/burstable/pod6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e/{ID}\n\
             1:name=systemd:/kubepods/burstable/pod6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e/{ID}\n0::/\n"
        );
        assert_eq!(
            path_from_proc_cgroup(&hybrid).unwrap(),
            format!("/kubepods/burstable/pod6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e/{ID}")
        );
        let v2 = format!("0::/actions_job/{ID}\n");
        assert_eq!(
            path_from_proc_cgroup(&v2).unwrap(),
            format!("/actions_job/{ID}")
        );
        assert_eq!(
            path_from_proc_cgroup("0::/user.slice/user-0.slice/session-1.scope\n").unwrap(),
            "/user.slice/user-0.slice/session-1.scope"
        );
    }

    #[test]
    fn mountinfo_selection() {
        // This project's hybrid development hosts.
        let hybrid = "25 30 0:23 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate\n\
                      27 25 0:25 / /sys/fs/cgroup/memory rw shared:11 - cgroup cgroup rw,memory\n";
        let p = CgroupPaths::from_mountinfo(hybrid).unwrap();
        assert_eq!(p.mount(), Path::new("/sys/fs/cgroup/unified"));
        // A pod with its own cgroup namespace and the host's hierarchy bind-mounted.
        let pod = "600 500 0:30 / /sys/fs/cgroup ro - cgroup2 cgroup rw\n\
                   610 500 0:30 /../../.. /host/sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(
            CgroupPaths::from_mountinfo(pod).unwrap().mount(),
            Path::new("/host/sys/fs/cgroup")
        );
        let escaped = "26 25 0:24 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            CgroupPaths::from_mountinfo(escaped).unwrap().mount(),
            Path::new("/mnt/cg two")
        );
        assert!(matches!(
            CgroupPaths::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            Err(ContainerError::NoCgroup2)
        ));
    }

    #[test]
    fn ids_map_to_paths_in_a_directory_tree() {
        // The walk itself, over an ordinary tree (inode numbers play the ids).
        let dir = tempfile::tempdir().unwrap();
        let leaf = dir.path().join(format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod8712f785_1a3e_41ec_a00b_e2dcc77431cb.slice/cri-containerd-{ID}.scope"));
        std::fs::create_dir_all(&leaf).unwrap();
        let id = std::fs::metadata(&leaf).unwrap().ino();
        let mut paths = CgroupPaths::at(dir.path().to_path_buf(), String::new());
        assert_eq!(paths.container_of(id).unwrap().id, ID);
        assert_eq!(
            paths.path_of(u64::MAX),
            None,
            "a miss right after a walk does not walk again"
        );
        paths.min_rewalk = Duration::ZERO;
        let late = dir.path().join("late");
        std::fs::create_dir(&late).unwrap();
        assert_eq!(
            paths
                .path_of(std::fs::metadata(&late).unwrap().ino())
                .as_deref(),
            Some("/late")
        );
    }

    /// On the real cgroup v2 mount: creates a cgroup whose path mimics a
    /// containerd pod, moves a child process into it and checks that its id
    /// (the directory's inode, what the kernel reports) resolves to that
    /// container. Needs root; under CI it must run.
    #[test]
    #[ignore = "needs root: creates cgroups (scripts/test runs it)"]
    fn real_cgroup_v2_mount() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "creating cgroups needs root (scripts/test runs this)"
        );
        let mut paths = CgroupPaths::discover().expect("a cgroup2 mount");
        let uid = "8712f785-1a3e-41ec-a00b-e2dcc77431cb";
        let rel = format!(
            "ciwatch-test-{}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            std::process::id(),
            uid.replace('-', "_")
        );
        let top = paths.mount().join(rel.split('/').next().unwrap());
        let leaf = paths.mount().join(&rel);
        std::fs::create_dir_all(&leaf).expect("mkdir in the cgroup2 mount");
        struct Cleanup(PathBuf, PathBuf, Option<std::process::Child>);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                if let Some(mut c) = self.2.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                // rmdir deepest first; a cgroup dir is removed with rmdir only.
                let mut dir = self.1.clone();
                while dir.starts_with(&self.0) {
                    let _ = std::fs::remove_dir(&dir);
                    if !dir.pop() {
                        break;
                    }
                }
            }
        }
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let _guard = Cleanup(top, leaf.clone(), Some(child));
        std::fs::write(leaf.join("cgroup.procs"), pid.to_string())
            .expect("move the child into the cgroup");
        let id = std::fs::metadata(&leaf).unwrap().ino();
        let c = paths.container_of(id).expect("the new cgroup resolves");
        assert_eq!(
            (c.id.as_str(), c.runtime, c.pod_uid.as_deref()),
            (ID, Runtime::Containerd, Some(uid))
        );
        // The kernel's own view of the child's cgroup agrees with the walk.
        let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let v2 = proc_cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap();
        assert_eq!(v2, paths.path_of(id).unwrap());
    }
}
