//! How errors are shown: one line with every cause.
//!
//! Error types name their own context in their message and leave the cause to
//! `source()`, so a cause is printed once, here.

use std::error::Error;

/// An error and its sources on one line, outermost first.
pub fn chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Some libraries' errors (aya's, object_store's) end their message with their cause.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}")]
    struct Outer {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn prints_each_cause_once_outermost_first() {
        let e = Outer {
            path: "/x",
            source: std::io::Error::other("denied"),
        };
        assert_eq!(chain(&e), "cannot read /x: denied");
    }
}
