//! One interface for every way of signing a statement: a local key, Sigstore
//! keyless (Fulcio certificate + Rekor entry), and later a KMS. A signer turns
//! statement bytes into a DSSE envelope plus the Sigstore bundle around it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use sigstore_sign::reqwest;
use sigstore_sign::trust_root::TrustedRoot;
use sigstore_sign::types::{Bundle, SignatureContent};
use sigstore_sign::{SigningContext, SigningServices};

use super::bundle;
use super::dsse::{self, Envelope};
use super::keys::{KeyError, SigningKey};
use super::oidc::{self, AmbientEnv, OidcError};
use super::retry::Retry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Key,
    Keyless,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Key => "key",
            Method::Keyless => "keyless",
        }
    }
}

/// A signed statement: the envelope for `attestation.intoto.jsonl` and the bundle.
#[derive(Debug, Clone)]
pub struct Signed {
    pub envelope: Envelope,
    pub bundle: Bundle,
}

pub type SignFuture<'a> = Pin<Box<dyn Future<Output = Result<Signed, SignError>> + Send + 'a>>;

pub trait Signer: Send + Sync {
    fn method(&self) -> Method;
    /// Signs the serialised statement exactly as given.
    fn sign<'a>(&'a self, statement: &'a [u8]) -> SignFuture<'a>;
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Oidc(#[from] OidcError),
    #[error("cannot set up the HTTP client: {0}")]
    Http(String),
    #[error("keyless signing failed after {tries} tries")]
    Sigstore {
        tries: u32,
        source: sigstore_sign::Error,
    },
    #[error("the signed bundle does not verify against the configured trusted root: {0}")]
    SelfCheck(String),
    #[error("cannot read trusted root {path}: {message}")]
    TrustedRoot { path: String, message: String },
    #[error("cannot build the bundle: {0}")]
    Bundle(String),
}

/// Signs with a long-lived P-256 key. The bundle carries only a key hint, so
/// verification needs the public key (`ciwatch verify --key`).
pub struct LocalKeySigner {
    key: SigningKey,
}

impl LocalKeySigner {
    pub fn new(key: SigningKey) -> Self {
        Self { key }
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    fn sign_now(&self, statement: &[u8]) -> Result<Signed, SignError> {
        let pae = dsse::pae(dsse::PAYLOAD_TYPE, statement);
        let signature = self.key.sign(&pae)?;
        // Cheap, and catches a broken key or encoding before anything is written.
        if !self.key.public().verify(&pae, &signature) {
            return Err(SignError::SelfCheck(
                "the signature does not verify with the key's own public key".into(),
            ));
        }
        let key_id = &self.key.public().key_id;
        let envelope = Envelope::new(statement, key_id, &signature);
        let bundle =
            bundle::key_bundle(&envelope, key_id).map_err(|e| SignError::Bundle(e.to_string()))?;
        Ok(Signed { envelope, bundle })
    }
}

impl Signer for LocalKeySigner {
    fn method(&self) -> Method {
        Method::Key
    }

    fn sign<'a>(&'a self, statement: &'a [u8]) -> SignFuture<'a> {
        Box::pin(async move { self.sign_now(statement) })
    }
}

/// Where keyless signing goes and how hard it tries.
#[derive(Debug, Clone)]
pub struct KeylessOptions {
    pub fulcio_url: String,
    pub rekor_url: String,
    /// When set, every keyless bundle is verified against it before it is written.
    pub trusted_root: Option<std::path::PathBuf>,
    pub env: AmbientEnv,
    pub retry: Retry,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

pub const PUBLIC_GOOD_FULCIO: &str = "https://fulcio.sigstore.dev";
pub const PUBLIC_GOOD_REKOR: &str = "https://rekor.sigstore.dev";

impl Default for KeylessOptions {
    fn default() -> Self {
        Self {
            fulcio_url: PUBLIC_GOOD_FULCIO.into(),
            rekor_url: PUBLIC_GOOD_REKOR.into(),
            trusted_root: None,
            env: AmbientEnv::default(),
            retry: Retry::default(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
        }
    }
}

/// Sigstore keyless: an ephemeral key, a Fulcio certificate for the CI's OIDC
/// identity, a Rekor v1 `dsse` entry, all in a v0.3 bundle (sigstore-sign).
pub struct KeylessSigner {
    signer: sigstore_sign::Signer,
    retry: Retry,
    trusted_root: Option<TrustedRoot>,
    /// The token's issuer, for the verify hint (the certificate is authoritative).
    pub token_issuer: String,
    pub token_source: &'static str,
}

impl KeylessSigner {
    /// Fetches the OIDC token; fails when the CI provides none.
    pub async fn connect(opts: &KeylessOptions) -> Result<Self, SignError> {
        let trusted_root = match &opts.trusted_root {
            Some(path) => {
                Some(
                    TrustedRoot::from_file(path).map_err(|e| SignError::TrustedRoot {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.request_timeout)
            .user_agent(concat!("ciwatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SignError::Http(e.to_string()))?;
        let token = oidc::fetch(&opts.env, &http, &opts.retry).await?;
        let token_issuer = token.token.issuer().to_string();
        let context = SigningContext::new(SigningServices::new(&opts.fulcio_url, &opts.rekor_url))
            .with_http_client(http);
        Ok(Self {
            signer: context.signer(token.token),
            retry: opts.retry,
            trusted_root,
            token_issuer,
            token_source: token.source_name,
        })
    }

    async fn sign_now(&self, statement: &[u8]) -> Result<Signed, SignError> {
        let bundle = self
            .retry
            .run("keyless signing", is_transient, || {
                self.signer.sign_raw_statement(statement)
            })
            .await
            .map_err(|(source, tries)| SignError::Sigstore { tries, source })?;
        let SignatureContent::DsseEnvelope(dsse) = &bundle.content else {
            return Err(SignError::Bundle(
                "sigstore-sign returned a bundle without a DSSE envelope".into(),
            ));
        };
        let envelope = Envelope::from_sigstore(dsse);
        if let Some(root) = &self.trusted_root {
            self_check(root, &bundle, statement)?;
        }
        Ok(Signed { envelope, bundle })
    }
}

impl Signer for KeylessSigner {
    fn method(&self) -> Method {
        Method::Keyless
    }

    fn sign<'a>(&'a self, statement: &'a [u8]) -> SignFuture<'a> {
        Box::pin(self.sign_now(statement))
    }
}

/// Network failures and server-side errors are worth another try; a refused
/// token or a malformed request is not.
fn is_transient(e: &sigstore_sign::Error) -> bool {
    let status_transient = |s: u16| s == 429 || s >= 500;
    match e {
        sigstore_sign::Error::Fulcio(sigstore_sign::fulcio::Error::Http(_)) => true,
        sigstore_sign::Error::Fulcio(sigstore_sign::fulcio::Error::Status { status, .. }) => {
            status_transient(*status)
        }
        sigstore_sign::Error::Rekor(sigstore_sign::rekor::Error::Http(_)) => true,
        sigstore_sign::Error::Rekor(sigstore_sign::rekor::Error::Status { status, .. }) => {
            status_transient(*status)
        }
        _ => false,
    }
}

/// Verifies a fresh keyless bundle with the identity-agnostic policy: chain,
/// SCT, tlog proofs, signature, and that the statement is what we signed.
fn self_check(root: &TrustedRoot, bundle: &Bundle, statement: &[u8]) -> Result<(), SignError> {
    use sigstore_verify::{VerificationPolicy, Verifier};
    let SignatureContent::DsseEnvelope(dsse) = &bundle.content else {
        return Err(SignError::SelfCheck("no DSSE envelope".into()));
    };
    if dsse.payload.as_bytes() != statement {
        return Err(SignError::SelfCheck(
            "the envelope does not carry the statement that was signed".into(),
        ));
    }
    let parsed: super::statement::Statement =
        serde_json::from_slice(statement).map_err(|e| SignError::SelfCheck(e.to_string()))?;
    let digest = parsed
        .subject
        .first()
        .and_then(|s| s.sha256_hex())
        .and_then(|h| sigstore_sign::types::Sha256Hash::from_hex(h).ok())
        .ok_or_else(|| SignError::SelfCheck("the statement has no sha256 subject".into()))?;
    let verifier = Verifier::new(root).map_err(|e| SignError::SelfCheck(e.to_string()))?;
    verifier
        .verify(
            sigstore_sign::types::Artifact::from_digest(digest),
            bundle,
            &VerificationPolicy::any_identity(),
        )
        .map(|_| ())
        .map_err(|e| SignError::SelfCheck(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use sigstore_sign::crypto::SigningScheme;
    use sigstore_sign::types::{DerPublicKey, SignatureBytes};

    fn jwt(sub: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let claims = format!(
            r#"{{"iss":"https://token.actions.githubusercontent.com","aud":"sigstore","sub":"{sub}","exp":4102444800}}"#
        );
        format!("{}.{}.{}", e(r#"{"alg":"RS256"}"#), e(&claims), e("sig"))
    }

    fn fast(mut o: KeylessOptions) -> KeylessOptions {
        o.retry = Retry {
            attempts: 1,
            ..Retry::default()
        };
        o
    }

    /// Fulcio checks that the request proves possession of the key: a
    /// signature over the token's `sub` (CI issuers). The loopback mocks do
    /// not check it, so check here what ciwatch sends.
    #[tokio::test]
    async fn fulcio_proof_of_possession_signs_the_token_subject() {
        let (url, request) = crate::attest::test_http::serve_once(500, "{}").await;
        let sub = "repo:acme/app:ref:refs/heads/main";
        let opts = fast(KeylessOptions {
            fulcio_url: url.clone(),
            rekor_url: url,
            env: AmbientEnv {
                sigstore_id_token: Some(jwt(sub)),
                ..AmbientEnv::default()
            },
            ..KeylessOptions::default()
        });
        let signer = KeylessSigner::connect(&opts).await.unwrap();
        let statement = format!(
            r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"name":"x","digest":{{"sha256":"{}"}}}}],"predicateType":"t","predicate":{{}}}}"#,
            "0".repeat(64)
        );
        let err = signer.sign(statement.as_bytes()).await.unwrap_err();
        let err = crate::error::chain(&err);
        assert!(err.contains("500"), "{err}");
        let captured = request.await.unwrap();
        assert!(
            captured.head.starts_with("POST /api/v2/signingCert "),
            "{}",
            captured.head
        );
        let body: serde_json::Value = serde_json::from_slice(&captured.body).unwrap();
        assert_eq!(body["credentials"]["oidcIdentityToken"], jwt(sub));
        let pem = body["publicKeyRequest"]["publicKey"]["content"]
            .as_str()
            .unwrap();
        let key = DerPublicKey::from_pem(pem).unwrap();
        let pop = base64::engine::general_purpose::STANDARD
            .decode(
                body["publicKeyRequest"]["proofOfPossession"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        let pop = SignatureBytes::new(pop);
        let verify = |msg: &[u8]| {
            sigstore_sign::crypto::verify_signature(&key, msg, &pop, SigningScheme::EcdsaP256Sha256)
                .is_ok()
        };
        assert!(
            verify(sub.as_bytes()),
            "the proof of possession must be a signature over the token's sub"
        );
        assert!(!verify(b"something else"));
    }

    /// GitHub Actions: the request URL already has `?api-version=…`, so the
    /// audience is appended with `&`; the request token is a bearer token.
    #[tokio::test]
    async fn github_token_request_appends_the_audience_and_sends_the_bearer() {
        let token = jwt("repo:acme/app:ref:refs/heads/main");
        let body: &'static str =
            Box::leak(format!(r#"{{"count":1,"value":"{token}"}}"#).into_boxed_str());
        let (url, request) = crate::attest::test_http::serve_once(200, body).await;
        let opts = fast(KeylessOptions {
            env: AmbientEnv {
                github_request_url: Some(format!("{url}/token?api-version=2.0")),
                github_request_token: Some("request-bearer".into()),
                ..AmbientEnv::default()
            },
            ..KeylessOptions::default()
        });
        let signer = KeylessSigner::connect(&opts).await.unwrap();
        assert_eq!(signer.token_source, "GitHub Actions");
        assert_eq!(
            signer.token_issuer,
            "https://token.actions.githubusercontent.com"
        );
        let captured = request.await.unwrap();
        assert!(
            captured
                .head
                .starts_with("GET /token?api-version=2.0&audience=sigstore "),
            "{}",
            captured.head
        );
        assert!(
            captured
                .head
                .to_ascii_lowercase()
                .contains("authorization: bearer request-bearer"),
            "{}",
            captured.head
        );
    }

    #[test]
    fn transient_errors_are_network_and_server_side_only() {
        use sigstore_sign::{fulcio, rekor, Error};
        assert!(is_transient(&Error::Fulcio(fulcio::Error::Http(
            "refused".into()
        ))));
        assert!(is_transient(&Error::Fulcio(fulcio::Error::Status {
            status: 503,
            message: String::new()
        })));
        assert!(is_transient(&Error::Rekor(rekor::Error::Status {
            status: 429,
            message: String::new()
        })));
        assert!(!is_transient(&Error::Fulcio(fulcio::Error::Status {
            status: 401,
            message: String::new()
        })));
        assert!(!is_transient(&Error::Rekor(rekor::Error::Status {
            status: 409,
            message: String::new()
        })));
    }
}
