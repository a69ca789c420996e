//! object_store's own HTTP stack (reqwest) would bring aws-lc-sys and a second
//! TLS provider; its `*-base` features take a connector instead, and
//! [`HyperConnector`] is one over hyper-util + hyper-rustls (ring, the
//! system's CA roots), the stack kube already uses.

use std::time::Duration;

use http_body_util::BodyExt;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody,
    HttpResponse, HttpResponseBody, HttpService,
};
use object_store::{ClientConfigKey, ClientOptions};

/// object_store's HTTP through hyper-util + hyper-rustls (ring).
#[derive(Debug, Clone, Copy, Default)]
pub struct HyperConnector;

type HyperClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    HttpRequestBody,
>;

#[derive(Debug)]
struct HyperService {
    client: HyperClient,
    timeout: Duration,
}

impl HttpConnector for HyperConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let generic = |e: String| object_store::Error::Generic {
            store: "http",
            source: e.into(),
        };
        let allow_http = options
            .get_config_value(&ClientConfigKey::AllowHttp)
            .is_some_and(|v| v == "true");
        let timeout = options
            .get_config_value(&ClientConfigKey::Timeout)
            .and_then(|t| humantime::parse_duration(&t).ok())
            .unwrap_or(Duration::from_secs(60));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| generic(format!("TLS setup (system CA roots): {e}")))?;
        // Plain http only where the config allows it (a local S3 endpoint).
        let builder = if allow_http {
            builder.https_or_http()
        } else {
            builder.https_only()
        };
        let connector = builder.enable_http1().build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(HttpClient::new(HyperService { client, timeout }))
    }
}

#[async_trait::async_trait]
impl HttpService for HyperService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let response = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(elapsed) => return Err(HttpError::new(HttpErrorKind::Timeout, elapsed)),
            Ok(Err(e)) => {
                let kind = if e.is_connect() {
                    HttpErrorKind::Connect
                } else {
                    HttpErrorKind::Request
                };
                return Err(HttpError::new(kind, e));
            }
            Ok(Ok(r)) => r,
        };
        let (parts, body) = response.into_parts();
        let body = body.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e));
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}
