//! Argument handling shared by the training and evaluation functions: the
//! JSON spec literal, and the data columns as a record batch.

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
use kallista_data::binding::Binding;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

/// The columns the training and evaluation functions read, in order: each
/// input's (once), then the label: their first arguments.
pub fn data_columns(binding: &Binding) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for c in binding.inputs.iter().chain(&binding.label) {
        if !out.contains(c) {
            out.push(c.clone());
        }
    }
    out
}

/// A column name as SQL (quoted: any name works).
pub fn sql_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Column names as a SQL list (`"a", "b"`).
pub fn sql_idents(names: &[String]) -> String {
    names.iter().map(|c| sql_ident(c)).collect::<Vec<_>>().join(", ")
}

/// The select list that stages [`data_columns`], `packed` ones packed
/// (`kallista_pack_f32`: float lists, which rounds then scan at copy speed).
pub fn staging_select(binding: &Binding, packed: &[String]) -> String {
    let select = |c: &String| match packed.contains(c) {
        true => format!("kallista_pack_f32({0}) AS {0}", sql_ident(c)),
        false => sql_ident(c),
    };
    data_columns(binding).iter().map(select).collect::<Vec<_>>().join(", ")
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
