//! Drone: one container (or, with the exec runner, one host process tree) per
//! step, named by DRONE_STEP_NAME / DRONE_STEP_NUMBER.

use super::{Detector, JobIdentity, Platform, StepIdentity};
use crate::attribute::env::StepEnv;

pub struct Drone;

impl Detector for Drone {
    fn platform(&self) -> Platform {
        Platform::Drone
    }

    fn proof(&self, env: &StepEnv, _argv: &[String]) -> Option<Vec<String>> {
        env.is_true("DRONE").then(|| vec!["DRONE=true".into()])
    }

    fn job(&self, env: &StepEnv, argv: &[String]) -> Option<JobIdentity> {
        let proof = self.proof(env, argv)?;
        let repo = env.get("DRONE_REPO")?;
        let build = env.get("DRONE_BUILD_NUMBER")?;
        Some(JobIdentity {
            platform: self.platform(),
            id: format!(
                "{repo}#{build}/{}",
                env.get("DRONE_STAGE_NUMBER").unwrap_or("1")
            ),
            name: env.get("DRONE_STAGE_NAME").map(String::from),
            url: None,
            proof,
        })
    }

    fn step(&self, env: &StepEnv, _argv: &[String]) -> Option<StepIdentity> {
        let name = env.get("DRONE_STEP_NAME").map(String::from);
        let key = env
            .get("DRONE_STEP_NUMBER")
            .map(String::from)
            .or_else(|| name.clone());
        Some(StepIdentity {
            key,
            name,
            ..Default::default()
        })
    }

    fn launcher_comms(&self) -> &'static [&'static str] {
        &["drone-runner-exec"]
    }
}
