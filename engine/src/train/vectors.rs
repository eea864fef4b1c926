//! Named vectors on disk: how partial gradients, weight deltas and reduced
//! results travel between the training operators and the driver.
//!
//! Ballista moves aggregate states through its shuffle, which costs about
//! 10 ms per MB here and fails beyond 16 MiB per message (see
//! `shared/BALLISTA-NOTES.md`); a model's gradients are megabytes. So each
//! partial result is written once into the job directory's store (which
//! every executor and the driver reach) and only its URL travels in the plan.
//!
//! Format: `KALLISTA-VEC1\n`, the element type (u8), a little-endian u64
//! header length, a JSON header `[[name, len], ...]`, then the values, little
//! endian, in header order. Each file is one put: readers never see part of one.

use crate::error::{EngineError, Result};
use crate::store::{blocking, Location};

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

fn corrupt(at: &Location, detail: impl Into<String>) -> EngineError {
    EngineError::Corrupt { path: at.to_string(), detail: detail.into() }
}

/// `vectors` in the file format.
pub fn encode_vectors<T: Element>(vectors: &Vectors<T>) -> Result<Vec<u8>> {
    let header: Vec<(&str, usize)> = vectors.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    let header = serde_json::to_vec(&header).map_err(|e| EngineError::Invalid(e.to_string()))?;
    let values: usize = vectors.iter().map(|(_, v)| v.len() * size_of::<T>()).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 9 + header.len() + values);
    out.extend_from_slice(MAGIC);
    out.push(T::CODE);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for (_, v) in vectors {
        out.extend_from_slice(bytemuck::cast_slice(v));
    }
    Ok(out)
}

/// Writes `vectors` to `at` in one put (a scratch object: the files of a
/// round in flight, which a crash makes obsolete).
pub fn write_vectors<T: Element>(at: &Location, vectors: &Vectors<T>) -> Result<()> {
    blocking::write_scratch(at, encode_vectors(vectors)?)
}

/// Reads an object written by [`write_vectors`] with the same element type.
pub fn read_vectors<T: Element>(at: &Location) -> Result<Vectors<T>> {
    decode_vectors(&blocking::read(at)?, at)
}

/// Parses [`encode_vectors`] bytes read from `at`, checking every size first.
pub fn decode_vectors<T: Element>(bytes: &[u8], at: &Location) -> Result<Vectors<T>> {
    let size = bytes.len() as u64;
    let head_len = MAGIC.len() + 9;
    if bytes.len() < head_len || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt(at, "not a Kallista vector file"));
    }
    let code = bytes[MAGIC.len()];
    if code != T::CODE {
        return Err(corrupt(at, format!("element type {code}, expected {}", T::CODE)));
    }
    let header_len = u64::from_le_bytes(bytes[MAGIC.len() + 1..head_len].try_into().expect("8 bytes"));
    if header_len > size - head_len as u64 {
        return Err(corrupt(at, "truncated header"));
    }
    let header_end = head_len + header_len as usize;
    let header: Vec<(String, usize)> =
        serde_json::from_slice(&bytes[head_len..header_end]).map_err(|e| corrupt(at, format!("header: {e}")))?;
    let values = header
        .iter()
        .fold(0u64, |sum, (_, len)| sum.saturating_add((*len as u64).saturating_mul(size_of::<T>() as u64)));
    let expected = (header_end as u64).saturating_add(values);
    if expected != size {
        return Err(corrupt(at, format!("{size} bytes, the header describes {expected}")));
    }
    // Sizes checked above: each vector is one exact slice.
    let mut out = Vec::with_capacity(header.len());
    let mut at_byte = header_end;
    for (name, len) in header {
        let mut values = vec![T::default(); len];
        let n = len * size_of::<T>();
        bytemuck::cast_slice_mut::<T, u8>(&mut values).copy_from_slice(&bytes[at_byte..at_byte + n]);
        at_byte += n;
        out.push((name, values));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_type_check() {
        let dir = std::env::temp_dir().join(crate::cluster::owned_dir_name("kallista-vectors"));
        let at = Location::from_path(&dir.join("v.bin")).unwrap();
        let v: Vectors<i64> = vec![("a/kernel".into(), vec![1, -2, 3]), ("b".into(), vec![])];
        write_vectors(&at, &v).unwrap();
        assert_eq!(read_vectors::<i64>(&at).unwrap(), v);
        assert!(matches!(read_vectors::<f32>(&at), Err(EngineError::Corrupt { .. })));
        let bytes = encode_vectors(&v).unwrap();
        assert!(matches!(decode_vectors::<i64>(&bytes[..bytes.len() - 3], &at), Err(EngineError::Corrupt { .. })));
        assert!(matches!(decode_vectors::<i64>(&bytes[..10], &at), Err(EngineError::Corrupt { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
