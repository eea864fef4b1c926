//! [`KallistaStores`]: the object-store registry of every Kallista process.

use crate::error::{EngineError, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::client::SpawnedReqwestConnector;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::http::HttpBuilder;
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, RwLock};
use url::Url;

/// Stores by `scheme://authority`, each built on first use from this host's
/// environment ([`build_store`]). DataFusion asks it for the store of every
/// table URL it plans or scans; Kallista's own reads and writes use it too.
#[derive(Debug, Default)]
pub struct KallistaStores {
    stores: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
}

/// What tells stores apart: scheme, user info (Azure's container) and authority.
fn store_key(url: &Url) -> String {
    url[..url::Position::BeforePath].to_string()
}

impl KallistaStores {
    /// The store serving `url`, built on first use.
    pub fn store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let key = store_key(url);
        if let Some(s) = self.stores.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(s.clone());
        }
        let built = build_store(url)?;
        let mut stores = self.stores.write().unwrap_or_else(|e| e.into_inner());
        Ok(stores.entry(key).or_insert(built).clone())
    }
}

impl ObjectStoreRegistry for KallistaStores {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.stores.write().unwrap_or_else(|e| e.into_inner()).insert(store_key(url), store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        let removed = self.stores.write().unwrap_or_else(|e| e.into_inner()).remove(&store_key(url));
        removed.ok_or_else(|| datafusion::error::DataFusionError::Plan(format!("no object store for {url}")))
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.store(url).map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
    }
}

/// This process's registry: one for client, scheduler and executors alike
/// (and shared by them when they run in one process, the embedded cluster).
pub fn object_stores() -> Arc<KallistaStores> {
    static STORES: LazyLock<Arc<KallistaStores>> = LazyLock::new(Default::default);
    STORES.clone()
}

/// A DataFusion runtime whose object stores come from [`object_stores`];
/// `temp_dir` is where spills go (an executor's work dir).
pub fn runtime_env(temp_dir: Option<&str>) -> datafusion::error::Result<Arc<RuntimeEnv>> {
    let mut builder = RuntimeEnvBuilder::new().with_object_store_registry(object_stores());
    if let Some(dir) = temp_dir {
        builder = builder.with_temp_file_path(dir);
    }
    Ok(Arc::new(builder.build()?))
}

/// Builds the store of `url` from this host's environment:
/// - `file://`: the local file system;
/// - `s3://`, `s3a://`: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
///   `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT`
///   (an S3-compatible server; path-style requests unless
///   `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`; plain `http://` endpoints are
///   allowed), or the host's role;
/// - `gs://`: `GOOGLE_SERVICE_ACCOUNT` and friends; `az://`, `abfs(s)://`:
///   `AZURE_STORAGE_ACCOUNT_NAME` and friends;
/// - `http(s)://`: read-only plain HTTP (WebDAV servers also take writes).
///
/// Network stores read immutable objects through the executor's cache
/// ([`super::cache`]) and do their I/O on Kallista's storage runtime
/// ([`super::blocking`]), whichever runtime asks: a connection is never left
/// waiting on a runtime whose threads are all busy with training.
pub fn build_store(url: &Url) -> Result<Arc<dyn ObjectStore>> {
    let io = || super::blocking::io_handle().map(SpawnedReqwestConnector::new);
    let failed = |e: object_store::Error| EngineError::Invalid(format!("object store for {url}: {e}"));
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "file" => Arc::new(LocalFileSystem::new()),
        "s3" | "s3a" => {
            let mut b = AmazonS3Builder::from_env().with_url(url.as_str()).with_http_connector(io()?);
            if std::env::var("AWS_ENDPOINT")
                .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                .is_ok_and(|e| e.starts_with("http://"))
            {
                b = b.with_allow_http(true);
            }
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
                b = b.with_region("us-east-1");
            }
            Arc::new(b.build().map_err(failed)?)
        }
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .with_http_connector(io()?)
                .build()
                .map_err(failed)?,
        ),
        "az" | "abfs" | "abfss" | "azure" => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .with_http_connector(io()?)
                .build()
                .map_err(failed)?,
        ),
        "http" | "https" => {
            let base = &url[..url::Position::AfterPort];
            Arc::new(HttpBuilder::new().with_url(base).with_http_connector(io()?).build().map_err(failed)?)
        }
        other => return Err(EngineError::Invalid(format!("{url}: no object store for scheme '{other}'"))),
    };
    Ok(match url.scheme() {
        "file" => store,
        _ => Arc::new(super::cache::CachedStore::new(store, store_key(url))),
    })
}
