//! The options every subcommand that runs the agent shares.

use std::path::PathBuf;

use crate::config::{Config, ConfigError};
use crate::redact::CaptureArgs;

#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Agent configuration (TOML). Without it the embedded defaults apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kernel BTF to use instead of /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// What of each argv the log keeps (overrides the config file).
    #[arg(long, value_enum)]
    pub capture_args: Option<CaptureArgs>,
    /// Record even if a hook cannot attach on this kernel; the gap is recorded.
    #[arg(long)]
    pub allow_partial: bool,
}

impl AgentArgs {
    /// The configuration file (or the embedded defaults) with the command-line overrides applied.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut config = Config::load(self.config.as_deref())?;
        if let Some(policy) = self.capture_args {
            config.capture_args = policy;
        }
        Ok(config)
    }

    /// How messages name the configuration in use.
    pub fn config_name(&self) -> String {
        self.config
            .as_ref()
            .map_or("embedded defaults".to_string(), |p| p.display().to_string())
    }
}
