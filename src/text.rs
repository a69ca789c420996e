//! Lossless text for the event log: bytes that are valid UTF-8 become a JSON
//! string; anything else becomes `{"base64": "<standard base64>"}`.

use base64::Engine;
use serde::ser::{Serialize, SerializeMap, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Text(pub Vec<u8>);

impl Text {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// For human-facing output only: invalid bytes become U+FFFD.
    pub fn lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(s) => serializer.serialize_str(s),
            Err(_) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry(
                    "base64",
                    &base64::engine::general_purpose::STANDARD.encode(&self.0),
                )?;
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_a_string_and_other_bytes_are_base64() {
        assert_eq!(
            serde_json::to_string(&Text::from("/tmp/é")).unwrap(),
            r#""/tmp/é""#
        );
        assert_eq!(
            serde_json::to_string(&Text::new(vec![0x66, 0xff, 0x6f])).unwrap(),
            r#"{"base64":"Zv9v"}"#
        );
    }
}
