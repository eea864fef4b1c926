//! Embedding lookup: gathers rows of a `[V, d]` table; the backward pass
//! scatter-adds into the table's gradient (repeated ids accumulate).

use super::tape::{Backward, Gradients, Tape, Var};
use crate::error::{OpsError, Result};
use crate::tensor::{IntTensor, Tensor};

/// `table[ids]`: ids of any shape `[B, ...]` give `[B, ..., d]`. An id outside
/// `[0, V)` is a [`OpsError::TokenOutOfRange`] naming `layer` and its position.
pub fn embedding(tape: &mut Tape, table: Var, ids: &IntTensor, layer: &str) -> Result<Var> {
    let ts = tape.shape(table).to_vec();
    if ts.len() != 2 {
        return Err(OpsError::shape("embedding", "table must be [V, d]", &[&ts]));
    }
    let (vocab, d) = (ts[0], ts[1]);
    let per_row: usize = ids.shape().iter().skip(1).product::<usize>().max(1);
    let tv = tape.value(table).data();
    let mut y = vec![0.0; ids.len() * d];
    for (i, &id) in ids.data().iter().enumerate() {
        if id < 0 || id as usize >= vocab {
            return Err(OpsError::TokenOutOfRange {
                layer: layer.to_string(),
                id: id as i64,
                row: i / per_row,
                pos: i % per_row,
                input_dim: vocab,
            });
        }
        let id = id as usize;
        y[i * d..(i + 1) * d].copy_from_slice(&tv[id * d..(id + 1) * d]);
    }
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    Ok(tape.push(Tensor::new(&shape, y)?, Box::new(EmbeddingBackward { table, ids: ids.clone(), vocab, d })))
}

struct EmbeddingBackward {
    table: Var,
    ids: IntTensor,
    vocab: usize,
    d: usize,
}

impl Backward for EmbeddingBackward {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn inputs(&self) -> Vec<Var> {
        vec![self.table]
    }
    fn backward(&self, _tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        let d = self.d;
        if let Some(dt) = grads.slot(self.table, self.vocab * d) {
            for (i, &id) in self.ids.data().iter().enumerate() {
                let id = id as usize;
                dt[id * d..(id + 1) * d].iter_mut().zip(&dy[i * d..(i + 1) * d]).for_each(|(a, b)| *a += b);
            }
        }
        Ok(())
    }
}
