//! CI platform detectors, one module per platform, one interface: the proof
//! that the platform is present, the job's identity, the step's identity
//! where the platform has one, and the task names of its step launcher.
//! Sources for every rule: ../shared/reference/ci-attribution.md.

mod azure;
mod bitbucket;
mod buildkite;
mod circleci;
mod drone;
mod github;
mod gitlab;
mod jenkins;
mod tekton;

use serde::Serialize;

use super::env::StepEnv;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    GithubActions,
    GitlabCi,
    Jenkins,
    Circleci,
    AzurePipelines,
    BitbucketPipelines,
    Tekton,
    Buildkite,
    Drone,
    /// No CI platform: the job is the watched process tree.
    None,
}

impl Platform {
    pub fn name(self) -> &'static str {
        match self {
            Platform::GithubActions => "github-actions",
            Platform::GitlabCi => "gitlab-ci",
            Platform::Jenkins => "jenkins",
            Platform::Circleci => "circleci",
            Platform::AzurePipelines => "azure-pipelines",
            Platform::BitbucketPipelines => "bitbucket-pipelines",
            Platform::Tekton => "tekton",
            Platform::Buildkite => "buildkite",
            Platform::Drone => "drone",
            Platform::None => "none",
        }
    }

    /// The id the kernel stores in a launcher entry.
    pub fn id(self) -> u32 {
        (1..)
            .zip(ALL)
            .find_map(|(id, d)| (d.platform() == self).then_some(id))
            .unwrap_or(0)
    }

    pub fn from_id(id: u32) -> Platform {
        id.checked_sub(1)
            .and_then(|i| ALL.get(i as usize))
            .map_or(Platform::None, |d| d.platform())
    }
}

/// Who a job is, as the platform names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobIdentity {
    pub platform: Platform,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The variables (or argv) that proved the platform.
    pub proof: Vec<String>,
}

/// Who a step is. `key` is unique within the job; None asks the caller to number steps in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepIdentity {
    pub key: Option<String>,
    pub name: Option<String>,
    pub stage: Option<String>,
    /// Platform extras worth keeping (GITHUB_ACTION, …).
    pub action: Option<String>,
    /// Started by the runner for itself, not by a user step.
    pub internal: bool,
    /// What could not be determined, and why.
    pub notes: Vec<String>,
}

pub trait Detector: Sync {
    fn platform(&self) -> Platform;
    /// The variables that prove the platform, or None.
    fn proof(&self, env: &StepEnv, argv: &[String]) -> Option<Vec<String>>;
    fn job(&self, env: &StepEnv, argv: &[String]) -> Option<JobIdentity>;
    /// The step a step root starts; None where it cannot tell.
    fn step(&self, env: &StepEnv, argv: &[String]) -> Option<StepIdentity>;
    /// False where the platform has nothing below the job: the job is the step.
    fn has_steps(&self) -> bool {
        true
    }
    /// Task names of processes whose exec'd children start steps, for in-kernel detection.
    fn launcher_comms(&self) -> &'static [&'static str];
}

/// In order of precedence when variables of several platforms are present:
/// the most specific proof first, and platforms that run others (Tekton,
/// Jenkins) before the ones they may host.
static ALL: &[&dyn Detector] = &[
    &tekton::Tekton,
    &jenkins::Jenkins,
    &azure::Azure,
    &github::GitHub,
    &gitlab::GitLab,
    &buildkite::Buildkite,
    &drone::Drone,
    &circleci::CircleCi,
    &bitbucket::Bitbucket,
];

pub fn detectors() -> &'static [&'static dyn Detector] {
    ALL
}

pub fn detector(platform: Platform) -> Option<&'static dyn Detector> {
    ALL.iter().copied().find(|d| d.platform() == platform)
}

/// The outcome of detection on one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub platform: Platform,
    pub job: Option<JobIdentity>,
    /// Other platforms whose variables were also present.
    pub conflicts: Vec<Platform>,
}

/// Detects the platform; `preferred` (the launcher's platform, when known) wins a conflict.
pub fn detect(env: &StepEnv, argv: &[String], preferred: Option<Platform>) -> Detection {
    let present: Vec<&dyn Detector> = ALL
        .iter()
        .copied()
        .filter(|d| d.proof(env, argv).is_some())
        .collect();
    let chosen = preferred
        .and_then(|p| present.iter().copied().find(|d| d.platform() == p))
        .or_else(|| present.first().copied());
    let Some(chosen) = chosen else {
        return Detection {
            platform: Platform::None,
            job: None,
            conflicts: Vec::new(),
        };
    };
    let conflicts = present
        .iter()
        .map(|d| d.platform())
        .filter(|p| *p != chosen.platform())
        .collect();
    Detection {
        platform: chosen.platform(),
        job: chosen.job(env, argv),
        conflicts,
    }
}

/// The GUID suffix of a file-command path (`…/set_output_<guid>`).
pub(crate) fn guid_suffix(path: &str) -> Option<&str> {
    let tail = path.rsplit('/').next()?;
    let guid = tail.get(tail.len().checked_sub(36)?..)?;
    let ok = guid.len() == 36
        && guid.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    ok.then_some(guid)
}

/// `argv[0]`'s file name.
pub(crate) fn program(argv: &[String]) -> &str {
    argv.first()
        .map_or("", |a| a.rsplit('/').next().unwrap_or(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> StepEnv {
        StepEnv::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn platform_ids_round_trip() {
        for d in detectors() {
            assert_eq!(Platform::from_id(d.platform().id()), d.platform());
        }
        assert_eq!(Platform::from_id(0), Platform::None);
    }

    #[test]
    fn guid_suffixes() {
        let p = "/home/runner/work/_temp/_runner_file_commands/set_output_6c1d0e2a-8a9b-4f3c-9d11-2b7e6f0a1c55";
        assert_eq!(guid_suffix(p), Some("6c1d0e2a-8a9b-4f3c-9d11-2b7e6f0a1c55"));
        assert_eq!(guid_suffix("/tmp/set_output_nope"), None);
    }

    #[test]
    fn conflicting_variables_prefer_the_launchers_platform_and_say_so() {
        let e = env(&[
            ("GITHUB_ACTIONS", "true"),
            ("RUNNER_TRACKING_ID", "github_x"),
            ("GITLAB_CI", "true"),
            ("CI_JOB_ID", "7"),
            ("CI_SERVER_URL", "https://gitlab.example"),
        ]);
        let d = detect(&e, &[], Some(Platform::GitlabCi));
        assert_eq!(d.platform, Platform::GitlabCi);
        assert_eq!(d.conflicts, vec![Platform::GithubActions]);
        let d = detect(&e, &[], None);
        assert_eq!(
            d.platform,
            Platform::GithubActions,
            "precedence order without a launcher"
        );
        assert_eq!(d.conflicts, vec![Platform::GitlabCi]);
    }

    #[test]
    fn nothing_present_is_platform_none() {
        assert_eq!(
            detect(&env(&[("HOME", "/root")]), &[], None).platform,
            Platform::None
        );
    }
}
