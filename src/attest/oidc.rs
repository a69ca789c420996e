//! The CI's OIDC identity token for keyless signing (audience `sigstore`):
//! GitLab and cosign put it in `SIGSTORE_ID_TOKEN`; GitHub Actions serves it
//! from `ACTIONS_ID_TOKEN_REQUEST_URL` to a bearer of `ACTIONS_ID_TOKEN_REQUEST_TOKEN`
//! (job permission `id-token: write`). Tokens are never logged.

use sigstore_sign::oidc::IdentityToken;
use sigstore_sign::reqwest;

use super::retry::Retry;

pub const AUDIENCE: &str = "sigstore";

/// The environment variables that can provide a token, read once.
#[derive(Clone, Default)]
pub struct AmbientEnv {
    pub sigstore_id_token: Option<String>,
    pub github_request_url: Option<String>,
    pub github_request_token: Option<String>,
}

impl std::fmt::Debug for AmbientEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmbientEnv")
            .field(
                "sigstore_id_token",
                &self.sigstore_id_token.as_ref().map(|_| "<set>"),
            )
            .field("github_request_url", &self.github_request_url)
            .field(
                "github_request_token",
                &self.github_request_token.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

impl AmbientEnv {
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Self {
            sigstore_id_token: var("SIGSTORE_ID_TOKEN"),
            github_request_url: var("ACTIONS_ID_TOKEN_REQUEST_URL"),
            github_request_token: var("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error(
        "no OIDC token available: on GitHub Actions grant `permissions: id-token: write`; \
         on GitLab add `id_tokens: SIGSTORE_ID_TOKEN: aud: sigstore`"
    )]
    NoToken,
    #[error("ACTIONS_ID_TOKEN_REQUEST_URL is set but ACTIONS_ID_TOKEN_REQUEST_TOKEN is not")]
    GithubTokenMissing,
    #[error("ACTIONS_ID_TOKEN_REQUEST_URL is not a URL: {0}")]
    BadUrl(String),
    #[error("GitHub OIDC token request failed after {tries} tries: {message}")]
    Request { tries: u32, message: String },
    #[error("GitHub OIDC token endpoint answered HTTP {status} after {tries} tries: {body}")]
    Status {
        status: u16,
        tries: u32,
        body: String,
    },
    #[error("GitHub OIDC token endpoint answered without a token (`value`): {0}")]
    BadResponse(String),
    #[error("the {source_name} token is not a JWT: {message}")]
    BadJwt {
        source_name: &'static str,
        message: String,
    },
    #[error("the {source_name} token expired at {expired}")]
    Expired {
        source_name: &'static str,
        expired: String,
    },
}

/// A token and where it came from.
pub struct Token {
    pub token: IdentityToken,
    pub source_name: &'static str,
}

/// `SIGSTORE_ID_TOKEN` first (explicit wins), then the GitHub Actions endpoint.
pub async fn fetch(
    env: &AmbientEnv,
    http: &reqwest::Client,
    retry: &Retry,
) -> Result<Token, OidcError> {
    if let Some(jwt) = &env.sigstore_id_token {
        return parse("SIGSTORE_ID_TOKEN", jwt);
    }
    let Some(url) = &env.github_request_url else {
        return Err(OidcError::NoToken);
    };
    let bearer = env
        .github_request_token
        .as_deref()
        .ok_or(OidcError::GithubTokenMissing)?;
    let jwt = github(url, bearer, http, retry).await?;
    parse("GitHub Actions", &jwt)
}

fn parse(source_name: &'static str, jwt: &str) -> Result<Token, OidcError> {
    let token = IdentityToken::from_jwt(jwt.trim()).map_err(|e| OidcError::BadJwt {
        source_name,
        message: e.to_string(),
    })?;
    if token.is_expired() {
        return Err(OidcError::Expired {
            source_name,
            expired: token.expiration().to_string(),
        });
    }
    Ok(Token { token, source_name })
}

enum Attempt {
    Network(String),
    Status(u16, String),
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attempt::Network(m) => f.write_str(m),
            Attempt::Status(s, _) => write!(f, "HTTP {s}"),
        }
    }
}

/// `GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=sigstore` with the bearer token; the JWT is `.value`.
async fn github(
    url: &str,
    bearer: &str,
    http: &reqwest::Client,
    retry: &Retry,
) -> Result<String, OidcError> {
    let mut url = reqwest::Url::parse(url).map_err(|e| OidcError::BadUrl(e.to_string()))?;
    url.query_pairs_mut().append_pair("audience", AUDIENCE);
    let transient = |e: &Attempt| match e {
        Attempt::Network(_) => true,
        Attempt::Status(s, _) => *s == 429 || *s >= 500,
    };
    let body = retry
        .run("GitHub OIDC token request", transient, || async {
            let response = http
                .get(url.clone())
                .bearer_auth(bearer)
                .header("Accept", "application/json; api-version=2.0")
                .send()
                .await
                .map_err(|e| Attempt::Network(e.to_string()))?;
            let status = response.status().as_u16();
            let body = response
                .bytes()
                .await
                .map_err(|e| Attempt::Network(e.to_string()))?;
            if !(200..300).contains(&status) {
                return Err(Attempt::Status(
                    status,
                    String::from_utf8_lossy(&body).chars().take(300).collect(),
                ));
            }
            Ok(body)
        })
        .await
        .map_err(|(e, tries)| match e {
            Attempt::Network(message) => OidcError::Request { tries, message },
            Attempt::Status(status, body) => OidcError::Status {
                status,
                tries,
                body,
            },
        })?;
    #[derive(serde::Deserialize)]
    struct Response {
        value: Option<String>,
    }
    let parsed: Response =
        serde_json::from_slice(&body).map_err(|e| OidcError::BadResponse(e.to_string()))?;
    parsed
        .value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| OidcError::BadResponse("no `value` field".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn jwt(claims: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.{}",
            e(r#"{"alg":"RS256","typ":"JWT"}"#),
            e(claims),
            e("sig")
        )
    }

    #[tokio::test]
    async fn explicit_token_wins_and_is_checked() {
        let http = reqwest::Client::new();
        let retry = Retry::default();
        let far = 4_102_444_800u64; // 2100-01-01
        let env = AmbientEnv {
            sigstore_id_token: Some(jwt(&format!(
                r#"{{"iss":"https://gitlab.com","sub":"project_path:a/b","aud":"sigstore","exp":{far}}}"#
            ))),
            github_request_url: Some("http://127.0.0.1:9/never".into()),
            github_request_token: Some("t".into()),
        };
        let t = fetch(&env, &http, &retry).await.unwrap();
        assert_eq!(t.source_name, "SIGSTORE_ID_TOKEN");
        assert_eq!(t.token.subject(), "project_path:a/b");

        let expired = AmbientEnv {
            sigstore_id_token: Some(jwt(r#"{"iss":"i","sub":"s","exp":1}"#)),
            ..Default::default()
        };
        assert!(matches!(
            fetch(&expired, &http, &retry).await,
            Err(OidcError::Expired { .. })
        ));
        let junk = AmbientEnv {
            sigstore_id_token: Some("not-a-jwt".into()),
            ..Default::default()
        };
        assert!(matches!(
            fetch(&junk, &http, &retry).await,
            Err(OidcError::BadJwt { .. })
        ));
        assert!(matches!(
            fetch(&AmbientEnv::default(), &http, &retry).await,
            Err(OidcError::NoToken)
        ));
        let half = AmbientEnv {
            github_request_url: Some("http://127.0.0.1:9/x".into()),
            ..Default::default()
        };
        assert!(matches!(
            fetch(&half, &http, &retry).await,
            Err(OidcError::GithubTokenMissing)
        ));
    }

    #[test]
    fn debug_never_shows_tokens() {
        let env = AmbientEnv {
            sigstore_id_token: Some("secret-jwt".into()),
            github_request_token: Some("secret-bearer".into()),
            ..Default::default()
        };
        let shown = format!("{env:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}
