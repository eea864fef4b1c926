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
    check_ids(ids, vocab, layer)?;
    let mut y = tape.backend().zeros(ids.len() * d)?;
    tape.backend().gather_rows(tape.value(table).data(), d, ids.data(), &mut y)?;
    let mut shape = ids.shape().to_vec();
    shape.push(d);
    Ok(tape.push(Tensor::from_buf(&shape, y)?, Box::new(EmbeddingBackward { table, ids: ids.clone(), vocab, d })))
}

/// Checks that every id indexes the table, naming the first one that does not
/// by its row and position (ids are `[B, ...]`).
pub(crate) fn check_ids(ids: &IntTensor, vocab: usize, layer: &str) -> Result<()> {
    let per_row: usize = ids.shape().iter().skip(1).product::<usize>().max(1);
    match ids.data().iter().position(|&id| id < 0 || id as usize >= vocab) {
        None => Ok(()),
        Some(i) => Err(OpsError::TokenOutOfRange {
            layer: layer.to_string(),
            id: ids.data()[i] as i64,
            row: i / per_row,
            pos: i % per_row,
            input_dim: vocab,
        }),
    }
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
    fn backward(&self, tape: &Tape, _out: Var, dy: &[f32], grads: &mut Gradients) -> Result<()> {
        if let Some(dt) = grads.slot_rows(self.table, self.vocab * self.d, self.d, self.ids.data())? {
            tape.backend().scatter_add_rows(self.ids.data(), self.d, dy, dt)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::TouchedRows;
    use crate::backend::Activation;

    /// The table's gradient names the rows of the ids and is zero outside
    /// them; a table that also takes a gradient another way has no rows.
    #[test]
    fn the_table_gradient_knows_its_rows() {
        let (vocab, d) = (6, 3);
        let mut tape = Tape::new();
        let leaf = tape.leaf(Tensor::new(&[vocab, d], (0..vocab * d).map(|i| i as f32 * 0.1).collect()).unwrap(), true);
        let table = crate::autodiff::activation(&mut tape, leaf, Activation::Tanh).unwrap();
        let ids = IntTensor::new(&[2, 3], vec![4, 1, 4, 0, 1, 1]).unwrap();
        let y = embedding(&mut tape, table, &ids, "e").unwrap();
        let mut grads = tape.backward_with(y, vec![1.0; ids.len() * d]).unwrap();
        let rows = grads.take_rows(table).expect("an embedding's rows");
        assert_eq!(rows, TouchedRows { width: d, rows: vec![0, 1, 4] });
        let dt = grads.get(table).unwrap();
        for (i, g) in dt.iter().enumerate() {
            assert_eq!(*g != 0.0, rows.rows.contains(&((i / d) as u32)), "value {i}: {g}");
        }
        assert_eq!(grads.take_rows(leaf), None, "the activation's gradient is dense");
    }
}
