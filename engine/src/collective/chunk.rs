//! How a chunk of fixed-point sums travels between ring neighbours: as i64,
//! as i32 when every value fits (half the bytes), or, when most of it is
//! zero, as i32 of only its groups of [`GROUP`] values that are not all zero,
//! after a bitmap naming them. An Embedding's gradient is zero outside the
//! rows of the batch's tokens, so its rows travel as rows, not dense; the
//! bitmap travels sealed with the values, so the rows touched stay private.

use super::checked::add_checked;
use crate::error::{EngineError, Result};

/// Every value as i64.
pub const WIDE: u8 = 11;
/// Every value as i32.
pub const NARROW: u8 = 12;
/// A bitmap of the groups that hold a non-zero value (u32 words), then their values as i32.
pub const SPARSE: u8 = 13;
/// f32 values, bit for bit (weights and optimizer slots, not sums).
pub const FLOATS: u8 = 14;
/// One process's own f32 gradient values, which the receiver rounds to
/// fixed point itself (the same bits as sums rounded by the sender).
pub const GRADIENTS: u8 = 15;
/// Values per bitmap bit: a quarter of a 256-wide Embedding row.
pub const GROUP: usize = 64;

/// Puts `chunk` in the buffer of the form it travels in and returns that form's kind.
pub fn encode(chunk: &[i64], narrow: &mut Vec<i32>, wide: &mut Vec<i64>) -> u8 {
    let fits = chunk.iter().fold(true, |ok, &v| ok & (v as i32 as i64 == v));
    if !fits {
        wide.clear();
        wide.extend_from_slice(chunk);
        return WIDE;
    }
    let nonzero: Vec<bool> = chunk.chunks(GROUP).map(|g| g.iter().fold(0, |a, &v| a | v) != 0).collect();
    let kept = nonzero.iter().filter(|&&z| z).count();
    narrow.clear();
    // Sparse only where it saves at least half of the values.
    if kept * 2 > nonzero.len() {
        narrow.extend(chunk.iter().map(|&v| v as i32));
        return NARROW;
    }
    let mut bitmap = vec![0u32; nonzero.len().div_ceil(32)];
    for (g, _) in nonzero.iter().enumerate().filter(|(_, &z)| z) {
        bitmap[g / 32] |= 1 << (g % 32);
    }
    narrow.extend(bitmap.iter().map(|&w| w as i32));
    for (group, _) in chunk.chunks(GROUP).zip(&nonzero).filter(|(_, &z)| z) {
        narrow.extend(group.iter().map(|&v| v as i32));
    }
    SPARSE
}

/// Values a chunk of `kind` covers: what arrived, or (sparse) `expected`.
pub fn covers(kind: u8, narrow: &[i32], wide: &[i64], expected: usize) -> usize {
    match kind {
        WIDE => wide.len(),
        NARROW | FLOATS | GRADIENTS => narrow.len(),
        _ => expected,
    }
}

/// Adds (`add`) the chunk that arrived to `target` or sets `target` to it.
/// Gradients are not sums: their rounding needs the weights' names for its
/// errors ([`GRADIENTS`]), so they are refused here.
pub fn apply(kind: u8, add: bool, target: &mut [i64], narrow: &[i32], wide: &[i64]) -> Result<()> {
    match (kind, add) {
        (GRADIENTS | FLOATS, _) => Err(EngineError::Collective(format!("a chunk of kind {kind} where sums were due"))),
        (WIDE, true) => add_checked(target, wide),
        (WIDE, false) => {
            target.copy_from_slice(wide);
            Ok(())
        }
        (NARROW, true) => add_checked(target, narrow),
        (NARROW, false) => {
            target.iter_mut().zip(narrow).for_each(|(a, &b)| *a = b as i64);
            Ok(())
        }
        _ => apply_sparse(add, target, narrow),
    }
}

fn apply_sparse(add: bool, target: &mut [i64], narrow: &[i32]) -> Result<()> {
    let malformed = || EngineError::Collective("a sparse chunk whose bitmap and values disagree".into());
    let words = target.len().div_ceil(GROUP).div_ceil(32);
    if narrow.len() < words {
        return Err(malformed());
    }
    let (bitmap, mut values) = narrow.split_at(words);
    for (g, part) in target.chunks_mut(GROUP).enumerate() {
        if (bitmap[g / 32] as u32 >> (g % 32)) & 1 == 0 {
            if !add {
                part.fill(0);
            }
            continue;
        }
        if values.len() < part.len() {
            return Err(malformed());
        }
        let (mine, rest) = values.split_at(part.len());
        values = rest;
        match add {
            true => add_checked(part, mine)?,
            false => part.iter_mut().zip(mine).for_each(|(a, &b)| *a = b as i64),
        }
    }
    match values.is_empty() {
        true => Ok(()),
        false => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(chunk: &[i64], add_to: Option<&[i64]>) -> (u8, usize, Vec<i64>) {
        let (mut narrow, mut wide) = (vec![], vec![]);
        let kind = encode(chunk, &mut narrow, &mut wide);
        let sent = narrow.len() * 4 + wide.len() * 8;
        let mut target = add_to.map_or(vec![-1; chunk.len()], |a| a.to_vec());
        assert_eq!(covers(kind, &narrow, &wide, chunk.len()), chunk.len());
        apply(kind, add_to.is_some(), &mut target, &narrow, &wide).unwrap();
        (kind, sent, target)
    }

    #[test]
    fn each_form_carries_the_chunk_exactly() {
        // Embedding-like: two rows of 256 touched in 10 000, and a partial last group.
        let mut rows = vec![0i64; 10_000 * 4 + 17];
        rows[256 * 3..256 * 4].iter_mut().enumerate().for_each(|(i, v)| *v = i as i64 - 100);
        rows[256 * 77 + 5] = -7;
        rows[10_000 * 4 + 16] = 3;
        let (kind, sent, got) = round_trip(&rows, None);
        assert_eq!((kind, got.as_slice()), (SPARSE, rows.as_slice()));
        assert!(sent < rows.len() * 4 / 20, "{sent} bytes for {} values", rows.len());
        let ones = vec![1i64; rows.len()];
        let want: Vec<i64> = rows.iter().map(|v| v + 1).collect();
        assert_eq!(round_trip(&rows, Some(&ones)).2, want);
        // Dense small values travel as i32, large ones as i64.
        let dense: Vec<i64> = (0..1000).map(|i| i - 500).collect();
        assert_eq!(round_trip(&dense, None), (NARROW, 4000, dense.clone()));
        let large: Vec<i64> = (0..1000).map(|i| (i - 500) << 40).collect();
        assert_eq!(round_trip(&large, None), (WIDE, 8000, large.clone()));
    }

    #[test]
    fn values_that_are_not_sums_are_refused_where_sums_are_due() {
        let mut target = vec![0i64; 2];
        for kind in [GRADIENTS, FLOATS] {
            assert!(apply(kind, true, &mut target, &[1, 2], &[]).is_err(), "kind {kind}");
        }
        assert_eq!(target, [0, 0]);
    }

    #[test]
    fn a_bitmap_that_disagrees_with_its_values_is_an_error() {
        let mut target = vec![0i64; 200];
        // Bit 0 set (64 values expected), 3 values sent.
        assert!(apply(SPARSE, true, &mut target, &[1, 5, 6, 7], &[]).is_err());
        // No bit set, values sent anyway.
        assert!(apply(SPARSE, false, &mut target, &[0, 5], &[]).is_err());
    }
}
