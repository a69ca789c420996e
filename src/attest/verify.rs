//! Verification of what `sign_trace` wrote: the signature (local key, or
//! keyless: certificate chain, SCT, transparency-log proofs, identity), then
//! that the event log's exact bytes are a subject of the statement and agree
//! with the predicate's own record of the log. Every failure names its reason.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sigstore_sign::trust_root::{TrustedRoot, SIGSTORE_PRODUCTION_TRUSTED_ROOT};
use sigstore_sign::types::bundle::VerificationMaterialContent;
use sigstore_sign::types::{Artifact, Bundle, Sha256Hash};
use sigstore_verify::{PublicKeyVerificationPolicy, VerificationPolicy, Verifier};

use super::bundle::{self, BundleError};
use super::dsse::{self, DsseError, Envelope};
use super::keys::{self, KeyError, PublicKey};
use super::statement::{self, Statement, StatementError, STATEMENT_TYPE};
use super::{predicate, runtime_trace};

#[derive(Debug, Clone)]
pub enum Material {
    Bundle(PathBuf),
    /// `attestation.intoto.jsonl`: one envelope per line, each must verify.
    Envelope(PathBuf),
}

#[derive(Debug, Clone)]
pub enum Trust {
    Key {
        public_key: PathBuf,
        trusted_root: Option<PathBuf>,
    },
    Keyless {
        identity: String,
        issuer: String,
        trusted_root: Option<PathBuf>,
    },
}

#[derive(Debug, Clone)]
pub struct Request {
    pub log: PathBuf,
    pub material: Material,
    pub trust: Trust,
}

/// Who signed, as established by verification.
#[derive(Debug, Clone)]
pub enum SignedBy {
    Key {
        key_id: String,
    },
    Keyless {
        identity: String,
        issuer: String,
        log_index: Option<u64>,
        integrated_time: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Verified {
    pub log_sha256: String,
    pub signed_by: SignedBy,
    /// The subject the log matched (normally `events.ndjson`).
    pub matched_subject: String,
    pub statements: Vec<Statement>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    // Inputs that cannot be read or parsed.
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("cannot read envelope file {path}")]
    EnvelopeRead {
        path: String,
        source: std::io::Error,
    },
    #[error("envelope file {path}, line {line}")]
    Envelope {
        path: String,
        line: usize,
        source: DsseError,
    },
    #[error("envelope file {path} holds no envelope")]
    EmptyEnvelopeFile { path: String },
    #[error("cannot read the event log: {0}")]
    Log(StatementError),
    #[error("cannot load trusted root {path}: {message}")]
    TrustedRoot { path: String, message: String },
    #[error("{0}")]
    Usage(String),

    // The evidence does not hold.
    #[error("signature does not verify with the public key {given}{}", claimed_note(.claimed))]
    BadSignature {
        given: String,
        claimed: Option<String>,
    },
    #[error("keyless verification failed: {0}")]
    Sigstore(String),
    #[error(
        "the event log does not match the attestation: sha256 of {log} is {log_sha256}, but the statement covers {subjects} \
         (the log was modified after signing, or it belongs to another attestation)"
    )]
    LogMismatch {
        log: String,
        log_sha256: String,
        subjects: String,
    },
    #[error("the predicate records the event log's sha256 as {recorded}, but its subject is {subject}: the statement is inconsistent")]
    PredicateDigest { recorded: String, subject: String },
    #[error("the signed payload is not an in-toto Statement v1: {0}")]
    BadStatement(String),
    #[error("the bundle's payload and the signed envelope differ")]
    EnvelopeMismatch,
}

fn claimed_note(claimed: &Option<String>) -> String {
    claimed.as_ref().map_or(String::new(), |c| {
        format!(" (the signature names key {c}: wrong key, or the payload was altered)")
    })
}

impl VerifyError {
    /// Unreadable or malformed input (as opposed to evidence that does not hold).
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            VerifyError::Key(_)
                | VerifyError::Bundle(_)
                | VerifyError::EnvelopeRead { .. }
                | VerifyError::Envelope { .. }
                | VerifyError::EmptyEnvelopeFile { .. }
                | VerifyError::Log(_)
                | VerifyError::TrustedRoot { .. }
                | VerifyError::Usage(_)
        )
    }
}

pub fn verify(req: &Request) -> Result<Verified, VerifyError> {
    let log_sha256 = statement::sha256_file(&req.log).map_err(VerifyError::Log)?;
    let (envelopes, bundle) = load_material(&req.material)?;
    let signed_by = match &req.trust {
        Trust::Key {
            public_key,
            trusted_root,
        } => {
            let key = keys::load_public_key(public_key)?;
            verify_with_key(&key, &envelopes, bundle.as_ref(), trusted_root.as_deref())?
        }
        Trust::Keyless {
            identity,
            issuer,
            trusted_root,
        } => {
            let Some(bundle) = &bundle else {
                return Err(VerifyError::Usage(
                    "keyless verification needs the Sigstore bundle (--bundle): a bare envelope carries no certificate".into(),
                ));
            };
            verify_keyless(
                bundle,
                &envelopes[0],
                identity,
                issuer,
                trusted_root.as_deref(),
            )?
        }
    };
    let mut statements = Vec::new();
    let mut matched_subject = String::new();
    for envelope in &envelopes {
        let (s, matched) = check_statement(envelope, &req.log, &log_sha256)?;
        matched_subject = matched;
        statements.push(s);
    }
    Ok(Verified {
        log_sha256,
        signed_by,
        matched_subject,
        statements,
    })
}

fn load_material(material: &Material) -> Result<(Vec<Envelope>, Option<Bundle>), VerifyError> {
    match material {
        Material::Bundle(path) => {
            let (bundle, envelope) = bundle::read(path)?;
            envelope.check_in_toto().map_err(BundleError::from)?;
            Ok((vec![envelope], Some(bundle)))
        }
        Material::Envelope(path) => {
            let p = path.display().to_string();
            let text =
                std::fs::read_to_string(path).map_err(|source| VerifyError::EnvelopeRead {
                    path: p.clone(),
                    source,
                })?;
            let mut envelopes = Vec::new();
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let err = |source| VerifyError::Envelope {
                    path: p.clone(),
                    line: i + 1,
                    source,
                };
                let envelope = Envelope::parse(line).map_err(err)?;
                envelope.check_in_toto().map_err(err)?;
                envelopes.push(envelope);
            }
            if envelopes.is_empty() {
                return Err(VerifyError::EmptyEnvelopeFile { path: p });
            }
            Ok((envelopes, None))
        }
    }
}

fn verify_with_key(
    key: &PublicKey,
    envelopes: &[Envelope],
    bundle: Option<&Bundle>,
    trusted_root: Option<&Path>,
) -> Result<SignedBy, VerifyError> {
    if let Some(b) = bundle {
        if !matches!(
            b.verification_material.content,
            VerificationMaterialContent::PublicKey(_)
        ) {
            return Err(VerifyError::Usage(
                "this bundle was signed keylessly (it carries a certificate): verify it with \
                 --certificate-identity and --certificate-oidc-issuer instead of --key"
                    .into(),
            ));
        }
    }
    for envelope in envelopes {
        let payload = envelope.payload_bytes().map_err(BundleError::from)?;
        let pae = dsse::pae(&envelope.payload_type, &payload);
        // DSSE: the envelope verifies if any of its signatures verifies; keyid is only a hint.
        let ok = envelope
            .signatures
            .iter()
            .any(|s| dsse::decode_any(&s.sig).is_some_and(|sig| key.verify(&pae, &sig)));
        if !ok {
            let claimed = envelope
                .signatures
                .iter()
                .map(|s| s.keyid.clone())
                .find(|k| !k.is_empty() && *k != key.key_id);
            return Err(VerifyError::BadSignature {
                given: key.key_id.clone(),
                claimed,
            });
        }
    }
    // A keyed bundle that was also logged in Rekor: check the log entry too.
    if let Some(b) = bundle.filter(|b| !b.verification_material.tlog_entries.is_empty()) {
        let root = load_root(trusted_root)?;
        let verifier = Verifier::new(&root).map_err(|e| VerifyError::Sigstore(e.to_string()))?;
        let digest = first_subject_digest(&envelopes[0])?;
        verifier
            .verify(
                Artifact::from_digest(digest),
                b,
                &PublicKeyVerificationPolicy::new(key.spki.clone()),
            )
            .map_err(|e| VerifyError::Sigstore(e.to_string()))?;
    }
    Ok(SignedBy::Key {
        key_id: key.key_id.clone(),
    })
}

/// Chain to the trusted root, SCT, Rekor inclusion proof + checkpoint + SET,
/// log entry consistency, DSSE signature and the identity policy, by
/// sigstore-verify. The artifact handed to it is the statement's own subject
/// digest; whether the log on disk matches is checked afterwards, so each
/// failure is reported for what it is.
fn verify_keyless(
    bundle: &Bundle,
    envelope: &Envelope,
    identity: &str,
    issuer: &str,
    trusted_root: Option<&Path>,
) -> Result<SignedBy, VerifyError> {
    let root = load_root(trusted_root)?;
    let verifier = Verifier::new(&root).map_err(|e| VerifyError::TrustedRoot {
        path: trusted_root.map_or("(embedded public-good root)".into(), |p| {
            p.display().to_string()
        }),
        message: e.to_string(),
    })?;
    let digest = first_subject_digest(envelope)?;
    let policy = VerificationPolicy::new(identity, issuer);
    let result = verifier
        .verify(Artifact::from_digest(digest), bundle, &policy)
        .map_err(|e| VerifyError::Sigstore(e.to_string()))?;
    let log_index = bundle
        .verification_material
        .tlog_entries
        .first()
        .map(|e| u64::from(e.log_index));
    Ok(SignedBy::Keyless {
        identity: result
            .identity()
            .map(ToString::to_string)
            .unwrap_or_default(),
        issuer: result.issuer().unwrap_or_default().to_string(),
        log_index,
        integrated_time: result.integrated_time().map(|t| t.to_string()),
    })
}

fn load_root(path: Option<&Path>) -> Result<TrustedRoot, VerifyError> {
    match path {
        Some(p) => TrustedRoot::from_file(p).map_err(|e| VerifyError::TrustedRoot {
            path: p.display().to_string(),
            message: e.to_string(),
        }),
        None => TrustedRoot::from_json(SIGSTORE_PRODUCTION_TRUSTED_ROOT).map_err(|e| {
            VerifyError::TrustedRoot {
                path: "(embedded public-good root)".into(),
                message: e.to_string(),
            }
        }),
    }
}

fn parse_statement(envelope: &Envelope) -> Result<Statement, VerifyError> {
    let payload = envelope.payload_bytes().map_err(BundleError::from)?;
    let s: Statement =
        serde_json::from_slice(&payload).map_err(|e| VerifyError::BadStatement(e.to_string()))?;
    if s.type_ != STATEMENT_TYPE {
        return Err(VerifyError::BadStatement(format!(
            "_type is {:?}, expected {STATEMENT_TYPE:?}",
            s.type_
        )));
    }
    // A valid signature over someone else's kind of attestation is not a runtime trace.
    if ![predicate::PREDICATE_TYPE, runtime_trace::PREDICATE_TYPE]
        .contains(&s.predicate_type.as_str())
    {
        return Err(VerifyError::BadStatement(format!(
            "predicateType {:?} is not a ciwatch trace ({} or {})",
            s.predicate_type,
            predicate::PREDICATE_TYPE,
            runtime_trace::PREDICATE_TYPE
        )));
    }
    Ok(s)
}

fn first_subject_digest(envelope: &Envelope) -> Result<Sha256Hash, VerifyError> {
    let s = parse_statement(envelope)?;
    s.subject
        .iter()
        .find_map(|sub| sub.sha256_hex().and_then(|h| Sha256Hash::from_hex(h).ok()))
        .ok_or_else(|| VerifyError::BadStatement("no subject has a sha256 digest".into()))
}

/// The log must be a subject; when it is the event log, the predicate's own
/// record of the log must agree.
fn check_statement(
    envelope: &Envelope,
    log: &Path,
    log_sha256: &str,
) -> Result<(Statement, String), VerifyError> {
    let s = parse_statement(envelope)?;
    let Some(matched) = s.subject.iter().find(|sub| {
        sub.sha256_hex()
            .is_some_and(|h| h.eq_ignore_ascii_case(log_sha256))
    }) else {
        let subjects = s
            .subject
            .iter()
            .map(|sub| {
                format!(
                    "{} sha256 {}",
                    sub.name,
                    sub.sha256_hex().unwrap_or("(none)")
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(VerifyError::LogMismatch {
            log: log.display().to_string(),
            log_sha256: log_sha256.to_string(),
            subjects,
        });
    };
    if let Some(recorded) = recorded_log_digest(&s) {
        let is_event_log = s.subject.first().is_some_and(|first| first == matched);
        if is_event_log && !recorded.eq_ignore_ascii_case(log_sha256) {
            return Err(VerifyError::PredicateDigest {
                recorded,
                subject: log_sha256.to_string(),
            });
        }
    }
    let name = matched.name.clone();
    Ok((s, name))
}

/// `eventLog.digest.sha256` of the ciwatch predicate (or its copy in the runtime-trace extension).
fn recorded_log_digest(s: &Statement) -> Option<String> {
    let p = ciwatch_view(s)?;
    p.pointer("/eventLog/digest/sha256")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// The object holding ciwatch's fields, whichever predicate carries them.
fn ciwatch_view(s: &Statement) -> Option<&Value> {
    match s.predicate_type.as_str() {
        predicate::PREDICATE_TYPE => Some(&s.predicate),
        runtime_trace::PREDICATE_TYPE => s.predicate.get("ciwatch"),
        _ => None,
    }
}

/// Why a signed trace is only partial evidence: an incomplete log, an agent that did not end
/// normally, tampering. Empty when the predicate vouches for the whole job.
pub fn evidence_gaps(v: &Verified) -> Vec<String> {
    let Some(p) = v.statements.iter().find_map(ciwatch_view) else {
        return vec!["the attestation carries no ciwatch predicate to judge the trace by".into()];
    };
    let mut gaps = Vec::new();
    if p.pointer("/eventLog/complete").and_then(Value::as_bool) != Some(true) {
        gaps.push(
            "the trace is incomplete (records were lost, undecodable or untracked, or a hook did not attach)"
                .to_string(),
        );
    }
    if let Some(status) = p
        .pointer("/eventLog/agentStatus")
        .and_then(Value::as_str)
        .filter(|s| *s != "ok")
    {
        gaps.push(format!("the agent's status at the end was `{status}`"));
    }
    if let Some(n) = p
        .pointer("/counts/tamper")
        .and_then(Value::as_u64)
        .filter(|n| *n > 0)
    {
        gaps.push(format!("{n} tamper events were recorded"));
    }
    gaps
}

/// The human summary printed by `ciwatch verify`.
pub fn headline(v: &Verified) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Verified OK: the event log (sha256 {}) matches subject {:?}.",
        v.log_sha256, v.matched_subject
    );
    match &v.signed_by {
        SignedBy::Key { key_id } => {
            let _ = writeln!(out, "  signed by      key {key_id}");
        }
        SignedBy::Keyless {
            identity,
            issuer,
            log_index,
            integrated_time,
        } => {
            let _ = writeln!(out, "  signed by      {identity} (issuer {issuer})");
            if let Some(i) = log_index {
                let _ = writeln!(
                    out,
                    "  transparency   Rekor log index {i}, integrated {}",
                    integrated_time.as_deref().unwrap_or("?")
                );
            }
        }
    }
    for s in &v.statements {
        let _ = writeln!(out, "  predicate      {}", s.predicate_type);
    }
    let full = v
        .statements
        .iter()
        .find(|s| s.predicate_type == predicate::PREDICATE_TYPE);
    if let Some(p) = full.map(|s| &s.predicate) {
        figures(&mut out, p);
    } else if let Some(p) = v.statements.iter().find_map(ciwatch_view) {
        figures(&mut out, p);
    }
    out
}

fn figures(out: &mut String, p: &Value) {
    let str_at = |ptr: &str| {
        p.pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let len_at = |ptr: &str| p.pointer(ptr).and_then(Value::as_array).map_or(0, Vec::len);
    if p.get("ci").is_some() {
        let steps = len_at("/ci/steps");
        let _ = writeln!(
            out,
            "  job            {} {} ({steps} step{})",
            str_at("/ci/platform"),
            str_at("/ci/job/id"),
            if steps == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            out,
            "  window         {} .. {}",
            str_at("/startedOn"),
            str_at("/finishedOn")
        );
        let policy = p
            .pointer("/policy/version")
            .and_then(Value::as_str)
            .unwrap_or("none");
        let _ = writeln!(
            out,
            "  mode           {} (policy: {policy})",
            str_at("/policy/mode")
        );
    }
    if let Some(events) = p.pointer("/counts/events").and_then(Value::as_object) {
        let list: Vec<String> = events.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "  events         {}", list.join(", "));
    }
    if p.get("egress").is_some() {
        let _ = writeln!(
            out,
            "  summary        {} egress destinations, {} DNS names, {} distinct execs, {} sensitive files",
            len_at("/egress"),
            len_at("/dns"),
            len_at("/execs"),
            len_at("/files")
        );
    }
    if let Some(status) = p
        .pointer("/eventLog/agentStatus")
        .and_then(Value::as_str)
        .filter(|s| *s != "ok")
    {
        let _ = writeln!(out, "  agent          {status} (the trace ends early)");
    }
    let lost = p
        .pointer("/counts/lostTotal")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let complete = p
        .pointer("/eventLog/complete")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let _ = writeln!(
        out,
        "  lost events    {lost}{}",
        if complete {
            " (trace complete)"
        } else {
            " (trace INCOMPLETE: see hooks and lost counts)"
        }
    );
    if let Some(signing) = p.get("signing") {
        let method = signing.get("method").and_then(Value::as_str).unwrap_or("?");
        match signing.pointer("/fallback/reason").and_then(Value::as_str) {
            Some(reason) => {
                let _ = writeln!(
                    out,
                    "  signing        {method} (FALLBACK from keyless: {reason})"
                );
            }
            None => {
                let _ = writeln!(out, "  signing        {method}");
            }
        }
    }
}
