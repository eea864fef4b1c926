//! `kallista_train(<data columns>, block, spec)`: one training round as an
//! aggregate. The data columns are those of
//! [`super::args::data_columns`] for the model's inputs, e.g. `frames,
//! frame_encoding, num_frames, height, width, question_ids, answer_id`.
//!
//! Ballista runs it in two stages: a partial aggregate on every scan
//! partition (one per worker, on the executors), which collects its rows by
//! block and runs forward/backward on them ([`super::worker`]), and a final
//! aggregate on one partition, the driver stage, which reduces the partial
//! results in block order ([`super::reduce`]). The state that crosses
//! the shuffle is a few hundred bytes of JSON naming the partial result files.
//! Returns the round's [`RoundResult`] as JSON.

use super::args::{data_columns, external, json_scalar, json_states, named_batch, spec_literal};
use super::model_cache::model_for;
use super::reduce::reduce;
use super::round::{Mode, PartialResult, RoundSpec};
use super::worker::average_part;
use datafusion::arrow::array::{Array, ArrayRef, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};
use datafusion::scalar::ScalarValue;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// See the module docs.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TrainUdaf {
    signature: Signature,
}

impl TrainUdaf {
    pub fn new() -> Self {
        TrainUdaf { signature: Signature::variadic_any(Volatility::Volatile) }
    }
}

impl Default for TrainUdaf {
    fn default() -> Self {
        Self::new()
    }
}

impl AggregateUDFImpl for TrainUdaf {
    fn name(&self) -> &str {
        "kallista_train"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let spec: RoundSpec = spec_literal(self.name(), args.exprs)?;
        Ok(Box::new(TrainAccumulator {
            spec: Arc::new(spec),
            rows: BTreeMap::new(),
            partials: vec![],
            bytes: 0,
            started: Instant::now(),
        }))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new("partials", DataType::Utf8, true))])
    }
}

/// Rows by block until the partition ends, then the partial results.
#[derive(Debug)]
struct TrainAccumulator {
    spec: Arc<RoundSpec>,
    rows: BTreeMap<u64, Vec<RecordBatch>>,
    partials: Vec<PartialResult>,
    bytes: usize,
    /// When the partition's scan began: the time to the first flush is its scan.
    started: Instant,
}

impl TrainAccumulator {
    /// A worker's error, logged here (the executor's log) and passed on typed
    /// ([`crate::error::EngineError::Worker`]): the driver fails the job at
    /// once on a deterministic one instead of resubmitting the round.
    fn failed(&self, e: crate::error::EngineError) -> datafusion::error::DataFusionError {
        let e = crate::error::EngineError::worker(e, self.spec.round, &crate::cluster::this_executor().name);
        log::error!("{e}");
        external(e)
    }

    /// Computes the partition's pending blocks into a partial result.
    fn flush(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let scan_ms = self.started.elapsed().as_secs_f64() * 1e3;
        let blocks = std::mem::take(&mut self.rows);
        self.bytes = 0;
        let loading = Instant::now();
        let model = model_for(&self.spec.model).map_err(|e| self.failed(e))?;
        let load_ms = loading.elapsed().as_secs_f64() * 1e3;
        let first = blocks.keys().next().copied().unwrap_or(0);
        log::info!(
            "round {} (step {}): partition from block {first}: {} blocks, {} steps",
            self.spec.round,
            self.spec.first_step,
            blocks.len(),
            self.spec.steps.len()
        );
        let mut partial = match self.spec.mode {
            Mode::Sync | Mode::Async => Err(crate::error::EngineError::Training(
                "`sync` and `async` run as segments (kallista_segment, kallista_async), not rounds".into(),
            )),
            Mode::Average => average_part(&model, &self.spec, &blocks),
        }
        .map_err(|e| self.failed(e))?;
        partial.times.scan_ms = scan_ms;
        partial.times.load_ms += load_ms;
        self.partials.push(partial);
        Ok(())
    }
}

impl Accumulator for TrainAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let names = data_columns(&self.spec.model.binding);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let batch = named_batch(&names, values)?;
        let blocks = cast(&values[names.len()], &DataType::Int64)?;
        let blocks = blocks.as_any().downcast_ref::<Int64Array>().expect("cast to Int64");
        // The slices below keep the whole batch alive: count it once (a
        // slice reports its parent's buffers, which overcounts many times).
        self.bytes += batch.get_array_memory_size();
        let mut start = 0;
        for i in 1..=blocks.len() {
            if i == blocks.len() || blocks.value(i) != blocks.value(start) {
                let part = batch.slice(start, i - start);
                self.rows.entry(blocks.value(start) as u64).or_default().push(part);
                start = i;
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.flush()?;
        Ok(vec![json_scalar(&self.partials)?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for parts in json_states::<Vec<PartialResult>>(&states[0])? {
            self.partials.extend(parts);
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.flush()?;
        let result = reduce(&self.spec, std::mem::take(&mut self.partials)).map_err(|e| self.failed(e))?;
        json_scalar(&result)
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.bytes
    }
}
