//! What a training operator computes on its partition's rows: the work of
//! one worker in one round, apart from Arrow and DataFusion.
//!
//! `sync`: one gradient per block (micro-batch) with single-threaded kernels,
//! blocks in parallel on the executor's cores, summed exactly
//! ([`super::exact`]), so a worker's share adds up to the same bits however
//! the blocks were spread over workers. `average`: local optimizer steps on
//! the worker's blocks of each step, then the change of every weight and the
//! final optimizer slots.

use super::exact::add_exact;
use super::round::{PartialResult, RoundSpec};
use super::vectors::{write_vectors, Vectors};
use crate::error::{EngineError, Result};
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{ArrowPrimitiveType, DataType, Field, Float32Type, Int32Type};
use datafusion::arrow::record_batch::RecordBatch;
use kallista_data::parquet_io::ClipDecoder;
use kallista_ops::model::Model;
use kallista_ops::{ByteTensor, Data, IntTensor, Tensor};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Model inputs and the target of a block's rows (named as [`super::args::data_columns`]).
pub fn decode_rows(model: &Model, batch: &RecordBatch, input_columns: &[String]) -> Result<(Vec<Data>, Data)> {
    let rows = batch.num_rows();
    let source = Path::new("staged data");
    let mut clips = if input_columns.iter().any(|c| c == "frames") {
        Some(ClipDecoder { path: source, first_row: 0 }.decode(batch)?)
    } else {
        None
    };
    let specs = model.input_specs();
    let column = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| EngineError::Training(format!("the data has no {name} column")))
    };
    let mut inputs = Vec::with_capacity(input_columns.len());
    for (c, spec) in input_columns.iter().zip(&specs) {
        let mut shape = vec![rows];
        shape.extend_from_slice(&spec.spec.shape);
        inputs.push(match c.as_str() {
            "frames" => {
                // Moved, not copied: the frames are the bulk of a block.
                let clips = clips.take().ok_or_else(|| EngineError::Training("frames bound to two inputs".into()))?;
                Data::U8(ByteTensor::new(&clips.shape, clips.frames)?)
            }
            "question_ids" => Data::I32(IntTensor::new(&shape, list_values::<Int32Type>(column(c)?, c, &shape)?)?),
            "features" => Data::F32(Tensor::new(&shape, list_values::<Float32Type>(column(c)?, c, &shape)?)?),
            other => return Err(EngineError::Training(format!("unknown input column '{other}'"))),
        });
    }
    let answers = cast(column("answer_id")?, &DataType::Int32).map_err(|e| EngineError::Training(e.to_string()))?;
    let answers = answers.as_primitive::<Int32Type>().values().to_vec();
    Ok((inputs, Data::I32(IntTensor::new(&[rows], answers)?)))
}

/// The flattened values of a list column whose rows must hold `shape[1..]` values each.
fn list_values<T: ArrowPrimitiveType>(col: &ArrayRef, name: &str, shape: &[usize]) -> Result<Vec<T::Native>> {
    let per_row: usize = shape[1..].iter().product();
    let list = cast(col, &DataType::List(Arc::new(Field::new_list_field(T::DATA_TYPE, true))))
        .map_err(|e| EngineError::Training(format!("column {name}: {e}")))?;
    let list = list.as_list::<i32>();
    let mut out = Vec::with_capacity(shape.iter().product());
    for r in 0..list.len() {
        let v = list.value(r);
        if v.len() != per_row {
            return Err(EngineError::Training(format!(
                "column {name}, row {r}: {} values, the model input takes {per_row}",
                v.len()
            )));
        }
        out.extend_from_slice(v.as_primitive::<T>().values());
    }
    Ok(out)
}

fn dropout_seed(seed: u64, step: u64, block: u64) -> u64 {
    seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ block.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
}

fn partial_path(spec: &RoundSpec, first_block: u64) -> std::path::PathBuf {
    spec.out_dir.join(format!("round-{}-part-{first_block}.vec", spec.round))
}

/// `sync`: the exact sum of the gradients of every block, written to the round's directory.
pub fn sync_part(model: &Model, spec: &RoundSpec, blocks: &BTreeMap<u64, RecordBatch>) -> Result<PartialResult> {
    let start = Instant::now();
    let Some(&first_block) = blocks.keys().next() else { return Ok(PartialResult::default()) };
    let step = spec.first_step;
    let keys = model.weight_keys();
    let per_block: Vec<_> = blocks
        .par_iter()
        .map(|(&block, rows)| {
            let (x, y) = decode_rows(model, rows, &spec.model.input_columns)?;
            Ok(model.gradients_on_micro_batch(&x, &[y], dropout_seed(spec.seed, step, block))?)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut sums: Vec<(String, Vec<i64>)> = vec![];
    let mut out = PartialResult { first_block, parts: blocks.len() as u64, ..Default::default() };
    for (result, grads) in &per_block {
        out.rows += result.samples as u64;
        out.loss_sum += result.loss as f64 * result.samples as f64;
        out.correct += result.metrics.first().map_or(0, |m| m.1 as u64);
        let named = keys.iter().zip(&grads.values).filter_map(|(k, g)| g.as_ref().map(|g| (k.clone(), g)));
        let states = keys.iter().zip(&grads.state).filter_map(|(k, s)| s.as_ref().map(|s| (format!("state/{k}"), s)));
        for (i, (name, values)) in named.chain(states).enumerate() {
            if sums.len() <= i {
                sums.push((name.clone(), vec![0; values.len()]));
            }
            add_exact(&mut sums[i].1, values, &name)?;
        }
    }
    let path = partial_path(spec, first_block);
    write_vectors(&path, &sums)?;
    out.file = Some(path);
    out.compute_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(out)
}

/// `average`: local steps on this partition's blocks of each step of the
/// round, then each weight's change and the optimizer's slots.
pub fn average_part(model: &Model, spec: &RoundSpec, blocks: &BTreeMap<u64, RecordBatch>) -> Result<PartialResult> {
    let start = Instant::now();
    let Some(&first_block) = blocks.keys().next() else { return Ok(PartialResult::default()) };
    let mut local = model.clone();
    let mut out = PartialResult { first_block, ..Default::default() };
    // One thread per worker, as the in-process loop gives each batch shard:
    // workers of one executor share its cores instead of contending for them.
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| EngineError::Training(format!("thread pool: {e}")))?;
    for (i, step_blocks) in spec.steps.iter().enumerate() {
        let mine: Vec<&RecordBatch> = step_blocks.iter().filter_map(|b| blocks.get(b)).collect();
        if mine.is_empty() {
            continue;
        }
        local.set_steps_run(spec.first_step + i as u64);
        let rows = concat_batches(&mine[0].schema(), mine).map_err(|e| EngineError::Training(e.to_string()))?;
        let (x, y) = decode_rows(model, &rows, &spec.model.input_columns)?;
        let r = one_thread.install(|| local.train_on_batch(&x, &[y]))?;
        out.parts += 1;
        out.rows += r.samples as u64;
        out.loss_sum += r.loss as f64 * r.samples as f64;
        out.correct += r.metrics.first().map_or(0, |m| m.1 as u64);
    }
    let before = model.named_weights();
    let mut vectors: Vectors<f32> = local
        .named_weights()
        .into_iter()
        .map(|(k, after)| {
            let delta = after.data().iter().zip(before[&k].data()).map(|(a, b)| *a - *b).collect();
            (k, delta)
        })
        .collect();
    if let Some(opt) = local.optimizer() {
        for (key, slots) in &opt.slots {
            for (n, s) in slots.iter().enumerate() {
                vectors.push((format!("slot/{n}/{key}"), s.clone()));
            }
        }
    }
    let path = partial_path(spec, first_block);
    write_vectors(&path, &vectors)?;
    out.file = Some(path);
    out.compute_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(out)
}
