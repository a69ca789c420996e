//! docs/policy.schema.json against an independent validator (check-jsonschema,
//! from scripts/install-policy-peers), and the examples of docs/policy.md
//! against both the schema and ciwatch's own parser, so neither drifts.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

const CIWATCH: &str = env!("CARGO_BIN_EXE_ciwatch");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The validator, or None (skip) outside CI; under CI a missing tool fails.
fn validator() -> Option<PathBuf> {
    let tool = root().join(".cache/peers/venv/bin/check-jsonschema");
    if tool.is_file() {
        return Some(tool);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{} is missing: run scripts/install-policy-peers (CI is set, so this fails instead of skipping)", tool.display());
    }
    eprintln!("skipped: check-jsonschema is not installed (scripts/install-policy-peers)");
    None
}

/// Full policies in docs/policy.md: the ```yaml blocks that start with `version:`.
fn doc_examples() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("docs/policy.md")).unwrap();
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match (&mut block, line.trim_end()) {
            (None, "```yaml") => block = Some(String::new()),
            (Some(b), "```") => {
                if b.starts_with("version:") {
                    out.push(std::mem::take(b));
                }
                block = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

fn validate(tool: &Path, files: &[PathBuf]) -> (bool, String) {
    let o = Command::new(tool)
        .arg("--schemafile")
        .arg(root().join("docs/policy.schema.json"))
        .args(files)
        .output()
        .expect("run check-jsonschema");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn doc_examples_parse_with_ciwatch() {
    let examples = doc_examples();
    assert!(examples.len() >= 2, "docs/policy.md lost its examples");
    for e in &examples {
        let parsed = ciwatch::policy::parse(e.as_bytes(), "docs/policy.md")
            .unwrap_or_else(|err| panic!("{err}\n{e}"));
        parsed
            .policy
            .validate()
            .unwrap_or_else(|err| panic!("{err}\n{e}"));
    }
}

#[test]
fn the_schema_is_valid_json_schema() {
    let Some(tool) = validator() else { return };
    let o = Command::new(&tool)
        .arg("--check-metaschema")
        .arg(root().join("docs/policy.schema.json"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn examples_fixtures_and_learned_policies_validate_against_the_schema() {
    let Some(tool) = validator() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![root().join("tests/fixtures/policy/ci-policy.yml")];
    for (i, e) in doc_examples().iter().enumerate() {
        let f = dir.path().join(format!("doc-{i}.yml"));
        std::fs::write(&f, e).unwrap();
        files.push(f);
    }
    for (name, extra) in [
        ("learned.yml", &[][..]),
        ("learned-per-step.yml", &["--per-step"][..]),
    ] {
        let out = dir.path().join(name);
        let o = Command::new(CIWATCH)
            .args(["learn", "--dir"])
            .arg(root().join("tests/fixtures/policy/runs"))
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        files.push(out);
    }
    let (ok, text) = validate(&tool, &files);
    assert!(ok, "{text}");
}

#[test]
fn the_schema_rejects_what_it_can_see_is_wrong() {
    let Some(tool) = validator() else { return };
    for bad in [
        "wildcard-middle.yml",
        "unknown-field.yml",
        "empty-enforce.yml",
    ] {
        let (ok, text) = validate(&tool, &[root().join("tests/fixtures/policy/bad").join(bad)]);
        assert!(!ok, "{bad} should fail the schema: {text}");
    }
    let dir = tempfile::tempdir().unwrap();
    for (i, text) in [
        "version: 2\nmode: enforce\nallow: [a.example]\n",
        "version: 1\nmode: block\n",
        "version: 1\nmode: enforce\nallow:\n  - https://github.com\n",
        "version: 1\nmode: enforce\nallow:\n  - {host: a.example, port: 70000}\n",
        "version: 1\nmode: enforce\nallow:\n  - {host: a.example, steps: []}\n",
        "version: 1\nmode: enforce\nno-egress: true\nallow: [a.example]\n",
        "version: 1\nmode: enforce\nallow:\n  - github.com:443/sctp\n",
    ]
    .iter()
    .enumerate()
    {
        let f = dir.path().join(format!("bad-{i}.yml"));
        std::fs::write(&f, text).unwrap();
        let (ok, out) = validate(&tool, &[f]);
        assert!(!ok, "should fail the schema:\n{text}\n{out}");
        // ciwatch refuses each of these too.
        let accepted =
            ciwatch::policy::parse(text.as_bytes(), "x").is_ok_and(|p| p.policy.validate().is_ok());
        assert!(!accepted, "{text}");
    }
}
