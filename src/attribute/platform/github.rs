//! GitHub Actions: Runner.Worker starts every step as a direct child; the step
//! key is the per-step file-command GUID (shared by GITHUB_OUTPUT, GITHUB_ENV, …),
//! which tells apart pre/main/post of one action and concurrent background steps.

use super::{guid_suffix, program, Detector, JobIdentity, Platform, StepIdentity};
use crate::attribute::env::StepEnv;

pub struct GitHub;

const FILE_COMMANDS: &[&str] = &[
    "GITHUB_OUTPUT",
    "GITHUB_ENV",
    "GITHUB_STATE",
    "GITHUB_STEP_SUMMARY",
    "GITHUB_PATH",
];

impl Detector for GitHub {
    fn platform(&self) -> Platform {
        Platform::GithubActions
    }

    fn proof(&self, env: &StepEnv, _argv: &[String]) -> Option<Vec<String>> {
        env.is_true("GITHUB_ACTIONS")
            .then(|| vec!["GITHUB_ACTIONS=true".into()])
    }

    fn job(&self, env: &StepEnv, argv: &[String]) -> Option<JobIdentity> {
        let proof = self.proof(env, argv)?;
        // GITHUB_JOB repeats across a matrix; RUNNER_TRACKING_ID is unique per job.
        let run = [
            env.get("GITHUB_REPOSITORY"),
            env.get("GITHUB_RUN_ID"),
            env.get("GITHUB_RUN_ATTEMPT"),
            env.get("GITHUB_JOB"),
        ];
        let id = match env.get("RUNNER_TRACKING_ID") {
            Some(tracking) => tracking.to_string(),
            None => run
                .iter()
                .map(|p| p.unwrap_or("?"))
                .collect::<Vec<_>>()
                .join("/"),
        };
        let url = match (env.get("GITHUB_SERVER_URL"), run[0], run[1]) {
            (Some(server), Some(repo), Some(run_id)) => Some(format!(
                "{server}/{repo}/actions/runs/{run_id}/attempts/{}",
                run[2].unwrap_or("1")
            )),
            _ => None,
        };
        Some(JobIdentity {
            platform: self.platform(),
            id,
            name: env.get("GITHUB_JOB").map(String::from),
            url,
            proof,
        })
    }

    fn step(&self, env: &StepEnv, argv: &[String]) -> Option<StepIdentity> {
        let guid = FILE_COMMANDS
            .iter()
            .find_map(|k| env.get(k).and_then(guid_suffix));
        let action = env.get("GITHUB_ACTION").map(String::from);
        Some(match guid {
            Some(guid) => StepIdentity {
                key: Some(guid.to_string()),
                action,
                ..Default::default()
            },
            None => StepIdentity {
                key: Some("runner-internal".into()),
                name: Some(format!("runner-internal ({})", internal_label(argv))),
                internal: true,
                action,
                ..Default::default()
            },
        })
    }

    fn launcher_comms(&self) -> &'static [&'static str] {
        &["Runner.Worker"]
    }
}

/// What the runner ran for itself: hashFiles(), the docker CLI, a job hook, …
fn internal_label(argv: &[String]) -> String {
    if argv
        .iter()
        .any(|a| a.ends_with("/hashFiles") || a.ends_with("hashFiles\""))
    {
        return "hashFiles".into();
    }
    match program(argv) {
        // The runner's own `docker pull|create|exec|…`: the subcommand names the
        // step; anything else in argv[1] (a flag, a value) is not shown.
        "docker" => match argv.get(1).filter(|a| is_subcommand(a)) {
            Some(sub) => format!("docker {sub}"),
            None => "docker".into(),
        },
        "" => "unknown".into(),
        other => other.to_string(),
    }
}

fn is_subcommand(arg: &str) -> bool {
    !arg.is_empty()
        && arg.len() <= 32
        && arg.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        && !arg.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_docker_steps_show_the_subcommand_and_nothing_else() {
        let label =
            |args: &[&str]| internal_label(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        assert_eq!(label(&["/usr/bin/docker", "pull", "img"]), "docker pull");
        assert_eq!(
            label(&["/usr/bin/docker", "--password=hunter2", "login"]),
            "docker"
        );
        assert_eq!(label(&["/usr/bin/docker", "-H", "tcp://x"]), "docker");
        assert_eq!(label(&["/usr/bin/docker"]), "docker");
    }

    #[test]
    fn file_command_guid_is_the_step_key() {
        let env = StepEnv::from_pairs([
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_ACTION", "__actions_checkout"),
            (
                "GITHUB_OUTPUT",
                "/w/_temp/_runner_file_commands/set_output_6c1d0e2a-8a9b-4f3c-9d11-2b7e6f0a1c55",
            ),
        ]);
        let step = GitHub.step(&env, &[]).unwrap();
        assert_eq!(
            step.key.as_deref(),
            Some("6c1d0e2a-8a9b-4f3c-9d11-2b7e6f0a1c55")
        );
        assert_eq!(step.action.as_deref(), Some("__actions_checkout"));
        assert!(!step.internal);
    }

    #[test]
    fn children_without_file_commands_are_runner_internal() {
        let env = StepEnv::from_pairs([("GITHUB_ACTIONS", "true")]);
        let argv = vec![
            "/runner/externals/node20/bin/node".to_string(),
            "/runner/bin/hashFiles".to_string(),
        ];
        let step = GitHub.step(&env, &argv).unwrap();
        assert!(step.internal);
        assert_eq!(step.name.as_deref(), Some("runner-internal (hashFiles)"));
    }
}
