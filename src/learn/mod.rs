//! `ciwatch learn`: propose an egress policy that would have allowed N
//! earlier jobs, from trace directories or the GitHub Actions artifacts of a
//! workflow's last runs (docs/policy.md, "Learning a policy").

pub mod github;
pub mod propose;
pub mod source;

pub use propose::{
    propose, LearnOptions, PolicyDelta, Proposal, DEFAULT_WILDCARD_MIN, MIN_TRUSTED_JOBS,
};
