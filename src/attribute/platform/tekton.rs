//! Tekton: each step is a container whose command is rewritten to
//! `/tekton/bin/entrypoint … -post_file /tekton/run/<i>/out … -entrypoint CMD`;
//! the step index is in argv, the TaskRun is the pod (HOSTNAME = `<taskrun>-pod`).
//! Step names are container names (`step-<name>`), which need the Kubernetes API.

use super::{Detector, JobIdentity, Platform, StepIdentity};
use crate::attribute::env::StepEnv;

pub struct Tekton;

impl Detector for Tekton {
    fn platform(&self) -> Platform {
        Platform::Tekton
    }

    fn proof(&self, _env: &StepEnv, argv: &[String]) -> Option<Vec<String>> {
        (argv
            .first()
            .is_some_and(|a| a.ends_with("/tekton/bin/entrypoint"))
            || step_index(argv).is_some())
        .then(|| vec!["argv /tekton/bin/entrypoint".into()])
    }

    fn job(&self, env: &StepEnv, argv: &[String]) -> Option<JobIdentity> {
        let proof = self.proof(env, argv)?;
        let pod = env.get("HOSTNAME")?;
        let taskrun = pod.strip_suffix("-pod").unwrap_or(pod);
        Some(JobIdentity {
            platform: self.platform(),
            id: taskrun.to_string(),
            name: Some(taskrun.to_string()),
            url: None,
            proof,
        })
    }

    fn step(&self, _env: &StepEnv, argv: &[String]) -> Option<StepIdentity> {
        let index = step_index(argv)?;
        Some(StepIdentity {
            key: Some(format!("step-{index}")),
            name: None,
            notes: vec!["step name is the container name (step-<name>); without the Kubernetes API only its index is known".into()],
            ..Default::default()
        })
    }

    fn launcher_comms(&self) -> &'static [&'static str] {
        &[]
    }
}

/// `<i>` of `-post_file /tekton/run/<i>/out`.
fn step_index(argv: &[String]) -> Option<u32> {
    let at = argv.iter().position(|a| a == "-post_file")?;
    let path = argv.get(at + 1)?;
    path.strip_prefix("/tekton/run/")?
        .split('/')
        .next()?
        .parse()
        .ok()
}
