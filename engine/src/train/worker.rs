//! What an `average` training operator computes on its partition's rows:
//! the work of one worker in one round, apart from Arrow and DataFusion:
//! local optimizer steps on the worker's blocks of each step, then the
//! weights and the final optimizer slots. Also the decoding of a block's rows
//! into model inputs, which `sync` ranks ([`super::segment`]) share.

use super::round::{slot_vector, PartialResult, RoundSpec};
use super::vectors::{write_vectors, Vectors};
use crate::error::{EngineError, Result};
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{ArrowPrimitiveType, DataType, Field, Float32Type, Int32Type};
use datafusion::arrow::record_batch::RecordBatch;
use kallista_data::parquet_io::ClipDecoder;
use kallista_ops::model::Model;
use kallista_ops::{ByteTensor, Data, IntTensor, Tensor};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Model inputs and the target of a block's rows (named as [`super::args::data_columns`]);
/// errors name `source` and the row within these rows.
pub fn decode_rows(
    model: &Model,
    batch: &RecordBatch,
    input_columns: &[String],
    source: &str,
) -> Result<(Vec<Data>, Data)> {
    decode_batches(model, &[batch], input_columns, source)
}

/// [`decode_rows`] of several batches as one batch, copying each value once.
pub fn decode_batches(
    model: &Model,
    batches: &[&RecordBatch],
    input_columns: &[String],
    source: &str,
) -> Result<(Vec<Data>, Data)> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let specs = model.input_specs();
    let mut inputs = Vec::with_capacity(input_columns.len());
    for (c, spec) in input_columns.iter().zip(&specs) {
        let mut shape = vec![rows];
        shape.extend_from_slice(&spec.spec.shape);
        inputs.push(match c.as_str() {
            "frames" => frames(batches, rows, source)?,
            "question_ids" => Data::I32(IntTensor::new(&shape, list_values::<Int32Type>(batches, c, &shape)?)?),
            "features" => Data::F32(Tensor::new(&shape, float_values(batches, c, &shape)?)?),
            other => return Err(EngineError::Training(format!("unknown input column '{other}'"))),
        });
    }
    let mut answers = Vec::with_capacity(rows);
    for b in batches {
        let a = cast(column(b, "answer_id")?, &DataType::Int32).map_err(|e| EngineError::Training(e.to_string()))?;
        answers.extend_from_slice(a.as_primitive::<Int32Type>().values());
    }
    Ok((inputs, Data::I32(IntTensor::new(&[rows], answers)?)))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| EngineError::Training(format!("the data has no {name} column")))
}

/// The decoded clips of `batches`, one `[rows, frames, height, width, 3]` tensor.
fn frames(batches: &[&RecordBatch], rows: usize, source: &str) -> Result<Data> {
    let source = Path::new(source);
    let mut shape: Option<Vec<usize>> = None;
    let mut all = vec![];
    let mut first_row = 0;
    for b in batches {
        let clips = ClipDecoder { path: source, first_row }.decode(b)?;
        first_row += b.num_rows();
        match &shape {
            Some(s) if s[1..] != clips.shape[1..] => {
                return Err(EngineError::Training(format!(
                    "clips of one step differ in shape: {:?} and {:?}",
                    &s[1..],
                    &clips.shape[1..]
                )))
            }
            Some(_) => all.extend_from_slice(&clips.frames),
            // Moved, not copied: the frames are the bulk of a block.
            None => {
                shape = Some(clips.shape.to_vec());
                all = clips.frames;
            }
        }
    }
    let mut shape = shape.unwrap_or_default();
    if let Some(r) = shape.first_mut() {
        *r = rows;
    }
    Ok(Data::U8(ByteTensor::new(&shape, all)?))
}

/// The values of a float column: packed bytes as staged
/// (`kallista_pack_f32`), or a float list.
fn float_values(batches: &[&RecordBatch], name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let per_row: usize = shape[1..].iter().product();
    let mut out = Vec::with_capacity(shape.iter().product());
    let mut row = 0;
    for b in batches {
        let col = column(b, name)?;
        if *col.data_type() != DataType::LargeBinary {
            out.extend(list_values::<Float32Type>(&[b], name, &[b.num_rows(), per_row])?);
            row += b.num_rows();
            continue;
        }
        let bytes = col.as_binary::<i64>();
        for r in 0..bytes.len() {
            let v = bytes.value(r);
            if v.len() != per_row * 4 || bytes.is_null(r) {
                return Err(EngineError::Training(format!(
                    "column {name}, row {}: {} floats, the model input takes {per_row}",
                    row + r,
                    v.len() / 4
                )));
            }
            let at = out.len();
            out.resize(at + per_row, 0.0);
            bytemuck::cast_slice_mut::<f32, u8>(&mut out[at..]).copy_from_slice(v);
        }
        row += bytes.len();
    }
    Ok(out)
}

/// The flattened values of a list column whose rows must hold `shape[1..]` values each.
fn list_values<T: ArrowPrimitiveType>(batches: &[&RecordBatch], name: &str, shape: &[usize]) -> Result<Vec<T::Native>> {
    let per_row: usize = shape[1..].iter().product();
    let mut out = Vec::with_capacity(shape.iter().product());
    let mut row = 0;
    for b in batches {
        let list = cast(column(b, name)?, &DataType::List(Arc::new(Field::new_list_field(T::DATA_TYPE, true))))
            .map_err(|e| EngineError::Training(format!("column {name}: {e}")))?;
        let list = list.as_list::<i32>();
        for r in 0..list.len() {
            let v = list.value(r);
            if v.len() != per_row {
                return Err(EngineError::Training(format!(
                    "column {name}, row {}: {} values, the model input takes {per_row}",
                    row + r,
                    v.len()
                )));
            }
            out.extend_from_slice(v.as_primitive::<T>().values());
        }
        row += list.len();
    }
    Ok(out)
}

/// A partition's rows by block, as the scan delivered them (not concatenated:
/// decoding copies each value once).
pub type Blocks = BTreeMap<u64, Vec<RecordBatch>>;

/// Threads for one worker: this executor's cores shared among the round's
/// workers it runs at once (at most its task slots), as the in-process loop
/// shares them among batch shards.
fn worker_threads(spec: &RoundSpec) -> usize {
    let here = crate::cluster::this_executor();
    let concurrent = here.task_slots.min(spec.workers).max(1);
    (rayon::current_num_threads() / concurrent).max(1)
}

/// Writes a partition's vectors to the round's directory and names the file in `out`.
fn write_part<T: super::vectors::Element>(
    spec: &RoundSpec,
    vectors: &Vectors<T>,
    mut out: PartialResult,
) -> Result<PartialResult> {
    let start = Instant::now();
    let at = spec.job.partial(spec.round, out.first_block);
    write_vectors(&at, vectors)?;
    out.file = Some(at);
    out.times.write_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(out)
}

/// `average`: local steps on this partition's blocks of each step of the
/// round, then the weights and the optimizer's slots they ended with.
/// Weights, not their change: with one worker the driver then continues
/// from exactly the weights the worker reached.
pub fn average_part(model: &Model, spec: &RoundSpec, blocks: &Blocks) -> Result<PartialResult> {
    let Some(&first_block) = blocks.keys().next() else { return Ok(PartialResult::default()) };
    let copied = Instant::now();
    let mut local = model.clone();
    let executor = crate::cluster::this_executor().name.clone();
    let mut out = PartialResult { first_block, executor, ..Default::default() };
    out.times.load_ms = copied.elapsed().as_secs_f64() * 1e3;
    let start = Instant::now();
    let threads = worker_threads(spec);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| EngineError::Training(format!("thread pool: {e}")))?;
    for (i, step_blocks) in spec.steps.iter().enumerate() {
        let mine: Vec<&RecordBatch> = step_blocks.iter().filter_map(|b| blocks.get(b)).flatten().collect();
        if mine.is_empty() {
            continue;
        }
        local.set_steps_run(spec.first_step + i as u64);
        let source = format!("{} blocks {step_blocks:?}", spec.data);
        let (x, y) = decode_batches(model, &mine, &spec.model.input_columns, &source)?;
        let r = pool.install(|| local.train_on_batch(&x, &[y]))?;
        out.parts += 1;
        out.rows += r.samples as u64;
        out.loss_sum += r.loss as f64 * r.samples as f64;
        out.correct += r.metrics.first().map_or(0, |m| m.1 as u64);
    }
    let mut vectors: Vectors<f32> = local.named_weights().into_iter().map(|(k, w)| (k, w.into_vec())).collect();
    if let Some(opt) = local.optimizer_mut() {
        for (key, slots) in std::mem::take(&mut opt.slots) {
            for (n, s) in slots.into_iter().enumerate() {
                vectors.push((slot_vector(n, &key), s));
            }
        }
    }
    out.times.compute_ms = start.elapsed().as_secs_f64() * 1e3;
    write_part(spec, &vectors, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Location;
    use crate::train::job_dir::JobDir;
    use crate::train::round::{Mode, ModelRef};
    use crate::train::test_model::{adam, tiny_dims, tiny_model};
    use crate::train::vectors::read_vectors;
    use datafusion::arrow::array::{Float32Array, Int32Array, LargeBinaryArray, ListArray};
    use datafusion::arrow::buffer::OffsetBuffer;
    use datafusion::arrow::datatypes::Schema;
    use kallista_ops::applications::VideoQaDims;
    use kallista_ops::init::Rng;

    fn list(values: ArrayRef, per_row: usize, rows: usize) -> ArrayRef {
        let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
        Arc::new(ListArray::new(field, OffsetBuffer::from_lengths(std::iter::repeat_n(per_row, rows)), values, None))
    }

    /// `rows` random rows; features as a float list, or packed as staging packs them.
    fn block(d: &VideoQaDims, rows: usize, seed: u64, packed: bool) -> RecordBatch {
        let mut rng = Rng::new(seed);
        let per = d.frames * d.features;
        let features: Vec<f32> = (0..rows * per).map(|_| rng.normal()).collect();
        let features: ArrayRef = if packed {
            let bytes: Vec<&[u8]> = features.chunks(per).map(bytemuck::cast_slice).collect();
            Arc::new(LargeBinaryArray::from(bytes))
        } else {
            list(Arc::new(Float32Array::from(features)), per, rows)
        };
        let q: Vec<i32> = (0..rows * d.question_len).map(|_| 1 + rng.below(d.vocab - 1) as i32).collect();
        let answers: Vec<i32> = (0..rows).map(|_| rng.below(d.answers) as i32).collect();
        let schema = Schema::new(vec![
            Field::new("features", features.data_type().clone(), false),
            Field::new("question_ids", DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true))), false),
            Field::new("answer_id", DataType::Int32, false),
        ]);
        let q = list(Arc::new(Int32Array::from(q)), d.question_len, rows);
        RecordBatch::try_new(Arc::new(schema), vec![features, q, Arc::new(Int32Array::from(answers))]).unwrap()
    }

    fn columns() -> Vec<String> {
        vec!["features".into(), "question_ids".into()]
    }

    #[test]
    fn packed_and_listed_features_decode_alike() {
        let d = tiny_dims();
        let model = tiny_model(&adam(&[]));
        let (listed, packed) = (block(&d, 3, 9, false), block(&d, 3, 9, true));
        let (a, ya) = decode_batches(&model, &[&listed, &listed], &columns(), "test").unwrap();
        let (b, yb) = decode_batches(&model, &[&packed, &packed], &columns(), "test").unwrap();
        assert_eq!(a, b);
        assert_eq!(ya, yb);
        assert_eq!(a[0].shape(), &[6, 2, 3]);
    }

    /// One `average` worker takes exactly the steps in-process training takes:
    /// the driver then continues from the weights and slots it would have had.
    #[test]
    fn one_average_worker_matches_in_process_training() {
        let d = tiny_dims();
        let compile = adam(&["accuracy"]);
        let model = tiny_model(&compile);
        let blocks: Blocks = (0..4).map(|b| (b, vec![block(&d, 2, 100 + b, b % 2 == 0)])).collect();
        let out_dir = std::env::temp_dir().join(format!("kallista-worker-{}", std::process::id()));
        let job = Location::from_path(&out_dir).unwrap();
        let unused = job.join("unused");
        let spec = RoundSpec {
            model: ModelRef { config: unused.clone(), weights: unused.clone(), compile, input_columns: columns() },
            mode: Mode::Average,
            round: 7,
            first_step: 7,
            steps: vec![vec![0, 1], vec![2, 3], vec![1, 2]],
            seed: 1,
            workers: 1,
            job: JobDir::new(job),
            data: unused.clone(),
            next_weights: unused,
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let part = pool.install(|| average_part(&model, &spec, &blocks)).unwrap();
        assert_eq!((part.parts, part.rows), (3, 12));

        let mut local = model.clone();
        for (i, step) in spec.steps.iter().enumerate() {
            let rows: Vec<&RecordBatch> = step.iter().flat_map(|b| &blocks[b]).collect();
            let (x, y) = decode_batches(&model, &rows, &columns(), "test").unwrap();
            local.set_steps_run(7 + i as u64);
            pool.install(|| local.train_on_batch(&x, &[y])).unwrap();
        }
        let got: std::collections::HashMap<String, Vec<f32>> =
            read_vectors::<f32>(part.file.as_ref().unwrap()).unwrap().into_iter().collect();
        for (key, w) in local.named_weights() {
            assert_eq!(got[&key], w.data(), "{key}");
            assert_ne!(w.data(), model.named_weights()[&key].data(), "{key} did not train");
        }
        for (key, slots) in &local.optimizer().unwrap().slots {
            for (n, s) in slots.iter().enumerate() {
                assert_eq!(&got[&slot_vector(n, key)], s, "slot {n} of {key}");
            }
        }
        std::fs::remove_dir_all(&out_dir).unwrap();
    }
}
