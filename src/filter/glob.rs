//! Path globs (docs/sensitive-paths.md): `*` and `?` match within one
//! component, `**` matches any number of whole components. globset does the
//! matching, on bytes, so non-UTF-8 paths work; this module checks the syntax
//! and finds the literal components the kernel filter compares.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

#[derive(Debug, Clone)]
pub struct Glob {
    source: String,
    matcher: globset::GlobMatcher,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GlobError {
    #[error("pattern {0:?} must be absolute (start with '/') or start with '**/'")]
    NotAbsolute(String),
    #[error("pattern {0:?} has an empty component ('//')")]
    EmptyComponent(String),
    #[error("pattern {pattern:?} cannot be compiled: {reason}")]
    Compile { pattern: String, reason: String },
}

impl Glob {
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        let body = if let Some(rest) = pattern.strip_prefix('/') {
            rest
        } else if pattern.starts_with("**/") {
            pattern
        } else {
            return Err(GlobError::NotAbsolute(pattern.to_string()));
        };
        if body.split('/').any(str::is_empty) {
            return Err(GlobError::EmptyComponent(pattern.to_string()));
        }
        let matcher = globset::GlobBuilder::new(&globset_syntax(pattern))
            .literal_separator(true)
            .backslash_escape(true)
            .empty_alternates(true)
            .build()
            .map_err(|e| GlobError::Compile {
                pattern: pattern.to_string(),
                reason: e.kind().to_string(),
            })?
            .compile_matcher();
        Ok(Self {
            source: pattern.to_string(),
            matcher,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The last component, when it has no wildcard.
    pub fn literal_basename(&self) -> Option<&[u8]> {
        self.literal_from_end(0)
    }

    /// The second-to-last component, when it has no wildcard.
    pub fn literal_parent(&self) -> Option<&[u8]> {
        self.literal_from_end(1)
    }

    fn literal_from_end(&self, back: usize) -> Option<&[u8]> {
        // Only the empty string before a leading '/' is empty (`new` checked).
        let component = self
            .source
            .rsplit('/')
            .filter(|c| !c.is_empty())
            .nth(back)?;
        (!component.contains(['*', '?'])).then_some(component.as_bytes())
    }

    /// Matches an absolute, normalised path.
    pub fn matches(&self, path: &[u8]) -> bool {
        // "/" has no component for a `*` to match, though globset's `/*` takes it.
        if path == b"/" {
            return self.source.split('/').all(|c| c.is_empty() || c == "**");
        }
        self.matcher.is_match(OsStr::from_bytes(path))
    }
}

/// The same pattern in globset's syntax, where three things differ:
/// - only `*`, `?` and `**` are special here, so `[`, `{`, `,` and `\` are escaped;
/// - globset's leading `**/` also lets `*` match an empty first component
///   (`**/*/x` takes `/x`); paths are absolute, so it becomes `/**/`, which does not;
/// - a trailing `/**` here also matches the directory itself (any number of
///   components includes none), so it becomes the alternation `{,/**}`.
fn globset_syntax(pattern: &str) -> String {
    let absolute = if pattern.starts_with("**/") {
        format!("/{pattern}")
    } else {
        pattern.to_string()
    };
    let mut body = absolute.as_str();
    let mut any_depth_tail = false;
    while let Some(dir) = body.strip_suffix("/**") {
        body = dir;
        any_depth_tail = true;
    }
    let mut out = String::with_capacity(pattern.len() + 8);
    for c in body.chars() {
        if matches!(c, '[' | ']' | '{' | '}' | ',' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    if any_depth_tail {
        out.push_str("{,/**}");
    }
    out
}

/// Resolves `.` and `..` lexically; symlinks are not followed.
pub fn normalize(path: &[u8]) -> Vec<u8> {
    let mut stack: Vec<&[u8]> = Vec::new();
    for component in path.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                stack.pop();
            }
            c => stack.push(c),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for c in &stack {
        out.push(b'/');
        out.extend_from_slice(c);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_components() {
        let g = Glob::new("**/.ssh/id_*").unwrap();
        assert!(g.matches(b"/home/runner/.ssh/id_ed25519"));
        assert!(g.matches(b"/.ssh/id_rsa"));
        assert!(!g.matches(b"/home/runner/.ssh/known_hosts"));
        assert!(!g.matches(b"/home/runner/.ssh/keys/id_rsa"));
        let p = Glob::new("/proc/*/environ").unwrap();
        assert!(p.matches(b"/proc/123/environ"));
        assert!(!p.matches(b"/proc/123/task/4/environ"));
    }

    #[test]
    fn literal_components_feed_the_kernel_filter() {
        let g = Glob::new("/etc/shadow").unwrap();
        assert_eq!(g.literal_basename(), Some(&b"shadow"[..]));
        let d = Glob::new("**/.config/gcloud/*").unwrap();
        assert_eq!(d.literal_basename(), None);
        assert_eq!(d.literal_parent(), Some(&b"gcloud"[..]));
    }

    #[test]
    fn bad_patterns_are_rejected() {
        assert!(matches!(
            Glob::new("relative/x"),
            Err(GlobError::NotAbsolute(_))
        ));
        assert!(matches!(
            Glob::new("/a//b"),
            Err(GlobError::EmptyComponent(_))
        ));
    }

    #[test]
    fn only_star_question_and_double_star_are_special() {
        let tail = Glob::new("/a/**").unwrap();
        assert!(tail.matches(b"/a"), "`**` matches no component too");
        assert!(tail.matches(b"/a/b/c"));
        let lead = Glob::new("**/*/x").unwrap();
        assert!(!lead.matches(b"/x"), "`*` needs a component");
        assert!(lead.matches(b"/d/x"));
        let literal = Glob::new("/[a]/{b,c}/\\d").unwrap();
        assert!(literal.matches(b"/[a]/{b,c}/\\d"));
        assert!(!literal.matches(b"/a/b/d"));
        assert!(!Glob::new("/*").unwrap().matches(b"/"));
        assert!(Glob::new("/**").unwrap().matches(b"/"));
    }

    #[test]
    fn normalisation_is_lexical() {
        assert_eq!(
            normalize(b"/home/u/../u/./.ssh//id_rsa"),
            b"/home/u/.ssh/id_rsa"
        );
        assert_eq!(normalize(b"/.."), b"/");
    }
}
