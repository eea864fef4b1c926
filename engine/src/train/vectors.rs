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

/// An element type of a vector file: plain data, stored little-endian.
pub trait Element: bytemuck::Pod + Default + Send + Sync + 'static {
    const CODE: u8;
}

// Values are written and read as their in-memory bytes.
#[cfg(target_endian = "big")]
compile_error!("vector files are little-endian; big-endian targets need a byte-swapping path");

impl Element for f32 {
    const CODE: u8 = 1;
}
impl Element for f64 {
    const CODE: u8 = 2;
}
impl Element for i64 {
    const CODE: u8 = 3;
}

/// Named vectors of one element type, in a fixed order.
pub type Vectors<T> = Vec<(String, Vec<T>)>;

fn corrupt(path: &Path, detail: impl Into<String>) -> EngineError {
    EngineError::Corrupt { path: path.display().to_string(), detail: detail.into() }
}

/// Writes `vectors` to `path` atomically, without fsync (the files of a round
/// in flight, which a crash makes obsolete), streamed from the vectors.
pub fn write_vectors<T: Element>(path: &Path, vectors: &Vectors<T>) -> Result<()> {
    use std::io::Write;
    let header: Vec<(&str, usize)> = vectors.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    let header = serde_json::to_vec(&header).map_err(|e| EngineError::Invalid(e.to_string()))?;
    Ok(kallista_ops::model::replace_file(path, false, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&[T::CODE])?;
        f.write_all(&(header.len() as u64).to_le_bytes())?;
        f.write_all(&header)?;
        for (_, v) in vectors {
            f.write_all(bytemuck::cast_slice(v))?;
        }
        Ok(())
    })?)
}

/// Reads a file written by [`write_vectors`] with the same element type.
pub fn read_vectors<T: Element>(path: &Path) -> Result<Vectors<T>> {
    use std::io::Read;
    let io = |e| EngineError::Io { path: path.display().to_string(), source: e };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut head = [0u8; MAGIC.len() + 9];
    if size < head.len() as u64 || file.read_exact(&mut head).is_err() || &head[..MAGIC.len()] != MAGIC {
        return Err(corrupt(path, "not a Kallista vector file"));
    }
    let code = head[MAGIC.len()];
    if code != T::CODE {
        return Err(corrupt(path, format!("element type {code}, expected {}", T::CODE)));
    }
    let header_len = u64::from_le_bytes(head[MAGIC.len() + 1..].try_into().expect("8 bytes"));
    if header_len > size - head.len() as u64 {
        return Err(corrupt(path, "truncated header"));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header: Vec<(String, usize)> =
        serde_json::from_slice(&header).map_err(|e| corrupt(path, format!("header: {e}")))?;
    let values = header
        .iter()
        .fold(0u64, |sum, (_, len)| sum.saturating_add((*len as u64).saturating_mul(size_of::<T>() as u64)));
    let expected = (head.len() as u64 + header_len).saturating_add(values);
    if expected != size {
        return Err(corrupt(path, format!("{size} bytes, the header describes {expected}")));
    }
    // Sizes checked above: each read fills its vector exactly.
    let mut out = Vec::with_capacity(header.len());
    for (name, len) in header {
        let mut values = vec![T::default(); len];
        file.read_exact(bytemuck::cast_slice_mut(&mut values)).map_err(io)?;
        out.push((name, values));
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
