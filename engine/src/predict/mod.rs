//! Batch inference where the data is: the shared part of the prediction
//! functions (`kallista_predict`, `kallista_predict_proba`,
//! `kallista_embed`, `kallista_score` in [`crate::functions`]).
//!
//! A function's first argument names the model ([`source`]); the columns
//! after it feed the model's inputs in order, decoded by their Arrow type
//! and the input's shape ([`kallista_data::columns`]), so any table whose
//! columns hold the right values works, whatever they are called. Rows are
//! inferred as DataFusion hands them over, in chunks of [`CHUNK_ROWS`],
//! each chunk sharded over the process's cores by `predict_on_batch`.

pub mod source;

use crate::error::{EngineError, Result};
use crate::tensors::{input_data, input_values};
use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::datatypes::FieldRef;
use datafusion::logical_expr::ColumnarValue;
use datafusion::scalar::ScalarValue;
use kallista_ops::model::Model;
use kallista_ops::Data;

/// Rows per `predict_on_batch` call: the peers' inference batch (GEMMs
/// this tall run near peak), few enough that a chunk of decoded clips stays
/// a few hundred MB.
pub const CHUNK_ROWS: usize = 256;

/// A literal string argument (a model URI, a layer name), or an error naming it.
pub fn literal_arg(function: &str, args: &[ColumnarValue], index: usize, what: &str) -> Result<String> {
    match args.get(index) {
        Some(ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)),
        )) => Ok(s.clone()),
        _ => Err(EngineError::Invalid(format!("{function}: argument {} must be {what}, a string literal", index + 1))),
    }
}

/// The model inputs of rows `range` from the argument columns `first..`.
fn model_inputs(
    function: &str,
    model: &Model,
    columns: &[(ArrayRef, String)],
    first: usize,
    range: std::ops::Range<usize>,
) -> Result<Vec<Data>> {
    let specs = model.input_specs();
    let mut inputs = Vec::with_capacity(specs.len());
    for (i, (spec, (array, column))) in specs.iter().zip(columns).enumerate() {
        let array = array.slice(range.start, range.len());
        let source = format!("{function} argument {} (model input '{}')", first + i + 1, spec.name);
        let values = input_values(&[&array], spec, &source, column, range.start)?;
        inputs.push(input_data(values, array.len(), spec)?);
    }
    Ok(inputs)
}

/// The model's first output for every row of the argument columns `first..`
/// (one per model input), `[rows, width]` flattened. Decoded and inferred in
/// chunks of [`CHUNK_ROWS`], so that a wide batch is never decoded whole.
pub fn predict_rows(
    function: &str,
    model: &Model,
    args: &[ColumnarValue],
    fields: &[FieldRef],
    first: usize,
    rows: usize,
) -> Result<(Vec<f32>, usize)> {
    let specs = model.input_specs();
    let given = args.len().saturating_sub(first);
    if given != specs.len() {
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        return Err(EngineError::Invalid(format!(
            "{function}: the model takes {} inputs ({}), {given} columns were given",
            specs.len(),
            names.join(", ")
        )));
    }
    let columns: Vec<(ArrayRef, String)> = (first..args.len())
        .map(|at| Ok((args[at].to_array(rows)?, fields.get(at).map_or("?".to_string(), |f| f.name().clone()))))
        .collect::<Result<_>>()?;
    let mut out = vec![];
    let mut width = 0;
    for start in (0..rows).step_by(CHUNK_ROWS) {
        let end = (start + CHUNK_ROWS).min(rows);
        let chunk = model_inputs(function, model, &columns, first, start..end)?;
        let outputs = model.predict_on_batch(&chunk)?;
        let output = outputs.first().ok_or_else(|| EngineError::Invalid("the model has no outputs".into()))?;
        width = output.shape()[1..].iter().product();
        out.extend_from_slice(output.data());
    }
    Ok((out, width))
}

/// The rows' classes: `(class id, its probability)` of each row's outputs.
pub fn top_classes(probabilities: &[f32], width: usize) -> Vec<(i32, f32)> {
    probabilities
        .chunks_exact(width.max(1))
        .map(|row| {
            // The first of equal maxima, as Keras's argmax.
            let (i, p) = row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &p)| match p > best.1 {
                true => (i, p),
                false => best,
            });
            (i as i32, p)
        })
        .collect()
}

/// The row count of the argument arrays (of `number_rows` when all are literals).
pub fn rows_of(args: &[ColumnarValue], number_rows: usize) -> usize {
    args.iter()
        .find_map(|a| match a {
            ColumnarValue::Array(a) => Some(a.len()),
            ColumnarValue::Scalar(_) => None,
        })
        .unwrap_or(number_rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_class_is_the_first_maximum() {
        let p = [0.1, 0.7, 0.2, 0.4, 0.4, 0.2];
        assert_eq!(top_classes(&p, 3), vec![(1, 0.7), (0, 0.4)]);
    }

    #[test]
    fn a_model_uri_must_be_a_literal() {
        let args = [ColumnarValue::Array(std::sync::Arc::new(datafusion::arrow::array::Int32Array::from(vec![1])))];
        let e = literal_arg("kallista_predict", &args, 0, "the model URI").unwrap_err().to_string();
        assert_eq!(e, "kallista_predict: argument 1 must be the model URI, a string literal");
    }
}
