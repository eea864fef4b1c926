//! [`Location`]: one object in (or one prefix of) an object store, by URL.

use crate::error::{EngineError, Result};
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use url::Url;

/// The URL schemes Kallista serves (see [`super::build_store`]).
const SCHEMES: [&str; 9] = ["file", "s3", "s3a", "gs", "az", "abfs", "abfss", "http", "https"];

/// A URL naming an object or a prefix ("directory"), without a trailing slash.
/// Plain paths become absolute `file://` URLs when parsed, so that every
/// process that receives one (scheduler, executors) reads the same place
/// whatever its own working directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Location {
    url: Url,
}

impl Location {
    /// A URL (`s3://bucket/key`, `file:///abs/path`, ...) or a local path,
    /// relative paths resolved against this process's working directory.
    pub fn parse(s: &str) -> Result<Location> {
        let invalid = |detail: String| EngineError::Invalid(format!("'{s}': {detail}"));
        if s.is_empty() {
            return Err(invalid("empty path".into()));
        }
        let url = match s.split_once("://") {
            Some((scheme, _)) => {
                let scheme = scheme.to_ascii_lowercase();
                if !SCHEMES.contains(&scheme.as_str()) {
                    return Err(invalid(format!("unsupported scheme '{scheme}' (use one of {})", SCHEMES.join(", "))));
                }
                let url = Url::parse(s).map_err(|e| invalid(e.to_string()))?;
                if scheme != "file" && url.host_str().is_none_or(str::is_empty) {
                    return Err(invalid("no bucket or host in the URL".into()));
                }
                url
            }
            None => {
                let abs = std::path::absolute(s).map_err(|e| invalid(e.to_string()))?;
                Url::from_file_path(&abs).map_err(|()| invalid("not a usable local path".into()))?
            }
        };
        Ok(Location::from_url(url))
    }

    /// A local path as a location.
    pub fn from_path(path: &std::path::Path) -> Result<Location> {
        Location::parse(&path.display().to_string())
    }

    fn from_url(mut url: Url) -> Location {
        let trimmed = url.path().trim_end_matches('/').to_string();
        if !trimmed.is_empty() || url.scheme() != "file" {
            url.set_path(&trimmed);
        }
        Location { url }
    }

    /// `self/rel`, `rel` being `/`-separated names.
    pub fn join(&self, rel: &str) -> Location {
        let mut url = self.url.clone();
        {
            let mut segments = url.path_segments_mut().expect("store URLs have a path");
            segments.pop_if_empty();
            segments.extend(rel.split('/').filter(|s| !s.is_empty()));
        }
        Location::from_url(url)
    }

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The URL with a trailing slash: how SQL names a prefix of Parquet files.
    pub fn dir_url(&self) -> String {
        format!("{}/", self.as_str().trim_end_matches('/'))
    }

    /// The key inside its store.
    pub fn object_path(&self) -> ObjectPath {
        ObjectPath::from_url_path(self.url.path()).unwrap_or_else(|_| ObjectPath::from(self.url.path()))
    }

    /// The local path of a `file://` location.
    pub fn local_path(&self) -> Option<PathBuf> {
        (self.url.scheme() == "file").then(|| self.url.to_file_path().ok()).flatten()
    }

    /// The last name of the path.
    pub fn file_name(&self) -> &str {
        self.url.path_segments().and_then(|mut s| s.next_back()).unwrap_or("")
    }

    /// The location one name up (itself at a store's root).
    pub fn parent(&self) -> Location {
        let mut url = self.url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().pop();
        }
        Location::from_url(url)
    }

    /// Whether this is `prefix` or an object below it, on the same store
    /// (whole path segments: `weights-old` is not under `weights`).
    pub fn is_under(&self, prefix: &Location) -> bool {
        self.same_store(prefix) && self.object_path().prefix_matches(&prefix.object_path())
    }

    /// Whether both are in one store (scheme, bucket or host).
    pub fn same_store(&self, other: &Location) -> bool {
        self.url[..url::Position::BeforePath] == other.url[..url::Position::BeforePath]
    }

    /// The location `key` names inside this location's store (the same scheme
    /// and bucket), as listings return them.
    pub fn sibling(&self, key: &ObjectPath) -> Location {
        let mut url = self.url.clone();
        url.set_path(&format!("/{key}"));
        Location::from_url(url)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.local_path() {
            Some(p) => write!(f, "{}", p.display()),
            None => f.write_str(self.as_str()),
        }
    }
}

impl TryFrom<String> for Location {
    type Error = EngineError;
    fn try_from(s: String) -> Result<Location> {
        Location::parse(&s)
    }
}

impl From<Location> for String {
    fn from(l: Location) -> String {
        l.url.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_become_absolute_file_urls() {
        let here = std::env::current_dir().unwrap();
        let l = Location::parse("target/jobs/x/").unwrap();
        assert_eq!(l.local_path().unwrap(), here.join("target/jobs/x"));
        assert!(l.as_str().starts_with("file:///"), "{l:?}");
        assert_eq!(
            l.join("weights/step-3.safetensors").local_path().unwrap(),
            here.join("target/jobs/x/weights/step-3.safetensors")
        );
    }

    #[test]
    fn object_urls_keep_bucket_and_key() {
        let l = Location::parse("s3://bucket/a/b/").unwrap();
        assert_eq!(l.as_str(), "s3://bucket/a/b");
        assert_eq!(l.dir_url(), "s3://bucket/a/b/");
        assert_eq!(l.join("shard=0/x.parquet").object_path().as_ref(), "a/b/shard=0/x.parquet");
        assert_eq!(l.join("c").file_name(), "c");
        assert_eq!(Location::parse("s3://bucket").unwrap().join("k").as_str(), "s3://bucket/k");
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(serde_json::from_str::<Location>(&json).unwrap(), l);
    }

    #[test]
    fn under_means_the_same_store_and_whole_segments() {
        let weights = Location::parse("s3://bucket/job/weights").unwrap();
        assert!(weights.join("step-3.safetensors").is_under(&weights));
        assert!(!Location::parse("s3://bucket/job/weights-old/x").unwrap().is_under(&weights));
        assert!(!Location::parse("s3://other/job/weights/x").unwrap().is_under(&weights));
        assert!(!Location::parse("gs://bucket/job/weights/x").unwrap().is_under(&weights));
    }

    #[test]
    fn unknown_schemes_and_missing_buckets_are_refused() {
        assert!(Location::parse("hdfs://nn/x").unwrap_err().to_string().contains("unsupported scheme 'hdfs'"));
        assert!(Location::parse("s3:///key").unwrap_err().to_string().contains("no bucket"));
        assert!(Location::parse("").is_err());
    }
}
