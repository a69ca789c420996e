//! Shared helpers for the attestation tests: fixtures, the ciwatch binary,
//! the independent verifiers installed by scripts/install-test-peers, and the
//! loopback Sigstore mock (tests/sigstore/mock-server.js).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use ciwatch::attest::signer::KeylessOptions;
use ciwatch::attest::{self, oidc::AmbientEnv, retry::Retry, KeySource, SignMode, SignOptions};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh output directory holding a copy of the realistic fixture log.
pub fn job_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("tests/fixtures/attest/events.ndjson"),
        dir.path().join("events.ndjson"),
    )
    .unwrap();
    dir
}

/// A keypair written by the library's keygen into `dir`.
pub fn keypair(dir: &Path) -> (PathBuf, PathBuf) {
    let g = attest::keys::generate(dir, false).unwrap();
    (g.private_path, g.public_path)
}

/// Fast retries so failure tests stay quick, and no ambient CI token.
pub fn options(mode: SignMode, key: Option<&Path>) -> SignOptions {
    let mut o = SignOptions::new(mode);
    o.key = key.map_or(KeySource::Default, |k| KeySource::Path(k.to_path_buf()));
    o.keyless = KeylessOptions {
        env: AmbientEnv::default(),
        retry: Retry {
            attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
        },
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        ..KeylessOptions::default()
    };
    o
}

pub fn ciwatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ciwatch"))
        .args(args)
        .env("CIWATCH_LOG", "error")
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The statement inside a bundle.
pub fn bundle_statement(bundle: &Value) -> Value {
    let payload = b64()
        .decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&payload).unwrap()
}

/// Replaces the bundle's statement with `edit(statement)`, keeping the signature.
pub fn tamper_bundle(src: &Path, dst: &Path, edit: impl FnOnce(&mut Value)) {
    let mut bundle = read_json(src);
    let mut statement = bundle_statement(&bundle);
    edit(&mut statement);
    bundle["dsseEnvelope"]["payload"] =
        Value::from(b64().encode(serde_json::to_vec(&statement).unwrap()));
    write_json(dst, &bundle);
}

/// The same for every envelope of an `.intoto.jsonl` file.
pub fn tamper_envelopes(src: &Path, dst: &Path, edit: impl Fn(&mut Value)) {
    let out: Vec<String> = std::fs::read_to_string(src)
        .unwrap()
        .lines()
        .map(|line| {
            let mut env: Value = serde_json::from_str(line).unwrap();
            let payload = b64().decode(env["payload"].as_str().unwrap()).unwrap();
            let mut statement: Value = serde_json::from_slice(&payload).unwrap();
            edit(&mut statement);
            env["payload"] = Value::from(b64().encode(serde_json::to_vec(&statement).unwrap()));
            serde_json::to_string(&env).unwrap()
        })
        .collect();
    std::fs::write(dst, out.join("\n") + "\n").unwrap();
}

/// The independent verifiers, from $CIWATCH_TEST_PEERS or .cache/peers.
pub struct Peers {
    pub node_modules: PathBuf,
    pub python: PathBuf,
}

/// Finds the peers. Missing peers skip the calling test with a printed reason,
/// except under CI (env CI set), where they fail it: CI must not pass by skipping.
pub fn peers(test: &str) -> Option<Peers> {
    let base = std::env::var_os("CIWATCH_TEST_PEERS")
        .map_or_else(|| repo().join(".cache/peers"), PathBuf::from);
    let peers = Peers {
        node_modules: base.join("node/node_modules"),
        python: base.join("venv/bin/python"),
    };
    let mut missing = Vec::new();
    if !peers.node_modules.join("@sigstore/verify").is_dir()
        || !peers.node_modules.join("@sigstore/mock").is_dir()
    {
        missing.push(format!("npm peers in {}", peers.node_modules.display()));
    }
    if !peers.python.is_file() {
        missing.push(format!("python venv {}", peers.python.display()));
    }
    if Command::new("node")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        missing.push("node".to_string());
    }
    if missing.is_empty() {
        return Some(peers);
    }
    let reason = format!(
        "{test}: independent verifiers missing ({}); run scripts/install-test-peers",
        missing.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{reason} (CI is set, so this fails instead of skipping)");
    }
    eprintln!("SKIPPED {reason}");
    None
}

impl Peers {
    pub fn node(&self, script: &str, args: &[&str]) -> Output {
        Command::new("node")
            .arg(repo().join(script))
            .args(args)
            .env("NODE_PATH", &self.node_modules)
            .output()
            .unwrap()
    }

    /// securesystemslib over an `.intoto.jsonl` file.
    pub fn securesystemslib(&self, envelopes: &Path, public: &Path) -> Output {
        Command::new(&self.python)
            .arg(repo().join("tests/peers/verify_dsse.py"))
            .args([envelopes, public])
            .output()
            .unwrap()
    }

    /// sigstore-js over a bundle with a public key.
    pub fn sigstore_js_key(&self, bundle: &Path, public: &Path) -> Output {
        self.node(
            "tests/peers/verify-sigstore-js.js",
            &[&s(bundle), "", "--key", &s(public)],
        )
    }

    /// sigstore-js over a keyless bundle against a trusted root.
    pub fn sigstore_js_keyless(
        &self,
        bundle: &Path,
        root: &Path,
        san: &str,
        issuer: &str,
    ) -> Output {
        self.node(
            "tests/peers/verify-sigstore-js.js",
            &[&s(bundle), &s(root), "--san", san, "--issuer", issuer],
        )
    }

    /// sigstore-python: `sigstore verify identity --offline` with a custom trust config.
    pub fn sigstore_python(
        &self,
        trust_config: &Path,
        bundle: &Path,
        artifact: &Path,
        san: &str,
        issuer: &str,
    ) -> Output {
        Command::new(&self.python)
            .args(["-m", "sigstore", "--trust-config"])
            .arg(trust_config)
            .args(["verify", "identity", "--offline", "--bundle"])
            .arg(bundle)
            .args(["--cert-identity", san, "--cert-oidc-issuer", issuer])
            .arg(artifact)
            .output()
            .unwrap()
    }
}

pub fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The loopback Fulcio + Rekor + GitHub token endpoint; stopped on drop.
pub struct Mock {
    child: Child,
    pub info: Value,
    pub dir: tempfile::TempDir,
}

impl Mock {
    pub fn start(peers: &Peers, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("node")
            .arg(repo().join("tests/sigstore/mock-server.js"))
            .arg(dir.path())
            .arg("0")
            .env("NODE_PATH", &peers.node_modules)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let info: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("mock server handshake {line:?}: {e}"));
        Self { child, info, dir }
    }

    pub fn get(&self, key: &str) -> String {
        self.info[key].as_str().unwrap().to_string()
    }

    pub fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(self.get(key))
    }

    /// Keyless options pointed at this mock, with the fake GitHub token endpoint as the ambient identity.
    pub fn keyless(&self, mode: SignMode, key: Option<&Path>) -> SignOptions {
        let mut o = options(mode, key);
        o.keyless.fulcio_url = self.get("url");
        o.keyless.rekor_url = self.get("url");
        o.keyless.trusted_root = Some(self.path("trusted_root"));
        o.keyless.retry.attempts = 3;
        o.keyless.env = AmbientEnv {
            sigstore_id_token: None,
            github_request_url: Some(self.get("token_url")),
            github_request_token: Some(self.get("request_token")),
        };
        o
    }

    pub fn stats(&self) -> Value {
        let url = format!("{}/stats", self.get("url"));
        let out = Command::new("node")
            .args([
                "-e",
                "fetch(process.argv[1]).then(r=>r.text()).then(t=>process.stdout.write(t))",
                &url,
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
