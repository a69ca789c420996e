//! Deciding the effective mode and policy. An unusable policy in enforce mode
//! fails the job at start (fail closed) unless `on-policy-error: observe` (in
//! the file, or `--on-policy-error observe`) asks for the documented fallback;
//! that fallback is recorded in the trace, the summary and the attestation, so
//! a downgrade is never silent.

use std::path::PathBuf;

use crate::config::Mode;
use crate::event::PolicyRef;
use crate::policy::{self, CompiledPolicy, Defaults, OnPolicyError, Policy};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct ModeArgs {
    /// observe, learn or enforce (overrides the policy file and the config file).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Egress policy file (YAML; docs/policy.md).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Allow an endpoint (repeatable): host, *.parent, IP or CIDR, with optional :PORT and /tcp or /udp.
    #[arg(long = "allow", value_name = "ENDPOINT")]
    pub allow: Vec<String>,
    /// Do not allow loopback and the resolvers of /etc/resolv.conf by default.
    #[arg(long)]
    pub no_default_allow: bool,
    /// What an unusable policy in enforce mode does: fail the job, or fall back to observe, recorded
    /// [default: the policy file's on-policy-error, else fail].
    #[arg(long, value_enum)]
    pub on_policy_error: Option<OnPolicyError>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    Usage(#[from] policy::UsageError),
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
    pub compiled: Option<CompiledPolicy>,
    pub policy: Option<PolicyRef>,
}

impl Plan {
    pub fn enforce(&self) -> bool {
        self.mode == Mode::Enforce
    }

    /// What the kernel is asked to deny.
    pub fn enforcement(&self) -> crate::bpf::loader::Enforcement {
        crate::bpf::loader::Enforcement {
            egress: self.enforce(),
            refuse_dns: self.enforce()
                && self
                    .compiled
                    .as_ref()
                    .is_some_and(|c| c.refuse_unlisted_dns),
        }
    }
}

pub fn plan(args: &ModeArgs, config_mode: Mode) -> Result<Plan, PlanError> {
    let loaded = load(args);
    let file_mode = loaded
        .as_ref()
        .ok()
        .and_then(|p| p.as_ref().map(|p| p.mode));
    let requested = args.mode.or(file_mode).unwrap_or(config_mode);
    let on_error = args
        .on_policy_error
        .unwrap_or_else(|| file_on_error(args, &loaded));
    let checked = loaded.and_then(|policy| match policy {
        Some(p) => {
            if requested == Mode::Enforce {
                p.validate()?;
            }
            Ok(Some(p))
        }
        None if requested == Mode::Enforce => Err(PlanError::Empty),
        None => Ok(None),
    });
    match checked {
        Ok(policy) => Ok(Plan {
            mode: requested,
            requested,
            fallback: None,
            compiled: policy.as_ref().map(Policy::compiled),
            policy: policy.as_ref().map(policy_ref),
        }),
        Err(e) if requested == Mode::Enforce && on_error == OnPolicyError::Observe => {
            let reason = crate::error::chain(&e);
            tracing::warn!("policy unusable, recording only (on-policy-error: observe): {reason}");
            Ok(Plan {
                mode: Mode::Observe,
                requested,
                fallback: Some(reason),
                compiled: None,
                policy: None,
            })
        }
        Err(e) => Err(e),
    }
}

/// The policy file and `--allow` entries, merged; None when neither was given.
fn load(args: &ModeArgs) -> Result<Option<Policy>, PlanError> {
    let mut policy = match &args.policy {
        Some(path) => {
            let parsed = policy::load(path)?;
            for w in &parsed.warnings {
                tracing::warn!("{}: line {}: {}", path.display(), w.line, w.message);
            }
            let mut p = parsed.policy;
            p.add_endpoints(&args.allow)?;
            p
        }
        None if args.allow.is_empty() => return Ok(None),
        None => Policy::from_endpoints(args.mode.unwrap_or(Mode::Enforce), &args.allow)?,
    };
    if args.no_default_allow {
        policy.defaults = Defaults {
            loopback: false,
            resolver: false,
        };
    }
    Ok(Some(policy))
}

/// A file that failed to parse may still say what to do about it.
fn file_on_error(args: &ModeArgs, loaded: &Result<Option<Policy>, PlanError>) -> OnPolicyError {
    match (loaded, &args.policy) {
        (Ok(Some(p)), _) => p.on_policy_error,
        (Err(_), Some(path)) => std::fs::read(path)
            .map(|b| policy::on_policy_error_hint(&b))
            .unwrap_or_default(),
        _ => OnPolicyError::Fail,
    }
}

fn policy_ref(p: &Policy) -> PolicyRef {
    PolicyRef {
        source: p.source.clone(),
        version: p.version,
        sha256: p.digest.clone(),
        rules: p.rules.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(mode: Mode, allow: &[&str], on_error: Option<OnPolicyError>) -> ModeArgs {
        ModeArgs {
            mode: Some(mode),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            on_policy_error: on_error,
            ..Default::default()
        }
    }

    #[test]
    fn an_empty_allowlist_fails_closed_unless_observe_is_asked_for() {
        assert!(matches!(
            plan(&args(Mode::Enforce, &[], None), Mode::Observe),
            Err(PlanError::Empty)
        ));
        let p = plan(
            &args(Mode::Enforce, &[], Some(OnPolicyError::Observe)),
            Mode::Observe,
        )
        .unwrap();
        assert_eq!((p.mode, p.requested), (Mode::Observe, Mode::Enforce));
        assert!(p.fallback.unwrap().contains("empty allowlist"));
    }

    #[test]
    fn a_bad_endpoint_fails_closed() {
        let e = plan(&args(Mode::Enforce, &["10.0.0.1/8"], None), Mode::Observe).unwrap_err();
        assert!(e.to_string().contains("10.0.0.1/8"), "{e}");
    }

    #[test]
    fn allow_endpoints_are_compiled_and_digested() {
        let p = plan(&args(Mode::Enforce, &["127.0.0.1"], None), Mode::Observe).unwrap();
        assert!(p.enforce());
        assert_eq!(p.policy.unwrap().rules, 1);
        assert!(p.compiled.is_some());
    }

    #[test]
    fn dns_refusal_is_asked_of_the_kernel_only_in_enforce() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.yml");
        std::fs::write(
            &file,
            "version: 1\nmode: enforce\ndns:\n  refuse-unlisted: true\nallow:\n  - 127.0.0.1\n",
        )
        .unwrap();
        let with_file = |mode| ModeArgs {
            mode: Some(mode),
            policy: Some(file.clone()),
            ..Default::default()
        };
        let enforce = plan(&with_file(Mode::Enforce), Mode::Observe).unwrap();
        assert!(enforce.enforcement().egress && enforce.enforcement().refuse_dns);
        let observe = plan(&with_file(Mode::Observe), Mode::Observe).unwrap();
        assert_eq!(observe.enforcement(), Default::default());
    }
}
