//! `ciwatch learn`: read N earlier traces and write a policy that would have
//! allowed all of them, with coverage per entry (docs/policy.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::learn::github::{self, GithubSource, DEFAULT_API_URL};
use crate::learn::source::{self, Collected};
use crate::learn::{propose, LearnOptions, DEFAULT_WILDCARD_MIN};
use crate::policy;

#[derive(Debug, clap::Args)]
pub struct LearnArgs {
    /// A directory of sealed trace directories, events.ndjson files or artifact zips (repeatable).
    #[arg(long = "dir", value_name = "DIR", conflicts_with = "github")]
    pub dirs: Vec<PathBuf>,
    /// Learn from the traces the daemons with this configuration file write: their object store
    /// (`[output] url`), else the local trace directory; the newest --runs of them.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["dirs", "github"])]
    pub config: Option<PathBuf>,
    /// Fetch the traces from GitHub Actions artifacts of this repository.
    #[arg(long, value_name = "OWNER/REPO", requires_all = ["workflow", "job"])]
    pub github: Option<String>,
    /// Workflow file name (ci.yml) or id, with --github.
    #[arg(long, value_name = "FILE")]
    pub workflow: Option<String>,
    /// Job id (`jobs.<id>` in the workflow), with --github.
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// How many jobs to learn from: successful runs with a ciwatch artifact (--github), or the
    /// newest traces (--config).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,
    /// Only runs of this branch, with --github (learn from trusted branches, not pull requests).
    #[arg(long, value_name = "BRANCH")]
    pub branch: Option<String>,
    /// Glob over artifact names, with --github. Default: the action's `ciwatch-<job>-*`.
    #[arg(long, value_name = "GLOB")]
    pub artifact: Option<String>,
    /// GitHub token. Default: the GITHUB_TOKEN environment variable.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// GitHub REST API base URL (GitHub Enterprise Server: https://HOST/api/v3).
    #[arg(long, value_name = "URL", default_value = DEFAULT_API_URL)]
    pub api_url: String,
    /// Longest rate-limit wait accepted, in seconds; a longer one fails.
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    pub max_wait: u64,
    /// Scope each rule to the steps it was seen in.
    #[arg(long)]
    pub per_step: bool,
    /// Distinct subdomains of one parent that collapse into a `*.` wildcard.
    #[arg(long, value_name = "K", default_value_t = DEFAULT_WILDCARD_MIN as u32, value_parser = clap::value_parser!(u32).range(2..))]
    pub wildcard_min: u32,
    /// Write the proposed policy here instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the coverage of every entry as JSON here.
    #[arg(long, value_name = "FILE")]
    pub coverage: Option<PathBuf>,
    /// Compare with this policy: print what the proposal adds and removes
    /// (exit 1 when the old policy would deny something the jobs did).
    #[arg(long = "diff", value_name = "OLD_POLICY")]
    pub diff: Option<PathBuf>,
    /// Print the proposal, its coverage (and the diff) as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
enum LearnError {
    #[error("give the traces with --dir DIR, --config FILE (the daemons' trace store) or --github OWNER/REPO --workflow FILE --job NAME")]
    NoSource,
    #[error("--github {0:?} is not OWNER/REPO")]
    Repo(String),
    #[error("no sealed trace found{0}")]
    NoTraces(String),
    #[error("cannot write {path}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

pub async fn execute(args: LearnArgs) -> u8 {
    let old = match &args.diff {
        Some(path) => match policy::load(path) {
            Ok(p) => Some(p.policy),
            Err(e) => return super::fail(crate::exit::CONFIG, &e),
        },
        None => None,
    };
    let collected = match collect(&args).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    for s in &collected.skipped {
        eprintln!("ciwatch: skipped {s}");
    }
    if collected.traces.is_empty() {
        let hint = if collected.skipped.is_empty() {
            String::new()
        } else {
            format!(" ({} inputs skipped)", collected.skipped.len())
        };
        return super::fail(crate::exit::TRACE_INPUT, &LearnError::NoTraces(hint));
    }
    let opts = LearnOptions {
        wildcard_min: args.wildcard_min as usize,
        per_step: args.per_step,
    };
    let proposal = propose(&collected.traces, &opts);
    let yaml = proposal.yaml();
    // The proposal must itself be a valid policy; a failure here is a bug.
    if let Err(e) = proposal.policy() {
        eprintln!("ciwatch: error: internal: the proposed policy does not parse: {e}\n{yaml}");
        return crate::exit::INTERNAL;
    }
    let delta = old
        .as_ref()
        .map(|old| proposal.diff_against(old, &old.compiled()));
    if let Err(e) = write_outputs(&args, &proposal, &yaml, delta.as_ref()) {
        return super::fail(crate::exit::OUTPUT_DIR, &e);
    }
    if !proposal.trusted {
        eprintln!(
            "ciwatch: warning: learned from {} job(s); fewer than {} are too few to trust",
            proposal.jobs,
            crate::learn::MIN_TRUSTED_JOBS
        );
    }
    match delta {
        Some(d) if d.would_deny() => crate::exit::WOULD_DENY,
        _ => 0,
    }
}

async fn collect(args: &LearnArgs) -> Result<Collected, u8> {
    if let Some(repo) = &args.github {
        let Some((owner, name)) = repo
            .split_once('/')
            .filter(|(o, r)| !o.is_empty() && !r.is_empty() && !r.contains('/'))
        else {
            return Err(super::fail(
                crate::exit::USAGE,
                &LearnError::Repo(repo.clone()),
            ));
        };
        let src = GithubSource {
            api_url: args.api_url.clone(),
            token: args
                .token
                .clone()
                .or_else(|| std::env::var("GITHUB_TOKEN").ok()),
            owner: owner.into(),
            repo: name.into(),
            workflow: args.workflow.clone().unwrap_or_default(),
            job: args.job.clone().unwrap_or_default(),
            artifact: args.artifact.clone(),
            branch: args.branch.clone(),
            runs: args.runs as usize,
            max_wait: Duration::from_secs(args.max_wait),
        };
        let bar = ProgressBar::new(u64::from(args.runs));
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} learn: {pos}/{len} runs {wide_msg}")
        {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        return github::fetch(&src, &bar).await.map_err(|e| {
            bar.finish_and_clear();
            let code = match e {
                github::GithubError::Source(_) => crate::exit::TRACE_INPUT,
                github::GithubError::ApiUrl { .. } | github::GithubError::Token => {
                    crate::exit::USAGE
                }
                _ => crate::exit::FETCH,
            };
            super::fail(code, &e)
        });
    }
    if let Some(file) = &args.config {
        return from_store(file, args.runs as usize).await;
    }
    if args.dirs.is_empty() {
        return Err(super::fail(crate::exit::USAGE, &LearnError::NoSource));
    }
    let mut all = Collected::default();
    for dir in &args.dirs {
        let c = source::from_dir(dir).map_err(|e| super::fail(crate::exit::TRACE_INPUT, &e))?;
        for t in c.traces {
            all.push(t);
        }
        all.skipped.extend(c.skipped);
    }
    Ok(all)
}

async fn from_store(file: &Path, limit: usize) -> Result<Collected, u8> {
    let config = crate::config::Config::load(Some(file))
        .map_err(|e| super::fail(crate::exit::CONFIG, &e))?;
    let source =
        crate::store::TraceSource::from_config(&config.output, &crate::store::default_trace_dir())
            .map_err(|e| super::fail(crate::exit::CONFIG, &e))?;
    let scratch = std::env::temp_dir().join(format!("ciwatch-learn-{}", std::process::id()));
    let collected = source::from_store(&source, limit, &scratch).await;
    let _ = std::fs::remove_dir_all(&scratch);
    collected.map_err(|e| super::fail(crate::exit::FETCH, &e))
}

fn write_outputs(
    args: &LearnArgs,
    proposal: &crate::learn::Proposal,
    yaml: &str,
    delta: Option<&crate::learn::PolicyDelta>,
) -> Result<(), LearnError> {
    if let Some(path) = &args.out {
        write(path, yaml)?;
    }
    if let Some(path) = &args.coverage {
        write(
            path,
            &(serde_json::to_string_pretty(proposal).unwrap_or_default() + "\n"),
        )?;
    }
    if args.json {
        let out = serde_json::json!({ "policy": yaml, "coverage": proposal, "diff": delta });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else if let Some(d) = delta {
        print!("{}", d.render());
    } else if args.out.is_none() {
        print!("{yaml}");
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), LearnError> {
    std::fs::write(path, text).map_err(|source| LearnError::Write {
        path: path.display().to_string(),
        source,
    })
}
