//! Whole-object reads and writes from synchronous code: the training
//! operators run on executor threads, outside any async context of their
//! own. Each call runs on a small runtime of its own, so it works on any
//! thread, a tokio worker of Ballista's included.

use super::{object_stores, Location};
use crate::error::{EngineError, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::future::Future;
use std::sync::{Arc, LazyLock};

static IO: LazyLock<Option<tokio::runtime::Runtime>> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("kallista-io").enable_all().build().ok()
});

/// The storage runtime, where network stores do their I/O ([`super::build_store`]).
pub(super) fn io_handle() -> Result<tokio::runtime::Handle> {
    IO.as_ref()
        .map(|rt| rt.handle().clone())
        .ok_or_else(|| EngineError::Invalid("could not start the storage I/O runtime".into()))
}

/// Runs `f` on the I/O runtime and waits for it on this thread.
fn wait<T: Send + 'static>(f: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    let rt = IO.as_ref().ok_or_else(|| EngineError::Invalid("could not start the storage I/O runtime".into()))?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().map_err(|_| EngineError::Invalid("a storage I/O task stopped without an answer".into()))?
}

fn store_of(at: &Location) -> Result<Arc<dyn ObjectStore>> {
    object_stores().store(at.url())
}

fn failed(at: &Location) -> impl Fn(object_store::Error) -> EngineError + '_ {
    move |e| EngineError::Store { url: at.to_string(), detail: e.to_string() }
}

/// The whole object.
pub fn read(at: &Location) -> Result<Bytes> {
    let (store, path, at2) = (store_of(at)?, at.object_path(), at.clone());
    wait(async move { store.get(&path).await.map_err(failed(&at2))?.bytes().await.map_err(failed(&at2)) })
}

/// Bytes `range` of the object.
pub fn read_range(at: &Location, range: std::ops::Range<u64>) -> Result<Bytes> {
    let (store, path, at2) = (store_of(at)?, at.object_path(), at.clone());
    wait(async move { store.get_range(&path, range).await.map_err(failed(&at2)) })
}

/// The footer metadata of a Parquet object of `size` bytes, read with one
/// or two ranged reads (never the whole object).
pub fn parquet_metadata(at: &Location, size: u64) -> Result<parquet::file::metadata::ParquetMetaData> {
    use parquet::errors::ParquetError;
    use parquet::file::metadata::ParquetMetaDataReader;
    let bad = |e: ParquetError| EngineError::Corrupt { path: at.to_string(), detail: format!("parquet footer: {e}") };
    let mut want = size.min(64 * 1024);
    loop {
        let suffix = read_range(at, size - want..size)?;
        let mut reader = ParquetMetaDataReader::new();
        match reader.try_parse_sized(&suffix, size) {
            Ok(()) => return reader.finish().map_err(bad),
            Err(ParquetError::NeedMoreData(n)) if (n as u64) > want && (n as u64) <= size => want = n as u64,
            Err(e) => return Err(bad(e)),
        }
    }
}

/// The whole object as UTF-8 text.
pub fn read_string(at: &Location) -> Result<String> {
    let bytes = read(at)?;
    String::from_utf8(bytes.to_vec())
        .map_err(|e| EngineError::Corrupt { path: at.to_string(), detail: format!("not UTF-8: {e}") })
}

/// Writes the whole object in one put: readers see the old object or the
/// new one, never a part. Local files get an fsync before their rename
/// (checkpoints must survive a crash); object stores acknowledge a put once
/// it is stored.
pub fn write(at: &Location, bytes: impl Into<Bytes>) -> Result<()> {
    let bytes: Bytes = bytes.into();
    if let Some(path) = local_with_parent(at)? {
        return Ok(kallista_ops::model::write_atomic(&path, &bytes)?);
    }
    put(at, bytes)
}

/// A copy of the object `from` at `at`, atomic, without its bytes passing
/// through this process: a hard link between local files (no object is
/// changed in place: every write replaces its file), a copy inside the store
/// elsewhere (S3's CopyObject). Another file system or store: read and written.
pub fn copy(from: &Location, at: &Location) -> Result<()> {
    if !from.same_store(at) {
        return write(at, read(from)?);
    }
    if let (Some(source), Some(path)) = (from.local_path(), local_with_parent(at)?) {
        return match kallista_ops::model::replace_file(&path, true, |tmp| std::fs::hard_link(&source, tmp)) {
            Ok(()) => Ok(()),
            Err(_) => write(at, read(from)?),
        };
    }
    let (store, source, path, at2) = (store_of(at)?, from.object_path(), at.object_path(), at.clone());
    wait(async move { store.copy(&source, &path).await.map_err(failed(&at2)) })
}

/// [`write`] without the fsync of local files: scratch objects that a crash
/// makes obsolete anyway (a round's partial results).
pub fn write_scratch(at: &Location, bytes: impl Into<Bytes>) -> Result<()> {
    let bytes: Bytes = bytes.into();
    if let Some(path) = local_with_parent(at)? {
        return Ok(kallista_ops::model::replace_file(&path, false, |tmp| std::fs::write(tmp, &bytes))?);
    }
    put(at, bytes)
}

/// The local path of `at`, its directory created; `None` on other stores
/// (for writers that stream to a local file and hand bytes to the others).
pub fn local_with_parent(at: &Location) -> Result<Option<std::path::PathBuf>> {
    let Some(path) = at.local_path() else { return Ok(None) };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::Io { path: dir.display().to_string(), source: e })?;
    }
    Ok(Some(path))
}

fn put(at: &Location, bytes: Bytes) -> Result<()> {
    let (store, path, at2) = (store_of(at)?, at.object_path(), at.clone());
    wait(async move {
        store.put(&path, PutPayload::from_bytes(bytes)).await.map_err(failed(&at2))?;
        Ok(())
    })
}

/// The object's size, or `None` when there is no such object.
pub fn size(at: &Location) -> Result<Option<u64>> {
    let (store, path, at2) = (store_of(at)?, at.object_path(), at.clone());
    wait(async move {
        match store.head(&path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(&at2)(e)),
        }
    })
}

/// What changes when the object is rewritten (size, entity tag, modification
/// time), or `None` when there is no such object: a cache's cheap check.
pub fn stamp(at: &Location) -> Result<Option<String>> {
    let (store, path, at2) = (store_of(at)?, at.object_path(), at.clone());
    wait(async move {
        match store.head(&path).await {
            Ok(m) => {
                Ok(Some(format!("{} {} {:?}", m.size, m.last_modified.timestamp_nanos_opt().unwrap_or(0), m.e_tag)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(failed(&at2)(e)),
        }
    })
}

/// Whether the object exists.
pub fn exists(at: &Location) -> Result<bool> {
    Ok(size(at)?.is_some())
}

/// Every object under the prefix `at` (recursively), with its size, sorted by URL.
pub fn list(at: &Location) -> Result<Vec<(Location, u64)>> {
    let (store, path, at2) = (store_of(at)?, at.object_path(), at.clone());
    let mut found = wait(async move {
        let metas: Vec<_> = store.list(Some(&path)).try_collect().await.map_err(failed(&at2))?;
        Ok(metas.into_iter().map(|m| (at2.sibling(&m.location), m.size)).collect::<Vec<_>>())
    })?;
    found.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    Ok(found)
}

/// Deletes the object; a missing one is not an error.
pub fn delete(at: &Location) -> Result<()> {
    let (store, path, at2) = (store_of(at)?, at.object_path(), at.clone());
    wait(async move {
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed(&at2)(e)),
        }
    })
}

/// Deletes every object under the prefix `at`.
pub fn delete_all(at: &Location) -> Result<()> {
    for (object, _) in list(at)? {
        delete(&object)?;
    }
    if let Some(dir) = at.local_path().filter(|p| p.is_dir()) {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_objects_round_trip_list_and_delete() {
        let dir = std::env::temp_dir().join(crate::cluster::owned_dir_name("kallista-store"));
        let base = Location::from_path(&dir).unwrap();
        write(&base.join("a/one.bin"), b"1".to_vec()).unwrap();
        write_scratch(&base.join("a/b/two.bin"), b"22".to_vec()).unwrap();
        assert_eq!(read(&base.join("a/one.bin")).unwrap().as_ref(), b"1");
        assert!(exists(&base.join("a/b/two.bin")).unwrap());
        assert!(!exists(&base.join("a/none")).unwrap());
        let listed: Vec<(String, u64)> =
            list(&base.join("a")).unwrap().into_iter().map(|(l, n)| (l.file_name().to_string(), n)).collect();
        assert_eq!(listed, vec![("two.bin".to_string(), 2), ("one.bin".to_string(), 1)]);
        delete_all(&base).unwrap();
        assert!(!dir.exists());
        let missing = read(&base.join("gone")).unwrap_err().to_string();
        assert!(missing.contains("gone"), "{missing}");
    }

    #[test]
    fn local_copies_keep_their_bytes_when_the_source_is_replaced_or_deleted() {
        let dir = std::env::temp_dir().join(crate::cluster::owned_dir_name("kallista-store-copy"));
        let base = Location::from_path(&dir).unwrap();
        let (version, checkpoint) = (base.join("weights/step-1.bin"), base.join("checkpoints/step-1.bin"));
        write(&version, b"first".to_vec()).unwrap();
        write(&checkpoint, b"older".to_vec()).unwrap();
        copy(&version, &checkpoint).unwrap();
        assert_eq!(read(&checkpoint).unwrap().as_ref(), b"first");
        write(&version, b"second".to_vec()).unwrap();
        assert_eq!(read(&checkpoint).unwrap().as_ref(), b"first", "a replaced source changed its copy");
        delete(&version).unwrap();
        assert_eq!(read(&checkpoint).unwrap().as_ref(), b"first");
        let missing = copy(&version, &base.join("checkpoints/step-2.bin")).unwrap_err().to_string();
        assert!(missing.contains("step-1.bin"), "{missing}");
        assert!(!exists(&base.join("checkpoints/step-2.bin")).unwrap());
        delete_all(&base).unwrap();
    }
}
