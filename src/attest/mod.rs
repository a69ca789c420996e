//! Signed evidence. A sealed events.ndjson is summarised (one streaming pass)
//! into an in-toto Statement v1 whose subject is the log itself, wrapped in a
//! DSSE envelope and a Sigstore bundle v0.3, signed with a local P-256 key or
//! keylessly (Fulcio + Rekor), and checked again by `ciwatch verify`.
//!
//! Formats: docs/predicate.md, docs/predicate.schema.json; verifying with
//! ciwatch and with other tools: docs/verify.md.

pub mod bundle;
pub mod dsse;
pub mod keys;
pub mod oidc;
pub mod predicate;
mod record;
pub mod retry;
pub mod runtime_trace;
pub mod scan;
pub mod signer;
pub mod statement;
pub mod verify;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sigstore_sign::types::bundle::VerificationMaterialContent;

use crate::sink::ndjson::FILE_NAME as LOG_FILE;
use keys::{KeyError, SigningKey};
use predicate::{Fallback, Predicate, Signing};
use scan::ScanError;
use signer::{KeylessOptions, KeylessSigner, LocalKeySigner, Method, SignError, Signed, Signer};
use statement::{StatementError, Subject};

/// DSSE envelopes, one per line (in-toto's `.intoto.jsonl` convention).
pub const ENVELOPE_FILE: &str = "attestation.intoto.jsonl";
/// The Sigstore bundle of the first statement.
pub const BUNDLE_FILE: &str = "attestation.sigstore.json";
/// With `--predicate both`: the bundle of the standard runtime-trace statement.
pub const RUNTIME_TRACE_BUNDLE_FILE: &str = "attestation.runtime-trace.sigstore.json";

/// How to sign. `keyless` is keyless-or-fail; `auto` is keyless when the CI
/// provides an identity, else the local key, with the fallback recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SignMode {
    Key,
    Keyless,
    Auto,
    None,
}

impl SignMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SignMode::Key => "key",
            SignMode::Keyless => "keyless",
            SignMode::Auto => "auto",
            SignMode::None => "none",
        }
    }
}

impl SignOptions {
    /// Whether the local key is loaded before signing starts. `auto` with the
    /// default key creates it only if it falls back: a CI that signs keylessly
    /// should not be left with a key it never used.
    fn preloads_key(&self) -> bool {
        match self.mode {
            SignMode::Key => true,
            SignMode::Auto => matches!(self.key, KeySource::Path(_)),
            SignMode::Keyless | SignMode::None => false,
        }
    }
}

/// Which predicate(s) to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PredicateChoice {
    /// ciwatch's own, `https://dpndncy.io/agent/runtime-trace/v1`.
    #[default]
    Ciwatch,
    /// The standard in-toto `https://in-toto.io/attestation/runtime-trace/v0.2`.
    RuntimeTrace,
    /// Both, as two statements.
    Both,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `ciwatch.key` in the user's config directory, created on first use.
    Default,
    /// `ciwatch.key` in this directory, created on first use.
    CreateIn(PathBuf),
    Path(PathBuf),
}

#[derive(Debug, Clone)]
pub struct SignOptions {
    pub mode: SignMode,
    pub key: KeySource,
    /// Extra subjects: paths or globs of build outputs.
    pub subjects: Vec<String>,
    pub predicates: PredicateChoice,
    pub keyless: KeylessOptions,
    /// The log's SHA-256 as its writer computed it: signing refuses a log that changed since.
    pub expected_log_sha256: Option<String>,
}

impl SignOptions {
    pub fn new(mode: SignMode) -> Self {
        Self {
            mode,
            key: KeySource::Default,
            subjects: Vec::new(),
            predicates: PredicateChoice::Ciwatch,
            keyless: KeylessOptions {
                env: oidc::AmbientEnv::from_process(),
                ..KeylessOptions::default()
            },
            expected_log_sha256: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub key_id: String,
    pub private_path: PathBuf,
    pub public_path: Option<PathBuf>,
    /// The default key was created by this call.
    pub created: bool,
}

#[derive(Debug, Clone, Default)]
pub struct KeylessInfo {
    /// The certificate's SAN and OIDC issuer: what `verify` must be told to expect.
    pub identity: Option<String>,
    pub issuer: Option<String>,
    pub log_index: Option<u64>,
    pub trusted_root: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct SignOutcome {
    pub dir: PathBuf,
    pub requested: SignMode,
    /// `None` when signing was not requested (`--sign none`).
    pub method: Option<Method>,
    pub fallback: Option<Fallback>,
    pub files: Vec<PathBuf>,
    pub log_sha256: Option<String>,
    pub key: Option<KeyInfo>,
    pub keyless: Option<KeylessInfo>,
    pub predicate_types: Vec<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("no sealed event log: {path} is missing{}", if *.partial { " (only the .partial file exists: the agent never sealed it)" } else { "" })]
    NotSealed { path: String, partial: bool },
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("the event log changed after it was sealed: its sha256 is {now}, the writer recorded {sealed}")]
    LogChanged { now: String, sealed: String },
    #[error(transparent)]
    Statement(#[from] StatementError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("keyless signing was required (--sign keyless) and failed")]
    KeylessRequired(#[source] SignError),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("cannot write {path}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("signing task failed: {0}")]
    Task(String),
}

/// Loads (or, for the default, creates) the local key when the mode may need
/// it, so a missing or malformed key fails before the job runs.
pub fn prepare_key(opts: &SignOptions) -> Result<Option<KeyInfo>, AttestError> {
    if !opts.preloads_key() {
        return Ok(None);
    }
    let (key, created) = load_local(&opts.key)?;
    Ok(Some(key_info(&key, created)))
}

fn load_local(source: &KeySource) -> Result<(SigningKey, bool), KeyError> {
    match source {
        KeySource::Default => keys::load_or_create(&keys::default_key_dir()?),
        KeySource::CreateIn(dir) => keys::load_or_create(dir),
        KeySource::Path(path) => Ok((keys::load_signing_key(path)?, false)),
    }
}

fn key_info(key: &SigningKey, created: bool) -> KeyInfo {
    KeyInfo {
        key_id: key.public().key_id.clone(),
        private_path: key.path.clone(),
        public_path: key.public_path(),
        created,
    }
}

/// Reads `dir/events.ndjson` (sealed and complete), hashes and summarises it in
/// one streaming pass, signs the statement(s) and writes the envelope file and
/// bundle(s) next to the log, atomically. Stale attestation files are removed
/// first, so a failure leaves no signature that could pass for this log's.
pub async fn sign_trace(dir: &Path, opts: &SignOptions) -> Result<SignOutcome, AttestError> {
    remove_outputs(dir)?;
    let mut outcome = SignOutcome {
        dir: dir.to_path_buf(),
        requested: opts.mode,
        method: None,
        fallback: None,
        files: Vec::new(),
        log_sha256: None,
        key: None,
        keyless: None,
        predicate_types: Vec::new(),
    };
    if opts.mode == SignMode::None {
        return Ok(outcome);
    }
    let (predicate, subjects) = summarise(dir, opts).await?;
    outcome.log_sha256 = Some(predicate.event_log.digest.sha256.clone());
    // A bad local key fails now, before any network traffic.
    let mut local = if opts.preloads_key() {
        Some(load_local(&opts.key)?)
    } else {
        None
    };

    let signed = match opts.mode {
        SignMode::Keyless => sign_keyless(&predicate, &subjects, opts, &mut outcome)
            .await
            .map_err(AttestError::KeylessRequired)?,
        SignMode::Auto => match sign_keyless(&predicate, &subjects, opts, &mut outcome).await {
            Ok(signed) => signed,
            Err(e) => {
                let reason = crate::error::chain(&e);
                tracing::warn!("keyless signing failed, falling back to the local key: {reason}");
                outcome.keyless = None;
                outcome.fallback = Some(Fallback {
                    from: "keyless".into(),
                    reason,
                });
                let (key, created) = match local.take() {
                    Some(loaded) => loaded,
                    None => load_local(&opts.key)?,
                };
                sign_local(key, created, &predicate, &subjects, opts, &mut outcome).await?
            }
        },
        SignMode::Key => {
            let (key, created) = match local {
                Some(loaded) => loaded,
                None => load_local(&opts.key)?,
            };
            sign_local(key, created, &predicate, &subjects, opts, &mut outcome).await?
        }
        SignMode::None => unreachable!("handled above"),
    };
    outcome.files = write_outputs(dir, &signed)?;
    outcome.predicate_types = kinds(opts.predicates)
        .iter()
        .map(|k| k.predicate_type())
        .collect();
    Ok(outcome)
}

async fn summarise(
    dir: &Path,
    opts: &SignOptions,
) -> Result<(Predicate, Vec<Subject>), AttestError> {
    let log = dir.join(LOG_FILE);
    if !log.is_file() {
        let partial = dir.join(format!("{LOG_FILE}.partial")).exists();
        return Err(AttestError::NotSealed {
            path: log.display().to_string(),
            partial,
        });
    }
    let patterns = opts.subjects.clone();
    let (scanned, extra) = tokio::task::spawn_blocking(move || {
        let scanned = scan::scan_log(&log, LOG_FILE)?;
        let extra = statement::resolve_subjects(&patterns)?;
        Ok::<_, AttestError>((scanned, extra))
    })
    .await
    .map_err(|e| AttestError::Task(e.to_string()))??;
    if let Some(sealed) = &opts.expected_log_sha256 {
        if !sealed.eq_ignore_ascii_case(&scanned.sha256) {
            return Err(AttestError::LogChanged {
                now: scanned.sha256,
                sealed: sealed.clone(),
            });
        }
    }
    let mut subjects = vec![Subject::sha256(LOG_FILE, &scanned.sha256)];
    subjects.extend(extra.into_iter().filter(|s| s.name != LOG_FILE));
    Ok((scanned.summary.predicate, subjects))
}

async fn sign_keyless(
    predicate: &Predicate,
    subjects: &[Subject],
    opts: &SignOptions,
    outcome: &mut SignOutcome,
) -> Result<Vec<(Kind, Signed)>, SignError> {
    let signer = KeylessSigner::connect(&opts.keyless).await?;
    let signing = Signing {
        method: Method::Keyless.as_str().into(),
        requested: opts.mode.as_str().into(),
        key_id: None,
        fallback: None,
        attestor: predicate::AttestorVersion::this(),
    };
    let signed = sign_all(&signer, predicate, signing, subjects, opts.predicates).await?;
    outcome.method = Some(Method::Keyless);
    outcome.keyless = Some(keyless_info(
        &signed[0].1,
        opts.keyless.trusted_root.clone(),
    ));
    Ok(signed)
}

async fn sign_local(
    key: SigningKey,
    created: bool,
    predicate: &Predicate,
    subjects: &[Subject],
    opts: &SignOptions,
    outcome: &mut SignOutcome,
) -> Result<Vec<(Kind, Signed)>, AttestError> {
    let info = key_info(&key, created);
    let signing = Signing {
        method: Method::Key.as_str().into(),
        requested: opts.mode.as_str().into(),
        key_id: Some(info.key_id.clone()),
        fallback: outcome.fallback.clone(),
        attestor: predicate::AttestorVersion::this(),
    };
    let signer = LocalKeySigner::new(key);
    let signed = sign_all(&signer, predicate, signing, subjects, opts.predicates).await?;
    outcome.method = Some(Method::Key);
    outcome.key = Some(info);
    Ok(signed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ciwatch,
    RuntimeTrace,
}

impl Kind {
    fn predicate_type(self) -> &'static str {
        match self {
            Kind::Ciwatch => predicate::PREDICATE_TYPE,
            Kind::RuntimeTrace => runtime_trace::PREDICATE_TYPE,
        }
    }
}

fn kinds(choice: PredicateChoice) -> &'static [Kind] {
    match choice {
        PredicateChoice::Ciwatch => &[Kind::Ciwatch],
        PredicateChoice::RuntimeTrace => &[Kind::RuntimeTrace],
        PredicateChoice::Both => &[Kind::Ciwatch, Kind::RuntimeTrace],
    }
}

/// Fills in how it is signed, serialises each statement once, signs those bytes.
async fn sign_all(
    signer: &dyn Signer,
    base: &Predicate,
    signing: Signing,
    subjects: &[Subject],
    choice: PredicateChoice,
) -> Result<Vec<(Kind, Signed)>, SignError> {
    let mut predicate = base.clone();
    predicate.signing = signing;
    let mut out = Vec::new();
    for &kind in kinds(choice) {
        let bytes = match kind {
            Kind::Ciwatch => statement::to_bytes(subjects, kind.predicate_type(), &predicate),
            Kind::RuntimeTrace => statement::to_bytes(
                subjects,
                kind.predicate_type(),
                &runtime_trace::from_predicate(&predicate),
            ),
        }
        .map_err(|e| SignError::Bundle(e.to_string()))?;
        out.push((kind, signer.sign(&bytes).await?));
    }
    Ok(out)
}

fn keyless_info(signed: &Signed, trusted_root: Option<PathBuf>) -> KeylessInfo {
    let cert = match &signed.bundle.verification_material.content {
        VerificationMaterialContent::Certificate(c) => {
            Some(sigstore_sign::crypto::parse_certificate_info(&c.raw_bytes))
        }
        _ => None,
    };
    let cert = cert.and_then(Result::ok);
    KeylessInfo {
        identity: cert
            .as_ref()
            .and_then(|c| c.identity.as_ref())
            .map(ToString::to_string),
        issuer: cert.as_ref().and_then(|c| c.issuer.clone()),
        log_index: signed
            .bundle
            .verification_material
            .tlog_entries
            .first()
            .map(|e| u64::from(e.log_index)),
        trusted_root,
    }
}

fn bundle_file(kind: Kind, choice: PredicateChoice) -> &'static str {
    match (kind, choice) {
        (Kind::RuntimeTrace, PredicateChoice::Both) => RUNTIME_TRACE_BUNDLE_FILE,
        _ => BUNDLE_FILE,
    }
}

fn remove_outputs(dir: &Path) -> Result<(), AttestError> {
    for name in [ENVELOPE_FILE, BUNDLE_FILE, RUNTIME_TRACE_BUNDLE_FILE] {
        let path = dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!("removed stale {}", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(AttestError::Write {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Every file is written as `.partial`, synced, then all are renamed into place.
fn write_outputs(dir: &Path, signed: &[(Kind, Signed)]) -> Result<Vec<PathBuf>, AttestError> {
    let choice = if signed.len() > 1 {
        PredicateChoice::Both
    } else {
        PredicateChoice::Ciwatch
    };
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    let lines: String = signed
        .iter()
        .map(|(_, s)| s.envelope.to_line() + "\n")
        .collect();
    files.push((dir.join(ENVELOPE_FILE), lines));
    for (kind, s) in signed {
        files.push((
            dir.join(bundle_file(*kind, choice)),
            bundle::to_json(&s.bundle) + "\n",
        ));
    }
    let mut partials = Vec::new();
    for (path, text) in &files {
        let partial = path.with_extension(format!(
            "{}.partial",
            path.extension().and_then(|e| e.to_str()).unwrap_or("")
        ));
        write_synced(&partial, text.as_bytes()).map_err(|source| AttestError::Write {
            path: partial.display().to_string(),
            source,
        })?;
        partials.push((partial, path.clone()));
    }
    for (partial, path) in &partials {
        std::fs::rename(partial, path).map_err(|source| AttestError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The "Attestation" section of summary.md: what was signed, how, and the
/// exact command that verifies it.
pub fn summary_markdown(result: &Result<SignOutcome, AttestError>, dir: &Path) -> String {
    let mut md = String::from("## Attestation\n\n");
    let outcome = match result {
        Err(e) => {
            let _ = writeln!(
                md,
                "> **NOT SIGNED:** {}\n>\n> No attestation was written: this trace carries no signature.\n",
                crate::error::chain(e).replace('\n', " ")
            );
            return md;
        }
        Ok(o) => o,
    };
    let Some(method) = outcome.method else {
        md.push_str("Not signed (`--sign none`): this trace carries no signature.\n\n");
        return md;
    };
    match (method, &outcome.key, &outcome.keyless) {
        (Method::Key, Some(k), _) => {
            let _ = writeln!(
                md,
                "Signed with the local key `{}` (key id `{}`).",
                k.private_path.display(),
                k.key_id
            );
        }
        (Method::Keyless, _, Some(k)) => {
            let _ = writeln!(
                md,
                "Signed keylessly as `{}` (issuer `{}`){}.",
                k.identity.as_deref().unwrap_or("?"),
                k.issuer.as_deref().unwrap_or("?"),
                k.log_index
                    .map_or(String::new(), |i| format!(", Rekor log index {i}"))
            );
        }
        _ => {}
    }
    if let Some(f) = &outcome.fallback {
        let _ = writeln!(md, "\n> **Fallback:** keyless signing failed ({}); the local key signed instead. The fallback is recorded in the signed predicate.", f.reason.replace('\n', " "));
    }
    let names: Vec<String> = outcome
        .files
        .iter()
        .filter_map(|f| f.file_name())
        .map(|f| format!("`{}`", f.to_string_lossy()))
        .collect();
    let _ = writeln!(md, "\nFiles: {}.\n", names.join(", "));
    let _ = writeln!(
        md,
        "Verify:\n\n```sh\n{}\n```\n",
        verify_command(outcome, dir)
    );
    md
}

/// The exact `ciwatch verify` invocation for this outcome.
pub fn verify_command(outcome: &SignOutcome, dir: &Path) -> String {
    let bundle = dir.join(BUNDLE_FILE);
    let log = dir.join(LOG_FILE);
    let mut cmd = String::from("ciwatch verify");
    match (outcome.method, &outcome.key, &outcome.keyless) {
        (Some(Method::Key), Some(k), _) => {
            let public = k
                .public_path
                .clone()
                .unwrap_or_else(|| PathBuf::from("PUBLIC_KEY.pem"));
            let _ = write!(cmd, " --key {}", shell_quote(&public.to_string_lossy()));
        }
        (Some(Method::Keyless), _, Some(k)) => {
            let _ = write!(
                cmd,
                " --certificate-identity {} --certificate-oidc-issuer {}",
                shell_quote(k.identity.as_deref().unwrap_or("IDENTITY")),
                shell_quote(k.issuer.as_deref().unwrap_or("ISSUER"))
            );
            if let Some(root) = &k.trusted_root {
                let _ = write!(
                    cmd,
                    " --trusted-root {}",
                    shell_quote(&root.to_string_lossy())
                );
            }
        }
        _ => {}
    }
    let _ = write!(
        cmd,
        " --bundle {} {}",
        shell_quote(&bundle.to_string_lossy()),
        shell_quote(&log.to_string_lossy())
    );
    cmd
}

fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:@=+-,%".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A one-shot HTTP server on loopback for unit tests: records the request
/// and answers with a fixed status and body.
#[cfg(test)]
pub(crate) mod test_http {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub struct Captured {
        pub head: String,
        pub body: Vec<u8>,
    }

    /// Returns the base URL and a handle yielding the first request.
    pub async fn serve_once(
        status: u16,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<Captured>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body_start) = loop {
                let n = sock.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break (String::from_utf8_lossy(&buf[..i]).to_string(), i + 4);
                }
            };
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < body_start + len {
                let n = sock.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
            }
            let reply = format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            sock.write_all(reply.as_bytes()).await.unwrap();
            Captured {
                head,
                body: buf[body_start..body_start + len].to_vec(),
            }
        });
        (url, handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/a/b.pub"), "/a/b.pub");
        assert_eq!(
            shell_quote("https://github.com/acme/app/.github/workflows/ci.yml@refs/heads/main"),
            "https://github.com/acme/app/.github/workflows/ci.yml@refs/heads/main"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
