//! Egress policy (docs/policy.md): the file format, its parser with
//! line-numbered errors, the compiled rule set enforcement consumes, and the
//! pure `allows` decision that `policy diff`, `learn` and the tests share with
//! the kernel programs.

pub mod diff;
pub mod endpoint;
pub mod model;
pub mod parse;
pub mod resolv;
pub mod trace;

pub use endpoint::{Endpoint, EndpointError, IpNet, Proto, Target};
pub use model::{
    Allowed, CompiledPolicy, Decision, Defaults, DnsPolicy, IpRule, Mode, NamePattern, NameRule,
    OnPolicyError, Origin, Policy, Rule, SocketClass, SocketRule, StepMatch, StepPattern,
    StepScope, UsageError,
};
pub use parse::{
    load, on_policy_error_hint, parse, Parsed, PolicyError, Warning, MAX_POLICY_BYTES,
};

use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
