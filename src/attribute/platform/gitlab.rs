//! GitLab CI: the unit below a job is the runner's build stage (get_sources,
//! step_script, after_script, …). On Kubernetes and Docker the stage is in the
//! script path (`/scripts-<project>-<job>/<stage>`); the shell executor feeds the
//! script on stdin, so stages are numbered in order instead.

use super::{Detector, JobIdentity, Platform, StepIdentity};
use crate::attribute::env::StepEnv;

pub struct GitLab;

/// The runner's build stages (common/build.go), in execution order.
pub const STAGES: &[&str] = &[
    "prepare_script",
    "get_sources",
    "clear_worktree",
    "restore_cache",
    "download_artifacts",
    "step_script",
    "after_script",
    "archive_cache",
    "archive_cache_on_failure",
    "upload_artifacts_on_success",
    "upload_artifacts_on_failure",
    "cleanup_file_variables",
];

impl Detector for GitLab {
    fn platform(&self) -> Platform {
        Platform::GitlabCi
    }

    fn proof(&self, env: &StepEnv, argv: &[String]) -> Option<Vec<String>> {
        if env.is_true("GITLAB_CI") {
            return Some(vec!["GITLAB_CI=true".into()]);
        }
        if env.get("CI_SERVER") == Some("yes") && env.has("CI_JOB_ID") {
            return Some(vec!["CI_SERVER=yes".into(), "CI_JOB_ID".into()]);
        }
        script_stage(argv).map(|_| vec!["argv /scripts-<project>-<job>/<stage>".into()])
    }

    fn job(&self, env: &StepEnv, argv: &[String]) -> Option<JobIdentity> {
        let proof = self.proof(env, argv)?;
        let id = match (env.get("CI_SERVER_URL"), env.get("CI_JOB_ID")) {
            (Some(server), Some(job)) => format!("{server}/-/jobs/{job}"),
            (None, Some(job)) => job.to_string(),
            _ => scripts_dir_job(argv)?,
        };
        Some(JobIdentity {
            platform: self.platform(),
            url: env.get("CI_JOB_URL").map(String::from),
            name: env.get("CI_JOB_NAME").map(String::from),
            id,
            proof,
        })
    }

    fn step(&self, _env: &StepEnv, argv: &[String]) -> Option<StepIdentity> {
        Some(match script_stage(argv) {
            Some(stage) => StepIdentity { key: Some(stage.clone()), name: Some(stage.clone()), stage: Some(stage), ..Default::default() },
            None => StepIdentity {
                notes: vec!["stage name not visible (the shell executor passes the script on stdin); numbered in order".into()],
                ..Default::default()
            },
        })
    }

    fn launcher_comms(&self) -> &'static [&'static str] {
        &["gitlab-runner"]
    }
}

/// The stage of `…/scripts-<p>-<j>/<stage>` in argv.
fn script_stage(argv: &[String]) -> Option<String> {
    argv.iter().find_map(|a| {
        let (dir, stage) = a.rsplit_once('/')?;
        (dir.rsplit('/').next()?.starts_with("scripts-") && STAGES.contains(&stage))
            .then(|| stage.to_string())
    })
}

/// The job id in `scripts-<project>-<job>`.
fn scripts_dir_job(argv: &[String]) -> Option<String> {
    argv.iter().find_map(|a| {
        let dir = a.split('/').find(|c| c.starts_with("scripts-"))?;
        dir.rsplit('-')
            .next()
            .filter(|j| j.chars().all(|c| c.is_ascii_digit()))
            .map(String::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_from_kubernetes_script_path() {
        let argv: Vec<String> = ["bash", "/scripts-42-1337/step_script"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let step = GitLab.step(&StepEnv::default(), &argv).unwrap();
        assert_eq!(step.stage.as_deref(), Some("step_script"));
        assert_eq!(GitLab.job(&StepEnv::default(), &argv).unwrap().id, "1337");
    }
}
