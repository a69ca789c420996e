//! Azure Pipelines: Agent.Worker runs tasks; each task's environment carries
//! SYSTEM_TASKINSTANCEID and SYSTEM_TASKDISPLAYNAME (matched case-insensitively).

use super::{Detector, JobIdentity, Platform, StepIdentity};
use crate::attribute::env::StepEnv;

pub struct Azure;

impl Detector for Azure {
    fn platform(&self) -> Platform {
        Platform::AzurePipelines
    }

    fn proof(&self, env: &StepEnv, _argv: &[String]) -> Option<Vec<String>> {
        env.is_true("TF_BUILD")
            .then(|| vec!["TF_BUILD=True".into()])
    }

    fn job(&self, env: &StepEnv, argv: &[String]) -> Option<JobIdentity> {
        let proof = self.proof(env, argv)?;
        let id = env
            .get("SYSTEM_JOBID")
            .or_else(|| env.get("VSTS_PROCESS_LOOKUP_ID"))?
            .to_string();
        let name = env.get("SYSTEM_JOBDISPLAYNAME").map(String::from);
        Some(JobIdentity {
            platform: self.platform(),
            id,
            name,
            url: None,
            proof,
        })
    }

    fn step(&self, env: &StepEnv, _argv: &[String]) -> Option<StepIdentity> {
        Some(match env.get("SYSTEM_TASKINSTANCEID") {
            Some(id) => StepIdentity {
                key: Some(id.to_string()),
                name: env
                    .get("SYSTEM_TASKDISPLAYNAME")
                    .or_else(|| env.get("TASK_DISPLAYNAME"))
                    .map(String::from),
                stage: env.get("SYSTEM_STAGENAME").map(String::from),
                action: env.get("SYSTEM_TASKINSTANCENAME").map(String::from),
                ..Default::default()
            },
            None => StepIdentity {
                key: Some("agent-internal".into()),
                name: Some("agent-internal".into()),
                internal: true,
                ..Default::default()
            },
        })
    }

    fn launcher_comms(&self) -> &'static [&'static str] {
        &["Agent.Worker"]
    }
}
