//! The identifying part of a process environment. The kernel sends a step
//! root's whole environment, which holds secrets; only the allow-listed keys
//! below are kept, and the rest is dropped as it is parsed.

use std::collections::BTreeMap;

/// Keys kept, matched case-insensitively (Azure keeps some keys' original case).
const KEEP: &[&str] = &[
    // GitHub Actions
    "GITHUB_ACTIONS",
    "GITHUB_ACTION",
    "GITHUB_ACTION_REPOSITORY",
    "GITHUB_ACTION_REF",
    "GITHUB_ACTION_PATH",
    "GITHUB_OUTPUT",
    "GITHUB_ENV",
    "GITHUB_STATE",
    "GITHUB_STEP_SUMMARY",
    "GITHUB_PATH",
    "GITHUB_RUN_ID",
    "GITHUB_RUN_ATTEMPT",
    "GITHUB_RUN_NUMBER",
    "GITHUB_JOB",
    "GITHUB_REPOSITORY",
    "GITHUB_WORKFLOW",
    "GITHUB_WORKFLOW_REF",
    "GITHUB_SERVER_URL",
    "RUNNER_TRACKING_ID",
    "RUNNER_NAME",
    "RUNNER_ENVIRONMENT",
    // GitLab CI
    "GITLAB_CI",
    "CI_SERVER",
    "CI_SERVER_URL",
    "CI_JOB_ID",
    "CI_JOB_NAME",
    "CI_JOB_STAGE",
    "CI_JOB_URL",
    "CI_PIPELINE_ID",
    "CI_PROJECT_PATH",
    "CI_RUNNER_ID",
    "CI_CONCURRENT_ID",
    // Jenkins
    "JENKINS_URL",
    "BUILD_TAG",
    "BUILD_URL",
    "JOB_NAME",
    "BUILD_NUMBER",
    "STAGE_NAME",
    "NODE_NAME",
    "EXECUTOR_NUMBER",
    // CircleCI
    "CIRCLECI",
    "CIRCLE_WORKFLOW_JOB_ID",
    "CIRCLE_BUILD_NUM",
    "CIRCLE_JOB",
    "CIRCLE_WORKFLOW_ID",
    "CIRCLE_NODE_INDEX",
    "CIRCLE_PROJECT_REPONAME",
    "CIRCLE_BUILD_URL",
    // Azure Pipelines
    "TF_BUILD",
    "SYSTEM_JOBID",
    "SYSTEM_PLANID",
    "SYSTEM_JOBDISPLAYNAME",
    "SYSTEM_STAGENAME",
    "SYSTEM_TASKINSTANCEID",
    "SYSTEM_TASKDISPLAYNAME",
    "SYSTEM_TASKINSTANCENAME",
    "TASK_DISPLAYNAME",
    "BUILD_BUILDID",
    "SYSTEM_TEAMPROJECT",
    "VSTS_PROCESS_LOOKUP_ID",
    // Bitbucket Pipelines
    "BITBUCKET_PIPELINE_UUID",
    "BITBUCKET_STEP_UUID",
    "BITBUCKET_BUILD_NUMBER",
    "BITBUCKET_REPO_FULL_NAME",
    "BITBUCKET_PARALLEL_STEP",
    // Buildkite
    "BUILDKITE",
    "BUILDKITE_JOB_ID",
    "BUILDKITE_STEP_KEY",
    "BUILDKITE_LABEL",
    "BUILDKITE_BUILD_NUMBER",
    "BUILDKITE_BUILD_ID",
    "BUILDKITE_PIPELINE_SLUG",
    "BUILDKITE_ORGANIZATION_SLUG",
    "BUILDKITE_HOOK_PHASE",
    "BUILDKITE_HOOK_PATH",
    // Drone
    "DRONE",
    "DRONE_BUILD_NUMBER",
    "DRONE_REPO",
    "DRONE_STAGE_NAME",
    "DRONE_STAGE_NUMBER",
    "DRONE_STEP_NAME",
    "DRONE_STEP_NUMBER",
    // Tekton and Kubernetes: a pod's HOSTNAME is its name.
    "HOSTNAME",
    "CI",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepEnv {
    vars: BTreeMap<String, String>,
    /// The block was longer than the kernel's capture bound.
    pub truncated: bool,
}

impl StepEnv {
    pub fn parse(block: &[u8], truncated: bool) -> Self {
        let vars = block
            .split(|&b| b == 0)
            .filter_map(|entry| {
                let eq = entry.iter().position(|&b| b == b'=')?;
                let key = std::str::from_utf8(&entry[..eq]).ok()?.to_ascii_uppercase();
                KEEP.contains(&key.as_str())
                    .then(|| (key, String::from_utf8_lossy(&entry[eq + 1..]).into_owned()))
            })
            .collect();
        Self { vars, truncated }
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let block: Vec<u8> = pairs
            .into_iter()
            .flat_map(|(k, v)| format!("{k}={v}\0").into_bytes())
            .collect();
        Self::parse(&block, false)
    }

    /// The current process's own environment, filtered the same way.
    pub fn of_this_process() -> Self {
        Self::from_pairs_owned(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    fn from_pairs_owned(pairs: impl Iterator<Item = (String, String)>) -> Self {
        let block: Vec<u8> = pairs
            .flat_map(|(k, v)| format!("{k}={v}\0").into_bytes())
            .collect();
        Self::parse(&block, false)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn is_true(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "yes" || v == "1")
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_identifying_keys_and_drops_secrets() {
        let block = b"GITHUB_ACTION=__run\0ACTIONS_RUNTIME_TOKEN=eyJsecret\0AWS_SECRET_ACCESS_KEY=x\0system_taskInstanceId=abc\0junk\0";
        let env = StepEnv::parse(block, false);
        assert_eq!(env.get("GITHUB_ACTION"), Some("__run"));
        assert_eq!(
            env.get("SYSTEM_TASKINSTANCEID"),
            Some("abc"),
            "Azure keys are matched case-insensitively"
        );
        assert_eq!(env.get("ACTIONS_RUNTIME_TOKEN"), None);
        assert_eq!(env.get("AWS_SECRET_ACCESS_KEY"), None);
    }
}
