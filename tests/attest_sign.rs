//! Signing a sealed log with a local key and verifying it with `ciwatch verify`,
//! the rejections, and every bad-input path. No network, root or BPF needed.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

mod attest_support;

use std::path::Path;

use attest_support::*;
use ciwatch::attest::{self, signer::Method, AttestError, PredicateChoice, SignMode};
use serde_json::Value;

fn verify_key(public: &Path, material: (&str, &Path), log: &Path) -> std::process::Output {
    ciwatch(&[
        "verify",
        "--key",
        &s(public),
        material.0,
        &s(material.1),
        &s(log),
    ])
}

#[tokio::test]
async fn local_key_signature_verifies_and_reports_the_headline() {
    let job = job_dir();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path());
    let outcome = attest::sign_trace(job.path(), &options(SignMode::Key, Some(&private)))
        .await
        .unwrap();
    assert_eq!(outcome.method, Some(Method::Key));
    assert!(outcome.fallback.is_none());
    let bundle_path = job.path().join(attest::BUNDLE_FILE);
    let envelope_path = job.path().join(attest::ENVELOPE_FILE);
    let log = job.path().join("events.ndjson");
    assert_eq!(
        outcome.files,
        vec![envelope_path.clone(), bundle_path.clone()]
    );

    // The statement: the log as first subject, by its exact bytes.
    let bundle = read_json(&bundle_path);
    let statement = bundle_statement(&bundle);
    let log_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(&log).unwrap(),
    ));
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(
        statement["predicateType"],
        "https://dpndncy.io/agent/runtime-trace/v1"
    );
    assert_eq!(statement["subject"][0]["name"], "events.ndjson");
    assert_eq!(statement["subject"][0]["digest"]["sha256"], log_sha);
    let p = &statement["predicate"];
    assert_eq!(p["eventLog"]["digest"]["sha256"], log_sha);
    assert_eq!(p["counts"]["events"]["exec"], 8);
    assert_eq!(p["signing"]["method"], "key");
    assert_eq!(p["signing"]["requested"], "key");
    assert_eq!(
        p["signing"]["keyId"],
        bundle["verificationMaterial"]["publicKey"]["hint"]
    );
    assert_eq!(
        bundle["dsseEnvelope"]["signatures"][0]["keyid"],
        bundle["verificationMaterial"]["publicKey"]["hint"]
    );
    assert_eq!(p["ci"]["steps"].as_array().unwrap().len(), 3);
    assert_eq!(p["policy"]["mode"], "observe");
    assert!(p["policy"]["version"].is_null());
    // The postinstall's telemetry destination is in the deduplicated egress list.
    assert!(p["egress"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["ip"] == "203.0.113.7" && e["hosts"][0] == "telemetry.example.net"));
    // Envelope file: one line, the same envelope as in the bundle.
    let lines = std::fs::read_to_string(&envelope_path).unwrap();
    assert_eq!(lines.lines().count(), 1);
    let env: Value = serde_json::from_str(lines.trim()).unwrap();
    assert_eq!(env["payload"], bundle["dsseEnvelope"]["payload"]);

    let out = verify_key(&public, ("--bundle", &bundle_path), &log);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("Verified OK"), "{shown}");
    assert!(shown.contains(&log_sha), "{shown}");
    assert!(
        shown.contains("github acme/app/1234/1/build (3 steps)"),
        "{shown}"
    );
    assert!(shown.contains("exec 8"), "{shown}");
    assert!(
        shown.contains("6 egress destinations, 4 DNS names"),
        "{shown}"
    );

    let out = verify_key(&public, ("--envelope", &envelope_path), &log);
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn ciwatch_verify_rejects_tampering_the_wrong_key_and_a_changed_log() {
    let job = job_dir();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path());
    attest::sign_trace(job.path(), &options(SignMode::Key, Some(&private)))
        .await
        .unwrap();
    let bundle = job.path().join(attest::BUNDLE_FILE);
    let envelopes = job.path().join(attest::ENVELOPE_FILE);
    let log = job.path().join("events.ndjson");

    // Tampered payload: fewer execs claimed, same signature.
    let tampered = job.path().join("tampered.sigstore.json");
    tamper_bundle(&bundle, &tampered, |st| {
        st["predicate"]["counts"]["events"]["exec"] = Value::from(1)
    });
    let out = verify_key(&public, ("--bundle", &tampered), &log);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("signature does not verify"),
        "{}",
        text(&out)
    );
    let tampered_env = job.path().join("tampered.intoto.jsonl");
    tamper_envelopes(&envelopes, &tampered_env, |st| {
        st["predicate"]["egress"] = Value::Array(vec![])
    });
    let out = verify_key(&public, ("--envelope", &tampered_env), &log);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // Wrong key: the reason names the key the signature claims.
    let other = tempfile::tempdir().unwrap();
    let (_, other_public) = keypair(other.path());
    let out = verify_key(&other_public, ("--bundle", &bundle), &log);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("wrong key"), "{}", text(&out));

    // The log modified after signing: one byte appended.
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(b"\n");
    let changed = job.path().join("changed.ndjson");
    std::fs::write(&changed, &bytes).unwrap();
    let out = verify_key(&public, ("--bundle", &bundle), &changed);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("does not match the attestation"),
        "{}",
        text(&out)
    );

    // A re-signed statement whose predicate contradicts its subject.
    let key = attest::keys::load_signing_key(&private).unwrap();
    let env_line = std::fs::read_to_string(&envelopes).unwrap();
    let env = attest::dsse::Envelope::parse(env_line.trim()).unwrap();
    let mut st: Value = serde_json::from_slice(&env.payload_bytes().unwrap()).unwrap();
    st["predicate"]["eventLog"]["digest"]["sha256"] = Value::from("0".repeat(64));
    let payload = serde_json::to_vec(&st).unwrap();
    let sig = key
        .sign(&attest::dsse::pae(attest::dsse::PAYLOAD_TYPE, &payload))
        .unwrap();
    let forged = job.path().join("inconsistent.intoto.jsonl");
    std::fs::write(
        &forged,
        attest::dsse::Envelope::new(&payload, &key.public().key_id, &sig).to_line(),
    )
    .unwrap();
    let out = verify_key(&public, ("--envelope", &forged), &log);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("inconsistent"), "{}", text(&out));

    // A correctly signed statement of another kind (say, SLSA provenance) is not a trace.
    st["predicate"]["eventLog"]["digest"]["sha256"] = Value::from(hex::encode(
        <sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&log).unwrap()),
    ));
    st["predicateType"] = Value::from("https://slsa.dev/provenance/v1");
    let payload = serde_json::to_vec(&st).unwrap();
    let sig = key
        .sign(&attest::dsse::pae(attest::dsse::PAYLOAD_TYPE, &payload))
        .unwrap();
    std::fs::write(
        &forged,
        attest::dsse::Envelope::new(&payload, &key.public().key_id, &sig).to_line(),
    )
    .unwrap();
    let out = verify_key(&public, ("--envelope", &forged), &log);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is not a ciwatch trace"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn malformed_inputs_to_verify_are_errors_not_panics() {
    let job = job_dir();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path());
    attest::sign_trace(job.path(), &options(SignMode::Key, Some(&private)))
        .await
        .unwrap();
    let log = job.path().join("events.ndjson");
    let bundle = job.path().join(attest::BUNDLE_FILE);
    let cases: &[(&str, &str)] = &[
        ("empty", ""),
        ("not-json", "{\"mediaType\":"),
        ("array", "[]"),
        (
            "no-content",
            r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"publicKey":{"hint":"x"}}}"#,
        ),
        (
            "bad-b64",
            r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"publicKey":{"hint":"x"},"tlogEntries":[]},"dsseEnvelope":{"payload":"%%%","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AA=="}]}}"#,
        ),
        (
            "not-statement",
            r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"publicKey":{"hint":"x"},"tlogEntries":[]},"dsseEnvelope":{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AA=="}]}}"#,
        ),
        (
            "huge-number",
            r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"certificate":{"rawBytes":"AA=="},"tlogEntries":[{"logIndex":"99999999999999999999999"}]}}"#,
        ),
    ];
    for (name, content) in cases {
        let path = job.path().join(format!("{name}.json"));
        std::fs::write(&path, content).unwrap();
        let out = verify_key(&public, ("--bundle", &path), &log);
        let code = out.status.code();
        assert!(
            code == Some(65) || code == Some(1),
            "{name}: {code:?} {}",
            text(&out)
        );
        assert!(!text(&out).contains("panicked"), "{name}: {}", text(&out));
    }
    // Unreadable inputs.
    let out = verify_key(
        &public,
        ("--bundle", &job.path().join("missing.json")),
        &log,
    );
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    let out = verify_key(
        &public,
        ("--bundle", &bundle),
        &job.path().join("missing.ndjson"),
    );
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    let out = verify_key(&private, ("--bundle", &bundle), &log);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(text(&out).contains("holds a private key"), "{}", text(&out));
    // Keyless flags on a key bundle, and keyless with a bare envelope: usage errors with a way out.
    let out = ciwatch(&[
        "verify",
        "--certificate-identity",
        "x",
        "--certificate-oidc-issuer",
        "y",
        "--envelope",
        &s(&job.path().join(attest::ENVELOPE_FILE)),
        &s(&log),
    ]);
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(
        text(&out).contains("needs the Sigstore bundle"),
        "{}",
        text(&out)
    );
    let out = ciwatch(&["verify", "--bundle", &s(&bundle), &s(&log)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[tokio::test]
async fn bad_signing_keys_fail_clearly_and_write_nothing() {
    let job = job_dir();
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = keypair(dir.path());
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let rsa_like = dir.path().join("rsa.pem");
    std::fs::write(
        &rsa_like,
        "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    for (path, expect) in [
        (public.clone(), "holds a public key"),
        (dir.path().join("missing.key"), "cannot read key"),
        (junk, "not a valid PKCS#8"),
        (rsa_like, "RSA"),
    ] {
        let err = attest::sign_trace(job.path(), &options(SignMode::Key, Some(&path)))
            .await
            .unwrap_err();
        assert!(matches!(err, AttestError::Key(_)), "{err}");
        assert!(
            ciwatch::error::chain(&err).contains(expect),
            "{expect}: {err}"
        );
        assert!(!job.path().join(attest::BUNDLE_FILE).exists());
        assert!(!job.path().join(attest::ENVELOPE_FILE).exists());
    }
}

#[tokio::test]
async fn keyless_required_fails_loudly_without_a_token_or_a_reachable_fulcio() {
    let job = job_dir();
    // A stale attestation from an earlier run must not survive a failed signing.
    std::fs::write(job.path().join(attest::BUNDLE_FILE), "stale").unwrap();
    let err = attest::sign_trace(job.path(), &options(SignMode::Keyless, None))
        .await
        .unwrap_err();
    assert!(matches!(err, AttestError::KeylessRequired(_)), "{err}");
    assert!(
        ciwatch::error::chain(&err).contains("no OIDC token"),
        "{err}"
    );
    assert!(
        !job.path().join(attest::BUNDLE_FILE).exists(),
        "stale bundle left behind"
    );
    assert!(!job.path().join(attest::ENVELOPE_FILE).exists());

    // A token, but Fulcio refuses connections: bounded retries, then a loud failure.
    let mut o = options(SignMode::Keyless, None);
    o.keyless.env.sigstore_id_token = Some(fake_jwt());
    o.keyless.fulcio_url = closed_port_url();
    o.keyless.rekor_url = closed_port_url();
    let err = attest::sign_trace(job.path(), &o).await.unwrap_err();
    let msg = ciwatch::error::chain(&err);
    assert!(
        msg.contains("after 2 tries") && msg.contains("Fulcio"),
        "{msg}"
    );
    assert!(!job.path().join(attest::BUNDLE_FILE).exists());

    // The token endpoint itself unreachable.
    let mut o = options(SignMode::Keyless, None);
    o.keyless.env.github_request_url = Some(format!("{}/token?api-version=2.0", closed_port_url()));
    o.keyless.env.github_request_token = Some("bearer".into());
    let err = attest::sign_trace(job.path(), &o).await.unwrap_err();
    assert!(
        ciwatch::error::chain(&err).contains("token request failed after 2 tries"),
        "{err}"
    );
}

#[tokio::test]
async fn auto_falls_back_to_the_key_and_records_why() {
    let job = job_dir();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path());
    let mut o = options(SignMode::Auto, Some(&private));
    o.keyless.env.sigstore_id_token = Some(fake_jwt());
    o.keyless.fulcio_url = closed_port_url();
    let outcome = attest::sign_trace(job.path(), &o).await.unwrap();
    assert_eq!(outcome.method, Some(Method::Key));
    let fallback = outcome.fallback.clone().expect("fallback recorded");
    assert_eq!(fallback.from, "keyless");
    assert!(fallback.reason.contains("Fulcio"), "{}", fallback.reason);
    // Recorded inside what is signed...
    let st = bundle_statement(&read_json(&job.path().join(attest::BUNDLE_FILE)));
    assert_eq!(st["predicate"]["signing"]["method"], "key");
    assert_eq!(st["predicate"]["signing"]["requested"], "auto");
    assert_eq!(st["predicate"]["signing"]["fallback"]["from"], "keyless");
    assert!(st["predicate"]["signing"]["fallback"]["reason"]
        .as_str()
        .unwrap()
        .contains("Fulcio"));
    // ...in the summary...
    let md = attest::summary_markdown(&Ok(outcome), job.path());
    assert!(md.contains("**Fallback:** keyless signing failed"), "{md}");
    assert!(
        md.contains(&format!("ciwatch verify --key {}", s(&public))),
        "{md}"
    );
    // ...and by verify.
    let out = ciwatch(&[
        "verify",
        "--key",
        &s(&public),
        "--bundle",
        &s(&job.path().join(attest::BUNDLE_FILE)),
        &s(&job.path().join("events.ndjson")),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("FALLBACK from keyless"),
        "{}",
        text(&out)
    );

    // No token at all: the same fallback, with that reason.
    let outcome = attest::sign_trace(job.path(), &options(SignMode::Auto, Some(&private)))
        .await
        .unwrap();
    assert!(outcome.fallback.unwrap().reason.contains("no OIDC token"));

    // With the default key, the fallback creates it on first use and says where.
    let config = tempfile::tempdir().unwrap();
    let mut o = options(SignMode::Auto, None);
    o.key = attest::KeySource::CreateIn(config.path().join("ciwatch"));
    assert!(
        attest::prepare_key(&o).unwrap().is_none(),
        "auto must not create the default key up front"
    );
    assert!(!config.path().join("ciwatch/ciwatch.key").exists());
    let outcome = attest::sign_trace(job.path(), &o).await.unwrap();
    let key = outcome.key.clone().unwrap();
    assert!(key.created);
    assert_eq!(key.private_path, config.path().join("ciwatch/ciwatch.key"));
    assert_eq!(
        key.public_path,
        Some(config.path().join("ciwatch/ciwatch.pub"))
    );
    let out = ciwatch(&[
        "verify",
        "--key",
        &s(&config.path().join("ciwatch/ciwatch.pub")),
        "--bundle",
        &s(&job.path().join(attest::BUNDLE_FILE)),
        &s(&job.path().join("events.ndjson")),
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn both_predicates_subjects_and_the_standard_runtime_trace() {
    let job = job_dir();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path());
    let dist = job.path().join("dist");
    std::fs::create_dir(&dist).unwrap();
    std::fs::write(dist.join("app-1.0.tgz"), b"tarball").unwrap();
    let mut o = options(SignMode::Key, Some(&private));
    o.predicates = PredicateChoice::Both;
    o.subjects = vec![format!("{}/*.tgz", s(&dist))];
    let outcome = attest::sign_trace(job.path(), &o).await.unwrap();
    assert_eq!(outcome.files.len(), 3, "{:?}", outcome.files);
    let lines = std::fs::read_to_string(job.path().join(attest::ENVELOPE_FILE)).unwrap();
    assert_eq!(lines.lines().count(), 2);
    let rt = bundle_statement(&read_json(
        &job.path().join(attest::RUNTIME_TRACE_BUNDLE_FILE),
    ));
    assert_eq!(
        rt["predicateType"],
        "https://in-toto.io/attestation/runtime-trace/v0.2"
    );
    assert_eq!(
        rt["predicate"]["monitoredProcess"]["hostID"],
        "https://github.com"
    );
    assert_eq!(
        rt["predicate"]["monitoredProcess"]["event"],
        "acme/app/1234/1/build"
    );
    assert!(rt["predicate"]["monitorLog"]["network"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["ip"] == "203.0.113.7"
            && n["hostname"] == "telemetry.example.net"
            && n["port"] == 443
            && n["protocol"] == "tcp"));
    assert_eq!(
        rt["predicate"]["metadata"]["buildStartedOn"],
        "2026-11-02T10:00:00.000000000Z"
    );
    assert_eq!(rt["subject"][1]["name"], s(&dist.join("app-1.0.tgz")));

    // Every envelope of the file verifies; and the build output itself verifies as a subject.
    let log = job.path().join("events.ndjson");
    let out = ciwatch(&[
        "verify",
        "--key",
        &s(&public),
        "--envelope",
        &s(&job.path().join(attest::ENVELOPE_FILE)),
        &s(&log),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("runtime-trace/v0.2"),
        "{}",
        text(&out)
    );
    let rt_bundle = job.path().join(attest::RUNTIME_TRACE_BUNDLE_FILE);
    let out = ciwatch(&[
        "verify",
        "--key",
        &s(&public),
        "--bundle",
        &s(&rt_bundle),
        &s(&dist.join("app-1.0.tgz")),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("app-1.0.tgz"),
        "{}",
        text(&out)
    );

    // A --subject that matches nothing is an error, not a silently smaller statement.
    let mut o = options(SignMode::Key, Some(&private));
    o.subjects = vec![format!("{}/*.zip", s(&dist))];
    let err = attest::sign_trace(job.path(), &o).await.unwrap_err();
    assert!(
        ciwatch::error::chain(&err).contains("matched no file"),
        "{err}"
    );
}

#[tokio::test]
async fn refuses_unsealed_or_changed_logs_and_honours_none() {
    let job = tempfile::tempdir().unwrap();
    std::fs::write(job.path().join("events.ndjson.partial"), "{}\n").unwrap();
    let err = attest::sign_trace(job.path(), &options(SignMode::Key, None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AttestError::NotSealed { partial: true, .. }),
        "{err}"
    );

    let job = job_dir();
    let keys = tempfile::tempdir().unwrap();
    let (private, _) = keypair(keys.path());
    let mut o = options(SignMode::Key, Some(&private));
    o.expected_log_sha256 = Some("0".repeat(64));
    let err = attest::sign_trace(job.path(), &o).await.unwrap_err();
    assert!(matches!(err, AttestError::LogChanged { .. }), "{err}");
    let md = attest::summary_markdown(&Err(err), job.path());
    assert!(md.contains("**NOT SIGNED:**"), "{md}");

    let outcome = attest::sign_trace(job.path(), &options(SignMode::None, None))
        .await
        .unwrap();
    assert_eq!(outcome.method, None);
    assert!(attest::summary_markdown(&Ok(outcome), job.path()).contains("Not signed"));
    assert!(!job.path().join(attest::BUNDLE_FILE).exists());

    // A log without trace_end is not sealed and complete.
    let job = tempfile::tempdir().unwrap();
    let fixture =
        std::fs::read_to_string(repo().join("tests/fixtures/attest/events.ndjson")).unwrap();
    let truncated: Vec<&str> = fixture.lines().take(5).collect();
    std::fs::write(
        job.path().join("events.ndjson"),
        truncated.join("\n") + "\n",
    )
    .unwrap();
    let err = attest::sign_trace(job.path(), &options(SignMode::Key, Some(&private)))
        .await
        .unwrap_err();
    assert!(
        ciwatch::error::chain(&err).contains("no trace_end"),
        "{err}"
    );
}

#[test]
fn keygen_writes_a_private_0600_key_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = ciwatch(&["keygen", "--out-dir", &s(dir.path())]);
    assert!(out.status.success(), "{}", text(&out));
    let private = dir.path().join("ciwatch.key");
    assert_eq!(
        std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&private)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(std::fs::read_to_string(dir.path().join("ciwatch.pub"))
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----\n"));
    let before = std::fs::read(&private).unwrap();
    let out = ciwatch(&["keygen", "--out-dir", &s(dir.path())]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--force"));
    assert_eq!(std::fs::read(&private).unwrap(), before);
    let out = ciwatch(&["keygen", "--out-dir", &s(dir.path()), "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(std::fs::read(&private).unwrap(), before);
}

/// A syntactically valid CI token; nothing here verifies its signature.
pub fn fake_jwt() -> String {
    use base64::Engine;
    let e = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = format!(
        r#"{{"iss":"https://token.actions.githubusercontent.com","aud":"sigstore","sub":"repo:acme/app:ref:refs/heads/main","exp":{exp}}}"#
    );
    format!("{}.{}.{}", e(r#"{"alg":"RS256"}"#), e(&claims), e("sig"))
}

/// A loopback URL nothing listens on.
fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// A signature over a partial trace holds, but the trace is not evidence of the whole job.
#[tokio::test]
async fn verify_refuses_an_incomplete_or_died_trace_unless_told_to_accept_it() {
    let job = tempfile::tempdir().unwrap();
    let fixture =
        std::fs::read_to_string(repo().join("tests/fixtures/attest/events.ndjson")).unwrap();
    let died = fixture.replace(
        r#""still_running":0,"complete":true}"#,
        r#""still_running":0,"agent_status":"died","complete":false}"#,
    );
    assert_ne!(died, fixture, "the fixture's trace_end changed shape");
    let log = job.path().join("events.ndjson");
    std::fs::write(&log, died).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path());
    attest::sign_trace(job.path(), &options(SignMode::Key, Some(&private)))
        .await
        .unwrap();
    let bundle = job.path().join(attest::BUNDLE_FILE);

    let out = verify_key(&public, ("--bundle", &bundle), &log);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("partial evidence"), "{stderr}");
    assert!(stderr.contains("the trace is incomplete"), "{stderr}");
    assert!(stderr.contains("`died`"), "{stderr}");

    let accepted = ciwatch(&[
        "verify",
        "--allow-incomplete",
        "--key",
        &s(&public),
        "--bundle",
        &s(&bundle),
        &s(&log),
    ]);
    assert_eq!(accepted.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&accepted.stdout).contains("INCOMPLETE"));
}
