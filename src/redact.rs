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
];

/// A PEM block: everything from here to the end of the argument is key material.
const PEM_START: &str = "-----BEGIN";

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
    "passphrase",
];

/// Header names whose value is a secret wherever `Name: value` appears
/// (`-H 'Authorization: Bearer …'`); after a header flag, any secret-like name is.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "private-token",
    "cookie",
    "x-vault-token",
    "x-auth-token",
];

/// URL query parameters whose value is a secret besides the secret-like names
/// (signed URLs of S3, GCS and Azure).
const SECRET_PARAMS: &[&str] = &["sig", "signature", "x-amz-signature", "x-goog-signature"];

/// What a flag's value is, and so what of it is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    /// All of it.
    Secret,
    /// `user:password`: the user is kept.
    UserPassword,
    /// `Name: value`: the value, when the header name is a secret one.
    Header,
}

/// Whether a flag takes its value in the same argument (`-pX`, `--user=X`),
/// in the next one, or either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Joined,
    Next,
    Both,
}

/// A flag whose value is a secret only for some programs: the same letter is
/// a port for `ssh -p` and `scp -P`, `--insecure` for `curl -k`, a published
/// port for `docker run -p`, and `mysql -p db` prompts and names a database.
struct FlagRule {
    /// argv[0] basenames; empty for every program.
    programs: &'static [&'static str],
    /// Only after this subcommand (`docker login -p`).
    after: Option<&'static str>,
    flag: &'static str,
    value: Value,
    form: Form,
}

const fn rule(
    programs: &'static [&'static str],
    flag: &'static str,
    value: Value,
    form: Form,
) -> FlagRule {
    FlagRule {
        programs,
        after: None,
        flag,
        value,
        form,
    }
}

const MYSQL: &[&str] = &[
    "mysql",
    "mysqldump",
    "mysqladmin",
    "mysqlimport",
    "mysqlshow",
    "mysqlcheck",
    "mariadb",
    "mariadb-dump",
];
const REGISTRY_LOGIN: &[&str] = &["docker", "podman", "nerdctl", "buildah", "skopeo", "helm"];
const OPENSSL: &[&str] = &["openssl"];
const CURL: &[&str] = &["curl"];
const ANY: &[&str] = &[];

const FLAG_RULES: &[FlagRule] = &[
    rule(MYSQL, "-p", Value::Secret, Form::Joined),
    FlagRule {
        programs: REGISTRY_LOGIN,
        after: Some("login"),
        flag: "-p",
        value: Value::Secret,
        form: Form::Both,
    },
    rule(&["sshpass"], "-p", Value::Secret, Form::Both),
    rule(
        &["zip", "unzip", "zipcloak"],
        "-P",
        Value::Secret,
        Form::Next,
    ),
    rule(&["7z", "7za", "7zr"], "-p", Value::Secret, Form::Joined),
    rule(OPENSSL, "-k", Value::Secret, Form::Next),
    rule(OPENSSL, "-K", Value::Secret, Form::Next),
    rule(OPENSSL, "-passin", Value::Secret, Form::Next),
    rule(OPENSSL, "-passout", Value::Secret, Form::Next),
    rule(CURL, "-u", Value::UserPassword, Form::Both),
    rule(CURL, "--user", Value::UserPassword, Form::Both),
    rule(CURL, "-U", Value::UserPassword, Form::Both),
    rule(CURL, "--proxy-user", Value::UserPassword, Form::Both),
    // Masks only secret headers, so harmless for programs where -H means else.
    rule(ANY, "-H", Value::Header, Form::Both),
    rule(ANY, "--header", Value::Header, Form::Both),
    rule(ANY, "--proxy-header", Value::Header, Form::Both),
];

pub fn apply(policy: CaptureArgs, argv: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    match policy {
        CaptureArgs::Full => argv,
        CaptureArgs::None => argv.into_iter().take(1).collect(),
        CaptureArgs::Redacted => redact_all(argv),
    }
}

/// A command line as one line of text under `policy`, for names and titles.
pub fn command_line(policy: CaptureArgs, argv: Vec<Vec<u8>>) -> String {
    apply(policy, argv)
        .iter()
        .map(|a| String::from_utf8_lossy(a))
        .collect::<Vec<_>>()
        .join(" ")
}

fn redact_all(argv: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let texts: Vec<String> = argv
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let program = texts.first().map_or("", |p| basename(p));
    let mut pending: Option<Value> = None;
    let mut out = Vec::with_capacity(argv.len());
    for (i, arg) in argv.into_iter().enumerate() {
        let text = &texts[i];
        let prior = &texts[..i];
        let masked = match pending.take() {
            Some(value) => mask_value(value, text),
            None => {
                pending = (i > 0)
                    .then(|| takes_secret(text, program, prior))
                    .flatten();
                None
            }
        };
        let masked = masked.or_else(|| redact_one(text, program, prior));
        out.push(masked.map_or(arg, String::into_bytes));
    }
    out
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The rules of `program` that apply at this point of its command line.
fn rules_for<'a>(
    program: &'a str,
    prior: &'a [String],
) -> impl Iterator<Item = &'static FlagRule> + 'a {
    FLAG_RULES.iter().filter(move |r| {
        (r.programs.is_empty() || r.programs.contains(&program))
            && r.after.is_none_or(|sub| prior.iter().any(|a| a == sub))
    })
}

/// What the next argument is when this one is a flag that takes a secret.
fn takes_secret(arg: &str, program: &str, prior: &[String]) -> Option<Value> {
    let own = rules_for(program, prior)
        .find(|r| r.form != Form::Joined && r.flag == arg)
        .map(|r| r.value);
    own.or_else(|| is_secret_flag(arg).then_some(Value::Secret))
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

/// The masked form of a flag's value, or None when nothing of it is secret.
fn mask_value(value: Value, text: &str) -> Option<String> {
    match value {
        Value::Secret => Some(MASK.to_string()),
        Value::UserPassword => text
            .split_once(':')
            .map(|(user, _)| format!("{user}:{MASK}")),
        Value::Header => mask_header(text, true),
    }
}

/// The redacted form of one argument, or None when it is kept as is.
fn redact_one(arg: &str, program: &str, prior: &[String]) -> Option<String> {
    if let Some(masked) = mask_joined_flag(arg, program, prior) {
        return Some(masked);
    }
    if let Some(masked) = mask_header(arg, false) {
        return Some(masked);
    }
    if arg.contains('"') && arg.contains(':') {
        if let Some(masked) = mask_json_values(arg) {
            return Some(masked);
        }
    }
    if let Some(masked) = mask_assignment(arg) {
        return Some(masked);
    }
    // URLs first: a token used as a URL's user (`https://ghp_…@host`) is inside a word.
    let urls = mask_urls(arg);
    let text = urls.as_deref().unwrap_or(arg);
    mask_tokens(text).or(urls)
}

/// `-pX`, `-HName:X`, `--user=u:X`: a program's flag with its value attached.
fn mask_joined_flag(arg: &str, program: &str, prior: &[String]) -> Option<String> {
    rules_for(program, prior)
        .filter(|r| r.form != Form::Next)
        .find_map(|r| {
            let prefix = if r.flag.starts_with("--") {
                format!("{}=", r.flag)
            } else {
                r.flag.to_string()
            };
            let value = arg.strip_prefix(&prefix).filter(|v| !v.is_empty())?;
            mask_value(r.value, value).map(|masked| format!("{prefix}{masked}"))
        })
}

/// `Name: value` keeps the name and masks the value when the name is a known
/// secret header, or, after a header flag, any secret-like name (`X-Vault-Token`).
fn mask_header(text: &str, after_header_flag: bool) -> Option<String> {
    let (name, _) = text.split_once(':')?;
    let lower = name.to_ascii_lowercase();
    let shaped = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let secret =
        SECRET_HEADERS.contains(&lower.as_str()) || (after_header_flag && name_is_secret(&lower));
    (shaped && secret).then(|| format!("{name}: {MASK}"))
}

/// `NAME=value` or `--name=value` with a secret name masks the value; a value
/// that is a secret header keeps its name (`http.extraheader=Authorization: …`).
fn mask_assignment(arg: &str) -> Option<String> {
    let (name, value) = arg.split_once('=')?;
    let bare = name.trim_start_matches('-');
    if !bare.is_empty() && !bare.contains('/') && name_is_secret(bare) {
        return Some(format!("{name}={MASK}"));
    }
    let holds_headers = bare.to_ascii_lowercase().ends_with("header");
    mask_header(value, holds_headers).map(|masked| format!("{name}={masked}"))
}

/// Token-like words: a well-known prefix or a JWT, and PEM blocks to the end.
/// A word before `=` is a variable name (`npm_config_registry=…`), not a token.
fn mask_tokens(arg: &str) -> Option<String> {
    let (text, pem) = match arg.find(PEM_START) {
        Some(at) => (&arg[..at], true),
        None => (arg, false),
    };
    let is_sep = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '=' | ':' | ',');
    let words = map_words(text, is_sep, |word, sep| {
        let token = TOKEN_PREFIXES.iter().any(|p| word.starts_with(p)) || is_jwt(word);
        (token && sep != "=").then(|| MASK.to_string())
    });
    if !pem {
        return words;
    }
    Some(words.unwrap_or_else(|| text.to_string()) + MASK)
}

/// `header.payload.signature` (or the five parts of an encrypted one) in
/// base64url, the header a JSON object: `eyJ` is `{"`.
fn is_jwt(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    word.starts_with("eyJ")
        && matches!(parts.len(), 3 | 5)
        && parts[1].len() >= 2
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Rewrites each word of `text` that `f` masks; `f` also sees the separator
/// after the word. None when no word changed.
fn map_words(
    text: &str,
    is_sep: impl Fn(char) -> bool,
    f: impl Fn(&str, &str) -> Option<String>,
) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    for piece in text.split_inclusive(&is_sep) {
        let word_len = piece
            .char_indices()
            .last()
            .filter(|(_, c)| is_sep(*c))
            .map_or(piece.len(), |(i, _)| i);
        let (word, sep) = piece.split_at(word_len);
        match f(word, sep) {
            Some(masked) => {
                out.push_str(&masked);
                changed = true;
            }
            None => out.push_str(word),
        }
        out.push_str(sep);
    }
    changed.then_some(out)
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

/// Every URL of the argument (`sh -c` scripts hold several): see [`mask_url`].
fn mask_urls(arg: &str) -> Option<String> {
    if !arg.contains("://") {
        return None;
    }
    let is_sep = |c: char| c.is_whitespace() || matches!(c, '"' | '\'');
    map_words(arg, is_sep, |word, _| mask_url(word))
}

/// `scheme://user:password@host` keeps the user and masks the password (a
/// lone user is a token: masked); secret query parameters keep their name.
fn mask_url(word: &str) -> Option<String> {
    let userinfo = mask_url_password(word);
    let text = userinfo.as_deref().unwrap_or(word);
    mask_query(text).or(userinfo)
}

fn mask_url_password(arg: &str) -> Option<String> {
    let scheme_end = arg.find("://")? + 3;
    let rest = &arg[scheme_end..];
    let at = rest.find('@')?;
    let userinfo = &rest[..at];
    if userinfo.contains(['/', '?', '#']) {
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

/// `?sig=…&access_token=…`: values of secret parameters; `?page=2` stays.
fn mask_query(url: &str) -> Option<String> {
    let (base, after) = url.split_once('?')?;
    let (query, fragment) = after.find('#').map_or((after, ""), |i| after.split_at(i));
    let mut changed = false;
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, value)) if !value.is_empty() && is_secret_param(name) => {
                changed = true;
                format!("{name}={MASK}")
            }
            _ => param.to_string(),
        })
        .collect();
    changed.then(|| format!("{base}?{}{fragment}", params.join("&")))
}

fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.contains(&name.to_ascii_lowercase().as_str()) || name_is_secret(name)
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

    /// Each form that leaked, and look-alikes that must stay as written.
    #[test]
    fn secret_forms_are_masked_and_look_alikes_kept() {
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["git", "clone", "https://ghp_abcdefghij@github.com/a/b"],
                &["git", "clone", "https://[REDACTED]@github.com/a/b"],
            ),
            (
                &[
                    "git",
                    "clone",
                    "https://x-access-token:ghs_abc@github.com/a/b",
                ],
                &[
                    "git",
                    "clone",
                    "https://x-access-token:[REDACTED]@github.com/a/b",
                ],
            ),
            (
                &["env", "npm_config__auth=c2VjcmV0", "npm", "ci"],
                &["env", "npm_config__auth=[REDACTED]", "npm", "ci"],
            ),
            (
                &["mysql", "-uroot", "-phunter2", "db"],
                &["mysql", "-uroot", "-p[REDACTED]", "db"],
            ),
            (
                &["/usr/bin/mysql", "-p", "db"],
                &["/usr/bin/mysql", "-p", "db"],
            ),
            (
                &["docker", "login", "-u", "me", "-p", "hunter2", "ghcr.io"],
                &["docker", "login", "-u", "me", "-p", "[REDACTED]", "ghcr.io"],
            ),
            (
                &["sshpass", "-p", "hunter2", "ssh", "h"],
                &["sshpass", "-p", "[REDACTED]", "ssh", "h"],
            ),
            (
                &["sshpass", "-phunter2", "ssh", "h"],
                &["sshpass", "-p[REDACTED]", "ssh", "h"],
            ),
            (
                &["zip", "-P", "hunter2", "a.zip", "f"],
                &["zip", "-P", "[REDACTED]", "a.zip", "f"],
            ),
            (
                &[
                    "openssl",
                    "enc",
                    "-aes-256-cbc",
                    "-k",
                    "hunter2",
                    "-in",
                    "f",
                ],
                &[
                    "openssl",
                    "enc",
                    "-aes-256-cbc",
                    "-k",
                    "[REDACTED]",
                    "-in",
                    "f",
                ],
            ),
            (
                &["curl", "-u", "me:hunter2", "u"],
                &["curl", "-u", "me:[REDACTED]", "u"],
            ),
            (
                &["curl", "--user", "me:hunter2", "u"],
                &["curl", "--user", "me:[REDACTED]", "u"],
            ),
            (
                &["curl", "--user=me:hunter2", "u"],
                &["curl", "--user=me:[REDACTED]", "u"],
            ),
            (
                &["curl", "-ume:hunter2", "u"],
                &["curl", "-ume:[REDACTED]", "u"],
            ),
            (
                &["curl", "--header=Authorization: Bearer abc", "u"],
                &["curl", "--header=Authorization: [REDACTED]", "u"],
            ),
            (
                &["curl", "-HAuthorization:Bearer abc", "u"],
                &["curl", "-HAuthorization: [REDACTED]", "u"],
            ),
            (
                &["curl", "-H", "X-Vault-Token: s.abc", "u"],
                &["curl", "-H", "X-Vault-Token: [REDACTED]", "u"],
            ),
            (
                &[
                    "curl",
                    "https://acct.blob.core.windows.net/c/f?sv=2022-11-02&sig=abc%3D&se=x",
                ],
                &[
                    "curl",
                    "https://acct.blob.core.windows.net/c/f?sv=2022-11-02&sig=[REDACTED]&se=x",
                ],
            ),
            (
                &[
                    "curl",
                    "https://api.example.com/v1?access_token=abc&page=2#top",
                ],
                &[
                    "curl",
                    "https://api.example.com/v1?access_token=[REDACTED]&page=2#top",
                ],
            ),
            (
                &[
                    "sh",
                    "-c",
                    "wget 'https://h/x?token=abc' && curl https://u:p@h/",
                ],
                &[
                    "sh",
                    "-c",
                    "wget 'https://h/x?token=[REDACTED]' && curl https://u:[REDACTED]@h/",
                ],
            ),
            (
                &["tool", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"],
                &["tool", "[REDACTED]"],
            ),
            (
                &[
                    "tool",
                    "ID_TOKEN_FILE=x",
                    "JWT=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
                ],
                &["tool", "ID_TOKEN_FILE=x", "JWT=[REDACTED]"],
            ),
            (
                &["gpg", "--batch", "--passphrase", "hunter2", "-d", "f"],
                &["gpg", "--batch", "--passphrase", "[REDACTED]", "-d", "f"],
            ),
            (
                &[
                    "git",
                    "-c",
                    "http.extraheader=AUTHORIZATION: basic eC1hY2Nlc3M=",
                    "fetch",
                ],
                &[
                    "git",
                    "-c",
                    "http.extraheader=AUTHORIZATION: [REDACTED]",
                    "fetch",
                ],
            ),
            (
                &["ssh-add", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbg==\n"],
                &["ssh-add", "[REDACTED]"],
            ),
            // Kept: the same letters mean something else, or nothing is secret.
            (
                &["gcc", "-O2", "-o", "main", "main.c"],
                &["gcc", "-O2", "-o", "main", "main.c"],
            ),
            (&["tar", "-xzf", "x.tgz"], &["tar", "-xzf", "x.tgz"]),
            (&["make", "-j4"], &["make", "-j4"]),
            (
                &["ssh", "-p", "2222", "host"],
                &["ssh", "-p", "2222", "host"],
            ),
            (
                &["scp", "-P", "2222", "a", "b"],
                &["scp", "-P", "2222", "a", "b"],
            ),
            (
                &["curl", "-k", "-u", "me", "u"],
                &["curl", "-k", "-u", "me", "u"],
            ),
            (
                &["curl", "-H", "Accept: json", "u"],
                &["curl", "-H", "Accept: json", "u"],
            ),
            (
                &["docker", "run", "-p", "8080:80", "img"],
                &["docker", "run", "-p", "8080:80", "img"],
            ),
            (
                &["docker", "run", "-u", "1000:1000", "img"],
                &["docker", "run", "-u", "1000:1000", "img"],
            ),
            (
                &["curl", "https://example.com/list?page=2&q=x"],
                &["curl", "https://example.com/list?page=2&q=x"],
            ),
            (
                &["gpg", "--passphrase-fd", "0", "-d", "f"],
                &["gpg", "--passphrase-fd", "0", "-d", "f"],
            ),
            (
                &["npm", "npm_config_registry=https://r.example/"],
                &["npm", "npm_config_registry=https://r.example/"],
            ),
            (
                &["git", "-c", "http.extraheader=Accept: json", "fetch"],
                &["git", "-c", "http.extraheader=Accept: json", "fetch"],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), *want, "{input:?}");
        }
    }

    #[test]
    fn the_command_line_is_masked_like_argv() {
        let argv = ["curl", "-u", "me:hunter2", "https://h/"].map(|a| a.as_bytes().to_vec());
        assert_eq!(
            command_line(CaptureArgs::Redacted, argv.to_vec()),
            "curl -u me:[REDACTED] https://h/"
        );
        assert_eq!(command_line(CaptureArgs::None, argv.to_vec()), "curl");
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
