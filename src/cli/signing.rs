//! Signing flags shared by the subcommands that sign a trace (`run`, and
//! `finish` later). Each caller picks its own default for `--sign`.

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
    #[arg(long, value_name = "PATH")]
    pub signing_key: Option<PathBuf>,
    /// A build output to name as a subject of the attestation (path or glob; repeatable).
    #[arg(long = "subject", value_name = "PATH/GLOB")]
    pub subjects: Vec<String>,
    /// Predicate(s) to emit.
    #[arg(long, value_enum, default_value_t = PredicateChoice::Ciwatch)]
    pub predicate: PredicateChoice,
    /// Fulcio for keyless signing.
    #[arg(long, value_name = "URL", default_value = attest::signer::PUBLIC_GOOD_FULCIO)]
    pub fulcio_url: String,
    /// Rekor (v1 API) for keyless signing.
    #[arg(long, value_name = "URL", default_value = attest::signer::PUBLIC_GOOD_REKOR)]
    pub rekor_url: String,
    /// Trusted root (Sigstore trusted_root.json) for a private Sigstore instance:
    /// keyless bundles are verified against it before they are written.
    #[arg(long = "signing-trusted-root", value_name = "FILE")]
    pub trusted_root: Option<PathBuf>,
}

impl SigningArgs {
    pub fn options(&self, default_mode: SignMode) -> SignOptions {
        let mut opts = SignOptions::new(self.sign.unwrap_or(default_mode));
        opts.key = self.signing_key.clone().map_or(KeySource::Default, KeySource::Path);
        opts.subjects = self.subjects.clone();
        opts.predicates = self.predicate;
        opts.keyless.fulcio_url = self.fulcio_url.clone();
        opts.keyless.rekor_url = self.rekor_url.clone();
        opts.keyless.trusted_root = self.trusted_root.clone();
        opts
    }
}
