//! Which rows each training step reads: a pure function of the seed and the
//! step, so a resumed job reads what an uninterrupted one would have.
//!
//! The staged training table (see [`super::layout`]) holds `shards` files;
//! file `f` holds blocks `f, f + shards, f + 2 * shards, ...` of exactly
//! `micro_batch` rows each, one Parquet row group per block. A step takes
//! the same number of blocks from every file, so the scan partitions (one
//! per worker, whole files each) get equal work; each epoch visits every
//! block once, in an order drawn per epoch and file.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The block layout of a staged training table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockSchedule {
    pub shards: usize,
    pub blocks_per_shard: usize,
    /// Blocks each file contributes to one step.
    pub blocks_per_step_per_shard: usize,
    pub seed: u64,
}

impl BlockSchedule {
    /// Steps in one pass over the data.
    pub fn steps_per_epoch(&self) -> u64 {
        (self.blocks_per_shard / self.blocks_per_step_per_shard.max(1)) as u64
    }

    /// Global ids of the blocks of `step`, ascending.
    pub fn blocks_of_step(&self, step: u64) -> Vec<u64> {
        let per_epoch = self.steps_per_epoch().max(1);
        let (epoch, j) = (step / per_epoch, (step % per_epoch) as usize);
        let k = self.blocks_per_step_per_shard;
        let mut out = Vec::with_capacity(k * self.shards);
        for f in 0..self.shards {
            let order = self.epoch_order(epoch, f);
            out.extend(order[j * k..(j + 1) * k].iter().map(|&local| (local * self.shards + f) as u64));
        }
        out.sort_unstable();
        out
    }

    fn epoch_order(&self, epoch: u64, shard: usize) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ (epoch << 20) ^ shard as u64 ^ 0x5EED_B10C_0000_0000);
        let mut order: Vec<usize> = (0..self.blocks_per_shard).collect();
        order.shuffle(&mut rng);
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> BlockSchedule {
        BlockSchedule { shards: 4, blocks_per_shard: 6, blocks_per_step_per_shard: 2, seed: 7 }
    }

    #[test]
    fn an_epoch_visits_every_block_once_with_equal_blocks_per_file() {
        let s = schedule();
        assert_eq!(s.steps_per_epoch(), 3);
        let mut seen: Vec<u64> = (0..3).flat_map(|step| s.blocks_of_step(step)).collect();
        for step in 0..3 {
            let blocks = s.blocks_of_step(step);
            for f in 0..4 {
                assert_eq!(blocks.iter().filter(|&&b| b % 4 == f).count(), 2);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..24).collect::<Vec<u64>>());
    }

    #[test]
    fn epochs_differ_and_the_schedule_is_a_function_of_seed_and_step() {
        let s = schedule();
        let epoch0: Vec<Vec<u64>> = (0..3).map(|t| s.blocks_of_step(t)).collect();
        let epoch1: Vec<Vec<u64>> = (3..6).map(|t| s.blocks_of_step(t)).collect();
        assert_ne!(epoch0, epoch1);
        assert_eq!(schedule().blocks_of_step(4), s.blocks_of_step(4));
        let other = BlockSchedule { seed: 8, ..schedule() };
        assert_ne!((0..3).map(|t| other.blocks_of_step(t)).collect::<Vec<_>>(), epoch0);
    }
}
