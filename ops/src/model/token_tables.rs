//! Inference over `Embedding -> LSTM` without a product per token.
//!
//! An LSTM's first act on an embedded token is `embeddings[id]·kernel + bias`,
//! which depends on the id alone. Where a model feeds an Embedding into an
//! LSTM and nothing else, inference looks that projection up in a table of
//! `V` rows made once per weights instead of computing it for every token of
//! every batch (W1: 6% of an inference pass's FLOPs; 5,120 rows per batch of
//! 256 questions against 10,000 rows once). The table is made only once the
//! model has projected as many tokens as the table has rows, so one small
//! batch never pays for it and the cost stays below twice the direct one.
//!
//! Same bits as the direct path: tables are used only where the backend
//! computes each row of a product independently
//! ([`crate::backend::Backend::rows_are_independent`]), and a table belongs to the exact
//! weight values it was made from (weak handles on them: a weight changed in
//! place or replaced drops its table).

use super::Model;
use crate::autodiff::input_projection;
use crate::backend::default_backend;
use crate::error::Result;
use crate::layers::{Embedding, Lstm, MAX_WEIGHT_ELEMENTS};
use crate::tensor::{Data, Tensor};
use std::sync::{Mutex, Weak};

/// An LSTM node of the graph that may run over a table of projected tokens.
#[derive(Clone, Debug)]
pub(crate) struct ProjectedTokens {
    /// The Embedding node it replaces (its output feeds only the LSTM).
    pub embedding_node: usize,
    pub lstm_node: usize,
    /// `[V, 4u]`: row `id` is `embeddings[id]·kernel + bias`.
    pub table: Tensor,
}

/// The tables of one model, and how many tokens each pair projected since
/// its weights last changed. A clone of the model starts empty.
#[derive(Default)]
pub(crate) struct TokenTables {
    entries: Mutex<Vec<Entry>>,
}

struct Entry {
    lstm_node: usize,
    /// The embeddings, kernel and bias the counts and the table belong to.
    sources: Vec<Weak<crate::buf::Buf>>,
    tokens_seen: usize,
    table: Option<Tensor>,
}

impl Clone for TokenTables {
    fn clone(&self) -> Self {
        TokenTables::default()
    }
}

impl std::fmt::Debug for TokenTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tables = self.entries.lock().map(|e| e.iter().filter(|e| e.table.is_some()).count()).unwrap_or(0);
        write!(f, "TokenTables({tables} made)")
    }
}

/// An `Embedding -> LSTM` pair whose ids are a model input.
struct Pair {
    embedding_node: usize,
    lstm_node: usize,
    ids_input: usize,
}

impl Model {
    /// The pairs of the graph inference may fuse.
    fn token_pairs(&self) -> Vec<Pair> {
        let mut pairs = vec![];
        for (e, enode) in self.nodes.iter().enumerate() {
            if self.layers[enode.layer].as_any().downcast_ref::<Embedding>().is_none() || enode.inputs.len() != 1 {
                continue;
            }
            let Some(ids_input) = self.inputs.iter().position(|&t| t == enode.inputs[0]) else { continue };
            let consumers: Vec<usize> =
                (0..self.nodes.len()).filter(|&n| self.nodes[n].inputs.contains(&enode.output)).collect();
            let [l] = consumers[..] else { continue };
            let lnode = &self.nodes[l];
            let is_lstm = self.layers[lnode.layer].as_any().downcast_ref::<Lstm>().is_some();
            if is_lstm && lnode.inputs == [enode.output] && !self.outputs.contains(&enode.output) {
                pairs.push(Pair { embedding_node: e, lstm_node: l, ids_input });
            }
        }
        pairs
    }

    /// The tables an inference pass over `inputs` uses, counting its tokens
    /// and making a table once its pair has projected as many tokens as it has rows.
    pub(crate) fn projected_tokens_for(&self, inputs: &[Data]) -> Result<Vec<ProjectedTokens>> {
        let backend = default_backend();
        if !backend.rows_are_independent() {
            return Ok(vec![]);
        }
        let pairs = self.token_pairs();
        if pairs.is_empty() {
            return Ok(vec![]);
        }
        let mut entries = self.token_tables.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut found = vec![];
        for pair in pairs {
            let Data::I32(ids) = &inputs[pair.ids_input] else { continue };
            let sources = self.pair_weights(&pair);
            let [embeddings, kernel, ..] = &sources[..] else { continue };
            let (vocab, g4) = (embeddings.shape()[0], kernel.shape()[1]);
            if vocab.saturating_mul(g4) > MAX_WEIGHT_ELEMENTS {
                continue;
            }
            let current = |e: &Entry| {
                e.lstm_node == pair.lstm_node
                    && e.sources.len() == sources.len()
                    && e.sources.iter().zip(&sources).all(|(w, t)| t.holds(w))
            };
            entries.retain(|e| e.lstm_node != pair.lstm_node || current(e));
            let i = match entries.iter().position(current) {
                Some(i) => i,
                None => {
                    let sources = sources.iter().map(|t| t.downgrade()).collect();
                    entries.push(Entry { lstm_node: pair.lstm_node, sources, tokens_seen: 0, table: None });
                    entries.len() - 1
                }
            };
            let entry = &mut entries[i];
            entry.tokens_seen = entry.tokens_seen.saturating_add(ids.len());
            if entry.table.is_none() && entry.tokens_seen >= vocab {
                let bias = sources.get(2).map(|b| b.data());
                let dims = (embeddings.shape()[1], g4);
                let rows = input_projection(&*backend, embeddings.data(), vocab, (kernel.data(), None), dims, bias)?;
                entry.table = Some(Tensor::from_buf(&[vocab, g4], rows)?);
            }
            if let Some(table) = &entry.table {
                let (embedding_node, lstm_node) = (pair.embedding_node, pair.lstm_node);
                found.push(ProjectedTokens { embedding_node, lstm_node, table: table.clone() });
            }
        }
        Ok(found)
    }

    /// The embeddings, then the LSTM's kernel and bias (its recurrent kernel is
    /// not part of the table).
    fn pair_weights(&self, pair: &Pair) -> Vec<Tensor> {
        let embedding = self.layers[self.nodes[pair.embedding_node].layer].weights();
        let lstm = self.layers[self.nodes[pair.lstm_node].layer].weights();
        let mut sources: Vec<Tensor> = embedding.iter().take(1).map(|w| w.value.clone()).collect();
        sources.extend(lstm.iter().enumerate().filter(|(i, _)| *i != 1).map(|(_, w)| w.value.clone()));
        sources
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autodiff::Tape;
    use crate::init::Rng;
    use crate::layers::Dense;
    use crate::model::ModelBuilder;
    use crate::tensor::{DType, IntTensor};
    use crate::OpsError;

    const VOCAB: usize = 40;
    const LEN: usize = 5;

    /// ids -> Embedding(mask_zero) -> LSTM(return_sequences) -> LSTM -> Dense:
    /// the fused LSTM hands its mask and every step on.
    fn model() -> Model {
        let mut g = ModelBuilder::new("tokens");
        let ids = g.input("ids", &[LEN], DType::I32);
        let x = g.apply(Embedding::new(VOCAB, 8).mask_zero(true).name("q_embed"), &[ids]).unwrap();
        let x = g.apply(Lstm::new(6).return_sequences(true).name("q_lstm"), &[x]).unwrap();
        let x = g.apply(Lstm::new(4).name("top_lstm"), &[x]).unwrap();
        let out = g.apply(Dense::new(3).name("out"), &[x]).unwrap();
        g.build(&[ids], &[out], 7).unwrap()
    }

    /// Token ids with padding (0) at the end of some rows.
    fn ids(batch: usize, seed: u64) -> Vec<Data> {
        let mut rng = Rng::new(seed);
        let v: Vec<i32> = (0..batch * LEN)
            .map(|i| if i % LEN >= LEN - (i / LEN) % 3 { 0 } else { 1 + rng.below(VOCAB - 1) as i32 })
            .collect();
        vec![Data::I32(IntTensor::new(&[batch, LEN], v).unwrap())]
    }

    /// The model's output without tables: the embedding looked up, then projected per token.
    fn direct(m: &Model, inputs: &[Data]) -> Vec<u32> {
        let mut tape = Tape::new();
        let pass = m.forward_on_tape(&mut tape, inputs, false, false, &mut Rng::new(0)).unwrap();
        tape.value(pass.outputs[0]).data().iter().map(|v| v.to_bits()).collect()
    }

    fn predicted(m: &Model, inputs: &[Data]) -> Vec<u32> {
        m.predict_on_batch(inputs).unwrap()[0].data().iter().map(|v| v.to_bits()).collect()
    }

    fn tables_made(m: &Model) -> usize {
        m.token_tables.entries.lock().unwrap().iter().filter(|e| e.table.is_some()).count()
    }

    #[test]
    fn a_table_is_made_once_the_model_projected_as_many_tokens_and_predicts_the_same_bits() {
        let m = model();
        let fused = default_backend().rows_are_independent() as usize;
        let small = ids(4, 1);
        assert_eq!(predicted(&m, &small), direct(&m, &small));
        assert_eq!(tables_made(&m), 0, "20 tokens of a 40-row table: not worth a table yet");
        assert_eq!(predicted(&m, &small), direct(&m, &small));
        assert_eq!(tables_made(&m), fused, "40 tokens seen");
        let large = ids(64, 2);
        assert_eq!(predicted(&m, &large), direct(&m, &large));
        assert_eq!(tables_made(&m), fused);
        let clone = m.clone();
        assert_eq!(tables_made(&clone), 0, "a clone starts without tables");
    }

    #[test]
    fn weights_changed_in_place_drop_the_table() {
        let mut m = model();
        let large = ids(64, 3);
        predicted(&m, &large);
        let fused = default_backend().rows_are_independent() as usize;
        assert_eq!(tables_made(&m), fused);
        for key in ["q_embed/embeddings", "q_lstm/kernel", "q_lstm/bias"] {
            let i = m.weight_keys().iter().position(|k| k == key).unwrap();
            m.weight_values_mut()[i].iter_mut().for_each(|v| *v = *v * 0.5 + 0.01);
            assert_eq!(predicted(&m, &large), direct(&m, &large), "after changing {key}");
        }
    }

    #[test]
    fn an_id_outside_the_vocabulary_names_the_embedding_with_or_without_a_table() {
        let m = model();
        predicted(&m, &ids(64, 4));
        let mut bad = vec![1; 64 * LEN];
        bad[3 * LEN + 2] = VOCAB as i32;
        let bad = vec![Data::I32(IntTensor::new(&[64, LEN], bad).unwrap())];
        match m.predict_on_batch(&bad) {
            Err(OpsError::TokenOutOfRange { layer, row, pos, .. }) => {
                assert_eq!((layer.as_str(), row, pos), ("q_embed", 3, 2))
            }
            other => panic!("expected TokenOutOfRange, got {other:?}"),
        }
    }
}
