//! Weights laid out once for the many products of a batch that leaves them
//! unchanged until its end: W1's LSTM kernel is packed once per batch instead
//! of once per shard, and its recurrent kernel once instead of being read in
//! place, 4 KB between rows, at every step.

use super::{Backend, MatRef};
use crate::buf::Buf;
use crate::error::Result;
use crate::tensor::Tensor;
use std::any::Any;
use std::sync::Weak;

/// A matrix in a backend's own layout for products with it as the right
/// operand ([`Backend::pack_matrix`], [`Backend::matmul_packed`]).
pub struct PackedMat {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) layout: Box<dyn Any + Send + Sync>,
}

/// The packed weights of one pass, each found again by the very values it was
/// made from (a weight changed in place or replaced finds nothing).
#[derive(Default)]
pub struct PackedWeights {
    entries: Vec<(Weak<Buf>, PackedMat)>,
}

impl PackedWeights {
    /// Packs `weight`, a `[rows, cols]` matrix, where `be` has a layout for it.
    pub fn add(&mut self, be: &dyn Backend, weight: &Tensor) -> Result<()> {
        let &[rows, cols] = weight.shape() else { return Ok(()) };
        if let Some(packed) = be.pack_matrix(MatRef::dense(weight.data(), rows, cols))? {
            self.entries.push((weight.downgrade(), packed));
        }
        Ok(())
    }

    /// The packed form of exactly `weight`'s values, if it was added.
    pub fn find(&self, weight: &Tensor) -> Option<&PackedMat> {
        let shape = weight.shape();
        self.entries
            .iter()
            .find(|(values, p)| shape == [p.rows, p.cols] && weight.holds(values))
            .map(|(_, packed)| packed)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeights({} packed)", self.entries.len())
    }
}
