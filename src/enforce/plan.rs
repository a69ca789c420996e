//! Deciding the effective mode. An unusable policy in enforce mode fails the
//! job at start (fail closed) unless `--on-policy-error observe` was asked
//! for; that fallback is recorded in the trace, the summary and the
//! attestation, so a downgrade is never silent.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::{parse_endpoint, Defaults, Rule};
use crate::config::Mode;
use crate::event::PolicyRef;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ModeArgs {
    /// observe, learn or enforce (overrides the config file).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Egress policy file (YAML; docs/policy.md).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Allow an endpoint (repeatable): host, *.wildcard, IP or CIDR, with optional :PORT and /tcp or /udp.
    #[arg(long = "allow", value_name = "ENDPOINT")]
    pub allow: Vec<String>,
    /// Do not allow loopback (127.0.0.1, ::1) and the resolvers of /etc/resolv.conf by default.
    #[arg(long)]
    pub no_default_allow: bool,
    /// What an unusable policy in enforce mode does: fail the job (default) or fall back to observe, recorded.
    #[arg(long, value_enum, default_value = "fail")]
    pub on_policy_error: OnPolicyError,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnPolicyError {
    #[default]
    Fail,
    Observe,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "enforce mode with an empty allowlist would block everything but loopback and the resolver; \
         allow endpoints with --allow or --policy, or pass --on-policy-error observe to record only"
    )]
    Empty,
}

/// The mode that will run, and what enforcement needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    pub requested: Mode,
    /// Why the effective mode differs from the requested one.
    pub fallback: Option<String>,
    pub rules: Vec<Rule>,
    pub defaults: Defaults,
    pub policy: Option<PolicyRef>,
}

impl Plan {
    pub fn enforce(&self) -> bool {
        self.mode == Mode::Enforce
    }
}

pub fn plan(args: &ModeArgs, config_mode: Mode) -> Result<Plan, PlanError> {
    let requested = args.mode.unwrap_or(config_mode);
    let defaults = Defaults { loopback: !args.no_default_allow, resolver: !args.no_default_allow };
    let rules = match load_rules(args) {
        Ok(r) => r,
        Err(e) => return fallback_or(args, requested, defaults, e),
    };
    if requested == Mode::Enforce && rules.is_empty() {
        return fallback_or(args, requested, defaults, PlanError::Empty);
    }
    let policy = (!args.allow.is_empty()).then(|| PolicyRef {
        source: "--allow".into(),
        version: 1,
        sha256: hex::encode(Sha256::digest(args.allow.join("\n").as_bytes())),
        rules: rules.len(),
    });
    Ok(Plan { mode: requested, requested, fallback: None, rules, defaults, policy })
}

fn load_rules(args: &ModeArgs) -> Result<Vec<Rule>, PlanError> {
    if let Some(file) = &args.policy {
        return Err(PlanError::Invalid(format!("{}: policy files are read by the policy module, which this build lacks", file.display())));
    }
    args.allow.iter().map(|e| parse_endpoint(e).map_err(PlanError::Invalid)).collect()
}

fn fallback_or(args: &ModeArgs, requested: Mode, defaults: Defaults, error: PlanError) -> Result<Plan, PlanError> {
    if requested != Mode::Enforce || args.on_policy_error == OnPolicyError::Fail {
        return Err(error);
    }
    tracing::warn!("policy unusable, recording only (--on-policy-error observe): {error}");
    Ok(Plan { mode: Mode::Observe, requested, fallback: Some(error.to_string()), rules: Vec::new(), defaults, policy: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(mode: Mode, allow: &[&str], on_error: OnPolicyError) -> ModeArgs {
        ModeArgs { mode: Some(mode), policy: None, allow: allow.iter().map(|s| s.to_string()).collect(), no_default_allow: false, on_policy_error: on_error }
    }

    #[test]
    fn an_empty_allowlist_fails_closed_unless_observe_is_asked_for() {
        assert!(matches!(plan(&args(Mode::Enforce, &[], OnPolicyError::Fail), Mode::Observe), Err(PlanError::Empty)));
        let p = plan(&args(Mode::Enforce, &[], OnPolicyError::Observe), Mode::Observe).unwrap();
        assert_eq!((p.mode, p.requested), (Mode::Observe, Mode::Enforce));
        assert!(p.fallback.unwrap().contains("empty allowlist"));
    }

    #[test]
    fn a_bad_endpoint_fails_closed() {
        let e = plan(&args(Mode::Enforce, &["10.0.0.1/8"], OnPolicyError::Fail), Mode::Observe).unwrap_err();
        assert!(e.to_string().contains("host bits"), "{e}");
    }

    #[test]
    fn allow_endpoints_are_digested() {
        let p = plan(&args(Mode::Enforce, &["127.0.0.1"], OnPolicyError::Fail), Mode::Observe).unwrap();
        assert!(p.enforce());
        assert_eq!(p.policy.unwrap().rules, 1);
    }
}
