//! `kallista_segment(rank, spec)` and `kallista_async(rank, spec)`: a job of
//! one long task per rank ([`RankJob`]: a `sync` segment, an `async`
//! segment) as an aggregate over the job's rank table, `world` Parquet
//! files of one row each (the rank).
//! Scanned in `world` partitions, one per task and, with the scheduler's
//! round-robin placement, one per executor while slots allow; each partial
//! aggregate is one rank and runs the whole job when its input ends
//! ([`RankJob::run_rank`]): it reads its blocks itself, step by step, and
//! buffers nothing of its input but the rank. The final aggregate combines
//! the ranks' reports into the segment's [`RoundResult`], as JSON (for
//! `sync`, after checking that every rank ended with the same weights).

use super::args::{external, json_scalar, json_states, spec_literal};
use super::metrics::PartLine;
use super::round::RoundResult;
use super::segment::{run_rank, RankReport, SegmentSpec};
use datafusion::arrow::array::{Array, ArrayRef, Int64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, Signature, Volatility};
use datafusion::scalar::ScalarValue;
use std::sync::Arc;

/// A job of long tasks, one per rank, run by [`RanksUdaf`]: a `sync`
/// segment ([`SegmentSpec`]) or an `async` segment
/// ([`super::async_worker::AsyncSpec`]).
pub trait RankJob: serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static {
    /// What a rank reports at its end.
    type Report: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync;
    /// The SQL function's name.
    const FUNCTION: &'static str;
    /// The step the job starts at (named in errors).
    fn first_step(&self) -> u64;
    fn run_rank(&self, rank: usize) -> crate::error::Result<Self::Report>;
    /// The job's result from every rank's report.
    fn combine(&self, reports: Vec<Self::Report>) -> crate::error::Result<RoundResult>;
}

/// `<function>(rank, spec)` over a rank table (see the module docs).
pub struct RanksUdaf<J> {
    signature: Signature,
    job: std::marker::PhantomData<fn() -> J>,
}

impl<J> std::fmt::Debug for RanksUdaf<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RanksUdaf")
    }
}

impl<J> PartialEq for RanksUdaf<J> {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl<J> Eq for RanksUdaf<J> {}

impl<J: RankJob> std::hash::Hash for RanksUdaf<J> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        J::FUNCTION.hash(state)
    }
}

impl<J: RankJob> RanksUdaf<J> {
    pub fn new() -> Self {
        RanksUdaf { signature: Signature::variadic_any(Volatility::Volatile), job: std::marker::PhantomData }
    }
}

impl<J: RankJob> Default for RanksUdaf<J> {
    fn default() -> Self {
        Self::new()
    }
}

/// `kallista_segment(rank, spec)`.
pub type SegmentUdaf = RanksUdaf<SegmentSpec>;

impl<J: RankJob> AggregateUDFImpl for RanksUdaf<J> {
    fn name(&self) -> &str {
        J::FUNCTION
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let spec: J = spec_literal(self.name(), args.exprs)?;
        Ok(Box::new(RanksAccumulator { spec: Arc::new(spec), ranks: vec![], reports: vec![] }))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new("ranks", DataType::Utf8, true))])
    }
}

#[derive(Debug)]
struct RanksAccumulator<J: RankJob> {
    spec: Arc<J>,
    /// Ranks of this partition not yet run (one, in a well-formed job).
    ranks: Vec<usize>,
    reports: Vec<J::Report>,
}

impl<J: RankJob> RanksAccumulator<J> {
    fn run_pending(&mut self) -> Result<()> {
        if self.ranks.len() > 1 {
            return Err(DataFusionError::Plan(format!(
                "{}: ranks {:?} in one partition; each rank needs a partition of its own",
                J::FUNCTION,
                self.ranks
            )));
        }
        for rank in std::mem::take(&mut self.ranks) {
            let round = self.spec.first_step();
            let report = self.spec.run_rank(rank).map_err(|e| {
                external(crate::error::EngineError::worker(e, round, &crate::cluster::this_executor().name))
            })?;
            self.reports.push(report);
        }
        Ok(())
    }
}

impl<J: RankJob> Accumulator for RanksAccumulator<J> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let ranks = cast(&values[0], &DataType::Int64)?;
        let ranks = ranks.as_any().downcast_ref::<Int64Array>().expect("cast to Int64");
        self.ranks.extend(ranks.iter().flatten().map(|r| r as usize));
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.run_pending()?;
        Ok(vec![json_scalar(&self.reports)?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for reports in json_states::<Vec<J::Report>>(&states[0])? {
            self.reports.extend(reports);
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.run_pending()?;
        json_scalar(&self.spec.combine(std::mem::take(&mut self.reports)).map_err(external)?)
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

impl RankJob for SegmentSpec {
    type Report = RankReport;
    const FUNCTION: &'static str = "kallista_segment";

    fn first_step(&self) -> u64 {
        self.first_step
    }

    fn run_rank(&self, rank: usize) -> crate::error::Result<RankReport> {
        run_rank(self, rank)
    }

    fn combine(&self, reports: Vec<RankReport>) -> crate::error::Result<RoundResult> {
        combine(self, reports)
    }
}

/// The segment's result from its ranks' reports: every rank present, all
/// with the same weights.
fn combine(spec: &SegmentSpec, mut reports: Vec<RankReport>) -> crate::error::Result<RoundResult> {
    use crate::error::EngineError;
    reports.sort_by_key(|r| r.rank);
    let ranks: Vec<usize> = reports.iter().map(|r| r.rank).collect();
    if ranks != (0..spec.world).collect::<Vec<_>>() {
        return Err(EngineError::Collective(format!(
            "segment at step {}: reports of ranks {ranks:?} of {}",
            spec.first_step, spec.world
        )));
    }
    if let Some(other) = reports.iter().find(|r| r.weights_hash != reports[0].weights_hash) {
        return Err(EngineError::Training(format!(
            "segment at step {}: rank 0 ended with weights {} but rank {} (on {}) with {}: the ranks diverged",
            spec.first_step, reports[0].weights_hash, other.rank, other.executor, other.weights_hash
        )));
    }
    let mut result =
        RoundResult { file: Some(spec.next_weights.clone()), partitions: spec.world as u64, ..Default::default() };
    let steps = spec.steps.len().max(1) as f64;
    for r in &reports {
        result.rows += r.rows;
        result.loss_sum += r.loss_sum;
        result.correct += r.correct;
        if r.times.compute_ms >= result.slowest.compute_ms {
            result.slowest = r.times.clone();
        }
        result.reduce_ms = result.reduce_ms.max(r.allreduce_ms);
        result.sent_bytes_per_step = result.sent_bytes_per_step.max(r.sent_bytes as f64 / steps);
        result.parts.push(PartLine {
            executor: r.executor.clone(),
            first_block: r.rank as u64,
            rows: r.rows,
            scan_ms: r.times.scan_ms,
            load_ms: r.times.load_ms,
            compute_ms: r.times.compute_ms,
            write_ms: r.times.write_ms,
        });
    }
    result.generation = Some(spec.generation);
    result.processes = reports.first().map_or(0, |r| r.processes as u64);
    result.shared_memory_links = reports.iter().filter(|r| r.shared_memory).count() as u64;
    Ok(result)
}
