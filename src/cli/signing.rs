//! Signing flags shared by the subcommands that sign a trace (`run`, `start`
//! and `finish`, `daemon`). Each caller picks its own default for `--sign`.

use std::path::PathBuf;

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

/// What `ciwatch start` was told about signing, for the `finish` that signs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Recorded {
    sign: Option<String>,
    signing_key: Option<PathBuf>,
    fulcio_url: String,
    rekor_url: String,
    trusted_root: Option<PathBuf>,
}

const RECORD: &str = "signing.json";

impl SigningArgs {
    /// Remembers these choices in the output directory (`ciwatch start`).
    pub fn record(&self, dir: &std::path::Path) -> std::io::Result<()> {
        let recorded = Recorded {
            sign: self.sign.map(|m| m.as_str().to_string()),
            signing_key: self.signing_key.clone(),
            fulcio_url: self.fulcio_url.clone(),
            rekor_url: self.rekor_url.clone(),
            trusted_root: self.trusted_root.clone(),
        };
        std::fs::write(
            dir.join(RECORD),
            serde_json::to_vec(&recorded).map_err(std::io::Error::other)?,
        )
    }

    /// `finish`: where no --sign was given, the choices `start` recorded apply.
    #[must_use]
    pub fn or_recorded(mut self, dir: &std::path::Path) -> Self {
        if self.sign.is_some() {
            return self;
        }
        let Some(r) = std::fs::read(dir.join(RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice::<Recorded>(&b).ok())
        else {
            return self;
        };
        self.sign = r
            .sign
            .as_deref()
            .and_then(|s| clap::ValueEnum::from_str(s, true).ok());
        self.signing_key = self.signing_key.or(r.signing_key);
        self.fulcio_url = r.fulcio_url;
        self.rekor_url = r.rekor_url;
        self.trusted_root = self.trusted_root.or(r.trusted_root);
        self
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
