//! What of a command line may be stored. Event logs and attestations become
//! CI artifacts, which are public on public repositories, so by default argv
//! is kept but values that look like credentials are replaced.

use serde::{Deserialize, Serialize};

pub const MASK: &str = "[REDACTED]";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CaptureArgs {
    /// argv as executed. Only for private repositories.
    Full,
    /// argv with credential-like values masked (the default).
    #[default]
    Redacted,
    /// argv[0] only.
    None,
}

/// Token prefixes of well-known credential formats.
const TOKEN_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "gldt-",
    "glrt-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xapp-",
    "sk_live_",
    "rk_live_",
    "npm_",
    "pypi-",
    "AKIA",
    "ASIA",
    "hf_",
    "dop_v1_",
    "-----BEGIN",
];

/// Option or variable names whose value is a secret.
const SECRET_NAMES: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "auth",
    "credential",
    "private",
    "key",
];

/// Header names whose value is a secret (`-H 'Authorization: Bearer …'`).
const SECRET_HEADERS: &[&str] = &[
    "authorization:",
    "proxy-authorization:",
    "x-api-key:",
    "private-token:",
    "cookie:",
];

pub fn apply(policy: CaptureArgs, argv: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    match policy {
        CaptureArgs::Full => argv,
        CaptureArgs::None => argv.into_iter().take(1).collect(),
        CaptureArgs::Redacted => redact_all(argv),
    }
}

fn redact_all(argv: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(argv.len());
    let mut mask_next = false;
    for (i, arg) in argv.into_iter().enumerate() {
        if mask_next {
            out.push(MASK.as_bytes().to_vec());
            mask_next = false;
            continue;
        }
        let text = String::from_utf8_lossy(&arg);
        mask_next = i > 0 && is_secret_flag(&text);
        out.push(redact_one(&text).map_or(arg, String::into_bytes));
    }
    out
}

/// `--password` or `-p`-like flags whose value is the next argument.
fn is_secret_flag(arg: &str) -> bool {
    let Some(name) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
        return false;
    };
    !name.contains('=') && name_is_secret(name)
}

fn name_is_secret(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let last = lower.rsplit(['.', '-', '_']).next().unwrap_or(&lower);
    SECRET_NAMES
        .iter()
        .any(|s| lower.ends_with(s) || last == *s || lower.contains(&format!("{s}word")))
}

/// The redacted form of one argument, or None when it is kept as is.
fn redact_one(arg: &str) -> Option<String> {
    let lower = arg.to_ascii_lowercase();
    if let Some(header) = SECRET_HEADERS.iter().find(|h| lower.starts_with(*h)) {
        return Some(format!("{} {MASK}", &arg[..header.len()]));
    }
    if TOKEN_PREFIXES.iter().any(|p| arg.contains(p)) {
        return Some(mask_tokens(arg));
    }
    if arg.contains('"') && arg.contains(':') {
        if let Some(masked) = mask_json_values(arg) {
            return Some(masked);
        }
    }
    if let Some((name, _)) = arg.split_once('=') {
        let name = name.trim_start_matches('-');
        if !name.is_empty() && !name.contains('/') && name_is_secret(name) {
            return Some(format!("{}={MASK}", &arg[..arg.find('=').unwrap_or(0)]));
        }
    }
    mask_url_password(arg)
}

/// Replaces every whitespace-, quote- or `=`-delimited word that starts with a token prefix.
fn mask_tokens(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if TOKEN_PREFIXES.iter().any(|p| word.starts_with(p)) {
            out.push_str(MASK);
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in arg.chars() {
        if c.is_whitespace() || matches!(c, '"' | '\'' | '=' | ':' | ',') {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// In JSON-like text, `"<secret name>": "<value>"` keeps the name and masks the value.
fn mask_json_values(arg: &str) -> Option<String> {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    let mut changed = false;
    while let Some(open) = rest.find('"') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('"') else { break };
        let key = &after[..close];
        let tail = &after[close + 1..];
        let value = tail
            .trim_start()
            .strip_prefix(':')
            .map(str::trim_start)
            .and_then(|v| v.strip_prefix('"'));
        match value {
            Some(v) if name_is_secret(key) => {
                let Some(end) = v.find('"') else { break };
                let consumed = rest.len() - v.len() + end;
                out.push_str(&rest[..rest.len() - v.len()]);
                out.push_str(MASK);
                rest = &rest[consumed..];
                changed = true;
            }
            _ => {
                out.push_str(&rest[..open + 1 + close + 1]);
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// `scheme://user:password@host` keeps the user and masks the password.
fn mask_url_password(arg: &str) -> Option<String> {
    let scheme_end = arg.find("://")? + 3;
    let rest = &arg[scheme_end..];
    let at = rest.find('@')?;
    let userinfo = &rest[..at];
    if userinfo.contains('/') {
        return None;
    }
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let masked = if userinfo.contains(':') {
        format!("{user}:{MASK}")
    } else {
        MASK.to_string()
    };
    Some(format!("{}{masked}{}", &arg[..scheme_end], &rest[at..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(args: &[&str]) -> Vec<String> {
        let argv = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        apply(CaptureArgs::Redacted, argv)
            .into_iter()
            .map(|a| String::from_utf8(a).unwrap())
            .collect()
    }

    #[test]
    fn credentials_are_masked() {
        assert_eq!(
            redact(&["curl", "-H", "Authorization: Bearer abc"]),
            ["curl", "-H", "Authorization: [REDACTED]"]
        );
        assert_eq!(
            redact(&["login", "--password", "hunter2", "x"]),
            ["login", "--password", "[REDACTED]", "x"]
        );
        assert_eq!(
            redact(&["tool", "--api-key=abc123"]),
            ["tool", "--api-key=[REDACTED]"]
        );
        assert_eq!(
            redact(&["git", "clone", "https://u:tok@github.com/a/b"]),
            ["git", "clone", "https://u:[REDACTED]@github.com/a/b"]
        );
        assert_eq!(
            redact(&["echo", "ghp_abcdefghijklmnop"]),
            ["echo", "[REDACTED]"]
        );
        assert_eq!(
            redact(&["env", "GITHUB_TOKEN=xyz"]),
            ["env", "GITHUB_TOKEN=[REDACTED]"]
        );
        assert_eq!(
            redact(&[
                "client",
                r#"{"HOME": "/root", "ACTIONS_RUNTIME_TOKEN": "eyJabc", "n": 1}"#
            ]),
            [
                "client",
                r#"{"HOME": "/root", "ACTIONS_RUNTIME_TOKEN": "[REDACTED]", "n": 1}"#
            ]
        );
    }

    #[test]
    fn ordinary_arguments_are_kept() {
        let args = [
            "gcc",
            "-O2",
            "-o",
            "main",
            "main.c",
            "--keep-going",
            "PATH=/usr/bin",
            "https://example.com/x",
        ];
        assert_eq!(redact(&args), args);
    }

    #[test]
    fn none_keeps_argv0_only() {
        assert_eq!(
            apply(CaptureArgs::None, vec![b"a".to_vec(), b"b".to_vec()]),
            vec![b"a".to_vec()]
        );
    }
}
