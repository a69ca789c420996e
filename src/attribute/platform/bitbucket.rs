//! Bitbucket Pipelines: a Bitbucket "step" is the job; nothing below it has
//! an identity, so the job is the step.

use super::{Detector, JobIdentity, Platform, StepIdentity};
use crate::attribute::env::StepEnv;

pub struct Bitbucket;

impl Detector for Bitbucket {
    fn platform(&self) -> Platform {
        Platform::BitbucketPipelines
    }

    fn proof(&self, env: &StepEnv, _argv: &[String]) -> Option<Vec<String>> {
        env.has("BITBUCKET_STEP_UUID")
            .then(|| vec!["BITBUCKET_STEP_UUID".into()])
    }

    fn job(&self, env: &StepEnv, argv: &[String]) -> Option<JobIdentity> {
        let proof = self.proof(env, argv)?;
        let name = match (
            env.get("BITBUCKET_REPO_FULL_NAME"),
            env.get("BITBUCKET_BUILD_NUMBER"),
        ) {
            (Some(repo), Some(n)) => Some(format!("{repo} #{n}")),
            _ => None,
        };
        Some(JobIdentity {
            platform: self.platform(),
            id: env.get("BITBUCKET_STEP_UUID")?.to_string(),
            name,
            url: None,
            proof,
        })
    }

    fn step(&self, _env: &StepEnv, _argv: &[String]) -> Option<StepIdentity> {
        None
    }

    fn launcher_comms(&self) -> &'static [&'static str] {
        &[]
    }

    fn has_steps(&self) -> bool {
        false
    }
}
