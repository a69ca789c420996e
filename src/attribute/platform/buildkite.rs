//! Buildkite: a Buildkite step is a job (`buildkite-agent bootstrap` per job);
//! below it, the hook phases (environment, checkout, pre-command, command, …).

use super::{program, Detector, JobIdentity, Platform, StepIdentity};
use crate::attribute::env::StepEnv;

pub struct Buildkite;

const PHASES: &[&str] = &[
    "environment",
    "pre-checkout",
    "checkout",
    "post-checkout",
    "pre-command",
    "command",
    "post-command",
    "pre-artifact",
    "post-artifact",
    "pre-exit",
];

impl Detector for Buildkite {
    fn platform(&self) -> Platform {
        Platform::Buildkite
    }

    fn proof(&self, env: &StepEnv, _argv: &[String]) -> Option<Vec<String>> {
        env.is_true("BUILDKITE")
            .then(|| vec!["BUILDKITE=true".into()])
    }

    fn job(&self, env: &StepEnv, argv: &[String]) -> Option<JobIdentity> {
        let proof = self.proof(env, argv)?;
        Some(JobIdentity {
            platform: self.platform(),
            id: env.get("BUILDKITE_JOB_ID")?.to_string(),
            name: env
                .get("BUILDKITE_LABEL")
                .or_else(|| env.get("BUILDKITE_STEP_KEY"))
                .map(String::from),
            url: None,
            proof,
        })
    }

    fn step(&self, env: &StepEnv, argv: &[String]) -> Option<StepIdentity> {
        let phase = env
            .get("BUILDKITE_HOOK_PHASE")
            .map(String::from)
            .or_else(|| hook_from_argv(argv))
            .or_else(|| {
                (argv.iter().any(|a| a == "-c") && program(argv).ends_with("sh"))
                    .then(|| "command".to_string())
            });
        Some(match phase {
            Some(p) => StepIdentity {
                key: Some(p.clone()),
                name: Some(p.clone()),
                stage: Some(p),
                ..Default::default()
            },
            None if program(argv) == "buildkite-agent" => StepIdentity {
                key: Some("agent".into()),
                name: Some("buildkite-agent".into()),
                internal: true,
                ..Default::default()
            },
            None => StepIdentity {
                notes: vec!["no hook phase in environment or argv; numbered in order".into()],
                ..Default::default()
            },
        })
    }

    fn launcher_comms(&self) -> &'static [&'static str] {
        &["buildkite-agent"]
    }
}

/// The phase of a hook script in argv (`…/hooks/pre-command`).
fn hook_from_argv(argv: &[String]) -> Option<String> {
    argv.iter().find_map(|a| {
        let (dir, file) = a.rsplit_once('/')?;
        let base = file.split('.').next()?;
        (dir.ends_with("hooks") && PHASES.contains(&base)).then(|| base.to_string())
    })
}
