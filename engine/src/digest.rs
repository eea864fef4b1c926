//! Content hashes that name cached things (a loaded model, a feature cache):
//! SHA-256 of length-prefixed parts, so that moving bytes between parts
//! changes the hash.

/// Hex SHA-256 of `parts`, each prefixed by its length.
pub fn content_hash(parts: &[&[u8]]) -> String {
    let mut h = ::ring::digest::Context::new(&::ring::digest::SHA256);
    for part in parts {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::content_hash;

    #[test]
    fn parts_are_told_apart_by_their_bounds() {
        assert_eq!(content_hash(&[b"ab", b"c"]), content_hash(&[b"ab", b"c"]));
        assert_ne!(content_hash(&[b"ab", b"c"]), content_hash(&[b"a", b"bc"]));
        assert_eq!(content_hash(&[]).len(), 64);
    }
}
