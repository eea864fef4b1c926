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
use kallista_data::parquet_io::ClipBatch;
use kallista_ops::model::Model;
use kallista_ops::{ByteTensor, Data, IntTensor};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::time::Instant;

/// Model inputs and the target of decoded rows.
pub fn to_model_data(batch: &ClipBatch, input_columns: &[String]) -> Result<(Vec<Data>, Data)> {
    let rows = batch.shape[0];
    let inputs = input_columns
        .iter()
        .map(|c| match c.as_str() {
            "frames" => Ok(Data::U8(ByteTensor::new(&batch.shape, batch.frames.clone())?)),
            "question_ids" => {
                let (ids, len) = batch
                    .question_ids
                    .as_ref()
                    .ok_or_else(|| EngineError::Training("the data has no question_ids column".into()))?;
                Ok(Data::I32(IntTensor::new(&[rows, *len], ids.clone())?))
            }
            other => Err(EngineError::Training(format!("unknown input column '{other}'"))),
        })
        .collect::<Result<Vec<_>>>()?;
    let answers =
        batch.answer_ids.clone().ok_or_else(|| EngineError::Training("the data has no answer_id column".into()))?;
    Ok((inputs, Data::I32(IntTensor::new(&[rows], answers)?)))
}

/// Rows of several blocks as one batch, in the given block order.
fn concat(blocks: &[&ClipBatch]) -> ClipBatch {
    let mut out = blocks[0].clone();
    for b in &blocks[1..] {
        out.frames.extend_from_slice(&b.frames);
        out.shape[0] += b.shape[0];
        if let (Some((ids, _)), Some((more, _))) = (out.question_ids.as_mut(), b.question_ids.as_ref()) {
            ids.extend_from_slice(more);
        }
        if let (Some(a), Some(more)) = (out.answer_ids.as_mut(), b.answer_ids.as_ref()) {
            a.extend_from_slice(more);
        }
    }
    out
}

fn dropout_seed(seed: u64, step: u64, block: u64) -> u64 {
    seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ block.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
}

fn partial_path(spec: &RoundSpec, first_block: u64) -> std::path::PathBuf {
    spec.out_dir.join(format!("round-{}-part-{first_block}.vec", spec.round))
}

/// `sync`: the exact sum of the gradients of every block, written to the round's directory.
pub fn sync_part(model: &Model, spec: &RoundSpec, blocks: &BTreeMap<u64, ClipBatch>) -> Result<PartialResult> {
    let start = Instant::now();
    let Some(&first_block) = blocks.keys().next() else { return Ok(PartialResult::default()) };
    let step = spec.first_step;
    let keys = model.weight_keys();
    let per_block: Vec<_> = blocks
        .par_iter()
        .map(|(&block, rows)| {
            let (x, y) = to_model_data(rows, &spec.model.input_columns)?;
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
pub fn average_part(model: &Model, spec: &RoundSpec, blocks: &BTreeMap<u64, ClipBatch>) -> Result<PartialResult> {
    let start = Instant::now();
    let Some(&first_block) = blocks.keys().next() else { return Ok(PartialResult::default()) };
    let mut local = model.clone();
    let mut out = PartialResult { first_block, ..Default::default() };
    for (i, step_blocks) in spec.steps.iter().enumerate() {
        let mine: Vec<&ClipBatch> = step_blocks.iter().filter_map(|b| blocks.get(b)).collect();
        if mine.is_empty() {
            continue;
        }
        local.set_steps_run(spec.first_step + i as u64);
        let (x, y) = to_model_data(&concat(&mine), &spec.model.input_columns)?;
        let r = local.train_on_batch(&x, &[y])?;
        out.parts += 1;
        out.rows += r.samples as u64;
        out.loss_sum += r.loss as f64 * r.samples as f64;
        out.correct += r.metrics.first().map_or(0, |m| m.1 as u64);
    }
    let before = model.named_weights();
    let mut vectors: Vectors<f64> = local
        .named_weights()
        .into_iter()
        .map(|(k, after)| {
            let delta = after.data().iter().zip(before[&k].data()).map(|(a, b)| (*a - *b) as f64).collect();
            (k, delta)
        })
        .collect();
    if let Some(opt) = local.optimizer() {
        for (key, slots) in &opt.slots {
            for (n, s) in slots.iter().enumerate() {
                vectors.push((format!("slot/{n}/{key}"), s.iter().map(|&v| v as f64).collect()));
            }
        }
    }
    let path = partial_path(spec, first_block);
    write_vectors(&path, &vectors)?;
    out.file = Some(path);
    out.compute_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(out)
}
