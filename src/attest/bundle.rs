//! Sigstore bundle v0.3 (`application/vnd.dev.sigstore.bundle.v0.3+json`,
//! protobuf-specs sigstore_bundle.proto): proto3 JSON, camelCase, bytes as
//! base64, int64 as decimal strings. A local-key bundle carries the key hint
//! (equal to the envelope's keyid); a keyless one carries the Fulcio leaf
//! certificate and the Rekor `dsse` entry with its inclusion promise and proof.

use std::path::Path;

use sigstore_sign::bundle::{BundleV03, VerificationMaterialV03};
use sigstore_sign::types::bundle::VerificationMaterialContent;
use sigstore_sign::types::{Bundle, SignatureContent};

use super::dsse::{DsseError, Envelope};

pub const MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read bundle {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("bundle {path} is malformed: {message}")]
    Malformed { path: String, message: String },
    #[error(
        "bundle {path} carries a message signature, not a DSSE envelope: it is not an attestation"
    )]
    NotDsse { path: String },
    #[error(transparent)]
    Dsse(#[from] DsseError),
}

/// A v0.3 bundle for an envelope signed with a local key.
pub fn key_bundle(envelope: &Envelope, key_id: &str) -> Result<Bundle, DsseError> {
    let dsse = envelope.to_sigstore()?;
    Ok(BundleV03::new(
        VerificationMaterialV03::PublicKey {
            hint: key_id.to_string(),
        },
        SignatureContent::DsseEnvelope(dsse),
    )
    .into_bundle())
}

pub fn to_json(bundle: &Bundle) -> String {
    bundle.to_json_pretty().unwrap_or_default()
}

/// Reads and structurally validates a bundle; malformed input is an error, never a panic.
pub fn read(path: &Path) -> Result<(Bundle, Envelope), BundleError> {
    let p = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| BundleError::Read {
        path: p.clone(),
        source,
    })?;
    let text = String::from_utf8(text).map_err(|e| BundleError::Malformed {
        path: p.clone(),
        message: e.to_string(),
    })?;
    parse(&text)
        .map_err(|message| BundleError::Malformed {
            path: p.clone(),
            message,
        })
        .and_then(|bundle| {
            let SignatureContent::DsseEnvelope(dsse) = &bundle.content else {
                return Err(BundleError::NotDsse { path: p });
            };
            let envelope = Envelope::from_sigstore(dsse);
            Ok((bundle, envelope))
        })
}

fn parse(text: &str) -> Result<Bundle, String> {
    // sigstore-types can panic on nothing we know of, but a verifier must not
    // die on hostile input: keep any panic inside the parse.
    let bundle = std::panic::catch_unwind(|| Bundle::from_json(text))
        .map_err(|_| "the bundle parser panicked".to_string())?
        .map_err(|e| e.to_string())?;
    let vm = &bundle.verification_material;
    let keyed = matches!(vm.content, VerificationMaterialContent::PublicKey(_));
    if keyed
        && vm.tlog_entries.is_empty()
        && vm.timestamp_verification_data.rfc3161_timestamps.is_empty()
    {
        // A local-key bundle: the key is the trust anchor, no log entry or
        // timestamp is expected (sigstore-bundle's validator insists on one).
        if bundle.media_type().as_str() != MEDIA_TYPE {
            return Err(format!(
                "media type {} is not {MEDIA_TYPE}",
                bundle.media_type().as_str()
            ));
        }
        return Ok(bundle);
    }
    sigstore_sign::bundle::validate_bundle(&bundle).map_err(|e| e.to_string())?;
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use sigstore_sign::bundle::TlogEntryBuilder;
    use sigstore_sign::types::bundle::{CheckpointData, KindVersion};
    use sigstore_sign::types::{
        CanonicalizedBody, DerCertificate, LogIndex, LogKeyId, Sha256Hash, SignedTimestamp,
    };

    fn envelope() -> Envelope {
        Envelope::new(
            br#"{"_type":"https://in-toto.io/Statement/v1"}"#,
            "KID=",
            &[0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
        )
    }

    #[test]
    fn key_bundle_has_the_v03_shape_with_the_key_hint() {
        let b = key_bundle(&envelope(), "KID=").unwrap();
        let v: Value = serde_json::from_str(&to_json(&b)).unwrap();
        assert_eq!(v["mediaType"], MEDIA_TYPE);
        assert_eq!(v["verificationMaterial"]["publicKey"]["hint"], "KID=");
        assert!(v["verificationMaterial"].get("certificate").is_none());
        assert_eq!(
            v["dsseEnvelope"]["payloadType"],
            "application/vnd.in-toto+json"
        );
        assert_eq!(v["dsseEnvelope"]["signatures"][0]["keyid"], "KID=");
        assert_eq!(v["dsseEnvelope"]["signatures"][0]["sig"], "MAYCAQECAQE=");
        assert_eq!(v["dsseEnvelope"]["payload"], envelope().payload);
    }

    #[test]
    fn keyless_bundle_fields_use_proto3_json_types() {
        let body = CanonicalizedBody::new(br#"{"kind":"dsse"}"#.to_vec());
        let entry = TlogEntryBuilder::new(
            LogIndex::try_from(123_456_789_012u64).unwrap(),
            LogKeyId::new(vec![7; 32]),
            KindVersion::DsseV001,
            body,
        )
        .with_integrated_time(jiff::Timestamp::from_second(1_795_676_331).unwrap())
        .with_inclusion_promise(SignedTimestamp::new(vec![1, 2, 3]))
        .with_inclusion_proof(
            LogIndex::try_from(93_750_513u64).unwrap(),
            Sha256Hash::new([9; 32]),
            93_750_515,
            vec![Sha256Hash::new([1; 32])],
            CheckpointData::new("rekor.example - 1\n93750515\nCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n\n— rekor.example AAAAAAAAAAAA\n").unwrap(),
        )
        .build();
        let dsse = envelope().to_sigstore().unwrap();
        let b = BundleV03::with_certificate_and_dsse(DerCertificate::new(vec![0x30, 0x00]), dsse)
            .with_tlog_entry(entry)
            .into_bundle();
        let v: Value = serde_json::from_str(&to_json(&b)).unwrap();
        let vm = &v["verificationMaterial"];
        assert_eq!(vm["certificate"]["rawBytes"], "MAA=");
        let e = &vm["tlogEntries"][0];
        // int64 fields are decimal strings in proto3 JSON.
        assert_eq!(e["logIndex"], "123456789012");
        assert_eq!(e["integratedTime"], "1795676331");
        assert_eq!(e["inclusionProof"]["logIndex"], "93750513");
        assert_eq!(e["inclusionProof"]["treeSize"], "93750515");
        assert_eq!(e["kindVersion"]["kind"], "dsse");
        assert_eq!(e["kindVersion"]["version"], "0.0.1");
        assert_eq!(
            e["logId"]["keyId"],
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="
        );
        assert_eq!(e["inclusionPromise"]["signedEntryTimestamp"], "AQID");
        assert_eq!(
            e["inclusionProof"]["rootHash"],
            "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk="
        );
        assert!(e["inclusionProof"]["checkpoint"]["envelope"]
            .as_str()
            .unwrap()
            .starts_with("rekor.example"));
        assert_eq!(e["canonicalizedBody"], "eyJraW5kIjoiZHNzZSJ9");
    }

    #[test]
    fn malformed_bundles_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("empty", ""),
            ("not-json", "{"),
            (
                "wrong-shape",
                r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json"}"#,
            ),
            (
                "bad-media",
                r#"{"mediaType":"x","verificationMaterial":{},"dsseEnvelope":{}}"#,
            ),
            (
                "two-sigs",
                r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{"publicKey":{"hint":"a"},"tlogEntries":[]},"dsseEnvelope":{"payload":"e30=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"AA=="},{"sig":"AA=="}]}}"#,
            ),
            ("binary", "\u{0}\u{ff}"),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let err = read(&path).unwrap_err();
            assert!(
                matches!(err, BundleError::Malformed { .. }),
                "{name}: {err}"
            );
        }
        assert!(matches!(
            read(&dir.path().join("missing")),
            Err(BundleError::Read { .. })
        ));
    }
}
