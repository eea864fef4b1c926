//! How the trainable weights are split among the parameter-server shards:
//! all of them, laid end to end in [`Model::weight_keys`] order, cut into
//! `shards` contiguous parts of (nearly) equal size. The shards are
//! balanced by bytes exactly, whatever the sizes of the weights: a large
//! weight (an Embedding, an LSTM kernel) is split across shards by element
//! ranges, which every optimizer rule allows (they are elementwise; the
//! per-weight and global norms of `clipnorm` are taken by the worker, which
//! holds the whole gradient). Driver and workers compute the same plan from
//! the same model.

use kallista_ops::model::Model;
use std::ops::Range;

/// One shard's part of one weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// The weight's index in [`Model::weight_keys`] (and in `WeightGrads::values`).
    pub weight: usize,
    pub key: String,
    /// Elements of the weight's values.
    pub range: Range<usize>,
}

impl Slice {
    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

/// The slices of each shard, in shard order; each shard's in weight order.
pub fn plan(model: &Model, shards: usize) -> Vec<Vec<Slice>> {
    plan_of(&model.trainable_entries(), shards)
}

/// [`plan`] over `(weight index, key, elements)` entries.
pub fn plan_of(entries: &[(usize, String, usize)], shards: usize) -> Vec<Vec<Slice>> {
    let shards = shards.max(1);
    let total: usize = entries.iter().map(|e| e.2).sum();
    // Shard s owns the flat elements [bound(s), bound(s + 1)).
    let bound = |s: usize| total * s / shards;
    let mut out: Vec<Vec<Slice>> = vec![vec![]; shards];
    let mut start = 0;
    for (weight, key, len) in entries {
        let end = start + len;
        for (s, owned) in out.iter_mut().enumerate() {
            let (lo, hi) = (bound(s).max(start), bound(s + 1).min(end));
            if lo < hi {
                owned.push(Slice { weight: *weight, key: key.clone(), range: lo - start..hi - start });
            }
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_balanced_by_elements_and_cover_every_weight_once() {
        let entries = vec![(0, "a".to_string(), 10), (2, "b".to_string(), 1000), (3, "c".to_string(), 7)];
        let plan = plan_of(&entries, 3);
        let sizes: Vec<usize> = plan.iter().map(|s| s.iter().map(Slice::len).sum()).collect();
        assert_eq!(sizes, vec![339, 339, 339]);
        // The large weight is split over all three shards, in order, without gaps.
        let b: Vec<Range<usize>> = plan.iter().flatten().filter(|s| s.key == "b").map(|s| s.range.clone()).collect();
        assert_eq!(b, vec![0..329, 329..668, 668..1000]);
        for (w, _, len) in &entries {
            let covered: usize = plan.iter().flatten().filter(|s| s.weight == *w).map(Slice::len).sum();
            assert_eq!(covered, *len);
        }
        assert_eq!(plan_of(&entries, 1)[0].len(), 3);
    }
}
