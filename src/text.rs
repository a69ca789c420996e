//! Lossless text for the event log: bytes that are valid UTF-8 become a JSON
//! string; anything else becomes `{"base64": "<standard base64>"}`. And
//! [`escape_controls`] for showing text a job wrote to people.

use std::borrow::Cow;
use std::fmt::Write as _;

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

/// Text from a trace made inert for a terminal or a rendered page: control
/// characters (ESC, CR, C1, …) become `\x1b`-style escapes and bidirectional
/// overrides `\u{202e}`-style ones, so a host or step name cannot move the
/// cursor, recolour the screen or reorder what is shown around it.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            // Every control character is below U+00A0: two hex digits.
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else if is_bidi_control(c) {
            let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || is_bidi_control(c)
}

/// Embeddings, overrides and isolates (the "Trojan Source" characters).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_are_escaped() {
        assert_eq!(
            escape_controls("evil\x1b[2J\x1b]0;x\x07.com\r"),
            "evil\\x1b[2J\\x1b]0;x\\x07.com\\x0d"
        );
        assert_eq!(escape_controls("a\u{9b}b\u{202e}c"), "a\\x9bb\\u{202e}c");
        assert!(matches!(
            escape_controls("github.com ü"),
            Cow::Borrowed("github.com ü")
        ));
    }

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
