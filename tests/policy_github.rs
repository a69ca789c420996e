//! `ciwatch learn --github` against a fake GitHub REST API on 127.0.0.1:
//! paginated workflow runs (`Link` headers), run artifacts, artifact zips
//! behind a redirect to "blob storage", and one secondary rate limit
//! (403 + `retry-after: 1`) that must be waited out, not fail the fetch.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const CIWATCH: &str = env!("CARGO_BIN_EXE_ciwatch");
const TOKEN: &str = "ghs_fake-token-for-tests";

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/policy")
        .join(rel)
}

/// What the fake saw: path and query, the Authorization header, the status it answered.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    auth: Option<String>,
    status: u16,
    at: Instant,
}

struct Fake {
    addr: SocketAddr,
    zips: HashMap<u64, Vec<u8>>,
    limited: AtomicBool,
    seen: Mutex<Vec<Seen>>,
}

/// An artifact zip as actions/upload-artifact makes it: the trace files, flat.
fn artifact_zip(run: u32) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    w.start_file("events.ndjson", opts).unwrap();
    w.write_all(&std::fs::read(fixture(&format!("runs/run-{run}/events.ndjson"))).unwrap())
        .unwrap();
    w.start_file("summary.md", opts).unwrap();
    w.write_all(b"# ciwatch\n").unwrap();
    w.start_file("attestation.intoto.jsonl", opts).unwrap();
    w.write_all(b"{}\n").unwrap();
    w.finish().unwrap().into_inner()
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn runs_json(ids: &[u64]) -> Value {
    let runs: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "run_number": id - 100, "status": "completed", "conclusion": "success", "head_branch": "main"}))
        .collect();
    json!({"total_count": 6, "workflow_runs": runs})
}

fn artifact(id: u64, name: &str, expired: bool) -> Value {
    json!({"id": id, "name": name, "expired": expired, "size_in_bytes": 1234,
           "archive_download_url": format!("https://api.github.com/repos/acme/app/actions/artifacts/{id}/zip")})
}

fn route(fake: &Fake, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or_default();
    let authed = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    let base = format!("http://{}", fake.addr);
    if let Some(id) = path.strip_prefix("/blob/") {
        // Pre-signed storage URL: no token needed, and none may be sent.
        let id: u64 = id.parse().unwrap_or(0);
        return match (fake.zips.get(&id), query == "sig=s3cr3t") {
            (Some(zip), true) => {
                let mut r = Response::new(Full::new(Bytes::from(zip.clone())));
                r.headers_mut()
                    .insert("content-type", "application/zip".parse().unwrap());
                r
            }
            _ => json_response(StatusCode::FORBIDDEN, json!({"message": "bad signature"})),
        };
    }
    if !authed {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"message": "Bad credentials"}),
        );
    }
    if path == "/repos/acme/app/actions/workflows/ci.yml/runs" {
        assert!(
            query.contains("status=success") && query.contains("branch=main"),
            "{query}"
        );
        if query.contains("page=2") {
            if !fake.limited.swap(true, Ordering::SeqCst) {
                let mut r = json_response(
                    StatusCode::FORBIDDEN,
                    json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}),
                );
                r.headers_mut().insert("retry-after", "1".parse().unwrap());
                return r;
            }
            return json_response(StatusCode::OK, runs_json(&[103, 102, 101]));
        }
        let mut r = json_response(StatusCode::OK, runs_json(&[106, 105, 104]));
        let next = format!("{base}/repos/acme/app/actions/workflows/ci.yml/runs?status=success&per_page=3&branch=main&page=2");
        r.headers_mut().insert(
            "link",
            format!("<{next}>; rel=\"next\", <{next}>; rel=\"last\"")
                .parse()
                .unwrap(),
        );
        return r;
    }
    if let Some(rest) = path.strip_prefix("/repos/acme/app/actions/runs/") {
        let run: u64 = rest.trim_end_matches("/artifacts").parse().unwrap_or(0);
        let list = match (run, query.contains("page=2")) {
            // A run of the workflow whose job uploaded no ciwatch trace.
            (106, _) => vec![artifact(1060, "build-logs", false)],
            (105, _) => vec![
                artifact(1051, "coverage-report", false),
                artifact(1050, "ciwatch-build-0a1b2c3d", false),
            ],
            (104, _) => vec![
                artifact(1041, "ciwatch-build-deadbeef", true),
                artifact(1040, "ciwatch-build-4d5e6f70", false),
            ],
            // Run 103's artifacts come in two pages.
            (103, false) => {
                let mut r = json_response(
                    StatusCode::OK,
                    json!({"total_count": 2, "artifacts": [artifact(1031, "coverage-report", false)]}),
                );
                let next =
                    format!("{base}/repos/acme/app/actions/runs/103/artifacts?per_page=100&page=2");
                r.headers_mut()
                    .insert("link", format!("<{next}>; rel=\"next\"").parse().unwrap());
                return r;
            }
            (103, true) => vec![artifact(1030, "ciwatch-build-9a8b7c6d", false)],
            (102, _) => vec![artifact(1020, "ciwatch-build-11223344-attempt2", false)],
            (101, _) => vec![artifact(1010, "ciwatch-build-55667788", false)],
            _ => return json_response(StatusCode::NOT_FOUND, json!({"message": "Not Found"})),
        };
        return json_response(
            StatusCode::OK,
            json!({"total_count": list.len(), "artifacts": list}),
        );
    }
    if let Some(rest) = path.strip_prefix("/repos/acme/app/actions/artifacts/") {
        let id: u64 = rest.trim_end_matches("/zip").parse().unwrap_or(0);
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::FOUND;
        r.headers_mut().insert(
            "location",
            format!("{base}/blob/{id}?sig=s3cr3t").parse().unwrap(),
        );
        return r;
    }
    let _ = target;
    json_response(StatusCode::NOT_FOUND, json!({"message": "Not Found"}))
}

async fn serve(fake: Arc<Fake>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let fake = fake.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let fake = fake.clone();
                async move {
                    let resp = route(&fake, &req);
                    fake.seen.lock().unwrap().push(Seen {
                        target: req
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_default(),
                        auth: req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(String::from),
                        status: resp.status().as_u16(),
                        at: Instant::now(),
                    });
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn start() -> Arc<Fake> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut zips = HashMap::new();
    for (id, run) in [(1050, 5), (1040, 4), (1030, 3), (1020, 2), (1010, 1)] {
        zips.insert(id, artifact_zip(run));
    }
    let fake = Arc::new(Fake {
        addr,
        zips,
        limited: AtomicBool::new(false),
        seen: Mutex::new(Vec::new()),
    });
    tokio::spawn(serve(fake.clone(), listener));
    fake
}

async fn learn(fake: &Fake, token: Option<&str>, extra: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(CIWATCH);
    cmd.args([
        "learn",
        "--github",
        "acme/app",
        "--workflow",
        "ci.yml",
        "--job",
        "build",
        "--branch",
        "main",
    ])
    .arg("--api-url")
    .arg(format!("http://{}", fake.addr))
    .args(extra)
    .env_remove("GITHUB_TOKEN");
    if let Some(t) = token {
        cmd.env("GITHUB_TOKEN", t);
    }
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("learn finished")
        .expect("spawn ciwatch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_from_the_last_runs_artifacts_through_pagination_and_a_rate_limit() {
    let fake = start().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yml");
    let coverage = dir.path().join("coverage.json");
    let started = Instant::now();
    let out = learn(
        &fake,
        Some(TOKEN),
        &[
            "--runs",
            "4",
            "--out",
            policy.to_str().unwrap(),
            "--coverage",
            coverage.to_str().unwrap(),
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let seen = fake.seen.lock().unwrap().clone();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();

    // Page 2 was asked twice: a 403 with retry-after: 1, then, a second later, a 200.
    let page2: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.target.contains("/workflows/ci.yml/runs") && s.target.contains("page=2"))
        .collect();
    assert_eq!(
        page2.iter().map(|s| s.status).collect::<Vec<_>>(),
        [403, 200],
        "{targets:#?}"
    );
    assert!(
        page2[1].at.duration_since(page2[0].at) >= Duration::from_millis(950),
        "waited out retry-after"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));

    // The four newest runs with a ciwatch artifact: 106 has none, 101 is never needed.
    assert!(
        targets.contains(&"/repos/acme/app/actions/runs/106/artifacts?per_page=100"),
        "{targets:#?}"
    );
    assert!(
        !targets.iter().any(|t| t.contains("/runs/101/")),
        "stopped at N runs: {targets:#?}"
    );
    assert!(
        targets.contains(&"/repos/acme/app/actions/runs/103/artifacts?per_page=100&page=2"),
        "artifact pages followed"
    );
    let downloads: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| t.starts_with("/blob/"))
        .collect();
    assert_eq!(
        downloads,
        [
            "/blob/1050?sig=s3cr3t",
            "/blob/1040?sig=s3cr3t",
            "/blob/1030?sig=s3cr3t",
            "/blob/1020?sig=s3cr3t"
        ]
    );
    assert!(
        !targets.iter().any(|t| t.contains("1041")),
        "the expired artifact is not downloaded"
    );
    assert!(
        !targets
            .iter()
            .any(|t| t.contains("1051") || t.contains("1031")),
        "other artifacts are not downloaded"
    );
    // The token goes to the API (every page, the next-page links included), never to blob storage.
    for s in &seen {
        if s.target.starts_with("/blob/") {
            assert_eq!(s.auth, None, "token leaked to {}", s.target);
        } else {
            assert_eq!(
                s.auth.as_deref(),
                Some(format!("Bearer {TOKEN}").as_str()),
                "{}",
                s.target
            );
        }
    }
    assert!(
        stderr.contains("skipped run #6 (106): no artifact matching \"ciwatch-build-*\""),
        "{stderr}"
    );
    assert!(stderr.contains("expired"), "{stderr}");
    assert!(
        stderr.contains("learned from 4 job(s); fewer than 5 are too few to trust"),
        "{stderr}"
    );

    // Coverage over runs 5, 4, 3 and 2 of the fixture job.
    let cov: Value = serde_json::from_str(&std::fs::read_to_string(&coverage).unwrap()).unwrap();
    assert_eq!(cov["jobs"], 4);
    let origins: Vec<&str> = cov["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        origins,
        [
            "artifact ciwatch-build-0a1b2c3d (run #5, 105)!events.ndjson",
            "artifact ciwatch-build-4d5e6f70 (run #4, 104)!events.ndjson",
            "artifact ciwatch-build-9a8b7c6d (run #3, 103)!events.ndjson",
            "artifact ciwatch-build-11223344-attempt2 (run #2, 102)!events.ndjson",
        ]
    );
    let jobs: HashMap<&str, u64> = cov["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["endpoint"].as_str().unwrap(), e["jobs"].as_u64().unwrap()))
        .collect();
    let want: HashMap<&str, u64> = [
        ("github.com:443/tcp", 4),
        ("objects.githubusercontent.com:443/tcp", 3),
        ("ipv6.example.net:443/tcp", 4),
        ("*.cdn.example-pkgs.net:443/tcp", 4),
        ("uploads.example.org:443/tcp", 1),
        ("registry.npmjs.org:443/tcp", 4),
        ("198.51.100.7:8443/tcp", 4),
        ("203.0.113.10:9000/tcp", 1),
        ("203.0.113.11:9000/tcp", 3),
    ]
    .into_iter()
    .collect();
    assert_eq!(jobs, want);

    // The proposal allows every destination of the fetched runs, and denies a new one.
    let yaml = std::fs::read_to_string(&policy).unwrap();
    let compiled = ciwatch::policy::parse(yaml.as_bytes(), "proposal")
        .unwrap()
        .policy
        .compiled_with(&[]);
    for run in 2..=5 {
        let t = ciwatch::policy::trace::read_path(&fixture(&format!("runs/run-{run}"))).unwrap();
        for c in &t.connects {
            assert!(
                compiled
                    .allows(c.addr, c.port, c.proto(), &c.step.as_match(), &c.hosts)
                    .is_allowed(),
                "run {run}: {c:?}"
            );
        }
    }
    let evil = ciwatch::policy::trace::read_path(&fixture("compromised")).unwrap();
    let exfil = evil
        .connects
        .iter()
        .find(|c| c.hosts == ["exfil.attacker.example"])
        .unwrap();
    assert!(!compiled
        .allows(
            exfil.addr,
            exfil.port,
            exfil.proto(),
            &exfil.step.as_match(),
            &exfil.hosts
        )
        .is_allowed());
    // Run 1 was not fetched: its rotating address 203.0.113.10 is covered (run 2 had it), but
    // its CDN names were: a.cdn is allowed through the wildcard.
    assert!(
        yaml.contains("- \"*.cdn.example-pkgs.net:443/tcp\""),
        "{yaml}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_fails_with_the_apis_message() {
    let fake = start().await;
    let out = learn(&fake, Some("wrong"), &["--runs", "2"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("HTTP 401: Bad credentials"), "{stderr}");
    let out = learn(&fake, Some("bad\ttoken"), &["--runs", "2"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_longer_than_max_wait_fails_instead_of_hanging() {
    let fake = start().await;
    let out = learn(&fake, Some(TOKEN), &["--runs", "4", "--max-wait", "0"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("rate limited; the API asks to wait 1 s, over --max-wait (0 s)"),
        "{stderr}"
    );
}
