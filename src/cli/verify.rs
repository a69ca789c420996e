//! `ciwatch verify`: check an attestation against the event log it covers.

use std::path::PathBuf;

use crate::attest::verify::{self, Material, Request, Trust};
use crate::exit;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("material").required(true).args(["bundle", "envelope"])))]
#[command(group(clap::ArgGroup::new("trust").required(true).args(["key", "certificate_identity"])))]
pub struct VerifyArgs {
    /// The Sigstore bundle (attestation.sigstore.json).
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// The DSSE envelope file (attestation.intoto.jsonl), instead of the bundle; needs --key.
    #[arg(long, value_name = "FILE")]
    pub envelope: Option<PathBuf>,
    /// Public key (SPKI PEM) of a local-key signature.
    #[arg(long, value_name = "PUB.pem")]
    pub key: Option<PathBuf>,
    /// Keyless: the certificate identity (SAN) that must have signed,
    /// e.g. https://github.com/ORG/REPO/.github/workflows/ci.yml@refs/heads/main
    #[arg(long, value_name = "SAN", requires = "certificate_oidc_issuer")]
    pub certificate_identity: Option<String>,
    /// Keyless: the OIDC issuer that must have vouched for it,
    /// e.g. https://token.actions.githubusercontent.com
    #[arg(long, value_name = "URL", requires = "certificate_identity")]
    pub certificate_oidc_issuer: Option<String>,
    /// Sigstore trusted_root.json (default: the embedded public-good root).
    #[arg(long, value_name = "FILE")]
    pub trusted_root: Option<PathBuf>,
    /// Accept a trace that is only partial evidence (incomplete, an agent that died, tampering);
    /// by default such a trace fails verification even when its signature holds.
    #[arg(long)]
    pub allow_incomplete: bool,
    /// The event log (events.ndjson), or a build output named as a subject.
    #[arg(value_name = "LOG")]
    pub log: PathBuf,
}

pub async fn execute(args: VerifyArgs) -> u8 {
    let material = match (args.bundle, args.envelope) {
        (Some(b), _) => Material::Bundle(b),
        (None, Some(e)) => Material::Envelope(e),
        (None, None) => unreachable!("clap requires one"),
    };
    let trust = match (
        args.key,
        args.certificate_identity,
        args.certificate_oidc_issuer,
    ) {
        (Some(public_key), _, _) => Trust::Key {
            public_key,
            trusted_root: args.trusted_root,
        },
        (None, Some(identity), Some(issuer)) => Trust::Keyless {
            identity,
            issuer,
            trusted_root: args.trusted_root,
        },
        _ => unreachable!("clap requires --key or the identity pair"),
    };
    let request = Request {
        log: args.log,
        material,
        trust,
    };
    let result = tokio::task::spawn_blocking(move || verify::verify(&request)).await;
    match result {
        Ok(Ok(verified)) => {
            print!("{}", verify::headline(&verified));
            let gaps = verify::evidence_gaps(&verified);
            if gaps.is_empty() || args.allow_incomplete {
                return 0;
            }
            eprintln!(
                "ciwatch: verification FAILED: the signature holds, but the trace is partial evidence: {}. \
                 Pass --allow-incomplete to accept it as such.",
                gaps.join("; ")
            );
            exit::VERIFY_FAILED
        }
        Ok(Err(e)) if e.is_input_error() => super::fail(exit::DATA, &e),
        Ok(Err(e)) => {
            eprintln!("ciwatch: verification FAILED: {}", crate::error::chain(&e));
            exit::VERIFY_FAILED
        }
        Err(e) => {
            eprintln!("ciwatch: error: verification task failed: {e}");
            exit::INTERNAL
        }
    }
}
