//! One shard's forward and backward pass on one tape: what every training
//! entry point runs per shard of a batch, and what a worker runs per
//! micro-batch when it sums micro-batches in place
//! ([`Model::gradients_on_micro_batch_into`]).

use super::run::{BatchResult, PassAids, WeightGrads};
use super::Model;
use crate::autodiff::{Tape, Var};
use crate::backend::with_single_threaded_kernels;
use crate::error::{OpsError, Result};
use crate::init::Rng;
use crate::tensor::Data;

/// How one shard's pass runs.
pub(crate) struct ShardPass {
    pub training: bool,
    pub with_grads: bool,
    /// Dropout's seed for this shard.
    pub seed: u64,
    /// The shard's share of the batch: its loss is reported times this.
    pub share: f32,
    /// The loss gradient's seed: the shard's gradients come out times this.
    pub scale: f32,
}

impl Model {
    /// The loss, metrics and (`with_grads`) weight gradients of one shard,
    /// added into `start`'s gradients when given (same model).
    pub(crate) fn shard_pass(
        &self,
        how: &ShardPass,
        inputs: &[Data],
        targets: &[Data],
        aids: PassAids<'_>,
        start: Option<WeightGrads>,
    ) -> Result<(BatchResult, WeightGrads)> {
        let compiled = self.compiled()?;
        let samples = inputs.first().map_or(0, |d| d.batch());
        let mut tape = Tape::new();
        let mut rng = Rng::new(how.seed);
        let pass = self.forward_with_tables(&mut tape, inputs, how.training, how.with_grads, &mut rng, aids)?;
        let outs = &pass.outputs;
        let mut total: Option<Var> = None;
        let mut loss_sum = 0.0;
        for ((&o, loss), t) in outs.iter().zip(&compiled.losses).zip(targets) {
            let l = loss.compute(&mut tape, o, t)?;
            loss_sum += tape.value(l).item();
            total = Some(match total {
                None => l,
                Some(acc) => crate::autodiff::add(&mut tape, acc, l)?,
            });
        }
        let mut result = BatchResult { loss: loss_sum * how.share, metrics: vec![], samples };
        for m in &compiled.metrics {
            let (ok, n) = m.count(tape.value(outs[0]), &targets[0])?;
            result.metrics.push((m.name(), ok, n));
        }
        let mut grads = WeightGrads::default();
        if how.with_grads {
            let root = total.ok_or_else(|| OpsError::Config("model has no outputs".into()))?;
            let mut start = start.unwrap_or_default();
            let mut seeded = vec![];
            for (i, &v) in pass.weights.iter().enumerate() {
                if let Some(buf) = start.values.get_mut(i).and_then(Option::take) {
                    seeded.push((v, buf, start.rows.get_mut(i).and_then(Option::take)));
                }
            }
            let mut g = tape.backward_into(root, vec![how.scale], seeded)?;
            grads.values = pass.weights.iter().map(|v| g.take(*v)).collect();
            grads.rows = pass.weights.iter().map(|v| g.take_rows(*v)).collect();
        }
        if !pass.updates.is_empty() {
            grads.state = vec![None; pass.weights.len()];
            for (i, t) in pass.updates {
                grads.state[i] = Some(t.into_vec());
            }
            grads.state_parts = 1;
        }
        Ok((result, grads))
    }

    /// [`Model::gradients_on_micro_batch`] with the gradients times
    /// `scale`, added into `sum` (the gradients of earlier micro-batches of
    /// this model, or empty) in place: a worker that takes the mean of
    /// several batches' gradients one after another (`scale` = 1 / their
    /// count) zeroes no gradient buffer after the first and makes no
    /// addition pass.
    /// The loss reported is this micro-batch's mean.
    pub fn gradients_on_micro_batch_into(
        &self,
        inputs: &[Data],
        targets: &[Data],
        seed: u64,
        scale: f32,
        sum: WeightGrads,
    ) -> Result<(BatchResult, WeightGrads)> {
        self.check_inputs(inputs).and_then(|batch| self.check_targets(targets, batch))?;
        if sum.state.iter().any(Option::is_some) {
            return Err(OpsError::Config(
                "gradients_on_micro_batch_into: state updates cannot be summed in place".into(),
            ));
        }
        let how = ShardPass { training: true, with_grads: true, seed, share: 1.0, scale };
        with_single_threaded_kernels(|| self.shard_pass(&how, inputs, targets, PassAids::default(), Some(sum)))
    }
}
