//! What an `average` training operator computes on its partition's rows:
//! the work of one worker in one round, apart from Arrow and DataFusion:
//! local optimizer steps on the worker's blocks of each step, then the
//! weights and the final optimizer slots. Also the decoding of a block's rows
//! into model inputs, which `sync` ranks ([`super::segment`]) share.

use super::round::{slot_vector, PartialResult, RoundSpec};
use super::vectors::{write_vectors, Vectors};
use crate::error::{EngineError, Result};
use crate::tensors::{input_data, input_values};
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int32Type};
use datafusion::arrow::record_batch::RecordBatch;
use kallista_data::binding::Binding;
use kallista_ops::model::Model;
use kallista_ops::{Data, IntTensor};
use std::collections::BTreeMap;
use std::time::Instant;

/// Model inputs and the target of a block's rows (the columns of `binding`);
/// errors name `source` and the row within these rows.
pub fn decode_rows(model: &Model, batch: &RecordBatch, binding: &Binding, source: &str) -> Result<(Vec<Data>, Data)> {
    decode_batches(model, &[batch], binding, source)
}

/// [`decode_rows`] of several batches as one batch, copying each value once.
/// Columns are decoded by their type and the input's shape
/// ([`kallista_data::columns`]), whatever they are called.
pub fn decode_batches(
    model: &Model,
    batches: &[&RecordBatch],
    binding: &Binding,
    source: &str,
) -> Result<(Vec<Data>, Data)> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let specs = model.input_specs();
    if specs.len() != binding.inputs.len() {
        return Err(EngineError::Training(format!(
            "the model has {} inputs, the binding names {} columns",
            specs.len(),
            binding.inputs.len()
        )));
    }
    let mut inputs = Vec::with_capacity(specs.len());
    for (c, spec) in binding.inputs.iter().zip(&specs) {
        let arrays = batches.iter().map(|b| column(b, c)).collect::<Result<Vec<_>>>()?;
        inputs.push(input_data(input_values(&arrays, spec, source, c, 0)?, rows, spec)?);
    }
    let label = binding.label.as_deref().ok_or_else(|| EngineError::Training("no label column".into()))?;
    let classes = model.output_specs().first().and_then(|s| s.shape.last().copied()).unwrap_or(usize::MAX);
    let mut answers = Vec::with_capacity(rows);
    let mut first_row = 0;
    for b in batches {
        let a = cast(column(b, label)?, &DataType::Int32).map_err(|e| EngineError::Training(e.to_string()))?;
        let a = a.as_primitive::<Int32Type>();
        if let Some(r) = (0..a.len()).find(|&r| a.is_null(r)) {
            return Err(kallista_data::DataError::Value {
                origin: source.into(),
                row: first_row + r,
                column: label.into(),
                detail: "the label is null (or not an integer class id)".into(),
            }
            .into());
        }
        if let Some(r) = (0..a.len()).find(|&r| a.value(r) < 0 || a.value(r) as usize >= classes) {
            return Err(kallista_data::DataError::Value {
                origin: source.into(),
                row: first_row + r,
                column: label.into(),
                detail: format!("label {} is not a class of the model's {classes} outputs", a.value(r)),
            }
            .into());
        }
        answers.extend_from_slice(a.values());
        first_row += b.num_rows();
    }
    Ok((inputs, Data::I32(IntTensor::new(&[rows], answers)?)))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| EngineError::Training(format!("the data has no {name} column")))
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
        let (x, y) = decode_batches(model, &mine, &spec.model.binding, &source)?;
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
                vectors.push((slot_vector(n, &key), s.into_vec()));
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
    use datafusion::arrow::datatypes::{Field, Schema};
    use kallista_ops::applications::VideoQaDims;
    use kallista_ops::init::Rng;
    use std::sync::Arc;

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

    fn columns() -> Binding {
        Binding {
            inputs: vec!["features".into(), "question_ids".into()],
            label: Some("answer_id".into()),
            ..Default::default()
        }
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
        let out_dir = std::env::temp_dir().join(crate::cluster::owned_dir_name("kallista-worker"));
        let job = Location::from_path(&out_dir).unwrap();
        let unused = job.join("unused");
        let spec = RoundSpec {
            model: ModelRef { config: unused.clone(), weights: unused.clone(), compile, binding: columns() },
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
                assert_eq!(&got[&slot_vector(n, key)][..], &s[..], "slot {n} of {key}");
            }
        }
        std::fs::remove_dir_all(&out_dir).unwrap();
    }
}
