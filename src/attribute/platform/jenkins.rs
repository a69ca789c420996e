//! Jenkins pipelines: each `sh` step runs through a durable-task wrapper whose
//! control directory (`…@tmp/durable-<8hex>/`) is in argv; STAGE_NAME names the stage.
//! The agent JVM is too generic a name ("java") for in-kernel launcher detection;
//! `ciwatch start` registers it from the process ancestry instead.

use super::{Detector, JobIdentity, Platform, StepIdentity};
use crate::attribute::env::StepEnv;

pub struct Jenkins;

impl Detector for Jenkins {
    fn platform(&self) -> Platform {
        Platform::Jenkins
    }

    fn proof(&self, env: &StepEnv, _argv: &[String]) -> Option<Vec<String>> {
        if env.has("JENKINS_URL") {
            return Some(vec!["JENKINS_URL".into()]);
        }
        env.get("BUILD_TAG")
            .filter(|t| t.starts_with("jenkins-"))
            .map(|_| vec!["BUILD_TAG=jenkins-…".into()])
    }

    fn job(&self, env: &StepEnv, argv: &[String]) -> Option<JobIdentity> {
        let proof = self.proof(env, argv)?;
        let id = env
            .get("BUILD_TAG")
            .or_else(|| env.get("BUILD_URL"))?
            .to_string();
        let name = match (env.get("JOB_NAME"), env.get("BUILD_NUMBER")) {
            (Some(job), Some(n)) => Some(format!("{job} #{n}")),
            (job, _) => job.map(String::from),
        };
        Some(JobIdentity {
            platform: self.platform(),
            id,
            name,
            url: env.get("BUILD_URL").map(String::from),
            proof,
        })
    }

    fn step(&self, env: &StepEnv, argv: &[String]) -> Option<StepIdentity> {
        let stage = env.get("STAGE_NAME").map(String::from);
        Some(match durable_dir(argv) {
            Some(dir) => StepIdentity {
                name: Some(format!("sh ({dir})")),
                key: Some(dir),
                stage,
                ..Default::default()
            },
            None => StepIdentity {
                key: Some("agent-internal".into()),
                name: Some("agent-internal".into()),
                stage,
                internal: true,
                ..Default::default()
            },
        })
    }

    fn launcher_comms(&self) -> &'static [&'static str] {
        &[]
    }
}

/// `durable-xxxxxxxx` from any argument.
fn durable_dir(argv: &[String]) -> Option<String> {
    argv.iter().find_map(|a| {
        let at = a.find("durable-")?;
        let id: String = a[at..].chars().take(16).collect();
        (id.len() == 16 && id[8..].chars().all(|c| c.is_ascii_hexdigit())).then_some(id)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_directory_is_the_step() {
        let argv = vec![
            "sh".into(),
            "-xe".into(),
            "/ws/app@tmp/durable-0a1b2c3d/script.sh.copy".into(),
        ];
        let env = StepEnv::from_pairs([("JENKINS_URL", "https://ci/"), ("STAGE_NAME", "Build")]);
        let step = Jenkins.step(&env, &argv).unwrap();
        assert_eq!(step.key.as_deref(), Some("durable-0a1b2c3d"));
        assert_eq!(step.stage.as_deref(), Some("Build"));
    }
}
