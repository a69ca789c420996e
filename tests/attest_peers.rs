//! What ciwatch signs, checked by verifiers it did not write: securesystemslib
//! (DSSE), sigstore-js (@sigstore/verify) and sigstore-python 4.x, including
//! keyless signing end to end against a loopback Fulcio + Rekor and a fake
//! GitHub Actions token endpoint. Each negative case must be rejected by
//! `ciwatch verify` and by at least one independent verifier.
//!
//! Needs `scripts/install-test-peers`. Without the peers these tests skip with
//! a printed reason; with env CI set they fail instead.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

mod attest_support;

use std::path::{Path, PathBuf};
use std::process::Output;

use attest_support::*;
use ciwatch::attest::{self, signer::Method, SignMode};
use serde_json::Value;

fn ok(what: &str, out: &Output) {
    assert!(out.status.success(), "{what} should accept:\n{}", text(out));
}

fn rejected(what: &str, out: &Output) {
    assert!(
        !out.status.success(),
        "{what} should reject:\n{}",
        text(out)
    );
    // Shown with --nocapture: each rejection should be for the reason under test.
    let why = text(out);
    let why: Vec<&str> = why
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!(
        "rejected by {what}: {}",
        why.join(" | ").chars().take(400).collect::<String>()
    );
}

/// Rejected, and for the reason under test (`needle` appears in the output).
fn rejected_for(what: &str, out: &Output, needle: &str) {
    rejected(what, out);
    assert!(
        text(out).contains(needle),
        "{what} rejected, but not for {needle:?}:\n{}",
        text(out)
    );
}

fn keyless_verify(bundle: &Path, log: &Path, san: &str, issuer: &str, root: &Path) -> Output {
    ciwatch(&[
        "verify",
        "--certificate-identity",
        san,
        "--certificate-oidc-issuer",
        issuer,
        "--trusted-root",
        &s(root),
        "--bundle",
        &s(bundle),
        &s(log),
    ])
}

#[tokio::test]
async fn local_key_artifacts_pass_securesystemslib_and_sigstore_js() {
    let Some(peers) = peers("local_key_artifacts_pass_securesystemslib_and_sigstore_js") else {
        return;
    };
    let job = job_dir();
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path());
    let mut o = options(SignMode::Key, Some(&private));
    o.predicates = attest::PredicateChoice::Both;
    attest::sign_trace(job.path(), &o).await.unwrap();
    let envelopes = job.path().join(attest::ENVELOPE_FILE);
    let bundle = job.path().join(attest::BUNDLE_FILE);
    let rt_bundle = job.path().join(attest::RUNTIME_TRACE_BUNDLE_FILE);

    ok(
        "securesystemslib",
        &peers.securesystemslib(&envelopes, &public),
    );
    let js = peers.sigstore_js_key(&bundle, &public);
    ok("sigstore-js (key)", &js);
    assert!(
        String::from_utf8_lossy(&js.stdout)
            .contains("OK https://dpndncy.io/agent/runtime-trace/v1"),
        "{}",
        text(&js)
    );
    ok(
        "sigstore-js (key, runtime-trace)",
        &peers.sigstore_js_key(&rt_bundle, &public),
    );

    // Tampered payload.
    let tampered_env = job.path().join("tampered.intoto.jsonl");
    tamper_envelopes(&envelopes, &tampered_env, |st| {
        st["predicate"]["counts"]["events"]["connect"] = Value::from(0)
    });
    rejected_for(
        "securesystemslib (tampered)",
        &peers.securesystemslib(&tampered_env, &public),
        "VerificationError",
    );
    let tampered = job.path().join("tampered.sigstore.json");
    tamper_bundle(&bundle, &tampered, |st| {
        st["predicate"]["egress"] = Value::Array(vec![])
    });
    let js = peers.sigstore_js_key(&tampered, &public);
    rejected("sigstore-js (tampered)", &js);
    assert!(
        String::from_utf8_lossy(&js.stdout).contains("SIGNATURE_ERROR"),
        "{}",
        text(&js)
    );
    let log = job.path().join("events.ndjson");
    rejected_for(
        "ciwatch (tampered)",
        &ciwatch(&[
            "verify",
            "--key",
            &s(&public),
            "--bundle",
            &s(&tampered),
            &s(&log),
        ]),
        "signature does not verify",
    );

    // Wrong key.
    let other = tempfile::tempdir().unwrap();
    let (_, other_public) = keypair(other.path());
    rejected_for(
        "securesystemslib (wrong key)",
        &peers.securesystemslib(&envelopes, &other_public),
        "VerificationError",
    );
    rejected_for(
        "sigstore-js (wrong key)",
        &peers.sigstore_js_key(&bundle, &other_public),
        "SIGNATURE_ERROR",
    );
    rejected_for(
        "ciwatch (wrong key)",
        &ciwatch(&[
            "verify",
            "--key",
            &s(&other_public),
            "--bundle",
            &s(&bundle),
            &s(&log),
        ]),
        "wrong key",
    );
}

struct Keyless {
    job: tempfile::TempDir,
    bundle: PathBuf,
    log: PathBuf,
}

async fn sign_keyless(mock: &Mock) -> Keyless {
    let job = job_dir();
    let outcome = attest::sign_trace(job.path(), &mock.keyless(SignMode::Keyless, None))
        .await
        .unwrap();
    assert_eq!(outcome.method, Some(Method::Keyless));
    let info = outcome.keyless.as_ref().unwrap();
    assert_eq!(info.identity.as_deref(), Some(mock.get("san").as_str()));
    assert_eq!(info.issuer.as_deref(), Some(mock.get("issuer").as_str()));
    let bundle = job.path().join(attest::BUNDLE_FILE);
    let log = job.path().join("events.ndjson");
    Keyless { job, bundle, log }
}

#[tokio::test]
async fn keyless_end_to_end_against_loopback_fulcio_and_rekor() {
    let Some(peers) = peers("keyless_end_to_end_against_loopback_fulcio_and_rekor") else {
        return;
    };
    let mock = Mock::start(&peers, &[]);
    let (san, issuer) = (mock.get("san"), mock.get("issuer"));
    let root = mock.path("trusted_root");
    let k = sign_keyless(&mock).await;

    // The bundle has the keyless v0.3 shape.
    let b = read_json(&k.bundle);
    assert_eq!(
        b["mediaType"],
        "application/vnd.dev.sigstore.bundle.v0.3+json"
    );
    assert!(b["verificationMaterial"]["certificate"]["rawBytes"].is_string());
    let entry = &b["verificationMaterial"]["tlogEntries"][0];
    assert_eq!(entry["kindVersion"]["kind"], "dsse");
    assert!(entry["logIndex"].is_string() && entry["integratedTime"].is_string());
    assert!(entry["inclusionPromise"]["signedEntryTimestamp"].is_string());
    assert!(entry["inclusionProof"]["checkpoint"]["envelope"].is_string());
    let st = bundle_statement(&b);
    assert_eq!(st["predicate"]["signing"]["method"], "keyless");
    assert!(st["predicate"]["signing"]["fallback"].is_null());

    // Fulcio saw a proof of possession over the token's `sub`, and it verified.
    let stats = mock.stats();
    assert_eq!(stats["popVerified"], 1, "{stats}");
    assert_eq!(stats["popRejected"], 0, "{stats}");
    assert_eq!(stats["token"], 1, "{stats}");

    let out = keyless_verify(&k.bundle, &k.log, &san, &issuer, &root);
    ok("ciwatch verify (keyless)", &out);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains(&format!("signed by      {san}")), "{shown}");
    assert!(shown.contains("Rekor log index"), "{shown}");
    ok(
        "sigstore-js (keyless)",
        &peers.sigstore_js_keyless(&k.bundle, &root, &san, &issuer),
    );
    let py = peers.sigstore_python(&mock.path("trust_config"), &k.bundle, &k.log, &san, &issuer);
    ok("sigstore-python (keyless)", &py);
    assert!(text(&py).contains("OK"), "{}", text(&py));

    // `auto` with a token signs keylessly, and leaves no default key behind.
    let config = tempfile::tempdir().unwrap();
    let mut o = mock.keyless(SignMode::Auto, None);
    o.key = attest::KeySource::CreateIn(config.path().join("ciwatch"));
    let job = job_dir();
    let outcome = attest::sign_trace(job.path(), &o).await.unwrap();
    assert_eq!(outcome.method, Some(Method::Keyless));
    assert!(outcome.fallback.is_none());
    assert!(
        !config.path().join("ciwatch").exists(),
        "auto created a key it never used"
    );
    let st = bundle_statement(&read_json(&job.path().join(attest::BUNDLE_FILE)));
    assert_eq!(st["predicate"]["signing"]["requested"], "auto");
    assert_eq!(st["predicate"]["signing"]["method"], "keyless");
    let md = attest::summary_markdown(&Ok(outcome), job.path());
    assert!(
        md.contains(&format!(
            "--certificate-identity {san} --certificate-oidc-issuer {issuer} --trusted-root"
        )),
        "{md}"
    );
}

#[tokio::test]
async fn keyless_negative_cases_are_rejected_by_ciwatch_and_independent_verifiers() {
    let Some(peers) =
        peers("keyless_negative_cases_are_rejected_by_ciwatch_and_independent_verifiers")
    else {
        return;
    };
    let mock = Mock::start(&peers, &[]);
    let (san, issuer) = (mock.get("san"), mock.get("issuer"));
    let root = mock.path("trusted_root");
    let trust_config = mock.path("trust_config");
    let a = sign_keyless(&mock).await;
    let dir = a.job.path();

    // Tampered payload (signature and Rekor's payload hash no longer match).
    let tampered = dir.join("tampered.sigstore.json");
    tamper_bundle(&a.bundle, &tampered, |st| {
        st["predicate"]["counts"]["events"]["exec"] = Value::from(0)
    });
    rejected_for(
        "ciwatch (tampered)",
        &keyless_verify(&tampered, &a.log, &san, &issuer, &root),
        "signature",
    );
    rejected_for(
        "sigstore-js (tampered)",
        &peers.sigstore_js_keyless(&tampered, &root, &san, &issuer),
        "payload hash mismatch",
    );
    rejected_for(
        "sigstore-python (tampered)",
        &peers.sigstore_python(&trust_config, &tampered, &a.log, &san, &issuer),
        "invalid signature",
    );

    // The log modified after signing.
    let changed = dir.join("changed.ndjson");
    let mut bytes = std::fs::read(&a.log).unwrap();
    bytes.extend_from_slice(br#"{"type":"exec","note":"added later"}"#);
    bytes.push(b'\n');
    std::fs::write(&changed, bytes).unwrap();
    let out = keyless_verify(&a.bundle, &changed, &san, &issuer, &root);
    rejected("ciwatch (log changed)", &out);
    assert!(
        text(&out).contains("does not match the attestation"),
        "{}",
        text(&out)
    );
    rejected_for(
        "sigstore-python (log changed)",
        &peers.sigstore_python(&trust_config, &a.bundle, &changed, &san, &issuer),
        "no subject for digest",
    );

    // The wrong identity.
    let wrong = "https://github.com/evil/app/.github/workflows/ci.yml@refs/heads/main";
    let out = keyless_verify(&a.bundle, &a.log, wrong, &issuer, &root);
    rejected("ciwatch (wrong identity)", &out);
    assert!(text(&out).contains("identity mismatch"), "{}", text(&out));
    rejected_for(
        "sigstore-js (wrong identity)",
        &peers.sigstore_js_keyless(&a.bundle, &root, wrong, &issuer),
        "UNTRUSTED_SIGNER_ERROR",
    );
    rejected_for(
        "sigstore-python (wrong identity)",
        &peers.sigstore_python(&trust_config, &a.bundle, &a.log, wrong, &issuer),
        "SANs do not match",
    );
    rejected_for(
        "ciwatch (wrong issuer)",
        &keyless_verify(&a.bundle, &a.log, &san, "https://gitlab.com", &root),
        "issuer mismatch",
    );

    // A certificate from an untrusted root: the trusted root names another CA.
    let untrusted = mock.path("trusted_root_untrusted_ca");
    rejected_for(
        "ciwatch (untrusted CA)",
        &keyless_verify(&a.bundle, &a.log, &san, &issuer, &untrusted),
        "certificate chain is invalid",
    );
    rejected_for(
        "sigstore-js (untrusted CA)",
        &peers.sigstore_js_keyless(&a.bundle, &untrusted, &san, &issuer),
        "CERTIFICATE_ERROR",
    );
    let untrusted_config = dir.join("untrusted_trust_config.json");
    let mut config = read_json(&trust_config);
    config["trustedRoot"] = read_json(&untrusted);
    write_json(&untrusted_config, &config);
    rejected_for(
        "sigstore-python (untrusted CA)",
        &peers.sigstore_python(&untrusted_config, &a.bundle, &a.log, &san, &issuer),
        "certificate chain",
    );

    // A bundle whose tlog entry belongs to another envelope (a second signing of the same log).
    let b = sign_keyless(&mock).await;
    let mut spliced = read_json(&a.bundle);
    spliced["verificationMaterial"]["tlogEntries"] =
        read_json(&b.bundle)["verificationMaterial"]["tlogEntries"].clone();
    let spliced_path = dir.join("spliced.sigstore.json");
    write_json(&spliced_path, &spliced);
    rejected_for(
        "ciwatch (foreign tlog entry)",
        &keyless_verify(&spliced_path, &a.log, &san, &issuer, &root),
        "log entry does not match the bundle",
    );
    rejected_for(
        "sigstore-js (foreign tlog entry)",
        &peers.sigstore_js_keyless(&spliced_path, &root, &san, &issuer),
        "TLOG_BODY_ERROR",
    );
    rejected_for(
        "sigstore-python (foreign tlog entry)",
        &peers.sigstore_python(&trust_config, &spliced_path, &a.log, &san, &issuer),
        "log entry signatures do not match",
    );
    // The untouched bundle still verifies everywhere (the cases above failed for their reason).
    ok(
        "ciwatch (control)",
        &keyless_verify(&a.bundle, &a.log, &san, &issuer, &root),
    );
    ok(
        "sigstore-js (control)",
        &peers.sigstore_js_keyless(&a.bundle, &root, &san, &issuer),
    );
}

#[tokio::test]
async fn keyless_retries_transient_failures_and_auto_falls_back_when_services_stay_down() {
    let Some(peers) =
        peers("keyless_retries_transient_failures_and_auto_falls_back_when_services_stay_down")
    else {
        return;
    };
    // One 503 from Fulcio and one from Rekor: the bounded retry rides them out.
    let mock = Mock::start(
        &peers,
        &[("MOCK_FULCIO_FAIL", "1"), ("MOCK_REKOR_FAIL", "1")],
    );
    let k = sign_keyless(&mock).await;
    let stats = mock.stats();
    assert_eq!(
        stats["fulcio"], 3,
        "503, then a certificate, then one for the retry after Rekor's 503: {stats}"
    );
    ok(
        "ciwatch verify (after retries)",
        &keyless_verify(
            &k.bundle,
            &k.log,
            &mock.get("san"),
            &mock.get("issuer"),
            &mock.path("trusted_root"),
        ),
    );

    // Fulcio down for longer than the retries: `keyless` fails loudly, `auto` falls back.
    let down = Mock::start(&peers, &[("MOCK_FULCIO_FAIL", "100")]);
    let job = job_dir();
    let err = attest::sign_trace(job.path(), &down.keyless(SignMode::Keyless, None))
        .await
        .unwrap_err();
    assert!(ciwatch::error::chain(&err).contains("503"), "{err}");
    assert!(!job.path().join(attest::BUNDLE_FILE).exists());
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = keypair(keys.path());
    let outcome = attest::sign_trace(job.path(), &down.keyless(SignMode::Auto, Some(&private)))
        .await
        .unwrap();
    assert_eq!(outcome.method, Some(Method::Key));
    assert!(outcome.fallback.unwrap().reason.contains("503"));
    ok(
        "sigstore-js (fallback bundle)",
        &peers.sigstore_js_key(&job.path().join(attest::BUNDLE_FILE), &public),
    );

    // Rekor down (Fulcio fine): the same, and nothing half-signed is written.
    let rekor_down = Mock::start(&peers, &[("MOCK_REKOR_FAIL", "100")]);
    let job = job_dir();
    let err = attest::sign_trace(job.path(), &rekor_down.keyless(SignMode::Keyless, None))
        .await
        .unwrap_err();
    let msg = ciwatch::error::chain(&err);
    assert!(
        msg.contains("Rekor") && msg.contains("after 3 tries"),
        "{msg}"
    );
    assert!(
        !job.path().join(attest::BUNDLE_FILE).exists()
            && !job.path().join(attest::ENVELOPE_FILE).exists()
    );
    let outcome = attest::sign_trace(
        job.path(),
        &rekor_down.keyless(SignMode::Auto, Some(&private)),
    )
    .await
    .unwrap();
    assert!(outcome.fallback.unwrap().reason.contains("Rekor"));
}

#[tokio::test]
async fn predicates_match_the_published_json_schema() {
    let Some(peers) = peers("predicates_match_the_published_json_schema") else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let (private, _) = keypair(keys.path());
    let schema = repo().join("docs/predicate.schema.json");
    let check = |bundles: &[&Path]| {
        std::process::Command::new(&peers.python)
            .arg(repo().join("tests/peers/check_schema.py"))
            .arg(&schema)
            .args(bundles)
            .output()
            .unwrap()
    };
    // Plain key signing, and auto with its recorded fallback.
    let plain = job_dir();
    attest::sign_trace(plain.path(), &options(SignMode::Key, Some(&private)))
        .await
        .unwrap();
    let fallback = job_dir();
    attest::sign_trace(fallback.path(), &options(SignMode::Auto, Some(&private)))
        .await
        .unwrap();
    let a = plain.path().join(attest::BUNDLE_FILE);
    let b = fallback.path().join(attest::BUNDLE_FILE);
    ok("schema", &check(&[&a, &b]));

    // The schema is not vacuous: a predicate that breaks it is caught.
    let broken = plain.path().join("broken.sigstore.json");
    tamper_bundle(&a, &broken, |st| {
        st["predicate"]["signing"]["method"] = Value::from("magic");
        st["predicate"]["egress"][0]["port"] = Value::from(70000);
    });
    let out = check(&[&broken]);
    rejected_for("schema (broken predicate)", &out, "signing/method");
    assert!(text(&out).contains("egress/0/port"), "{}", text(&out));
}
