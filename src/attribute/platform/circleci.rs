//! CircleCI: no per-step variable exists, so the task agent's shells are
//! numbered in the order it started them.

use super::{Detector, JobIdentity, Platform, StepIdentity};
use crate::attribute::env::StepEnv;

pub struct CircleCi;

impl Detector for CircleCi {
    fn platform(&self) -> Platform {
        Platform::Circleci
    }

    fn proof(&self, env: &StepEnv, _argv: &[String]) -> Option<Vec<String>> {
        env.is_true("CIRCLECI")
            .then(|| vec!["CIRCLECI=true".into()])
    }

    fn job(&self, env: &StepEnv, argv: &[String]) -> Option<JobIdentity> {
        let proof = self.proof(env, argv)?;
        let job = env
            .get("CIRCLE_WORKFLOW_JOB_ID")
            .or_else(|| env.get("CIRCLE_BUILD_NUM"))?;
        Some(JobIdentity {
            platform: self.platform(),
            id: format!("{job}/{}", env.get("CIRCLE_NODE_INDEX").unwrap_or("0")),
            name: env.get("CIRCLE_JOB").map(String::from),
            url: env.get("CIRCLE_BUILD_URL").map(String::from),
            proof,
        })
    }

    fn step(&self, _env: &StepEnv, _argv: &[String]) -> Option<StepIdentity> {
        Some(StepIdentity {
            notes: vec!["CircleCI exposes no step identity; steps are numbered in the order the task agent started them".into()],
            ..Default::default()
        })
    }

    fn launcher_comms(&self) -> &'static [&'static str] {
        &["circleci-agent"]
    }
}
