//! Argument handling shared by the training and evaluation functions: the
//! JSON spec literal, and the clip columns as a record batch the data crate
//! decodes.

use crate::error::EngineError;
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::scalar::ScalarValue;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

/// The table columns that feed the model inputs bound to `input_columns`
/// (`frames` needs its encoding and sizes too), then the label `answer_id`:
/// the first arguments of the training and evaluation functions, in order.
pub fn data_columns(input_columns: &[String]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = vec![];
    for c in input_columns {
        let cols: &[&'static str] = match c.as_str() {
            "frames" => &["frames", "frame_encoding", "num_frames", "height", "width"],
            "question_ids" => &["question_ids"],
            "features" => &["features"],
            _ => &[],
        };
        for col in cols {
            if !out.contains(col) {
                out.push(col);
            }
        }
    }
    out.push("answer_id");
    out
}

/// The data columns staged as packed bytes (`kallista_pack_f32`): float
/// lists, which rounds then scan at copy speed.
pub fn packed_columns(input_columns: &[String]) -> Vec<&'static str> {
    data_columns(input_columns).into_iter().filter(|c| *c == "features").collect()
}

/// The select list that stages [`data_columns`], [`packed_columns`] packed.
pub fn staging_select(input_columns: &[String]) -> String {
    let packed = packed_columns(input_columns);
    let select = |c: &str| if packed.contains(&c) { format!("kallista_pack_f32({c}) AS {c}") } else { c.to_string() };
    data_columns(input_columns).into_iter().map(select).collect::<Vec<_>>().join(", ")
}

/// Wraps an engine error for DataFusion (downcast again on the driver's side).
pub fn external(e: impl Into<EngineError>) -> DataFusionError {
    DataFusionError::External(Box::new(e.into()))
}

/// Parses the last argument, a string literal holding the spec as JSON.
pub fn spec_literal<T: DeserializeOwned>(function: &str, exprs: &[Arc<dyn PhysicalExpr>]) -> Result<T> {
    let text = exprs
        .last()
        .and_then(|e| e.downcast_ref::<Literal>())
        .and_then(|l| match l.value() {
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
                Some(s.clone())
            }
            _ => None,
        })
        .ok_or_else(|| {
            DataFusionError::Plan(format!("{function}: the last argument must be the spec, a string literal"))
        })?;
    serde_json::from_str(&text).map_err(|e| DataFusionError::Plan(format!("{function}: bad spec: {e}")))
}

/// The first `names.len()` argument arrays as a record batch with those column names.
pub fn named_batch(names: &[&str], values: &[ArrayRef]) -> Result<RecordBatch> {
    if values.len() < names.len() {
        return Err(DataFusionError::Plan(format!("expected {} arguments, got {}", names.len() + 1, values.len())));
    }
    let fields: Vec<Field> =
        names.iter().zip(values).map(|(n, v)| Field::new(*n, v.data_type().clone(), true)).collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), values[..names.len()].to_vec())?)
}

/// A value as a JSON string scalar: the state and result of Kallista's aggregates.
pub fn json_scalar<T: Serialize>(value: &T) -> Result<ScalarValue> {
    let json = serde_json::to_string(value).map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(ScalarValue::Utf8(Some(json)))
}

/// The non-null JSON strings of a state column, parsed.
pub fn json_states<T: DeserializeOwned>(states: &ArrayRef) -> Result<Vec<T>> {
    let states = cast(states, &DataType::Utf8)?;
    let states = states.as_any().downcast_ref::<StringArray>().expect("cast to Utf8");
    (0..states.len())
        .filter(|&i| !states.is_null(i))
        .map(|i| serde_json::from_str(states.value(i)).map_err(|e| DataFusionError::External(Box::new(e))))
        .collect()
}
