//! Named vectors on disk: how partial gradients, weight deltas and reduced
//! results travel between the training operators and the driver.
//!
//! Ballista moves aggregate states through its shuffle, which costs about
//! 10 ms per MB here and fails beyond 16 MiB per message (see
//! `shared/BALLISTA-NOTES.md`); a model's gradients are megabytes. So each
//! partial result is written once into the job directory (which every
//! executor and the driver see) and only its path travels in the plan.
//!
//! Format: `KALLISTA-VEC1\n`, the element type (u8), a little-endian u64
//! header length, a JSON header `[[name, len], ...]`, then the values, little
//! endian, in header order. Files are written atomically.

use crate::error::{EngineError, Result};
use std::path::Path;

const MAGIC: &[u8] = b"KALLISTA-VEC1\n";

/// An element type of a vector file.
pub trait Element: Copy + Default + Send + Sync + 'static {
    const CODE: u8;
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    fn get(bytes: &[u8]) -> Self;
}

macro_rules! element {
    ($t:ty, $code:expr) => {
        impl Element for $t {
            const CODE: u8 = $code;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("element size"))
            }
        }
    };
}
element!(f32, 1);
element!(f64, 2);
element!(i64, 3);

/// Named vectors of one element type, in a fixed order.
pub type Vectors<T> = Vec<(String, Vec<T>)>;

fn corrupt(path: &Path, detail: impl Into<String>) -> EngineError {
    EngineError::Corrupt { path: path.display().to_string(), detail: detail.into() }
}

/// Writes `vectors` to `path` atomically.
pub fn write_vectors<T: Element>(path: &Path, vectors: &Vectors<T>) -> Result<()> {
    let header: Vec<(&str, usize)> = vectors.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    let header = serde_json::to_vec(&header).map_err(|e| EngineError::Invalid(e.to_string()))?;
    let values: usize = vectors.iter().map(|(_, v)| v.len()).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 9 + header.len() + values * T::SIZE);
    out.extend_from_slice(MAGIC);
    out.push(T::CODE);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for (_, v) in vectors {
        for &x in v {
            x.put(&mut out);
        }
    }
    replace_file(path, &out)
}

/// Writes `bytes` to `path` through a temporary file and a rename, without
/// fsync: for the files of a round in flight (partial results, weights
/// versions), which a crash makes obsolete anyway; readers never see a torn
/// file. Checkpoints are written durably (`kallista_ops::model::write_atomic`).
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()));
    let io = |p: &Path, e| EngineError::Io { path: p.display().to_string(), source: e };
    std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// Reads a file written by [`write_vectors`] with the same element type.
pub fn read_vectors<T: Element>(path: &Path) -> Result<Vectors<T>> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::Io { path: path.display().to_string(), source: e })?;
    if bytes.len() < MAGIC.len() + 9 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt(path, "not a Kallista vector file"));
    }
    let code = bytes[MAGIC.len()];
    if code != T::CODE {
        return Err(corrupt(path, format!("element type {code}, expected {}", T::CODE)));
    }
    let at = MAGIC.len() + 1;
    let header_len = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes")) as usize;
    let start = at + 8;
    let header: Vec<(String, usize)> = bytes
        .get(start..start + header_len)
        .ok_or_else(|| corrupt(path, "truncated header"))
        .and_then(|h| serde_json::from_slice(h).map_err(|e| corrupt(path, format!("header: {e}"))))?;
    let mut pos = start + header_len;
    let mut out = Vec::with_capacity(header.len());
    for (name, len) in header {
        let end = pos + len * T::SIZE;
        let raw = bytes.get(pos..end).ok_or_else(|| corrupt(path, format!("truncated at '{name}'")))?;
        out.push((name, raw.chunks_exact(T::SIZE).map(T::get).collect()));
        pos = end;
    }
    if pos != bytes.len() {
        return Err(corrupt(path, format!("{} bytes after the last vector", bytes.len() - pos)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_type_check() {
        let dir = std::env::temp_dir().join(format!("kallista-vectors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.bin");
        let v: Vectors<i64> = vec![("a/kernel".into(), vec![1, -2, 3]), ("b".into(), vec![])];
        write_vectors(&path, &v).unwrap();
        assert_eq!(read_vectors::<i64>(&path).unwrap(), v);
        assert!(matches!(read_vectors::<f32>(&path), Err(EngineError::Corrupt { .. })));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(read_vectors::<i64>(&path), Err(EngineError::Corrupt { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
