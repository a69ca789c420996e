//! `ciwatch learn`: propose an egress policy that would have allowed N
//! earlier jobs, from trace directories or the GitHub Actions artifacts of a
//! workflow's last runs (docs/policy.md, "Learning a policy").

pub mod github;
pub mod propose;
pub mod source;

pub use propose::{
    propose, LearnOptions, PolicyDelta, Proposal, DEFAULT_WILDCARD_MIN, MIN_TRUSTED_JOBS,
};

/// Learn mode's proposal, written next to the log it was learned from.
pub const PROPOSED_POLICY: &str = "policy.proposed.yml";

/// Learn mode at the end of one job: the policy that would have allowed it
/// (also written to [`PROPOSED_POLICY`]) and its diff against the policy file
/// in force, if any. The proposal is advice and the sealed trace stands
/// without it, so a failure is logged, not raised.
pub fn for_job(
    events: &std::path::Path,
    policy_file: Option<&std::path::Path>,
) -> Option<(String, Option<String>)> {
    match propose_for_job(events, policy_file) {
        Ok(found) => Some(found),
        Err(e) => {
            tracing::warn!("learn: no policy proposed for this job: {e}");
            None
        }
    }
}

/// Tells the user where the job's proposed policy is, and how it differs from theirs.
pub fn announce(events: &std::path::Path, diff: Option<&str>) {
    eprintln!(
        "ciwatch: learn: the policy that would have allowed this job is in {}",
        events.with_file_name(PROPOSED_POLICY).display()
    );
    if let Some(diff) = diff {
        eprintln!("{diff}");
    }
}

fn propose_for_job(
    events: &std::path::Path,
    policy_file: Option<&std::path::Path>,
) -> Result<(String, Option<String>), String> {
    let trace = crate::policy::trace::read_path(events).map_err(|e| crate::error::chain(&e))?;
    let proposal = propose(std::slice::from_ref(&trace), &LearnOptions::default());
    let diff = match policy_file {
        Some(path) => {
            let old = crate::policy::load(path)
                .map_err(|e| crate::error::chain(&e))?
                .policy;
            Some(proposal.diff_against(&old, &old.compiled()).render())
        }
        None => None,
    };
    let yaml = proposal.yaml();
    let file = events.with_file_name(PROPOSED_POLICY);
    crate::sink::write_atomically(&file, yaml.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok((yaml, diff))
}
