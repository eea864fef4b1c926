//! An executor's local copy of objects that never change.
//!
//! Staged splits are written once, under a version directory whose name
//! starts with [`IMMUTABLE_PREFIX`], and every round reads them again. On a
//! network store each round would fetch the same bytes again, one request per
//! row group (and a server that hashes the whole object per request, like
//! `s3s-fs`, pays the object's size for each). [`CachedStore`] wraps every
//! network store: the first read of an immutable object downloads it whole
//! into the executor's work dir; every later read of it, ranged or not, is
//! served from there. Other objects, and every write, pass straight through.
//!
//! The cache is off until [`install`] (an executor's start) and bounded:
//! past its size, the least recently used objects go first.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::OnceCell;

/// Objects below a path segment starting with this are written once and
/// never changed (Kallista names its staged versions so).
pub const IMMUTABLE_PREFIX: &str = "immutable-";

/// Whether `path` names a write-once object.
pub fn is_immutable(path: &Path) -> bool {
    path.parts().any(|p| p.as_ref().starts_with(IMMUTABLE_PREFIX))
}

/// A downloaded object: its local file and the store's metadata.
#[derive(Clone, Debug)]
struct Entry {
    file: PathBuf,
    meta: ObjectMeta,
}

/// One object's place in the cache; `None` once known to be too large to keep.
#[derive(Debug, Default)]
struct Slot {
    entry: OnceCell<Option<Entry>>,
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<String, (Arc<Slot>, u64)>,
    clock: u64,
    bytes: u64,
}

/// This process's cache of immutable objects.
#[derive(Debug)]
pub struct ObjectCache {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

static CACHE: OnceLock<ObjectCache> = OnceLock::new();

/// Turns the cache on, in `dir` (emptied first: a new process trusts nothing
/// left by an earlier one), holding at most `max_bytes`. The first call wins.
pub fn install(dir: PathBuf, max_bytes: u64) -> std::io::Result<()> {
    if CACHE.get().is_some() || max_bytes == 0 {
        return Ok(());
    }
    let _ = CACHE.set(ObjectCache::new(dir, max_bytes)?);
    Ok(())
}

impl ObjectCache {
    /// A cache in `dir`, emptied first, holding at most `max_bytes`.
    fn new(dir: PathBuf, max_bytes: u64) -> std::io::Result<ObjectCache> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(ObjectCache { dir, max_bytes, state: Mutex::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The local copy of `location`, downloading it on first use; `None` when
    /// the object is larger than the whole cache.
    async fn entry(&self, key: String, inner: &dyn ObjectStore, location: &Path) -> Result<Option<Entry>> {
        let (slot, n) = {
            let mut state = self.lock();
            state.clock += 1;
            let now = state.clock;
            let (slot, used) = state.slots.entry(key.clone()).or_insert_with(|| (Arc::default(), now));
            *used = now;
            (slot.clone(), now)
        };
        let file = self.dir.join(format!("object-{n}"));
        let entry = slot.entry.get_or_try_init(|| self.download(inner, location, file)).await?.clone();
        if entry.is_some() {
            self.evict_others(&key);
        }
        Ok(entry)
    }

    async fn download(&self, inner: &dyn ObjectStore, location: &Path, file: PathBuf) -> Result<Option<Entry>> {
        let got = inner.get_opts(location, GetOptions::default()).await?;
        let meta = got.meta.clone();
        if meta.size > self.max_bytes {
            return Ok(None);
        }
        let partial = file.with_extension("part");
        let written = async {
            let local = |e: std::io::Error| object_store::Error::Generic { store: "object cache", source: Box::new(e) };
            let mut out = std::fs::File::create(&partial).map_err(local)?;
            let mut body = got.into_stream();
            while let Some(chunk) = body.next().await {
                out.write_all(&chunk?).map_err(local)?;
            }
            drop(out);
            std::fs::rename(&partial, &file).map_err(local)
        };
        if let Err(e) = written.await {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        self.lock().bytes += meta.size;
        Ok(Some(Entry { file, meta }))
    }

    /// The local copy of `key` if it is already here.
    fn peek(&self, key: &str) -> Option<Entry> {
        let state = self.lock();
        state.slots.get(key).and_then(|(slot, _)| slot.entry.get().cloned().flatten())
    }

    /// Evicts the least recently used objects but `key` while over the limit.
    fn evict_others(&self, key: &str) {
        let mut state = self.lock();
        while state.bytes > self.max_bytes {
            let oldest = state
                .slots
                .iter()
                .filter(|(k, (slot, _))| k.as_str() != key && matches!(slot.entry.get(), Some(Some(_))))
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            let Some(oldest) = oldest else { break };
            if let Some((slot, _)) = state.slots.remove(&oldest) {
                if let Some(Some(e)) = slot.entry.get() {
                    state.bytes -= e.meta.size;
                    let _ = std::fs::remove_file(&e.file);
                }
            }
        }
    }
}

/// Bytes `range` of a cached object's file.
fn read_local(entry: &Entry, range: Range<u64>) -> std::io::Result<Bytes> {
    let mut file = std::fs::File::open(&entry.file)?;
    file.seek(SeekFrom::Start(range.start))?;
    let mut buf = vec![0; (range.end - range.start) as usize];
    file.read_exact(&mut buf)?;
    Ok(buf.into())
}

/// A network store whose immutable objects are read through this process's [`ObjectCache`].
#[derive(Debug)]
pub struct CachedStore {
    inner: Arc<dyn ObjectStore>,
    /// What names this store among the cache's objects (`scheme://authority`).
    key: String,
    /// A cache of its own (tests, beside whatever executor this process
    /// runs); `None`: the process's, once installed.
    own: Option<&'static ObjectCache>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, key: String) -> CachedStore {
        CachedStore { inner, key, own: None }
    }

    /// The cached copy of `location` when the cache is on, the object is
    /// immutable and `options` ask for nothing but a range.
    async fn cached(&self, location: &Path, options: &GetOptions) -> Result<Option<Entry>> {
        let plain = options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none();
        let key = format!("{}/{location}", self.key);
        match self.own.or_else(|| CACHE.get()) {
            // Metadata alone is not worth a download.
            Some(cache) if plain && options.head => Ok(cache.peek(&key)),
            Some(cache) if plain && is_immutable(location) => cache.entry(key, self.inner.as_ref(), location).await,
            _ => Ok(None),
        }
    }
}

impl std::fmt::Display for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cached({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CachedStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let Some(entry) = self.cached(location, &options).await? else {
            return self.inner.get_opts(location, options).await;
        };
        let size = entry.meta.size;
        let range = match &options.range {
            Some(r) => r
                .as_range(size)
                .map_err(|e| object_store::Error::Generic { store: "object cache", source: Box::new(e) })?,
            None => 0..size,
        };
        let bytes = match options.head {
            true => Bytes::new(),
            false => match read_local(&entry, range.clone()) {
                Ok(b) => b,
                // Evicted meanwhile: the store still has it.
                Err(_) => return self.inner.get_opts(location, options).await,
            },
        };
        let payload = GetResultPayload::Stream(futures::stream::once(async move { Ok(bytes) }).boxed());
        Ok(GetResult { payload, meta: entry.meta, range, attributes: Default::default() })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if let Some(entry) = self.cached(location, &GetOptions::default()).await? {
            if let Ok(all) = ranges.iter().map(|r| read_local(&entry, r.clone())).collect() {
                return Ok(all);
            }
        }
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn immutable_objects_are_read_from_the_local_copy_and_others_from_the_store() {
        let root = std::env::temp_dir().join(crate::cluster::owned_dir_name("kallista-cache-test"));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("store")).unwrap();
        // Its own cache: an embedded executor of another test may have installed the process's.
        let cache = Box::leak(Box::new(ObjectCache::new(root.join("cache"), 1 << 20).unwrap()));
        let inner: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(root.join("store")).unwrap());
        let store = CachedStore { own: Some(cache), ..CachedStore::new(inner.clone(), "test://".into()) };
        let frozen = Path::from("data/train/immutable-v1/part-0.parquet");
        let mutable = Path::from("data/train/layout.json");
        for p in [&frozen, &mutable] {
            inner.put(p, PutPayload::from_static(b"0123456789")).await.unwrap();
        }
        assert_eq!(store.get_range(&frozen, 2..5).await.unwrap().as_ref(), b"234");
        assert_eq!(store.get_range(&mutable, 2..5).await.unwrap().as_ref(), b"234");
        // Changed behind the cache's back: the immutable object's reads still
        // come from the first download, the other object's from the store.
        for p in [&frozen, &mutable] {
            inner.put(p, PutPayload::from_static(b"abcdefghij")).await.unwrap();
        }
        assert_eq!(store.get_ranges(&frozen, &[0..2, 8..10]).await.unwrap(), vec![&b"01"[..], &b"89"[..]]);
        assert_eq!(store.get(&frozen).await.unwrap().bytes().await.unwrap().as_ref(), b"0123456789");
        assert_eq!(store.head(&frozen).await.unwrap().size, 10);
        assert_eq!(store.get_range(&mutable, 2..5).await.unwrap().as_ref(), b"cde");
        assert!(store.get_range(&frozen, 12..14).await.is_err());
        // A HEAD alone downloads nothing: the first read after it sees the store.
        let unread = Path::from("data/train/immutable-v1/part-1.parquet");
        inner.put(&unread, PutPayload::from_static(b"0123456789")).await.unwrap();
        assert_eq!(store.head(&unread).await.unwrap().size, 10);
        inner.put(&unread, PutPayload::from_static(b"abcdefghij")).await.unwrap();
        assert_eq!(store.get_range(&unread, 0..2).await.unwrap().as_ref(), b"ab");
        // Past the cache's 1 MiB, the least recently read object goes.
        let (big1, big2) =
            (Path::from("data/train/immutable-v2/big-1.parquet"), Path::from("data/train/immutable-v2/big-2.parquet"));
        for p in [&big1, &big2] {
            inner.put(p, PutPayload::from(vec![1u8; 600 << 10])).await.unwrap();
            assert_eq!(store.get_range(p, 0..1).await.unwrap().as_ref(), [1]);
        }
        for p in [&big1, &big2] {
            inner.put(p, PutPayload::from(vec![2u8; 600 << 10])).await.unwrap();
        }
        assert_eq!(store.get_range(&big2, 0..1).await.unwrap().as_ref(), [1], "the newest stays");
        assert_eq!(store.get_range(&big1, 0..1).await.unwrap().as_ref(), [2], "the oldest was evicted");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
