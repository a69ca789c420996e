//! The agent's configuration file (TOML). Every key is optional; the
//! embedded defaults apply to whatever a file leaves out. See docs/config.md.

use std::path::Path;

use serde::Deserialize;

use crate::filter::sensitive::{RuleError, SensitivePaths, DEFAULT_SENSITIVE};
pub use crate::policy::Mode;
use crate::redact::CaptureArgs;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid UTF-8 (byte {offset}); save it as UTF-8")]
    NotUtf8 { path: String, offset: usize },
    #[error("config file {path} is malformed: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}")]
    Rule { path: String, source: RuleError },
    #[error("config file {path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// observe, learn or enforce (enforce needs a policy; docs/policy.md).
    pub mode: Mode,
    /// What of each argv the event log keeps.
    pub capture_args: CaptureArgs,
    pub files: Files,
    pub hooks: Hooks,
    pub ring: Ring,
    pub lineage: Lineage,
    pub run: Run,
    /// Where sealed traces go (daemon): a local directory and optionally an object store.
    pub output: crate::store::OutputConfig,
    /// The daemon's /healthz, /readyz and /metrics endpoint.
    pub health: crate::health::HealthConfig,
    /// Pod metadata for container attribution on Kubernetes nodes.
    pub kubernetes: crate::attribute::kube::KubeConfig,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Files {
    /// Replaces the default sensitive-path list when given.
    pub sensitive: Option<Vec<String>>,
    /// Added to the sensitive-path list.
    pub extra_sensitive: Vec<String>,
    /// Sensitive matches that are not reported.
    pub ignore: Vec<String>,
}

/// Hooks that may be switched off; exec and lineage always run. A disabled
/// hook is recorded as such in the trace, never silently missing.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hooks {
    pub connect: bool,
    pub file: bool,
    /// The libc uprobe costs every new process that maps libc some microseconds.
    pub dns: bool,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            connect: true,
            file: true,
            dns: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ring {
    /// Ring-buffer size; a power of two, at least one page.
    pub size_bytes: u32,
    /// Backlog at which the kernel wakes the reader early.
    pub wakeup_bytes: u64,
    /// How often the reader drains the ring without a wakeup.
    pub drain_interval_ms: u64,
}

/// The kernel's map of job processes (ebpf/common.bpf.h `tasks`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lineage {
    /// Job processes alive at once that the kernel can follow. One more is
    /// untracked: counted in `trace_end.untracked`, and denied egress under enforce.
    pub max_processes: u32,
}

impl Default for Lineage {
    fn default() -> Self {
        Self {
            max_processes: 65536,
        }
    }
}

/// Bounds of `lineage.max_processes`: a map entry is 24 bytes of kernel memory.
const MAX_PROCESSES: std::ops::RangeInclusive<u32> = 16..=4 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Run {
    /// After the command exits, how long to keep recording its still-running
    /// descendants (daemons) before sealing.
    pub linger_ms: u64,
}

impl Default for Ring {
    fn default() -> Self {
        Self {
            size_bytes: 8 << 20,
            wakeup_bytes: 512 << 10,
            drain_interval_ms: 20,
        }
    }
}

impl Default for Run {
    fn default() -> Self {
        Self { linger_ms: 2000 }
    }
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| ConfigError::NotUtf8 {
            path: name.clone(),
            offset: e.valid_up_to(),
        })?;
        Self::parse(text, &name)
    }

    pub fn parse(text: &str, name: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: name.to_string(),
            message: e.to_string(),
        })?;
        config.validate(name)?;
        Ok(config)
    }

    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: name.to_string(),
            message,
        };
        let size = self.ring.size_bytes;
        if !size.is_power_of_two() || size < 4096 {
            return Err(invalid(format!(
                "ring.size_bytes = {size}: must be a power of two of at least 4096"
            )));
        }
        if self.ring.drain_interval_ms == 0 || self.ring.drain_interval_ms > 10_000 {
            return Err(invalid(
                "ring.drain_interval_ms must be between 1 and 10000".into(),
            ));
        }
        let processes = self.lineage.max_processes;
        if !MAX_PROCESSES.contains(&processes) {
            return Err(invalid(format!(
                "lineage.max_processes = {processes}: must be between {} and {}",
                MAX_PROCESSES.start(),
                MAX_PROCESSES.end()
            )));
        }
        self.sensitive_paths().map_err(|source| ConfigError::Rule {
            path: name.to_string(),
            source,
        })?;
        Ok(())
    }

    pub fn sensitive_paths(&self) -> Result<SensitivePaths, RuleError> {
        let mut list: Vec<String> = match &self.files.sensitive {
            Some(list) => list.clone(),
            None => DEFAULT_SENSITIVE.iter().map(|s| s.to_string()).collect(),
        };
        list.extend(self.files.extra_sensitive.iter().cloned());
        SensitivePaths::new(&list, &self.files.ignore)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.ring.size_bytes, 8 << 20);
        assert_eq!(c.capture_args, CaptureArgs::Redacted);
    }

    #[test]
    fn shipped_example_config_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/config.toml");
        Config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn hooks_can_be_switched_off() {
        let c = Config::parse("[hooks]\ndns = false\n", "t.toml").unwrap();
        assert!(!c.hooks.dns && c.hooks.file && c.hooks.connect);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = Config::parse("[ring]\nsize_bytes = 1000\n", "t.toml").unwrap_err();
        let e = crate::error::chain(&e);
        assert!(e.contains("ring.size_bytes = 1000"), "{e}");
        let e = Config::parse("[lineage]\nmax_processes = 8\n", "t.toml").unwrap_err();
        let e = crate::error::chain(&e);
        assert!(e.contains("lineage.max_processes = 8"), "{e}");
        let e = Config::parse("[files]\nsensitve = []\n", "t.toml").unwrap_err();
        let e = crate::error::chain(&e);
        assert!(e.contains("sensitve") && e.contains("line 2"), "{e}");
        let e = Config::parse("capture_args = \"all\"\n", "t.toml").unwrap_err();
        let e = crate::error::chain(&e);
        assert!(e.contains("capture_args") || e.contains("all"), "{e}");
        let e = Config::parse("[files]\nextra_sensitive = [\"x\"]\n", "t.toml").unwrap_err();
        let e = crate::error::chain(&e);
        assert!(e.contains("must be absolute"), "{e}");
    }
}
