//! Long-lived signing keys: ECDSA P-256 in PKCS#8 PEM (private) and SPKI PEM
//! (public), as `ciwatch keygen` writes them and cosign/openssl read them.
//! Every way a key file can be wrong gets its own error with a way out.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use pkcs8::der::Decode;
use pkcs8::ObjectIdentifier;
use sha2::{Digest, Sha256};
use sigstore_sign::crypto::{KeyPair, SigningScheme};
use sigstore_sign::types::{DerPublicKey, SignatureBytes};

pub const PRIVATE_FILE: &str = "ciwatch.key";
pub const PUBLIC_FILE: &str = "ciwatch.pub";

const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("key {path} is not PEM (expected a '-----BEGIN {expected}-----' block): {reason}")]
    NotPem {
        path: String,
        expected: &'static str,
        reason: String,
    },
    #[error("{path} holds a public key, but a private key is needed here (ciwatch keygen writes {PRIVATE_FILE} and {PUBLIC_FILE})")]
    PublicNotPrivate { path: String },
    #[error("{path} holds a private key; pass the public key instead (ciwatch keygen writes it as {PUBLIC_FILE})")]
    PrivateNotPublic { path: String },
    #[error("key {path} is encrypted ({label}); ciwatch reads unencrypted PKCS#8 keys: `openssl pkcs8 -in {path} -out plain.key`")]
    Encrypted { path: String, label: String },
    #[error("key {path} is a SEC1 'EC PRIVATE KEY'; convert it to PKCS#8: `openssl pkcs8 -topk8 -nocrypt -in {path} -out ciwatch.key`")]
    Sec1 { path: String },
    #[error("key {path} is {found}; ciwatch signs with ECDSA P-256 (`ciwatch keygen` makes one)")]
    WrongType { path: String, found: String },
    #[error("key {path} is not a valid {what}: {reason}")]
    Invalid {
        path: String,
        what: &'static str,
        reason: String,
    },
    #[error("{path} already exists; use --force to overwrite it")]
    Exists { path: String },
    #[error("cannot write {path}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("no configuration directory: neither XDG_CONFIG_HOME nor HOME is set")]
    NoConfigDir,
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A private key ready to sign, with its public half.
pub struct SigningKey {
    pair: KeyPair,
    public: PublicKey,
    pub path: PathBuf,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("path", &self.path)
            .field("key_id", &self.public.key_id)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct PublicKey {
    pub spki: DerPublicKey,
    pub key_id: String,
}

impl PublicKey {
    fn from_spki(spki: Vec<u8>) -> Self {
        let key_id = key_id(&spki);
        Self {
            spki: DerPublicKey::new(spki),
            key_id,
        }
    }

    pub fn to_pem(&self) -> String {
        pem_lf("PUBLIC KEY", self.spki.as_bytes())
    }

    /// Verifies a DER ECDSA P-256 signature over `message`.
    pub fn verify(&self, message: &[u8], der_signature: &[u8]) -> bool {
        let sig = SignatureBytes::from_bytes(der_signature);
        sigstore_sign::crypto::verify_signature(
            &self.spki,
            message,
            &sig,
            SigningScheme::EcdsaP256Sha256,
        )
        .is_ok()
    }
}

impl SigningKey {
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// A DER ECDSA P-256 / SHA-256 signature over `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.pair
            .sign(message)
            .map(SignatureBytes::into_bytes)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// The public key file that belongs to this key, when it sits next to it.
    pub fn public_path(&self) -> Option<PathBuf> {
        let candidate = self.path.with_extension("pub");
        candidate.is_file().then_some(candidate)
    }
}

/// The key id used as DSSE `keyid` and bundle `publicKey.hint`: base64 of the
/// SHA-256 of the DER SubjectPublicKeyInfo (RFC 6962 style, as Sigstore recommends).
pub fn key_id(spki_der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki_der))
}

pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let p = path.display().to_string();
    let block = read_pem(path, "PRIVATE KEY")?;
    match block.tag() {
        "PRIVATE KEY" => {}
        "PUBLIC KEY" | "CERTIFICATE" => return Err(KeyError::PublicNotPrivate { path: p }),
        "EC PRIVATE KEY" => return Err(KeyError::Sec1 { path: p }),
        "RSA PRIVATE KEY" => {
            return Err(KeyError::WrongType {
                path: p,
                found: "an RSA key".into(),
            })
        }
        tag if tag.contains("ENCRYPTED") => {
            return Err(KeyError::Encrypted {
                path: p,
                label: tag.into(),
            })
        }
        other => {
            return Err(KeyError::NotPem {
                path: p,
                expected: "PRIVATE KEY",
                reason: format!("found a '{other}' block"),
            })
        }
    }
    let info =
        pkcs8::PrivateKeyInfo::from_der(block.contents()).map_err(|e| KeyError::Invalid {
            path: p.clone(),
            what: "PKCS#8 private key",
            reason: e.to_string(),
        })?;
    check_p256(&p, info.algorithm.oid, info.algorithm.parameters_oid().ok())?;
    let pair = KeyPair::from_pkcs8_der(block.contents()).map_err(|e| KeyError::Invalid {
        path: p.clone(),
        what: "P-256 private key",
        reason: e.to_string(),
    })?;
    let spki = pair.public_key_der().map_err(|e| KeyError::Invalid {
        path: p,
        what: "P-256 private key",
        reason: e.to_string(),
    })?;
    Ok(SigningKey {
        pair,
        public: PublicKey::from_spki(spki.into_bytes()),
        path: path.to_path_buf(),
    })
}

pub fn load_public_key(path: &Path) -> Result<PublicKey, KeyError> {
    let p = path.display().to_string();
    let block = read_pem(path, "PUBLIC KEY")?;
    match block.tag() {
        "PUBLIC KEY" => {}
        tag if tag.contains("PRIVATE KEY") => return Err(KeyError::PrivateNotPublic { path: p }),
        other => {
            return Err(KeyError::NotPem {
                path: p,
                expected: "PUBLIC KEY",
                reason: format!("found a '{other}' block"),
            })
        }
    }
    let spki = pkcs8::spki::SubjectPublicKeyInfoRef::from_der(block.contents()).map_err(|e| {
        KeyError::Invalid {
            path: p.clone(),
            what: "SubjectPublicKeyInfo",
            reason: e.to_string(),
        }
    })?;
    check_p256(&p, spki.algorithm.oid, spki.algorithm.parameters_oid().ok())?;
    let key = PublicKey::from_spki(block.contents().to_vec());
    sigstore_sign::crypto::VerificationKey::from_spki(&key.spki).map_err(|e| {
        KeyError::Invalid {
            path: p,
            what: "P-256 public key",
            reason: e.to_string(),
        }
    })?;
    Ok(key)
}

fn read_pem(path: &Path, expected: &'static str) -> Result<pem::Pem, KeyError> {
    let p = path.display().to_string();
    let text = fs::read(path).map_err(|source| KeyError::Read {
        path: p.clone(),
        source,
    })?;
    let blocks = pem::parse_many(&text).map_err(|e| KeyError::NotPem {
        path: p.clone(),
        expected,
        reason: e.to_string(),
    })?;
    // Prefer the block we want when a file holds several (a key plus a certificate, say).
    let wanted = blocks.iter().position(|b| b.tag() == expected).unwrap_or(0);
    blocks.into_iter().nth(wanted).ok_or(KeyError::NotPem {
        path: p,
        expected,
        reason: "no PEM block found".into(),
    })
}

fn check_p256(
    path: &str,
    alg: ObjectIdentifier,
    curve: Option<ObjectIdentifier>,
) -> Result<(), KeyError> {
    if alg == ID_EC_PUBLIC_KEY && curve == Some(P256) {
        return Ok(());
    }
    Err(KeyError::WrongType {
        path: path.to_string(),
        found: describe(alg, curve),
    })
}

fn describe(alg: ObjectIdentifier, curve: Option<ObjectIdentifier>) -> String {
    let curve_name = |c: ObjectIdentifier| match c.to_string().as_str() {
        "1.3.132.0.34" => "P-384".to_string(),
        "1.3.132.0.35" => "P-521".to_string(),
        "1.3.132.0.10" => "secp256k1".to_string(),
        other => format!("curve {other}"),
    };
    match alg.to_string().as_str() {
        "1.2.840.10045.2.1" => format!(
            "an ECDSA {} key",
            curve.map_or("(unnamed curve)".into(), curve_name)
        ),
        "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => "an RSA key".into(),
        "1.3.101.112" => "an Ed25519 key".into(),
        "1.3.101.113" => "an Ed448 key".into(),
        other => format!("a key of algorithm {other}"),
    }
}

/// PEM with `\n` line endings and 64-column lines (what openssl and Go write).
pub fn pem_lf(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// What `generate` wrote.
#[derive(Debug, Clone)]
pub struct Generated {
    pub private_path: PathBuf,
    pub public_path: PathBuf,
    pub key_id: String,
}

/// Writes a fresh P-256 keypair into `dir`: the private key 0600, never over
/// an existing file unless `force`.
pub fn generate(dir: &Path, force: bool) -> Result<Generated, KeyError> {
    let private_path = dir.join(PRIVATE_FILE);
    let public_path = dir.join(PUBLIC_FILE);
    if !force {
        for path in [&private_path, &public_path] {
            if path.exists() {
                return Err(KeyError::Exists {
                    path: path.display().to_string(),
                });
            }
        }
    }
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &rng,
    )
    .map_err(|_| KeyError::Sign("key generation failed".into()))?;
    let pair =
        KeyPair::from_pkcs8_der(pkcs8.as_ref()).map_err(|e| KeyError::Sign(e.to_string()))?;
    let spki = pair
        .public_key_der()
        .map_err(|e| KeyError::Sign(e.to_string()))?
        .into_bytes();
    let write_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| KeyError::Write { path, source }
    };
    fs::create_dir_all(dir).map_err(write_err(dir))?;
    write_private(
        &private_path,
        pem_lf("PRIVATE KEY", pkcs8.as_ref()).as_bytes(),
        force,
    )
    .map_err(write_err(&private_path))?;
    fs::write(&public_path, pem_lf("PUBLIC KEY", &spki)).map_err(write_err(&public_path))?;
    Ok(Generated {
        private_path,
        public_path,
        key_id: key_id(&spki),
    })
}

/// Creates the file 0600 from the start, so the key is never briefly readable.
fn write_private(path: &Path, bytes: &[u8], force: bool) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).mode(0o600);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path)?;
    // An existing file keeps its old mode through truncate; tighten it.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// `$XDG_CONFIG_HOME/ciwatch`, else `~/.config/ciwatch`.
pub fn default_key_dir() -> Result<PathBuf, KeyError> {
    let from = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(xdg) = from("XDG_CONFIG_HOME") {
        return Ok(xdg.join("ciwatch"));
    }
    from("HOME")
        .map(|home| home.join(".config").join("ciwatch"))
        .ok_or(KeyError::NoConfigDir)
}

/// The embedded default: the key in `dir`, created on first use.
/// Returns the key and whether it was just created.
pub fn load_or_create(dir: &Path) -> Result<(SigningKey, bool), KeyError> {
    let private_path = dir.join(PRIVATE_FILE);
    if private_path.exists() {
        return Ok((load_signing_key(&private_path)?, false));
    }
    fs::create_dir_all(dir).map_err(|source| KeyError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    match generate(dir, false) {
        Ok(_) => Ok((load_signing_key(&private_path)?, true)),
        // Another ciwatch created it first: use theirs.
        Err(KeyError::Exists { .. }) if private_path.exists() => {
            Ok((load_signing_key(&private_path)?, false))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify_with_der_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(dir.path(), false).unwrap();
        let mode = fs::metadata(&g.private_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key = load_signing_key(&g.private_path).unwrap();
        let public = load_public_key(&g.public_path).unwrap();
        assert_eq!(public.key_id, g.key_id);
        assert_eq!(key.public().key_id, g.key_id);
        let sig = key.sign(b"message").unwrap();
        // ASN.1 DER: SEQUENCE { INTEGER r, INTEGER s }.
        assert_eq!(sig[0], 0x30);
        assert_eq!(usize::from(sig[1]) + 2, sig.len());
        assert!(public.verify(b"message", &sig));
        assert!(!public.verify(b"messagf", &sig));
        assert_eq!(key.public_path(), Some(g.public_path.clone()));
        assert!(matches!(
            generate(dir.path(), false),
            Err(KeyError::Exists { .. })
        ));
        let again = generate(dir.path(), true).unwrap();
        assert_ne!(again.key_id, g.key_id);
    }

    #[test]
    fn key_id_is_base64_sha256_of_spki() {
        assert_eq!(
            key_id(b"abc"),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn wrong_keys_get_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(dir.path(), false).unwrap();
        assert!(matches!(
            load_signing_key(&g.public_path),
            Err(KeyError::PublicNotPrivate { .. })
        ));
        assert!(matches!(
            load_public_key(&g.private_path),
            Err(KeyError::PrivateNotPublic { .. })
        ));
        assert!(matches!(
            load_signing_key(&dir.path().join("missing")),
            Err(KeyError::Read { .. })
        ));
        let junk = write(dir.path(), "junk", "hello");
        assert!(matches!(
            load_signing_key(&junk),
            Err(KeyError::NotPem { .. })
        ));
        let sec1 = write(dir.path(), "sec1", &pem_lf("EC PRIVATE KEY", b"\x30\x00"));
        assert!(matches!(
            load_signing_key(&sec1),
            Err(KeyError::Sec1 { .. })
        ));
        let enc = write(
            dir.path(),
            "enc",
            &pem_lf("ENCRYPTED PRIVATE KEY", b"\x30\x00"),
        );
        assert!(matches!(
            load_signing_key(&enc),
            Err(KeyError::Encrypted { .. })
        ));
        let garbage = write(
            dir.path(),
            "garbage",
            &pem_lf("PRIVATE KEY", b"\x30\x03\x02\x01\x00"),
        );
        assert!(matches!(
            load_signing_key(&garbage),
            Err(KeyError::Invalid { .. })
        ));
        // Ed25519 PKCS#8 (RFC 8410 example).
        let ed = write(
            dir.path(),
            "ed",
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n",
        );
        let err = load_signing_key(&ed).unwrap_err();
        assert!(matches!(err, KeyError::WrongType { .. }), "{err}");
        assert!(err.to_string().contains("Ed25519"), "{err}");
        let ed_pub = write(
            dir.path(),
            "ed.pub",
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n",
        );
        assert!(load_public_key(&ed_pub)
            .unwrap_err()
            .to_string()
            .contains("Ed25519"));
    }

    #[test]
    fn default_key_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("cfg");
        let (a, created) = load_or_create(&home).unwrap();
        assert!(created);
        let (b, created) = load_or_create(&home).unwrap();
        assert!(!created);
        assert_eq!(a.public().key_id, b.public().key_id);
        assert_eq!(
            fs::metadata(&home).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
