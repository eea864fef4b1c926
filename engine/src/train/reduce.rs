//! The final stage of an `average` round: partial results of every
//! partition, combined in a fixed order (by their first block) into the next
//! weights version, published here (the driver only adopts its path).

use super::metrics::PartLine;
use super::model_cache::{keep, take_model};
use super::round::{slot_vector, Mode, PartialResult, RoundResult, RoundSpec};
use super::vectors::{read_vectors, Element, Vectors};
use crate::error::{EngineError, Result};
use crate::store::Location;
use kallista_ops::buf::Buf;
use kallista_ops::Tensor;
use std::collections::{BTreeMap, HashMap};

fn add_all<T: Element + std::ops::AddAssign>(total: &mut Vectors<T>, part: Vectors<T>, file: &Location) -> Result<()> {
    if total.is_empty() {
        *total = part;
        return Ok(());
    }
    if total.len() != part.len() {
        return Err(EngineError::Corrupt { path: file.to_string(), detail: "vector count differs".into() });
    }
    for ((name, sum), (other, values)) in total.iter_mut().zip(part) {
        if *name != other || sum.len() != values.len() {
            return Err(EngineError::Corrupt {
                path: file.to_string(),
                detail: format!("'{other}' does not line up with '{name}'"),
            });
        }
        sum.iter_mut().zip(values).for_each(|(s, v)| *s += v);
    }
    Ok(())
}

/// Partial results read at once by the reducer.
const READS_IN_FLIGHT: usize = 4;

/// The vectors of every file of `group`, read concurrently, in its order.
fn read_all<T: Element>(group: &[(&Location, u64)]) -> Vec<Result<Vectors<T>>> {
    std::thread::scope(|s| {
        let reads: Vec<_> = group.iter().map(|(file, _)| s.spawn(move || read_vectors::<T>(file))).collect();
        reads
            .into_iter()
            .map(|r| r.join().unwrap_or_else(|_| Err(EngineError::Training("a partial read panicked".into()))))
            .collect()
    })
}

/// Combines `partials` (any order; sorted here) as the module docs say.
pub fn reduce(spec: &RoundSpec, mut partials: Vec<PartialResult>) -> Result<RoundResult> {
    if spec.mode != Mode::Average {
        return Err(EngineError::Training("only `average` rounds are reduced".into()));
    }
    let start = std::time::Instant::now();
    partials.sort_by_key(|p| p.first_block);
    let mut result = RoundResult::default();
    let mut parts = 0u64;
    let mut float: Vectors<f32> = vec![];
    for p in &partials {
        result.rows += p.rows;
        result.loss_sum += p.loss_sum;
        result.correct += p.correct;
        if p.times.compute_ms >= result.slowest.compute_ms {
            result.slowest = p.times.clone();
        }
        result.parts.push(PartLine {
            executor: p.executor.clone(),
            first_block: p.first_block,
            rows: p.rows,
            scan_ms: p.times.scan_ms,
            load_ms: p.times.load_ms,
            compute_ms: p.times.compute_ms,
            write_ms: p.times.write_ms,
        });
        result.partial_files.extend(p.file.clone());
    }
    let files: Vec<(&Location, u64)> =
        partials.iter().filter(|p| p.parts > 0).filter_map(|p| Some((p.file.as_ref()?, p.parts))).collect();
    result.partitions = files.len() as u64;
    // Read a few at a time (each is a network round trip on an object
    // store), added in block order.
    for group in files.chunks(READS_IN_FLIGHT) {
        for ((file, _), part) in group.iter().zip(read_all::<f32>(group)) {
            parts += 1;
            add_all(&mut float, part?, file)?;
        }
    }
    if parts == 0 {
        return Ok(result);
    }
    // Summed in block order, so the same partials give the same bits; one
    // worker's vectors are used as they are.
    if parts > 1 {
        let n = parts as f32;
        float.iter_mut().for_each(|(_, s)| s.iter_mut().for_each(|v| *v /= n));
    }
    publish_average(spec, float)?;
    result.file = Some(spec.next_weights.clone());
    result.reduce_ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(result)
}

/// Writes the version the averaged weights and slots make after the round's
/// steps, and keeps it in this executor's model cache.
fn publish_average(spec: &RoundSpec, means: Vectors<f32>) -> Result<()> {
    let mut next = take_model(&spec.model)?;
    let mut means: HashMap<String, Vec<f32>> = means.into_iter().collect();
    let missing = |key: &str| EngineError::Training(format!("the round's result has no '{key}'"));
    let keys = next.weight_keys();
    let mut weights = BTreeMap::new();
    for key in &keys {
        let shape = next.weight(key).map(|w| w.shape().to_vec()).ok_or_else(|| missing(key))?;
        let values = means.remove(key).ok_or_else(|| missing(key))?;
        weights.insert(key.clone(), Tensor::new(&shape, values)?);
    }
    next.set_weights(&weights)?;
    if let Some(opt) = next.optimizer_mut() {
        let n = opt.config.kind.slot_names().len();
        for key in keys {
            let slots: Option<Vec<Buf>> = (0..n).map(|i| means.remove(&slot_vector(i, &key)).map(Buf::from)).collect();
            if let Some(s) = slots {
                opt.slots.insert(key, s);
            }
        }
        opt.iterations += spec.steps.len() as u64;
    }
    crate::store::blocking::write_scratch(&spec.next_weights, next.weights_bytes()?)?;
    keep(&spec.model.config, &spec.next_weights, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::job_dir::JobDir;
    use crate::train::model_cache::model_for;
    use crate::train::round::ModelRef;
    use crate::train::test_model::{adam, tiny_model};
    use crate::train::vectors::write_vectors;
    use kallista_ops::model::Model;

    /// A worker's partial result: every weight plus `add`, every slot `add`.
    fn partial(model: &Model, dir: &Location, first_block: u64, add: f32) -> PartialResult {
        let mut vectors: Vectors<f32> = vec![];
        for (key, w) in model.named_weights() {
            vectors.push((slot_vector(0, &key), vec![add; w.len()]));
            vectors.push((slot_vector(1, &key), vec![add; w.len()]));
            vectors.push((key, w.data().iter().map(|v| v + add).collect()));
        }
        let file = dir.join(&format!("part-{first_block}.vec"));
        write_vectors(&file, &vectors).unwrap();
        PartialResult { file: Some(file), first_block, parts: 3, rows: 6, ..Default::default() }
    }

    #[test]
    fn average_publishes_the_mean_version_and_keeps_it_cached() {
        let local = std::env::temp_dir().join(crate::cluster::owned_dir_name("kallista-reduce"));
        let dir = Location::from_path(&local).unwrap();
        let compile_spec = adam(&[]);
        let model = tiny_model(&compile_spec);
        let (config, first) = (dir.join("model.json"), dir.join("step-0.safetensors"));
        crate::store::blocking::write(&config, model.to_json().into_bytes()).unwrap();
        crate::store::blocking::write(&first, model.weights_bytes().unwrap()).unwrap();
        let mut spec = RoundSpec {
            model: ModelRef { config, weights: first, compile: compile_spec.clone(), binding: Default::default() },
            mode: Mode::Average,
            round: 0,
            first_step: 0,
            steps: vec![vec![0], vec![1], vec![2]],
            seed: 0,
            workers: 2,
            job: JobDir::new(dir.clone()),
            data: dir.clone(),
            next_weights: dir.join("step-3.safetensors"),
        };
        let parts = vec![partial(&model, &dir, 8, 3.0), partial(&model, &dir, 0, 1.0)];
        let result = reduce(&spec, parts).unwrap();
        assert_eq!(result.file.as_ref(), Some(&spec.next_weights));
        assert_eq!((result.rows, result.partitions), (12, 2));
        assert_eq!(result.parts.iter().map(|p| p.first_block).collect::<Vec<_>>(), vec![0, 8]);
        assert_eq!(result.partial_files.len(), 2);

        let mut published = tiny_model(&compile_spec);
        published.load_weights(spec.next_weights.local_path().unwrap()).unwrap();
        for (key, w) in model.named_weights() {
            let got = published.named_weights()[&key].clone();
            for (a, b) in got.data().iter().zip(w.data()) {
                assert!((a - (b + 2.0)).abs() < 1e-5, "{key}: {a} vs {b} + 2");
            }
        }
        let opt = published.optimizer().unwrap();
        assert_eq!(opt.iterations, 3);
        assert!(opt.slots.values().flatten().flatten().all(|v| *v == 2.0));

        // The next round on this executor finds the version without reading it.
        crate::store::blocking::delete(&spec.next_weights).unwrap();
        spec.model.weights = spec.next_weights.clone();
        let cached = model_for(&spec.model).unwrap();
        assert_eq!(cached.named_weights(), published.named_weights());
        std::fs::remove_dir_all(&local).unwrap();
    }
}
