//! DSSE v1 (secure-systems-lab/dsse protocol.md, envelope.md): the exact
//! pre-authentication encoding that is signed, and the envelope JSON.
//! Signatures are ECDSA P-256 / SHA-256 in ASN.1 DER, as everywhere in Sigstore.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sigstore_sign::types::{DsseEnvelope, DsseSignature, KeyId, PayloadBytes, SignatureBytes};

/// in-toto/attestation spec/v1/envelope.md: the only payload type Sigstore tooling accepts.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DsseError {
    #[error("envelope is not valid JSON of the DSSE shape: {0}")]
    Malformed(String),
    #[error("envelope {field} is not base64")]
    Base64 { field: &'static str },
    #[error("envelope payloadType is {0:?}, expected {PAYLOAD_TYPE:?}")]
    PayloadType(String),
    #[error("envelope has no signature")]
    NoSignature,
}

/// `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`,
/// with LEN the ASCII decimal byte length.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// The envelope as stored in `attestation.intoto.jsonl` (one per line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// Base64 of the serialised statement.
    pub payload: String,
    pub signatures: Vec<Signature>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Signature {
    /// Unauthenticated hint; never used to decide anything.
    #[serde(default)]
    pub keyid: String,
    /// Base64 of the DER signature.
    pub sig: String,
}

impl Envelope {
    pub fn new(payload: &[u8], keyid: &str, der_signature: &[u8]) -> Self {
        Self {
            payload_type: PAYLOAD_TYPE.to_string(),
            payload: STANDARD.encode(payload),
            signatures: vec![Signature {
                keyid: keyid.to_string(),
                sig: STANDARD.encode(der_signature),
            }],
        }
    }

    pub fn parse(json: &str) -> Result<Self, DsseError> {
        serde_json::from_str(json).map_err(|e| DsseError::Malformed(e.to_string()))
    }

    /// One compact line of JSON, without the newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn payload_bytes(&self) -> Result<Vec<u8>, DsseError> {
        decode_any(&self.payload).ok_or(DsseError::Base64 { field: "payload" })
    }

    /// Checks the shape a ciwatch verifier relies on before any crypto.
    pub fn check_in_toto(&self) -> Result<(), DsseError> {
        if self.payload_type != PAYLOAD_TYPE {
            return Err(DsseError::PayloadType(self.payload_type.clone()));
        }
        if self.signatures.is_empty() {
            return Err(DsseError::NoSignature);
        }
        Ok(())
    }

    pub fn from_sigstore(e: &DsseEnvelope) -> Self {
        Self {
            payload_type: e.payload_type.clone(),
            payload: STANDARD.encode(e.payload.as_bytes()),
            signatures: vec![Signature {
                keyid: e.signature.keyid.as_str().to_string(),
                sig: STANDARD.encode(e.signature.sig.as_bytes()),
            }],
        }
    }

    /// For a Sigstore bundle, which carries exactly one signature.
    pub fn to_sigstore(&self) -> Result<DsseEnvelope, DsseError> {
        let sig = self.signatures.first().ok_or(DsseError::NoSignature)?;
        let sig_bytes = decode_any(&sig.sig).ok_or(DsseError::Base64 {
            field: "signatures[0].sig",
        })?;
        Ok(DsseEnvelope::new(
            self.payload_type.clone(),
            PayloadBytes::from_bytes(&self.payload_bytes()?),
            DsseSignature::new(
                SignatureBytes::new(sig_bytes),
                KeyId::new(sig.keyid.clone()),
            ),
        ))
    }
}

/// DSSE verifiers must accept standard and URL-safe base64, padded or not.
pub fn decode_any(text: &str) -> Option<Vec<u8>> {
    [&STANDARD, &URL_SAFE, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_vector() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
        assert_eq!(
            pae(PAYLOAD_TYPE, b"{}"),
            b"DSSEv1 28 application/vnd.in-toto+json 2 {}"
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
    }

    #[test]
    fn envelope_round_trips_and_accepts_url_safe_base64() {
        let e = Envelope::new(b"{\"a\":\"\xff?>\"}", "kid", &[0x30, 0x44]);
        let line = e.to_line();
        assert_eq!(
            line,
            r#"{"payloadType":"application/vnd.in-toto+json","payload":"eyJhIjoi/z8+In0=","signatures":[{"keyid":"kid","sig":"MEQ="}]}"#
        );
        let back = Envelope::parse(&line).unwrap();
        assert_eq!(back, e);
        let url_safe = Envelope {
            payload: "eyJhIjoi_z8-In0".into(),
            ..e.clone()
        };
        assert_eq!(url_safe.payload_bytes().unwrap(), b"{\"a\":\"\xff?>\"}");
        let sigstore = e.to_sigstore().unwrap();
        assert_eq!(Envelope::from_sigstore(&sigstore), e);
    }

    #[test]
    fn malformed_envelopes_are_errors() {
        assert!(matches!(Envelope::parse("{"), Err(DsseError::Malformed(_))));
        assert!(matches!(
            Envelope::parse(r#"{"payload":"x"}"#),
            Err(DsseError::Malformed(_))
        ));
        let e = Envelope {
            payload_type: "text/plain".into(),
            payload: String::new(),
            signatures: vec![],
        };
        assert_eq!(
            e.check_in_toto(),
            Err(DsseError::PayloadType("text/plain".into()))
        );
        let e = Envelope {
            payload_type: PAYLOAD_TYPE.into(),
            payload: "!!".into(),
            signatures: vec![],
        };
        assert_eq!(e.check_in_toto(), Err(DsseError::NoSignature));
        assert_eq!(
            e.payload_bytes(),
            Err(DsseError::Base64 { field: "payload" })
        );
    }
}
