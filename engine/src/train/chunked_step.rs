//! The optimizer step of a `sync` step made a cache-sized chunk at a time:
//! for each chunk of each gradient, the exact fixed-point sum of its
//! micro-batches (or its range of the all-reduced sum), the mean, and the
//! optimizer update of that range of the weight and its slots, while the
//! chunk is still in cache. Whole-vector passes wrote a 40 MB i64 sum and a
//! fresh 20 MB mean for W1 and read both back. Every operation is
//! elementwise, so the bits are those of the whole-vector passes.

use super::exact::{mean_into, runs_within};
use super::exact_mean::mean_of_parts;
use super::row_sums::RowSums;
use crate::error::{EngineError, Result};
use kallista_ops::model::RangedUpdate;
use rayon::prelude::*;
use std::ops::Range;

/// By weight: the value ranges outside which every micro-batch's gradient
/// is zero, where known (an Embedding's touched rows); missing or `None`:
/// the whole weight.
pub(crate) type Known = [Option<Vec<Range<usize>>>];

/// What `known` says of weight `e` within `range` of it (relative to its
/// start), for [`mean_of_parts`].
fn known_within(known: &Known, e: usize, range: Range<usize>) -> Option<Vec<Range<usize>>> {
    known.get(e).and_then(|k| k.as_deref()).map(|k| runs_within(k, range))
}

/// One chunk's work: (weight, offset in it, its values, its slots' values,
/// that range of the flat sum).
type Work<'w, 's> = (usize, usize, &'w mut [f32], Vec<&'w mut [f32]>, Option<&'s [i64]>);

/// Values per chunk: its f32 mean (64 KB) stays in L2 with the chunk's weights and slots.
pub(crate) const CHUNK: usize = 1 << 14;

/// What the mean is made of, one entry per updated weight in order.
pub(crate) enum Sums<'a> {
    /// Each weight's micro-batch gradients, summed here, and for each weight
    /// the runs outside which they are all zero, where known ([`Known`]).
    Parts(&'a [Vec<&'a [f32]>], &'a Known),
    /// The exact sums of every weight one after another (an all-reduce's result).
    Flat(&'a [i64]),
    /// Each weight's exact sum over the rows where it may be non-zero
    /// (every process's rows, [`RowSums::total`]).
    Rows(&'a [RowSums]),
}

/// Applies `update` (the weights named `names`, in order) with the mean over
/// `parts` micro-batches of `sums`, `chunk` values at a time ([`CHUNK`]) on
/// all of this process's cores.
pub(crate) fn apply_mean_in_chunks(
    sums: Sums<'_>,
    names: &[&str],
    parts: u64,
    update: RangedUpdate<'_>,
    chunk: usize,
) -> Result<()> {
    let RangedUpdate { step, parts: weights } = update;
    // (weight, offset in it, its values, its slots' values, that range of the flat sum)
    let mut work = Vec::new();
    let mut flat_rest = match &sums {
        Sums::Flat(flat) => *flat,
        Sums::Parts(..) | Sums::Rows(_) => &[],
    };
    for (e, (values, slots)) in weights.into_iter().enumerate() {
        let n = values.len();
        let flat = match &sums {
            Sums::Flat(_) => {
                if flat_rest.len() < n {
                    return Err(EngineError::Training(format!("'{}': the summed gradients are too short", names[e])));
                }
                let (mine, next) = flat_rest.split_at(n);
                flat_rest = next;
                Some(mine)
            }
            Sums::Parts(vectors, _) => {
                if vectors[e].iter().any(|v| v.len() != n) {
                    return Err(EngineError::Training(format!("'{}': gradient and weight sizes differ", names[e])));
                }
                None
            }
            Sums::Rows(rows) => {
                if rows.get(e).is_none_or(|r| r.end() > n) {
                    return Err(EngineError::Training(format!("'{}': its row sums do not fit it", names[e])));
                }
                None
            }
        };
        let mut slot_chunks: Vec<_> = slots.into_iter().map(|s| s.chunks_mut(chunk)).collect();
        for (c, v) in values.chunks_mut(chunk).enumerate() {
            let offset = c * chunk;
            let s: Vec<&mut [f32]> = slot_chunks.iter_mut().filter_map(|s| s.next()).collect();
            work.push((e, offset, v, s, flat.map(|f| &f[offset..offset + chunk.min(n - offset)])));
        }
    }
    if !flat_rest.is_empty() {
        return Err(EngineError::Training("the summed gradients are longer than the weights".into()));
    }
    let scratch = || vec![0f32; chunk];
    let apply_one = |mean: &mut Vec<f32>, (e, offset, values, mut slots, flat): Work<'_, '_>| -> Result<()> {
        let n = values.len();
        match (&sums, flat) {
            (Sums::Parts(vectors, known), None) => {
                let range = offset..offset + n;
                let parts_here: Vec<&[f32]> = vectors[e].iter().map(|v| &v[range.clone()]).collect();
                // Untouched Embedding rows are neither rounded nor averaged: their mean is +0.0.
                mean_of_parts(&mut mean[..n], &parts_here, known_within(known, e, range), parts, names[e])?;
            }
            (Sums::Rows(rows), None) => rows[e].mean_within(&mut mean[..n], offset..offset + n, parts),
            // A flat sum gives every chunk its range.
            (_, flat) => mean_into(&mut mean[..n], flat.unwrap_or_default(), parts),
        }
        step.apply(values, &mean[..n], &mut slots)?;
        Ok(())
    };
    // One core: on the calling thread, which may be a gap filler (`crate::gap_filler`).
    if rayon::current_num_threads() == 1 {
        let mut mean = scratch();
        return work.into_iter().try_for_each(|w| apply_one(&mut mean, w));
    }
    work.into_par_iter().try_for_each_init(scratch, apply_one)
}
