//! `learn --github`: the ciwatch artifacts of the last N successful runs of
//! one workflow and job, through the GitHub REST API with octocrab.
//!
//! octocrab supplies the client (rustls, base URL, token, timeouts); the
//! requests go through its raw `_get` because the typed API turns a 403 into
//! an error without the `retry-after` / `x-ratelimit-reset` headers that say
//! how long to wait, and because its models require fields this code never
//! reads. The documented response shapes are read with small local structs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Limited};
use indicatif::ProgressBar;
use serde::Deserialize;

use super::source::{self, Collected};

pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// Runs per page asked for; GitHub's maximum is 100.
const PER_PAGE: usize = 100;
/// Pages of runs looked through before giving up on finding N with artifacts.
const MAX_PAGES: usize = 10;
/// Rate-limit waits before giving up on one request.
const MAX_RETRIES: u32 = 5;
/// A JSON page is never larger than this.
const MAX_PAGE_BYTES: usize = 32 << 20;
/// An artifact zip is never larger than this.
const MAX_ARTIFACT_BYTES: usize = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("--api-url {url:?} is not a valid URL: {message}")]
    ApiUrl { url: String, message: String },
    #[error("the GitHub token has characters an HTTP header cannot carry (spaces, control or non-ASCII)")]
    Token,
    #[error("cannot build the GitHub client")]
    Client(#[source] octocrab::Error),
    #[error("GET {url}")]
    Request {
        url: String,
        source: octocrab::Error,
    },
    #[error("GET {url}: reading the response failed: {message}")]
    Body { url: String, message: String },
    #[error("GET {url}: HTTP {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("GET {url}: rate limited; the API asks to wait {wait_secs} s, over --max-wait ({max_secs} s)")]
    RateLimited {
        url: String,
        wait_secs: u64,
        max_secs: u64,
    },
    #[error("GET {url}: still rate limited after {MAX_RETRIES} waits")]
    RetriesExhausted { url: String },
    #[error("GET {url}: unexpected response")]
    Json {
        url: String,
        source: serde_json::Error,
    },
    #[error("GET {url}: redirect without a usable Location")]
    Redirect { url: String },
    #[error(transparent)]
    Source(#[from] source::SourceError),
}

/// What to fetch.
#[derive(Debug, Clone)]
pub struct GithubSource {
    pub api_url: String,
    pub token: Option<String>,
    pub owner: String,
    pub repo: String,
    /// Workflow file name (`ci.yml`) or id.
    pub workflow: String,
    /// The job id (`jobs.<id>` in the workflow), which names the artifact.
    pub job: String,
    /// Glob over artifact names; default `ciwatch-<job>-*` (the action's name).
    pub artifact: Option<String>,
    /// Only runs on this branch (learn from trusted branches, not from PRs).
    pub branch: Option<String>,
    /// N: runs with a ciwatch artifact to collect.
    pub runs: usize,
    /// The longest rate-limit wait accepted.
    pub max_wait: Duration,
}

impl GithubSource {
    /// The action's default artifact name is `ciwatch-<job>-<8 hex>[-attemptN]`,
    /// with `" : < > | * ? \ /` in the job replaced by `-` (action/src/artifact.ts).
    pub fn artifact_glob(&self) -> String {
        self.artifact.clone().unwrap_or_else(|| {
            let job: String = self
                .job
                .chars()
                .map(|c| {
                    if "\":<>|*?\\/\r\n".contains(c) {
                        '-'
                    } else {
                        c
                    }
                })
                .collect();
            format!("ciwatch-{job}-*")
        })
    }
}

#[derive(Deserialize)]
struct RunsPage {
    #[serde(default)]
    workflow_runs: Vec<Run>,
}

#[derive(Deserialize)]
struct Run {
    id: u64,
    #[serde(default)]
    run_number: u64,
    #[serde(default)]
    conclusion: Option<String>,
}

#[derive(Deserialize)]
struct ArtifactsPage {
    #[serde(default)]
    artifacts: Vec<Artifact>,
}

#[derive(Deserialize)]
struct Artifact {
    id: u64,
    name: String,
    #[serde(default)]
    expired: bool,
}

struct Api<'a> {
    crab: octocrab::Octocrab,
    src: &'a GithubSource,
    progress: &'a ProgressBar,
}

/// Fetches the traces of the last `runs` successful runs that have a
/// matching artifact, newest first. Runs without one are passed over (and
/// listed in `skipped`).
pub async fn fetch(src: &GithubSource, progress: &ProgressBar) -> Result<Collected, GithubError> {
    let crab = client(&src.api_url, src.token.as_deref())?;
    let api = Api {
        crab,
        src,
        progress,
    };
    let glob = src.artifact_glob();
    let mut out = Collected::default();
    let mut runs_with_traces = 0usize;
    let mut next = Some(runs_url(src));
    let mut pages = 0;
    progress.set_length(src.runs as u64);
    while let (Some(url), true) = (next.take(), runs_with_traces < src.runs) {
        pages += 1;
        let (headers, body) = api.get(&url, MAX_PAGE_BYTES).await?;
        let page: RunsPage = serde_json::from_slice(&body).map_err(|source| GithubError::Json {
            url: url.clone(),
            source,
        })?;
        for run in page
            .workflow_runs
            .iter()
            .filter(|r| r.conclusion.as_deref().is_none_or(|c| c == "success"))
        {
            if runs_with_traces >= src.runs {
                break;
            }
            progress.set_message(format!("run #{} ({})", run.run_number, run.id));
            let before = out.traces.len();
            api.fetch_run(run, &glob, &mut out).await?;
            if out.traces.len() > before {
                runs_with_traces += 1;
                progress.inc(1);
            } else {
                out.skipped.push(format!(
                    "run #{} ({}): no artifact matching {glob:?} with a sealed log",
                    run.run_number, run.id
                ));
            }
        }
        if pages < MAX_PAGES {
            next = next_link(&headers);
        }
    }
    progress.finish_and_clear();
    Ok(out)
}

fn runs_url(src: &GithubSource) -> String {
    let mut url = format!(
        "/repos/{}/{}/actions/workflows/{}/runs?status=success&per_page={}",
        enc(&src.owner),
        enc(&src.repo),
        enc(&src.workflow),
        PER_PAGE.min(src.runs.max(1) * 2)
    );
    if let Some(b) = &src.branch {
        url.push_str(&format!("&branch={}", enc(b)));
    }
    url
}

/// Percent-encodes a path segment or query value.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn client(api_url: &str, token: Option<&str>) -> Result<octocrab::Octocrab, GithubError> {
    let bad = |message: String| GithubError::ApiUrl {
        url: api_url.into(),
        message,
    };
    let uri: http::Uri = api_url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
    if uri.scheme().is_none() || uri.authority().is_none() {
        return Err(bad(
            "it needs a scheme and a host, as in https://api.github.com".into(),
        ));
    }
    crate::tls::install_default_provider();
    let mut builder = octocrab::Octocrab::builder()
        .base_uri(uri)
        .map_err(GithubError::Client)?
        .add_header(http::header::ACCEPT, "application/vnd.github+json".into())
        .add_header(
            http::HeaderName::from_static("x-github-api-version"),
            "2022-11-28".into(),
        )
        .set_connect_timeout(Some(Duration::from_secs(15)))
        .set_read_timeout(Some(Duration::from_secs(120)));
    if let Some(t) = token.map(str::trim).filter(|t| !t.is_empty()) {
        // octocrab unwraps the header it builds from the token: check it first.
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(GithubError::Token);
        }
        builder = builder.personal_token(t.to_string());
    }
    builder.build().map_err(GithubError::Client)
}

impl Api<'_> {
    async fn fetch_run(
        &self,
        run: &Run,
        glob: &str,
        out: &mut Collected,
    ) -> Result<(), GithubError> {
        let mut next = Some(format!(
            "/repos/{}/{}/actions/runs/{}/artifacts?per_page=100",
            enc(&self.src.owner),
            enc(&self.src.repo),
            run.id
        ));
        while let Some(url) = next.take() {
            let (headers, body) = self.get(&url, MAX_PAGE_BYTES).await?;
            let page: ArtifactsPage =
                serde_json::from_slice(&body).map_err(|source| GithubError::Json {
                    url: url.clone(),
                    source,
                })?;
            for a in page
                .artifacts
                .iter()
                .filter(|a| crate::policy::model::glob(glob, &a.name))
            {
                if a.expired {
                    out.skipped.push(format!(
                        "artifact {} of run #{}: expired",
                        a.name, run.run_number
                    ));
                    continue;
                }
                let zip = self.download(a.id).await?;
                let origin = format!("artifact {} (run #{}, {})", a.name, run.run_number, run.id);
                source::from_zip(&zip, &origin, out)?;
            }
            next = next_link(&headers);
        }
        Ok(())
    }

    /// The zip behind `/artifacts/{id}/zip`: GitHub answers with a redirect to
    /// short-lived blob storage, fetched without the token (the URL is signed).
    async fn download(&self, id: u64) -> Result<Bytes, GithubError> {
        let url = format!(
            "/repos/{}/{}/actions/artifacts/{id}/zip",
            enc(&self.src.owner),
            enc(&self.src.repo)
        );
        match self.request(&self.crab, &url, MAX_ARTIFACT_BYTES).await? {
            Reply::Body(_, body) => Ok(body),
            Reply::Redirect(location) => {
                let target: http::Uri = location
                    .parse()
                    .map_err(|_| GithubError::Redirect { url: url.clone() })?;
                let (Some(scheme), Some(authority)) = (target.scheme_str(), target.authority())
                else {
                    // A relative Location stays on the API host.
                    return self
                        .get(&location, MAX_ARTIFACT_BYTES)
                        .await
                        .map(|(_, b)| b);
                };
                // A client of its own for the blob host: no token, and no API
                // base path glued in front of the blob's path.
                let blob = client(&format!("{scheme}://{authority}"), None)?;
                let path = target
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string();
                match self.request(&blob, &path, MAX_ARTIFACT_BYTES).await? {
                    Reply::Body(_, body) => Ok(body),
                    Reply::Redirect(_) => Err(GithubError::Redirect { url: location }),
                }
            }
        }
    }

    async fn get(&self, url: &str, limit: usize) -> Result<(HeaderMap, Bytes), GithubError> {
        match self.request(&self.crab, url, limit).await? {
            Reply::Body(h, b) => Ok((h, b)),
            Reply::Redirect(_) => Err(GithubError::Redirect { url: url.into() }),
        }
    }

    /// One GET, waiting out rate limits (403/429 with `retry-after`, or with
    /// `x-ratelimit-remaining: 0` and `x-ratelimit-reset`).
    async fn request(
        &self,
        crab: &octocrab::Octocrab,
        url: &str,
        limit: usize,
    ) -> Result<Reply, GithubError> {
        for _ in 0..=MAX_RETRIES {
            let resp = crab
                ._get(url)
                .await
                .map_err(|source| GithubError::Request {
                    url: url.into(),
                    source,
                })?;
            let status = resp.status();
            let headers = resp.headers().clone();
            if status.is_redirection() {
                let location = headers
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok());
                return location
                    .map(|l| Reply::Redirect(l.to_string()))
                    .ok_or(GithubError::Redirect { url: url.into() });
            }
            let body = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| GithubError::Body {
                    url: url.into(),
                    message: e.to_string(),
                })?
                .to_bytes();
            if status.is_success() {
                return Ok(Reply::Body(headers, body));
            }
            let Some(wait) = rate_limit_wait(status, &headers, SystemTime::now()) else {
                return Err(GithubError::Status {
                    url: url.into(),
                    status: status.as_u16(),
                    message: api_message(&body),
                });
            };
            if wait > self.src.max_wait {
                return Err(GithubError::RateLimited {
                    url: url.into(),
                    wait_secs: wait.as_secs(),
                    max_secs: self.src.max_wait.as_secs(),
                });
            }
            self.progress
                .set_message(format!("rate limited: waiting {} s", wait.as_secs()));
            tracing::warn!(
                url,
                wait_secs = wait.as_secs(),
                "GitHub API rate limit; waiting"
            );
            tokio::time::sleep(wait).await;
        }
        Err(GithubError::RetriesExhausted { url: url.into() })
    }
}

enum Reply {
    Body(HeaderMap, Bytes),
    Redirect(String),
}

/// How long a rate-limited response asks to wait, or `None` when the
/// response is not a rate limit (a 403 for a missing permission is final).
pub fn rate_limit_wait(
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(secs) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    if header("x-ratelimit-remaining") == Some("0") {
        let reset = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok())?;
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // One second past the reset, so the first retry is not early.
        return Some(Duration::from_secs(reset.saturating_sub(now) + 1));
    }
    // A 429 without a hint: GitHub documents waiting at least a minute.
    (status == StatusCode::TOO_MANY_REQUESTS).then_some(Duration::from_secs(60))
}

/// The `next` URL of a `Link` header.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(http::header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim();
            p == "rel=\"next\"" || p == "rel=next"
        });
        is_next.then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

/// The `message` of a GitHub error body, or the body itself.
fn api_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn rate_limit_waits() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let f = StatusCode::FORBIDDEN;
        assert_eq!(
            rate_limit_wait(f, &headers(&[("retry-after", "7")]), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            rate_limit_wait(
                f,
                &headers(&[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1030")
                ]),
                now
            ),
            Some(Duration::from_secs(31))
        );
        assert_eq!(
            rate_limit_wait(f, &headers(&[("x-ratelimit-remaining", "12")]), now),
            None,
            "a permission 403"
        );
        assert_eq!(
            rate_limit_wait(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            rate_limit_wait(
                StatusCode::NOT_FOUND,
                &headers(&[("retry-after", "1")]),
                now
            ),
            None
        );
    }

    #[test]
    fn link_next() {
        let h = headers(&[(
            "link",
            "<https://api.github.com/repositories/1/actions/runs?page=1>; rel=\"prev\", \
             <https://api.github.com/repositories/1/actions/runs?page=3>; rel=\"next\", <https://x/last>; rel=\"last\"",
        )]);
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/repositories/1/actions/runs?page=3")
        );
        assert_eq!(
            next_link(&headers(&[("link", "<https://x/1>; rel=\"prev\"")])),
            None
        );
        assert_eq!(next_link(&HeaderMap::new()), None);
    }

    #[test]
    fn default_artifact_glob_matches_the_actions_names() {
        let src = GithubSource {
            api_url: DEFAULT_API_URL.into(),
            token: None,
            owner: "o".into(),
            repo: "r".into(),
            workflow: "ci.yml".into(),
            job: "build/test".into(),
            artifact: None,
            branch: None,
            runs: 5,
            max_wait: Duration::from_secs(60),
        };
        let g = src.artifact_glob();
        assert_eq!(g, "ciwatch-build-test-*");
        assert!(crate::policy::model::glob(
            &g,
            "ciwatch-build-test-1a2b3c4d"
        ));
        assert!(crate::policy::model::glob(
            &g,
            "ciwatch-build-test-1a2b3c4d-attempt2"
        ));
        assert!(!crate::policy::model::glob(&g, "ciwatch-lint-1a2b3c4d"));
    }
}
