//! The in-toto Statement v1 (in-toto/attestation spec/v1/statement.md). Its
//! subjects are the event log itself (its exact bytes) and any build outputs
//! named with `--subject`, so a consumer holding either can find the trace.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    #[error("--subject {pattern:?} is not a valid glob: {message}")]
    BadPattern { pattern: String, message: String },
    #[error("--subject {0:?} matched no file")]
    NoMatch(String),
    #[error("--subject {0}: not a regular file")]
    NotAFile(String),
    #[error("cannot read subject {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot serialise the statement")]
    Serialize(#[from] serde_json::Error),
}

/// A ResourceDescriptor with a name and a digest set (lowercase hex).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Subject {
    #[serde(default)]
    pub name: String,
    pub digest: BTreeMap<String, String>,
}

impl Subject {
    pub fn sha256(name: impl Into<String>, hex: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            digest: BTreeMap::from([("sha256".to_string(), hex.into())]),
        }
    }

    pub fn sha256_hex(&self) -> Option<&str> {
        self.digest.get("sha256").map(String::as_str)
    }
}

#[derive(Serialize)]
struct StatementRef<'a, P: Serialize> {
    #[serde(rename = "_type")]
    type_: &'static str,
    subject: &'a [Subject],
    #[serde(rename = "predicateType")]
    predicate_type: &'a str,
    predicate: &'a P,
}

/// The statement as signed: serialised once, compactly; never re-serialised after signing.
pub fn to_bytes<P: Serialize>(
    subjects: &[Subject],
    predicate_type: &str,
    predicate: &P,
) -> Result<Vec<u8>, StatementError> {
    Ok(serde_json::to_vec(&StatementRef {
        type_: STATEMENT_TYPE,
        subject: subjects,
        predicate_type,
        predicate,
    })?)
}

/// A statement read back from an envelope.
#[derive(Debug, Clone, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub type_: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    #[serde(default)]
    pub predicate: Value,
}

/// Expands `--subject` paths and globs (relative to the working directory)
/// into subjects, hashing each file as a stream.
pub fn resolve_subjects(patterns: &[String]) -> Result<Vec<Subject>, StatementError> {
    let mut out: Vec<Subject> = Vec::new();
    for pattern in patterns {
        for path in expand(pattern)? {
            let name = path.to_string_lossy().into_owned();
            if out.iter().any(|s| s.name == name) {
                continue;
            }
            let digest = sha256_file(&path)?;
            out.push(Subject::sha256(name, digest));
        }
    }
    Ok(out)
}

fn expand(pattern: &str) -> Result<Vec<PathBuf>, StatementError> {
    if !pattern.contains(['*', '?', '[']) {
        let path = PathBuf::from(pattern);
        return match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(vec![path]),
            Ok(_) => Err(StatementError::NotAFile(pattern.to_string())),
            Err(source) => Err(StatementError::Read {
                path: pattern.to_string(),
                source,
            }),
        };
    }
    let paths = glob::glob(pattern).map_err(|e| StatementError::BadPattern {
        pattern: pattern.to_string(),
        message: e.to_string(),
    })?;
    let mut files = Vec::new();
    for entry in paths {
        let path = entry.map_err(|e| StatementError::Read {
            path: e.path().display().to_string(),
            source: std::io::Error::new(e.error().kind(), e.error().to_string()),
        })?;
        // Directories and the like are not build outputs; only files are subjects.
        if path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(StatementError::NoMatch(pattern.to_string()));
    }
    files.sort();
    Ok(files)
}

/// Lowercase hex SHA-256 of a file, read in fixed-size chunks.
pub fn sha256_file(path: &Path) -> Result<String, StatementError> {
    let err = |source| StatementError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_statement_json() {
        #[derive(Serialize)]
        struct P {
            x: u32,
        }
        let subjects = [
            Subject::sha256("events.ndjson", "a".repeat(64)),
            Subject::sha256("dist/app.tar.gz", "b".repeat(64)),
        ];
        let bytes = to_bytes(
            &subjects,
            "https://dpndncy.io/agent/runtime-trace/v1",
            &P { x: 1 },
        )
        .unwrap();
        let expected = format!(
            concat!(
                r#"{{"_type":"https://in-toto.io/Statement/v1","#,
                r#""subject":[{{"name":"events.ndjson","digest":{{"sha256":"{a}"}}}},"#,
                r#"{{"name":"dist/app.tar.gz","digest":{{"sha256":"{b}"}}}}],"#,
                r#""predicateType":"https://dpndncy.io/agent/runtime-trace/v1","predicate":{{"x":1}}}}"#
            ),
            a = "a".repeat(64),
            b = "b".repeat(64)
        );
        assert_eq!(String::from_utf8(bytes).unwrap(), expected);
    }

    #[test]
    fn subjects_from_paths_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dist")).unwrap();
        std::fs::write(dir.path().join("dist/a.tar.gz"), b"hello").unwrap();
        std::fs::write(dir.path().join("dist/b.tar.gz"), b"world").unwrap();
        std::fs::create_dir(dir.path().join("dist/sub.tar.gz")).unwrap();
        let glob = format!("{}/dist/*.tar.gz", dir.path().display());
        let literal = format!("{}/dist/a.tar.gz", dir.path().display());
        let subjects = resolve_subjects(&[glob, literal]).unwrap();
        assert_eq!(
            subjects.len(),
            2,
            "directories skipped, duplicates merged: {subjects:?}"
        );
        assert_eq!(
            subjects[0].sha256_hex().unwrap(),
            hex::encode(Sha256::digest(b"hello"))
        );
        assert_eq!(
            subjects[1].sha256_hex().unwrap(),
            hex::encode(Sha256::digest(b"world"))
        );

        let none = format!("{}/dist/*.zip", dir.path().display());
        assert!(matches!(
            resolve_subjects(&[none]),
            Err(StatementError::NoMatch(_))
        ));
        let missing = format!("{}/nope", dir.path().display());
        assert!(matches!(
            resolve_subjects(&[missing]),
            Err(StatementError::Read { .. })
        ));
        let a_dir = format!("{}/dist", dir.path().display());
        assert!(matches!(
            resolve_subjects(&[a_dir]),
            Err(StatementError::NotAFile(_))
        ));
    }
}
