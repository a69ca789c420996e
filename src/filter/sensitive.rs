//! The sensitive-path list (docs/sensitive-paths.md): globs that the kernel
//! pre-filters by one literal path component, refined here on the absolute path.

use crate::bpf::abi::NameKey;
use crate::filter::glob::{normalize, Glob, GlobError};

/// Credential and key material a CI job could steal.
pub const DEFAULT_SENSITIVE: &[&str] = &[
    // SSH private keys, the user's and the host's.
    "**/.ssh/id_*",
    "/etc/ssh/ssh_host_*_key",
    // Cloud credentials: AWS, GCP, Azure.
    "**/.aws/credentials",
    "**/.aws/config",
    "**/.config/gcloud/*",
    "**/legacy_credentials/*/adc.json",
    "**/.azure/*",
    // Container, Kubernetes and package-registry credentials.
    "**/.docker/config.json",
    "**/.kube/config",
    "/etc/kubernetes/admin.conf",
    "/var/run/secrets/kubernetes.io/serviceaccount/token",
    "/run/secrets/kubernetes.io/serviceaccount/token",
    "**/.npmrc",
    "**/.pypirc",
    "**/.git-credentials",
    "**/.config/git/credentials",
    "**/.netrc",
    "**/.gnupg/private-keys-v1.d/*",
    // Local account secrets.
    "/etc/shadow",
    "/etc/gshadow",
    // The CI runner's own credentials (GitHub Actions runner).
    "**/.credentials",
    "**/.credentials_rsaparams",
    "**/.runner",
    // Another process's environment and memory.
    "/proc/*/environ",
    "/proc/*/mem",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error(transparent)]
    Glob(#[from] GlobError),
    #[error(
        "pattern {0:?} is too broad for in-kernel filtering: its last or second-to-last \
         component must be a literal name (no '*' or '?')"
    )]
    TooBroad(String),
    #[error("pattern {0:?}: the literal component the kernel matches must be 1 to 31 bytes")]
    KeyTooLong(String),
}

/// Which component of an open's path the kernel compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelKey {
    Basename(NameKey),
    ParentDir(NameKey),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Sensitive(String),
    Ignored,
    NotSensitive,
}

#[derive(Debug, Clone)]
pub struct SensitivePaths {
    rules: Vec<(Glob, KernelKey)>,
    ignore: Vec<Glob>,
}

impl SensitivePaths {
    pub fn new(sensitive: &[String], ignore: &[String]) -> Result<Self, RuleError> {
        let rules = sensitive
            .iter()
            .map(|p| {
                let glob = Glob::new(p)?;
                let key = kernel_key(&glob)?;
                Ok((glob, key))
            })
            .collect::<Result<_, RuleError>>()?;
        let ignore = ignore
            .iter()
            .map(|p| Glob::new(p))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules, ignore })
    }

    pub fn kernel_keys(&self) -> impl Iterator<Item = &KernelKey> {
        self.rules.iter().map(|(_, key)| key)
    }

    pub fn patterns(&self) -> Vec<String> {
        self.rules
            .iter()
            .map(|(g, _)| g.as_str().to_string())
            .collect()
    }

    pub fn ignore_patterns(&self) -> Vec<String> {
        self.ignore.iter().map(|g| g.as_str().to_string()).collect()
    }

    /// Classifies an absolute path opened by process `tgid`.
    pub fn classify(&self, path: &[u8], tgid: u32) -> Verdict {
        let path = normalize(path);
        if is_own_proc_entry(&path, tgid) {
            return Verdict::NotSensitive;
        }
        let Some((rule, _)) = self.rules.iter().find(|(glob, _)| glob.matches(&path)) else {
            return Verdict::NotSensitive;
        };
        if self.ignore.iter().any(|glob| glob.matches(&path)) {
            return Verdict::Ignored;
        }
        Verdict::Sensitive(rule.as_str().to_string())
    }
}

/// Dot-directories are specific enough to filter on; otherwise the file name is.
fn kernel_key(glob: &Glob) -> Result<KernelKey, RuleError> {
    let key =
        |c: &[u8]| NameKey::new(c).ok_or_else(|| RuleError::KeyTooLong(glob.as_str().to_string()));
    match (glob.literal_parent(), glob.literal_basename()) {
        (Some(dir), _) if dir.starts_with(b".") && dir.len() > 1 => {
            Ok(KernelKey::ParentDir(key(dir)?))
        }
        (_, Some(base)) => Ok(KernelKey::Basename(key(base)?)),
        (Some(dir), None) => Ok(KernelKey::ParentDir(key(dir)?)),
        (None, None) => Err(RuleError::TooBroad(glob.as_str().to_string())),
    }
}

/// A process reading its own /proc entries is not stealing anything.
fn is_own_proc_entry(path: &[u8], tgid: u32) -> bool {
    let mut parts = path.split(|&b| b == b'/').filter(|c| !c.is_empty());
    if parts.next() != Some(b"proc") {
        return false;
    }
    match parts.next() {
        Some(b"self" | b"thread-self") => true,
        Some(pid) => pid == tgid.to_string().as_bytes(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> SensitivePaths {
        let list: Vec<String> = DEFAULT_SENSITIVE.iter().map(|s| s.to_string()).collect();
        SensitivePaths::new(&list, &["**/.ssh/id_*.pub".to_string()]).unwrap()
    }

    #[test]
    fn defaults_compile_to_kernel_keys() {
        assert_eq!(defaults().kernel_keys().count(), DEFAULT_SENSITIVE.len());
    }

    #[test]
    fn classifies_paths() {
        let s = defaults();
        assert_eq!(
            s.classify(b"/root/.ssh/id_rsa", 1),
            Verdict::Sensitive("**/.ssh/id_*".into())
        );
        assert_eq!(s.classify(b"/root/.ssh/id_rsa.pub", 1), Verdict::Ignored);
        assert_eq!(
            s.classify(b"/root/.ssh/known_hosts", 1),
            Verdict::NotSensitive
        );
        assert_eq!(
            s.classify(b"/etc/shadow", 1),
            Verdict::Sensitive("/etc/shadow".into())
        );
        assert_eq!(s.classify(b"/etc/passwd", 1), Verdict::NotSensitive);
    }

    #[test]
    fn own_proc_entries_are_not_sensitive() {
        let s = defaults();
        assert_eq!(s.classify(b"/proc/self/environ", 42), Verdict::NotSensitive);
        assert_eq!(s.classify(b"/proc/42/environ", 42), Verdict::NotSensitive);
        assert_eq!(
            s.classify(b"/proc/41/mem", 42),
            Verdict::Sensitive("/proc/*/mem".into())
        );
    }

    #[test]
    fn too_broad_and_too_long_patterns_are_errors() {
        assert!(matches!(
            SensitivePaths::new(&["/**/*".into()], &[]),
            Err(RuleError::TooBroad(_))
        ));
        let long = format!("/x/{}", "a".repeat(40));
        assert!(matches!(
            SensitivePaths::new(&[long], &[]),
            Err(RuleError::KeyTooLong(_))
        ));
    }
}
