//! Running a model: forward on a tape, gradients, and the Keras batch calls
//! `train_on_batch`, `test_on_batch`, `predict_on_batch`.
//!
//! A batch is split into one shard per thread of the rayon pool (shards of at
//! least [`MIN_SHARD`] samples); each shard runs forward and backward on its
//! own tape with single-threaded kernels, and the shard gradients are summed
//! in shard order, so results do not depend on thread timing. Each shard's
//! loss is seeded with `shard_size / batch_size`, so the sum is the gradient
//! of the batch mean, as one large batch would give.
//!
//! BatchNormalization in training mode normalises with the statistics of the
//! whole batch, which shards cannot see from their own tapes. Rather than
//! synchronise shards in the middle of a forward pass (a barrier per
//! BatchNormalization, forward and backward), a training step of a model with
//! such a layer (`Layer::uses_batch_statistics`) runs as one shard, whose GEMMs
//! may still use every thread. Results then do not depend on the thread count,
//! as for every other model, and match Keras's statistics over the batch.
//! Inference is sharded as usual (it uses the moving statistics), and so is
//! training when every BatchNormalization is frozen.
//!
//! Inference cuts a large batch finer, into shards of at most
//! [`INFER_SHARD`] samples that the threads take in turn: a shard's
//! activations then fit in the caches and its buffers are reused by the next
//! shard, instead of a few hundred MB of fresh pages per batch (a CNN under
//! TimeDistributed on 256 videos of 8 frames). Samples do not interact in
//! inference; the cut depends on the batch size and thread count only.
//!
//! State updates (the new moving statistics) travel in [`WeightGrads::state`]
//! beside the gradients and are written by [`Model::apply_gradients`] after
//! the optimizer step, so that a step is deterministic and a driver that
//! combines several workers' results averages them.

use super::pass::ShardPass;
use super::token_tables::ProjectedTokens;
use super::Model;
use crate::autodiff::{Tape, TouchedRows, Var};
use crate::backend::{default_backend, with_single_threaded_kernels, Backend, Device, PackedWeights};
use crate::buf::Buf;
use crate::error::{OpsError, Result};
use crate::init::Rng;
use crate::layers::{CallContext, Embedding, Layer, Lstm, StateUpdate, Value};
use crate::losses::Loss;
use crate::metrics::Metric;
use crate::optim::{Optimizer, OptimizerConfig, ParamUpdate, RangedStep};
use crate::tensor::{Data, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// Smallest shard worth its own thread.
pub const MIN_SHARD: usize = 8;

/// Largest shard of an inference batch.
pub const INFER_SHARD: usize = 32;

/// What `compile` fixed: the optimizer, a loss per output, metrics on the first output.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub optimizer: OptimizerConfig,
    pub losses: Vec<Loss>,
    pub metrics: Vec<Metric>,
}

/// Loss and metric counts of one batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchResult {
    /// Mean loss over the batch (summed over outputs).
    pub loss: f32,
    /// (metric name, correct, samples).
    pub metrics: Vec<(String, usize, usize)>,
    pub samples: usize,
}

impl BatchResult {
    /// A metric's value (fraction correct).
    pub fn metric(&self, name: &str) -> Option<f32> {
        self.metrics.iter().find(|m| m.0 == name).map(|m| m.1 as f32 / m.2.max(1) as f32)
    }
}

/// Gradients of every weight (in [`Model::weight_keys`] order); `None` for
/// frozen weights. Also carries the state updates of the step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightGrads {
    pub values: Vec<Option<Buf>>,
    /// New values of non-trainable state weights (BatchNormalization moving
    /// statistics), by weight index as `values`, summed over `state_parts`
    /// contributions; [`Model::apply_gradients`] writes their mean.
    pub state: Vec<Option<Vec<f32>>>,
    /// How many forward passes contributed to `state` (0: no update).
    pub state_parts: usize,
    /// By weight index as `values`: the rows its gradient may be non-zero
    /// in, when known (an Embedding's: the rows of the step's tokens);
    /// `None` (or no entry): anywhere.
    pub rows: Vec<Option<TouchedRows>>,
}

/// Values per chunk of a gradient sum spread over the rayon pool.
const ADD_CHUNK: usize = 1 << 15;

fn add_into<B: std::ops::DerefMut<Target = [f32]> + Clone>(dst: &mut [Option<B>], src: &[Option<B>]) {
    for (a, b) in dst.iter_mut().zip(src) {
        match (a, b) {
            (Some(a), Some(b)) if !crate::backend::spread(a.len(), ADD_CHUNK) => {
                a.iter_mut().zip(b.iter()).for_each(|(x, y)| *x += y);
            }
            (Some(a), Some(b)) => a.par_chunks_mut(ADD_CHUNK).zip(b.par_chunks(ADD_CHUNK)).for_each(|(a, b)| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
            }),
            (a @ None, Some(b)) => *a = Some(b.clone()),
            _ => {}
        }
    }
}

impl WeightGrads {
    /// Adds `other` elementwise (same model); state updates are summed too and
    /// their part counts added, so that the applied state is their mean.
    pub fn add_assign(&mut self, other: &WeightGrads) {
        if self.values.is_empty() {
            self.values = other.values.clone();
            self.rows = other.rows.clone();
        } else {
            self.rows = (0..self.values.len())
                .map(|i| match (&self.values[i], other.values.get(i).and_then(|v| v.as_ref())) {
                    (_, None) => self.rows_of(i).cloned(),
                    (None, Some(_)) => other.rows_of(i).cloned(),
                    (Some(_), Some(_)) => TouchedRows::union(self.rows_of(i)?, other.rows_of(i)?),
                })
                .collect();
            add_into(&mut self.values, &other.values);
        }
        if self.state.is_empty() {
            self.state = other.state.clone();
        } else {
            add_into(&mut self.state, &other.state);
        }
        self.state_parts += other.state_parts;
    }

    /// Where weight `i`'s gradient may be non-zero, when known ([`WeightGrads::rows`]).
    pub fn rows_of(&self, i: usize) -> Option<&TouchedRows> {
        self.rows.get(i).and_then(|r| r.as_ref())
    }

    /// [`WeightGrads::add_assign`] that takes `other` whole when nothing was
    /// added yet: the first part's buffers become the sum, with the same bits,
    /// instead of being copied (tens of MB per micro-batch for W1).
    pub fn add_owned(&mut self, other: WeightGrads) {
        if self.values.is_empty() && self.state.is_empty() && self.state_parts == 0 {
            *self = other;
        } else {
            self.add_assign(&other);
        }
    }
}

/// What [`Model::forward_on_tape`] recorded.
#[derive(Clone, Debug)]
pub struct ForwardPass {
    /// One var per model output.
    pub outputs: Vec<Var>,
    /// One leaf per weight, in [`Model::weight_keys`] order.
    pub weights: Vec<Var>,
    /// State updates by weight index (training mode only).
    pub updates: Vec<(usize, Tensor)>,
}

impl Model {
    /// Sets the optimizer, one loss for every output, and metrics (Keras `compile`).
    pub fn compile(&mut self, optimizer: OptimizerConfig, loss: Loss, metrics: &[Metric]) {
        self.compile_multi(optimizer, vec![loss; self.outputs.len()], metrics);
    }

    /// `compile` with one loss per output.
    pub fn compile_multi(&mut self, optimizer: OptimizerConfig, losses: Vec<Loss>, metrics: &[Metric]) {
        self.optimizer = Some(Optimizer::new(optimizer.clone()));
        self.compiled = Some(Compiled { optimizer, losses, metrics: metrics.to_vec() });
    }

    /// Checks count, dtype and per-sample shape of the inputs; returns the batch size.
    pub fn check_inputs(&self, inputs: &[Data]) -> Result<usize> {
        if inputs.len() != self.inputs.len() {
            return Err(OpsError::Arity {
                model: self.name.clone(),
                what: "inputs",
                expected: self.inputs.len(),
                got: inputs.len(),
            });
        }
        let batch = inputs.first().map_or(0, |d| d.batch());
        for (d, &t) in inputs.iter().zip(&self.inputs) {
            let spec = &self.tensors[t].spec;
            if d.dtype() != spec.dtype
                || d.shape().len() != spec.shape.len() + 1
                || d.shape()[1..] != spec.shape[..]
                || d.batch() != batch
            {
                return Err(OpsError::InputMismatch {
                    model: self.name.clone(),
                    input: self.tensors[t].name.clone(),
                    expected: format!(
                        "{} [batch={batch}, {}]",
                        spec.dtype,
                        spec.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
                    ),
                    got: format!("{} {:?}", d.dtype(), d.shape()),
                });
            }
        }
        Ok(batch)
    }

    /// Runs the graph on `tape`: weights become leaves (requiring a gradient when
    /// `with_grads` and trainable), inputs become values (`uint8` ones as f32
    /// leaves, see [`crate::DType::U8`]).
    pub fn forward_on_tape(
        &self,
        tape: &mut Tape,
        inputs: &[Data],
        training: bool,
        with_grads: bool,
        rng: &mut Rng,
    ) -> Result<ForwardPass> {
        self.forward_with_tables(tape, inputs, training, with_grads, rng, PassAids::default())
    }

    /// [`Model::forward_on_tape`] where the LSTM nodes of `projected` run over
    /// their tables (inference only).
    pub(super) fn forward_with_tables(
        &self,
        tape: &mut Tape,
        inputs: &[Data],
        training: bool,
        with_grads: bool,
        rng: &mut Rng,
        aids: PassAids<'_>,
    ) -> Result<ForwardPass> {
        self.check_inputs(inputs)?;
        let mut flat = vec![];
        let wvars: Vec<Vec<Var>> = self
            .layers
            .iter()
            .map(|l| {
                let vars: Vec<Var> = l
                    .weights()
                    .into_iter()
                    .zip(l.weight_paths())
                    .map(|(w, p)| tape.leaf(w.value.clone(), with_grads && p.trainable))
                    .collect();
                flat.extend_from_slice(&vars);
                vars
            })
            .collect();
        let values: Vec<Value> = inputs
            .iter()
            .map(|d| {
                Ok(match d {
                    Data::F32(x) => Value::Float { var: tape.leaf(x.clone(), false), mask: None },
                    Data::I32(x) => Value::Int(x.clone()),
                    Data::U8(x) => {
                        let f = Tensor::new(x.shape(), x.data().iter().map(|&b| b as f32).collect())?;
                        Value::Float { var: tape.leaf(f, false), mask: None }
                    }
                })
            })
            .collect::<Result<_>>()?;
        let mut ctx = CallContext::new(training, rng);
        ctx.packed = aids.packed.cloned();
        let outs = self.run_graph(tape, &wvars, values, &mut ctx, aids.projected)?;
        let outputs = outs
            .iter()
            .zip(&self.outputs)
            .map(|(v, &o)| match v {
                Value::Float { var, .. } => Ok(*var),
                _ => Err(OpsError::Config(format!("output '{}' is not a float tensor", self.tensors[o].name))),
            })
            .collect::<Result<_>>()?;
        let index: std::collections::HashMap<Var, usize> = flat.iter().enumerate().map(|(i, v)| (*v, i)).collect();
        let updates = ctx
            .updates
            .into_iter()
            .map(|StateUpdate { weight, value }| {
                index.get(&weight).map(|&i| (i, value)).ok_or_else(|| {
                    OpsError::Config(format!(
                        "model '{}': a layer updated a var that is not one of its weights",
                        self.name
                    ))
                })
            })
            .collect::<Result<_>>()?;
        Ok(ForwardPass { outputs, weights: flat, updates })
    }

    /// Runs the graph's nodes in order on values already on `tape`; `wvars` holds
    /// each layer's weight vars. Returns the output values. A nested model's
    /// forward calls this with the vars its outer model gave it. The LSTM
    /// nodes of `projected` run over their tables and their Embedding nodes
    /// are skipped (inference only: see `token_tables.rs`).
    pub(crate) fn run_graph(
        &self,
        tape: &mut Tape,
        wvars: &[Vec<Var>],
        inputs: Vec<Value>,
        ctx: &mut CallContext<'_>,
        projected: &[ProjectedTokens],
    ) -> Result<Vec<Value>> {
        let mut values: Vec<Option<Value>> = vec![None; self.tensors.len()];
        for (v, &t) in inputs.into_iter().zip(&self.inputs) {
            values[t] = Some(v);
        }
        let projected: &[ProjectedTokens] = if ctx.training { &[] } else { projected };
        for (n, node) in self.nodes.iter().enumerate() {
            if projected.iter().any(|p| p.embedding_node == n) {
                continue;
            }
            if let Some(p) = projected.iter().find(|p| p.lstm_node == n) {
                values[node.output] = Some(self.lstm_over_table(tape, wvars, &values, p, ctx)?);
                continue;
            }
            let args: Vec<Value> = node
                .inputs
                .iter()
                .map(|&i| {
                    values[i].clone().ok_or_else(|| {
                        OpsError::Config(format!("tensor '{}' used before it is computed", self.tensors[i].name))
                    })
                })
                .collect::<Result<_>>()?;
            let layer = &self.layers[node.layer];
            values[node.output] = Some(layer.forward(tape, &wvars[node.layer], &args, ctx)?);
        }
        self.outputs
            .iter()
            .map(|&o| {
                values[o]
                    .clone()
                    .ok_or_else(|| OpsError::Config(format!("output '{}' is not computed", self.tensors[o].name)))
            })
            .collect()
    }

    /// The matrices of this model's LSTMs (kernel and recurrent kernel) packed
    /// once for the products of all the shards of a batch (see
    /// `backend::packed`); empty where the backend has no packed layout.
    fn packed_weights(&self) -> Result<PackedWeights> {
        let backend = default_backend();
        let mut packed = PackedWeights::default();
        for layer in &self.layers {
            if layer.as_any().downcast_ref::<Lstm>().is_some() {
                for weight in layer.weights().into_iter().take(2) {
                    packed.add(&*backend, &weight.value)?;
                }
            }
        }
        Ok(packed)
    }

    /// [`Model::packed_weights`] where a batch has several shards to share them.
    fn packed_for(&self, shards: &[(usize, usize)]) -> Result<Option<Arc<PackedWeights>>> {
        Ok(if shards.len() > 1 { Some(Arc::new(self.packed_weights()?)) } else { None })
    }

    /// Whether a training step must see the whole batch at once (see the module doc).
    fn needs_whole_batch(&self) -> bool {
        self.layers.iter().any(|l| l.uses_batch_statistics())
    }

    /// An LSTM node over its table of projected tokens, fed the ids its
    /// Embedding node would have looked up.
    fn lstm_over_table(
        &self,
        tape: &mut Tape,
        wvars: &[Vec<Var>],
        values: &[Option<Value>],
        p: &ProjectedTokens,
        ctx: &CallContext<'_>,
    ) -> Result<Value> {
        let (enode, lnode) = (&self.nodes[p.embedding_node], &self.nodes[p.lstm_node]);
        let embedding = self.layers[enode.layer].as_any().downcast_ref::<Embedding>();
        let lstm = self.layers[lnode.layer].as_any().downcast_ref::<Lstm>();
        let (Some(embedding), Some(lstm), Some(Value::Int(ids))) = (embedding, lstm, &values[enode.inputs[0]]) else {
            return Err(OpsError::Config(format!("model '{}': a projected-token table lost its layers", self.name)));
        };
        let mask = embedding.mask_of(ids);
        lstm.forward_over_projected_tokens(tape, &wvars[lnode.layer], &p.table, (ids, mask), embedding.name(), ctx)
    }

    /// Forward pass in inference mode; one tensor per output.
    pub fn predict_on_batch(&self, inputs: &[Data]) -> Result<Vec<Tensor>> {
        let batch = self.check_inputs(inputs)?;
        let projected = self.projected_tokens_for(inputs)?;
        let shards = infer_shard_bounds(batch);
        let packed = self.packed_for(&shards)?;
        let parts: Vec<Vec<Tensor>> = run_shards(&shards, |s, e| {
            let sliced: Vec<Data> = slice_all(inputs, s, e, shards.len());
            let mut tape = Tape::new();
            let mut rng = Rng::new(0);
            let aids = PassAids { projected: &projected, packed: packed.as_ref() };
            let pass = self.forward_with_tables(&mut tape, &sliced, false, false, &mut rng, aids)?;
            Ok(pass.outputs.iter().map(|v| tape.value(*v).clone()).collect())
        })?;
        (0..self.outputs.len()).map(|o| concat_rows(parts.iter().map(|p| &p[o]).collect())).collect()
    }

    pub(super) fn compiled(&self) -> Result<&Compiled> {
        self.compiled.as_ref().ok_or_else(|| OpsError::NotCompiled(self.name.clone()))
    }

    pub(super) fn check_targets(&self, targets: &[Data], batch: usize) -> Result<()> {
        if targets.len() != self.outputs.len() {
            return Err(OpsError::Arity {
                model: self.name.clone(),
                what: "targets",
                expected: self.outputs.len(),
                got: targets.len(),
            });
        }
        for (t, &o) in targets.iter().zip(&self.outputs) {
            if t.batch() != batch {
                return Err(OpsError::InputMismatch {
                    model: self.name.clone(),
                    input: format!("target of '{}'", self.tensors[o].name),
                    expected: format!("batch {batch}"),
                    got: format!("{:?}", t.shape()),
                });
            }
        }
        Ok(())
    }

    /// Loss, metrics and weight gradients of one batch (no update): what a
    /// worker computes in a `sync` round.
    pub fn gradients_on_batch(&self, inputs: &[Data], targets: &[Data]) -> Result<(BatchResult, WeightGrads)> {
        let step_seed = self.seed ^ self.steps_run.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.loss_and_grads(inputs, targets, true, true, None, step_seed)
    }

    /// Gradients of one micro-batch as one shard on this thread, with
    /// single-threaded kernels and the given dropout seed: the result depends
    /// only on the weights, the rows and `seed`, never on the thread count, so
    /// distributed workers that split a batch into the same micro-batches
    /// compute the same numbers.
    pub fn gradients_on_micro_batch(
        &self,
        inputs: &[Data],
        targets: &[Data],
        seed: u64,
    ) -> Result<(BatchResult, WeightGrads)> {
        with_single_threaded_kernels(|| self.loss_and_grads(inputs, targets, true, true, Some(1), seed))
    }

    fn loss_and_grads(
        &self,
        inputs: &[Data],
        targets: &[Data],
        training: bool,
        with_grads: bool,
        max_shards: Option<usize>,
        step_seed: u64,
    ) -> Result<(BatchResult, WeightGrads)> {
        self.compiled()?;
        let batch = self.check_inputs(inputs)?;
        self.check_targets(targets, batch)?;
        let one_shard = max_shards == Some(1) || (training && self.needs_whole_batch());
        let shards = if one_shard { vec![(0, batch)] } else { shard_bounds(batch) };
        let projected = if training || with_grads { vec![] } else { self.projected_tokens_for(inputs)? };
        // Evaluation only: a training step packed once was slower than each shard
        // packing its own (W1 forward and backward: median 31.5 ms against 29.7).
        let packed = if !training && !with_grads { self.packed_for(&shards)? } else { None };
        let parts: Vec<(BatchResult, WeightGrads)> = run_shards(&shards, |s, e| {
            let ins = slice_all(inputs, s, e, shards.len());
            let tgs = slice_all(targets, s, e, shards.len());
            let share = (e - s) as f32 / batch as f32;
            let pass = ShardPass { training, with_grads, seed: step_seed.wrapping_add(s as u64), share, scale: share };
            let aids = PassAids { projected: &projected, packed: packed.as_ref() };
            self.shard_pass(&pass, &ins, &tgs, aids, None)
        })?;
        let mut result = BatchResult { loss: 0.0, metrics: vec![], samples: batch };
        let mut grads = WeightGrads::default();
        for (r, g) in parts {
            result.loss += r.loss;
            if result.metrics.is_empty() {
                result.metrics = r.metrics;
            } else {
                for (a, b) in result.metrics.iter_mut().zip(&r.metrics) {
                    a.1 += b.1;
                    a.2 += b.2;
                }
            }
            grads.add_owned(g);
        }
        Ok((result, grads))
    }

    /// Applies gradients with the compiled optimizer (one step) and writes the
    /// state updates (their mean when several parts contributed).
    pub fn apply_gradients(&mut self, grads: WeightGrads) -> Result<()> {
        let entries: Vec<(String, bool)> = self.weight_entries().into_iter().map(|(k, _, t)| (k, t)).collect();
        let optimizer = self.optimizer.as_mut().ok_or_else(|| OpsError::NotCompiled(self.name.clone()))?;
        let weights: Vec<&mut crate::layers::Weight> = self.layers.iter_mut().flat_map(|l| l.weights_mut()).collect();
        for ((w, s), (key, _)) in weights.iter().zip(&grads.state).zip(&entries) {
            if let Some(s) = s {
                if s.len() != w.value.len() {
                    return Err(OpsError::shape(
                        format!("apply_gradients: state of '{key}'"),
                        "the update's size differs from the weight's",
                        &[w.value.shape(), &[s.len()]],
                    ));
                }
            }
        }
        let state_scale = 1.0 / grads.state_parts.max(1) as f32;
        let mut keys = Vec::new();
        let mut updates = Vec::new();
        let (mut state, mut values) = (grads.state.into_iter(), grads.values.into_iter());
        for (w, (key, trainable)) in weights.into_iter().zip(&entries) {
            if let Some(Some(s)) = state.next() {
                w.value.data_mut().iter_mut().zip(&s).for_each(|(v, n)| *v = n * state_scale);
            }
            if let (true, Some(g)) = (*trainable, values.next().flatten()) {
                keys.push(key.clone());
                updates.push((w.value.data_mut(), g));
            }
        }
        let mut params: Vec<ParamUpdate<'_>> =
            updates.into_iter().zip(&keys).map(|((value, grad), key)| ParamUpdate { key, value, grad }).collect();
        optimizer.apply(&mut params)
    }

    /// An optimizer step to apply range by range ([`RangedStep`]) to the
    /// weights `indices` (in [`Model::weight_keys`] order, each trainable,
    /// each once): the step, and each weight's values with its optimizer
    /// slots, in the order of `indices`. `None` when the optimizer clips
    /// gradients by norm (use [`Model::apply_gradients`]).
    pub fn ranged_update(&mut self, indices: &[usize]) -> Result<Option<RangedUpdate<'_>>> {
        let vars = self.trainable_vars(indices)?;
        let vars: Vec<(&str, usize)> = vars.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        let optimizer = self.optimizer.as_mut().ok_or_else(|| OpsError::NotCompiled(self.name.clone()))?;
        let Some(step) = optimizer.ranged_step(&vars)? else { return Ok(None) };
        Ok(Some(RangedUpdate { step, parts: self.weights_and_slots_mut(indices)? }))
    }

    /// The values and optimizer slots of the weights `indices` (as in
    /// [`Model::ranged_update`], whose first step made the slots), to be
    /// changed in place: processes that each updated a share of them
    /// exchange the rest.
    #[allow(clippy::type_complexity)]
    pub fn weights_and_slots_mut(&mut self, indices: &[usize]) -> Result<Vec<(&mut [f32], Vec<&mut [f32]>)>> {
        let vars = self.trainable_vars(indices)?;
        let optimizer = self.optimizer.as_mut().ok_or_else(|| OpsError::NotCompiled(self.name.clone()))?;
        let mut slots: HashMap<&str, &mut Vec<Buf>> =
            optimizer.slots.iter_mut().map(|(k, v)| (k.as_str(), v)).collect();
        let mut weights: Vec<Option<&mut crate::layers::Weight>> =
            self.layers.iter_mut().flat_map(|l| l.weights_mut()).map(Some).collect();
        let mut parts = Vec::with_capacity(indices.len());
        for (&i, (key, _)) in indices.iter().zip(&vars) {
            let twice = || OpsError::Config(format!("weights_and_slots_mut: weight '{key}' is named twice"));
            let weight = weights[i].take().ok_or_else(twice)?;
            let slots = slots.remove(key.as_str()).ok_or_else(|| {
                OpsError::Config(format!("weights_and_slots_mut: '{key}' has no optimizer slots yet"))
            })?;
            parts.push((weight.value.data_mut(), slots.iter_mut().map(|s| s.as_mut_slice()).collect()));
        }
        Ok(parts)
    }

    /// The key and length of each of the weights `indices`, each trainable.
    fn trainable_vars(&self, indices: &[usize]) -> Result<Vec<(String, usize)>> {
        let entries: Vec<(String, usize, bool)> =
            self.weight_entries().into_iter().map(|(k, w, t)| (k, w.value.len(), t)).collect();
        indices
            .iter()
            .map(|&i| match entries.get(i) {
                Some((key, len, true)) => Ok((key.clone(), *len)),
                _ => Err(OpsError::Config(format!("weight {i} is not a trainable weight"))),
            })
            .collect()
    }

    /// Moves every weight to `backend`'s device, where they then stay: its
    /// kernels read them and the optimizer updates them in place there.
    pub fn move_weights_to(&mut self, backend: &dyn Backend) -> Result<()> {
        for w in self.layers.iter_mut().flat_map(|l| l.weights_mut()) {
            w.value.move_to(backend)?;
        }
        Ok(())
    }

    /// Steps run so far (it seeds dropout); a worker that continues another
    /// process's training sets it so that its random streams continue too.
    pub fn steps_run(&self) -> u64 {
        self.steps_run
    }

    /// See [`Model::steps_run`].
    pub fn set_steps_run(&mut self, steps: u64) {
        self.steps_run = steps;
    }

    /// One training step on a batch: forward, backward, optimizer update.
    pub fn train_on_batch(&mut self, inputs: &[Data], targets: &[Data]) -> Result<BatchResult> {
        self.move_weights_to(&*default_backend())?;
        let (result, grads) = self.gradients_on_batch(inputs, targets)?;
        self.apply_gradients(grads)?;
        self.steps_run += 1;
        Ok(result)
    }

    /// Loss and metrics of a batch in inference mode.
    pub fn test_on_batch(&self, inputs: &[Data], targets: &[Data]) -> Result<BatchResult> {
        Ok(self.loss_and_grads(inputs, targets, false, false, None, 0)?.0)
    }
}

/// What [`Model::ranged_update`] hands out.
pub struct RangedUpdate<'a> {
    pub step: RangedStep,
    /// Each weight's values and its optimizer slots (each as long as the values).
    pub parts: Vec<(&'a mut [f32], Vec<&'a mut [f32]>)>,
}

/// What a pass brings to the graph besides its inputs: tables of projected
/// tokens (inference: `token_tables.rs`) and weights packed once for the
/// products of all the shards of a batch (`backend::packed`).
#[derive(Clone, Copy, Default)]
pub(crate) struct PassAids<'a> {
    pub projected: &'a [ProjectedTokens],
    pub packed: Option<&'a Arc<PackedWeights>>,
}

/// `[start, end)` of each shard of a batch: one per thread on the CPU, the
/// whole batch on a device (whose kernels are parallel already).
fn shard_bounds(batch: usize) -> Vec<(usize, usize)> {
    if default_backend().device() != Device::Cpu {
        return vec![(0, batch)];
    }
    even_cuts(batch, rayon::current_num_threads().min(batch / MIN_SHARD).max(1))
}

/// `[start, end)` of each inference shard: one per thread, cut finer when
/// those would exceed [`INFER_SHARD`] samples.
fn infer_shard_bounds(batch: usize) -> Vec<(usize, usize)> {
    if default_backend().device() != Device::Cpu {
        return vec![(0, batch)];
    }
    let threads = rayon::current_num_threads().max(1);
    even_cuts(batch, threads.max(batch.div_ceil(INFER_SHARD)).min(batch / MIN_SHARD).max(1))
}

/// `n` ranges of `0..batch`, as even as they divide.
fn even_cuts(batch: usize, n: usize) -> Vec<(usize, usize)> {
    (0..n).map(|i| (i * batch / n, (i + 1) * batch / n)).collect()
}

fn run_shards<T: Send>(shards: &[(usize, usize)], f: impl Fn(usize, usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    if shards.len() == 1 {
        return Ok(vec![f(shards[0].0, shards[0].1)?]);
    }
    shards.par_iter().map(|&(s, e)| with_single_threaded_kernels(|| f(s, e))).collect()
}

fn slice_all(data: &[Data], s: usize, e: usize, n_shards: usize) -> Vec<Data> {
    if n_shards == 1 {
        return data.to_vec();
    }
    data.iter().map(|d| d.slice_rows(s, e)).collect()
}

fn concat_rows(parts: Vec<&Tensor>) -> Result<Tensor> {
    if parts.len() == 1 {
        return Ok(parts[0].clone());
    }
    let mut shape = parts[0].shape().to_vec();
    shape[0] = parts.iter().map(|p| p.shape()[0]).sum();
    let data = parts.iter().flat_map(|p| p.data().iter().copied()).collect();
    Tensor::new(&shape, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grads(values: &[Option<f32>], rows: Vec<Option<TouchedRows>>) -> WeightGrads {
        let values = values.iter().map(|v| v.map(|x| Buf::from(vec![x; 4]))).collect();
        WeightGrads { values, rows, ..Default::default() }
    }

    /// Summing gradients unites their rows; a weight that one side wrote
    /// anywhere is then anywhere, and a side without a gradient adds none.
    #[test]
    fn summed_gradients_unite_their_rows() {
        let rows = |r: &[u32]| Some(TouchedRows::new(2, r.to_vec()));
        let mut sum = grads(&[Some(1.0), Some(1.0), None, Some(1.0)], vec![rows(&[1]), rows(&[0]), None, rows(&[1])]);
        sum.add_assign(&grads(&[Some(1.0), Some(1.0), Some(1.0), None], vec![rows(&[0, 1]), None, rows(&[1]), None]));
        assert_eq!(sum.rows, vec![rows(&[0, 1]), None, rows(&[1]), rows(&[1])]);
    }

    /// An inference batch of several shards packs each LSTM's two matrices
    /// once, and predicts the bits of one unpacked pass over the whole batch;
    /// a weight changed in place no longer finds its packed form.
    #[test]
    fn inference_over_several_shards_packs_the_lstm_weights_and_keeps_the_bits() {
        use crate::layers::Dense;
        use crate::model::ModelBuilder;
        use crate::tensor::DType;
        let mut g = ModelBuilder::new("packed");
        let frames = g.input("frames", &[6, 40], DType::F32);
        let x = g.apply(Lstm::new(16).return_sequences(true).name("low"), &[frames]).unwrap();
        let x = g.apply(Lstm::new(8).name("high"), &[x]).unwrap();
        let out = g.apply(Dense::new(3).name("out"), &[x]).unwrap();
        let mut model = g.build(&[frames], &[out], 11).unwrap();
        let packs = default_backend().pack_matrix(crate::backend::MatRef::dense(&[1.0], 1, 1)).unwrap().is_some();
        let packed = model.packed_weights().unwrap();
        assert_eq!(packed.len(), 4 * packs as usize);
        let low_kernel = |m: &Model| m.layers.iter().find(|l| l.name() == "low").unwrap().weights()[0].value.clone();
        assert_eq!(packed.find(&low_kernel(&model)).is_some(), packs, "the kernel finds its packed form");
        let batch = 3 * INFER_SHARD + 5;
        let mut rng = Rng::new(5);
        let x =
            vec![Data::F32(Tensor::new(&[batch, 6, 40], (0..batch * 240).map(|_| rng.normal()).collect()).unwrap())];
        let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let mut tape = Tape::new();
        let pass = model.forward_on_tape(&mut tape, &x, false, false, &mut Rng::new(0)).unwrap();
        assert_eq!(bits(&model.predict_on_batch(&x).unwrap()[0]), bits(tape.value(pass.outputs[0])));
        let i = model.weight_keys().iter().position(|k| k == "low/kernel").unwrap();
        model.weight_values_mut()[i][0] += 1.0;
        assert!(packed.find(&low_kernel(&model)).is_none(), "a changed kernel found its old packed form");
    }
}
