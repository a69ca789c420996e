//! The `[output]` section and the object_store client it names.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreScheme};
use serde::Deserialize;

use super::{classify_io, HyperConnector, OutputError, TraceStore};

/// The `[output]` section of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Local directory of sealed trace directories. Under systemd the unit's
    /// `StateDirectory=` gives `$STATE_DIRECTORY`; `traces/` below it is the default.
    pub dir: Option<PathBuf>,
    /// Object store for the fleet: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix`, or `file:///shared/dir`.
    pub url: Option<String>,
    /// Builder options of that store (`aws_endpoint`, `aws_region`,
    /// `aws_allow_http`, `google_service_account`, `azure_storage_account_name`,
    /// …). Credentials are better left to the environment (`AWS_*`,
    /// `GOOGLE_*`, `AZURE_*`), which is read too.
    pub options: BTreeMap<String, String>,
    /// Keep the local copy once uploaded.
    pub keep_local: bool,
    /// Retries of a failed request (object_store's default: 10).
    pub max_retries: Option<usize>,
    /// Give up retrying a request after this long (default 3 min), e.g. "30s".
    pub retry_timeout: Option<String>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            dir: None,
            url: None,
            options: BTreeMap::new(),
            keep_local: true,
            max_retries: None,
            retry_timeout: None,
        }
    }
}

impl TraceStore {
    /// The store `output.url` names, or `None` when it is not set.
    pub fn from_config(config: &OutputConfig) -> Result<Option<Self>, OutputError> {
        let Some(url) = config.url.as_deref() else {
            return Ok(None);
        };
        let bad = |reason: String| OutputError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| bad(e.to_string()))?;
        let opts = &config.options;
        let mut retry = object_store::RetryConfig::default();
        if let Some(n) = config.max_retries {
            retry.max_retries = n;
        }
        if let Some(t) = &config.retry_timeout {
            retry.retry_timeout =
                humantime::parse_duration(t).map_err(|e| OutputError::BadOption {
                    store: "output",
                    key: format!("retry_timeout = {t:?} ({e})"),
                })?;
        }
        // The three cloud builders share no trait, but take the same steps.
        macro_rules! cloud_store {
            ($builder:path, $name:literal) => {{
                let mut b = <$builder>::from_env().with_url(url);
                for (k, v) in opts {
                    let key = k.parse().map_err(|_| OutputError::BadOption {
                        store: $name,
                        key: k.clone(),
                    })?;
                    b = b.with_config(key, v);
                }
                Arc::new(
                    b.with_retry(retry.clone())
                        .with_http_connector(HyperConnector)
                        .build()
                        .map_err(|e| bad(e.to_string()))?,
                )
            }};
        }
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::AmazonS3 => {
                cloud_store!(object_store::aws::AmazonS3Builder, "s3")
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                cloud_store!(object_store::gcp::GoogleCloudStorageBuilder, "gcs")
            }
            ObjectStoreScheme::MicrosoftAzure => {
                cloud_store!(object_store::azure::MicrosoftAzureBuilder, "azure")
            }
            ObjectStoreScheme::Local => {
                if let Some(k) = opts.keys().next() {
                    return Err(OutputError::BadOption {
                        store: "file",
                        key: k.clone(),
                    });
                }
                let dir = PathBuf::from(parsed.path());
                std::fs::create_dir_all(&dir).map_err(|e| classify_io(&dir, e))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| bad(e.to_string()))?;
                return Ok(Some(Self::new(
                    Arc::new(fs),
                    StorePath::default(),
                    url.to_string(),
                )));
            }
            other => {
                return Err(bad(format!(
                    "{other:?} is not a supported trace store; use s3://, gs://, az:// or file://"
                )))
            }
        };
        Ok(Some(Self::new(store, prefix, url.to_string())))
    }
}
