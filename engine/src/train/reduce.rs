//! The driver stage's reduce: partial results of every partition, combined in
//! a fixed order (by their first block) into one file of f32 vectors.

use super::exact::mean_of_exact;
use super::round::{Mode, PartialResult, RoundResult};
use super::vectors::{read_vectors, write_vectors, Element, Vectors};
use crate::error::{EngineError, Result};
use std::path::Path;

fn add_all<T: Element + std::ops::AddAssign>(total: &mut Vectors<T>, part: Vectors<T>, file: &Path) -> Result<()> {
    if total.is_empty() {
        *total = part;
        return Ok(());
    }
    if total.len() != part.len() {
        return Err(EngineError::Corrupt { path: file.display().to_string(), detail: "vector count differs".into() });
    }
    for ((name, sum), (other, values)) in total.iter_mut().zip(part) {
        if *name != other || sum.len() != values.len() {
            return Err(EngineError::Corrupt {
                path: file.display().to_string(),
                detail: format!("'{other}' does not line up with '{name}'"),
            });
        }
        sum.iter_mut().zip(values).for_each(|(s, v)| *s += v);
    }
    Ok(())
}

/// Combines `partials` (any order; sorted here) into `out`.
pub fn reduce(mode: Mode, mut partials: Vec<PartialResult>, out: &Path) -> Result<RoundResult> {
    partials.sort_by_key(|p| p.first_block);
    let mut result = RoundResult::default();
    let mut parts = 0u64;
    let mut exact: Vectors<i64> = vec![];
    let mut float: Vectors<f64> = vec![];
    let widen = |v: Vectors<f32>| -> Vectors<f64> {
        v.into_iter().map(|(k, x)| (k, x.into_iter().map(f64::from).collect())).collect()
    };
    for p in &partials {
        result.rows += p.rows;
        result.loss_sum += p.loss_sum;
        result.correct += p.correct;
        result.max_compute_ms = result.max_compute_ms.max(p.compute_ms);
        let (Some(file), true) = (&p.file, p.parts > 0) else { continue };
        result.partitions += 1;
        match mode {
            Mode::Sync => {
                parts += p.parts;
                add_all(&mut exact, read_vectors::<i64>(file)?, file)?;
            }
            Mode::Average => {
                parts += 1;
                add_all(&mut float, widen(read_vectors::<f32>(file)?), file)?;
            }
        }
    }
    if parts == 0 {
        return Ok(result);
    }
    let means: Vectors<f32> = match mode {
        Mode::Sync => exact.into_iter().map(|(k, s)| (k, mean_of_exact(&s, parts))).collect(),
        Mode::Average => {
            float.into_iter().map(|(k, s)| (k, s.into_iter().map(|v| (v / parts as f64) as f32).collect())).collect()
        }
    };
    write_vectors(out, &means)?;
    result.file = Some(out.to_path_buf());
    Ok(result)
}
