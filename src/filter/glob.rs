//! Path globs: `*` and `?` match within one component, `**` matches any
//! number of whole components. Matching is on bytes, so non-UTF-8 paths work.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    AnyDepth,
    Component(Vec<u8>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GlobError {
    #[error("pattern {0:?} must be absolute (start with '/') or start with '**/'")]
    NotAbsolute(String),
    #[error("pattern {0:?} has an empty component ('//')")]
    EmptyComponent(String),
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
        let mut parts = Vec::new();
        for component in body.split('/') {
            match component {
                "" => return Err(GlobError::EmptyComponent(pattern.to_string())),
                "**" => parts.push(Part::AnyDepth),
                literal => parts.push(Part::Component(literal.as_bytes().to_vec())),
            }
        }
        Ok(Self {
            source: pattern.to_string(),
            parts,
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
        let index = self.parts.len().checked_sub(back + 1)?;
        match &self.parts[index] {
            Part::Component(c) if !c.iter().any(|b| matches!(b, b'*' | b'?')) => Some(c),
            _ => None,
        }
    }

    /// Matches an absolute, normalised path.
    pub fn matches(&self, path: &[u8]) -> bool {
        let components: Vec<&[u8]> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        match_parts(&self.parts, &components)
    }
}

fn match_parts(parts: &[Part], path: &[&[u8]]) -> bool {
    match parts.split_first() {
        None => path.is_empty(),
        Some((Part::AnyDepth, rest)) => {
            (0..=path.len()).any(|skip| match_parts(rest, &path[skip..]))
        }
        Some((Part::Component(pattern), rest)) => {
            path.split_first().is_some_and(|(first, tail)| {
                match_component(pattern, first) && match_parts(rest, tail)
            })
        }
    }
}

fn match_component(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| match_component(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && match_component(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && match_component(rest, &name[1..]),
    }
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
    fn normalisation_is_lexical() {
        assert_eq!(
            normalize(b"/home/u/../u/./.ssh//id_rsa"),
            b"/home/u/.ssh/id_rsa"
        );
        assert_eq!(normalize(b"/.."), b"/");
    }
}
