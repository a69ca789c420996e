//! Signing flags shared by the subcommands that sign a trace (`run`, `start`,
//! `daemon`). Each caller picks its own default for `--sign`. `start` fixes
//! its choices, key included, in the job's root-only state, where `finish`
//! reads them (`Recorded`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent::state_dir::StateDir;
use crate::attest::{self, KeySource, PredicateChoice, SignMode, SignOptions};

#[derive(Debug, Clone, clap::Args)]
pub struct SigningArgs {
    /// How to sign the trace: `key` (local key), `keyless` (Sigstore, fail if
    /// impossible), `auto` (keyless when the CI provides an OIDC token, else
    /// the key; the fallback is recorded), or `none`.
    #[arg(long, value_enum, value_name = "HOW")]
    pub sign: Option<SignMode>,
    /// PKCS#8 PEM P-256 private key. Default: ciwatch.key in $XDG_CONFIG_HOME/ciwatch
    /// (or ~/.config/ciwatch), created on first use.
    #[arg(long, env = "CIWATCH_SIGNING_KEY", value_name = "PATH")]
    pub signing_key: Option<PathBuf>,
    /// A build output to name as a subject of the attestation (path or glob; repeatable).
    #[arg(long = "subject", value_name = "PATH/GLOB")]
    pub subjects: Vec<String>,
    /// Predicate(s) to emit.
    #[arg(long, value_enum, default_value_t = PredicateChoice::Ciwatch)]
    pub predicate: PredicateChoice,
    /// Fulcio for keyless signing (a private Sigstore instance: set it, Rekor and the trusted root).
    #[arg(long, env = "CIWATCH_FULCIO_URL", value_name = "URL", default_value = attest::signer::PUBLIC_GOOD_FULCIO)]
    pub fulcio_url: String,
    /// Rekor (v1 API) for keyless signing.
    #[arg(long, env = "CIWATCH_REKOR_URL", value_name = "URL", default_value = attest::signer::PUBLIC_GOOD_REKOR)]
    pub rekor_url: String,
    /// Trusted root (Sigstore trusted_root.json) for a private Sigstore instance:
    /// keyless bundles are verified against it before they are written.
    #[arg(
        long = "signing-trusted-root",
        env = "CIWATCH_SIGNING_TRUSTED_ROOT",
        value_name = "FILE"
    )]
    pub trusted_root: Option<PathBuf>,
}

/// Where `start` fixes the signing choices `finish` will use, in the job's state.
const RECORD: &str = "signing.json";
/// The private key `finish` signs with, copied in at `start`, and its public half.
const KEY_FILE: &str = "signing-key.pem";
const PUBLIC_FILE: &str = "signing-key.pub";
/// A trusted root for a private Sigstore, copied in at `start`.
const TRUSTED_ROOT_FILE: &str = "trusted-root.json";
/// Variables that route or trust `finish`'s HTTPS: fixed at `start` like the endpoints.
const NETWORK_ENV: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Key(#[from] attest::AttestError),
    #[error("cannot read the signing key from standard input")]
    Stdin(#[source] std::io::Error),
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("the job's signing choices ({path}) are unreadable")]
    Malformed {
        path: String,
        source: serde_json::Error,
    },
}

/// How `finish` signs, as `start` fixed it in the job's root-only state. Nothing of it is
/// read from `finish`'s arguments, environment or the job-visible output directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    sign: String,
    key: RecordedKey,
    subjects: Vec<String>,
    predicate: String,
    fulcio_url: String,
    rekor_url: String,
    trusted_root: Option<PathBuf>,
    /// The OIDC token sources `start` saw (GitHub's request URL and bearer, or SIGSTORE_ID_TOKEN).
    oidc: RecordedOidc,
    network_env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum RecordedKey {
    /// No local key may be needed (`keyless`, `none`).
    None,
    /// The key copied into the state; the paths it is shown as.
    Copied {
        shown_as: String,
        public_shown_as: Option<PathBuf>,
    },
    /// `auto` without a key: one is made in the state, only if signing falls back to it.
    CreateInState,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RecordedOidc {
    sigstore_id_token: Option<String>,
    github_request_url: Option<String>,
    github_request_token: Option<String>,
}

impl SigningArgs {
    /// `start`: fixes how `finish` will sign, in the job's state. The key (the file
    /// `--signing-key` names, `stdin_key`, or the default key) is loaded now, so a bad
    /// one fails before the job runs, and copied in with the trusted root.
    pub fn record(
        &self,
        state: &StateDir,
        stdin_key: Option<&[u8]>,
        default_mode: SignMode,
    ) -> Result<(), RecordError> {
        let opts = self.options(default_mode);
        let key = match (stdin_key, opts.mode) {
            (_, SignMode::Keyless | SignMode::None) => RecordedKey::None,
            (Some(pem), _) => copy_key(state, pem, "the key given on standard input".into(), None)?,
            (None, mode) => match local_key(&opts.key, mode)? {
                Some((path, public)) => {
                    let pem = std::fs::read(&path).map_err(|source| RecordError::Read {
                        path: path.display().to_string(),
                        source,
                    })?;
                    copy_key(state, &pem, path.display().to_string(), public)?
                }
                None => RecordedKey::CreateInState,
            },
        };
        let trusted_root = match &self.trusted_root {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|source| RecordError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Some(write_private(&state.file(TRUSTED_ROOT_FILE), &bytes)?)
            }
            None => None,
        };
        let ambient = &opts.keyless.env;
        let recorded = Recorded {
            sign: opts.mode.as_str().into(),
            key,
            subjects: self.subjects.clone(),
            predicate: value_name(self.predicate),
            fulcio_url: self.fulcio_url.clone(),
            rekor_url: self.rekor_url.clone(),
            trusted_root,
            oidc: RecordedOidc {
                sigstore_id_token: ambient.sigstore_id_token.clone(),
                github_request_url: ambient.github_request_url.clone(),
                github_request_token: ambient.github_request_token.clone(),
            },
            network_env: NETWORK_ENV
                .iter()
                .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
                .collect(),
        };
        let json = serde_json::to_vec(&recorded).map_err(|source| RecordError::Malformed {
            path: state.file(RECORD).display().to_string(),
            source,
        })?;
        write_private(&state.file(RECORD), &json).map(|_| ())
    }

    pub fn options(&self, default_mode: SignMode) -> SignOptions {
        let mut opts = SignOptions::new(self.sign.unwrap_or(default_mode));
        opts.key = self
            .signing_key
            .clone()
            .map_or(KeySource::Default, KeySource::Path);
        opts.subjects = self.subjects.clone();
        opts.predicates = self.predicate;
        opts.keyless.fulcio_url = self.fulcio_url.clone();
        opts.keyless.rekor_url = self.rekor_url.clone();
        opts.keyless.trusted_root = self.trusted_root.clone();
        opts
    }
}

impl Recorded {
    /// What `start` fixed in `state`.
    pub fn read(state: &StateDir) -> Result<Self, RecordError> {
        let path = state.file(RECORD);
        let bytes = std::fs::read(&path).map_err(|source| RecordError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| RecordError::Malformed {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn options(&self, state: &StateDir) -> SignOptions {
        let mode = clap::ValueEnum::from_str(&self.sign, true).unwrap_or(SignMode::None);
        let mut opts = SignOptions::new(mode);
        opts.key = match self.key {
            RecordedKey::Copied { .. } => KeySource::Path(state.file(KEY_FILE)),
            RecordedKey::None | RecordedKey::CreateInState => {
                KeySource::CreateIn(state.path().to_path_buf())
            }
        };
        opts.subjects = self.subjects.clone();
        opts.predicates = clap::ValueEnum::from_str(&self.predicate, true).unwrap_or_default();
        opts.keyless.fulcio_url = self.fulcio_url.clone();
        opts.keyless.rekor_url = self.rekor_url.clone();
        opts.keyless.trusted_root = self.trusted_root.clone();
        opts.keyless.env = attest::oidc::AmbientEnv {
            sigstore_id_token: self.oidc.sigstore_id_token.clone(),
            github_request_url: self.oidc.github_request_url.clone(),
            github_request_token: self.oidc.github_request_token.clone(),
        };
        opts
    }

    /// Puts the proxy and CA variables `start` saw in place of `finish`'s own, before
    /// any HTTPS client reads them (`finish` calls this before it starts any task).
    pub fn apply_network_env(&self) {
        for name in NETWORK_ENV {
            std::env::remove_var(name);
        }
        for (name, value) in &self.network_env {
            std::env::set_var(name, value);
        }
    }

    /// Shows the key by the path it was given as, not by its copy in the state.
    pub fn show_key(&self, outcome: &mut attest::SignOutcome) {
        if let (
            Some(key),
            RecordedKey::Copied {
                shown_as,
                public_shown_as,
            },
        ) = (outcome.key.as_mut(), &self.key)
        {
            key.private_path = PathBuf::from(shown_as);
            key.public_path.clone_from(public_shown_as);
        }
    }
}

/// The local key `mode` may sign with and its public file: for `auto`, only a key that exists.
fn local_key(
    source: &KeySource,
    mode: SignMode,
) -> Result<Option<(PathBuf, Option<PathBuf>)>, RecordError> {
    let dir = match source {
        KeySource::Path(path) => {
            let public = path.with_extension("pub");
            return Ok(Some((path.clone(), public.is_file().then_some(public))));
        }
        KeySource::Default => attest::keys::default_key_dir().map_err(attest::AttestError::from)?,
        KeySource::CreateIn(dir) => dir.clone(),
    };
    let private = dir.join(attest::keys::PRIVATE_FILE);
    if mode == SignMode::Auto && !private.exists() {
        return Ok(None);
    }
    let (key, created) = attest::keys::load_or_create(&dir).map_err(attest::AttestError::from)?;
    if created {
        eprintln!(
            "ciwatch: created signing key {} (key id {})",
            key.path.display(),
            key.public().key_id
        );
    }
    Ok(Some((key.path.clone(), key.public_path())))
}

/// Writes the key into the state and loads it back: a bad key fails `start`.
fn copy_key(
    state: &StateDir,
    pem: &[u8],
    shown_as: String,
    public_shown_as: Option<PathBuf>,
) -> Result<RecordedKey, RecordError> {
    let path = write_private(&state.file(KEY_FILE), pem)?;
    let key = attest::keys::load_signing_key(&path).map_err(attest::AttestError::from)?;
    write_private(&state.file(PUBLIC_FILE), key.public().to_pem().as_bytes())?;
    Ok(RecordedKey::Copied {
        shown_as,
        public_shown_as,
    })
}

/// A new 0600 file in the state (which `start` made fresh, so nothing is there to follow).
fn write_private(path: &Path, bytes: &[u8]) -> Result<PathBuf, RecordError> {
    let write_err = |source| RecordError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    file.write_all(bytes).map_err(write_err)?;
    Ok(path.to_path_buf())
}

fn value_name(choice: PredicateChoice) -> String {
    clap::ValueEnum::to_possible_value(&choice)
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}
