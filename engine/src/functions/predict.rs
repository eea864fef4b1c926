//! The prediction functions: a trained model applied to a table's rows where
//! they are scanned ([`crate::predict`] loads the model and decodes the
//! columns).
//!
//! - `kallista_predict(model, col, ...)` -> `{class_id, probability, label}`:
//!   the most probable class, its probability, and its label when the
//!   model's job dir has `labels.json` (else null);
//! - `kallista_predict_proba(model, col, ...)` -> `List<Float32>`: every
//!   class's probability (the model's first output);
//! - `kallista_embed(model, layer, col, ...)` -> `List<Float32>`: the output
//!   of layer `layer`, flattened;
//! - `kallista_score(model, label, col, ...)` -> `{class_id, probability,
//!   label, label_probability, label_rank}` (`label`: the predicted
//!   class's name): what `kallista evaluate` aggregates (the loss from the
//!   label's probability, top-k from its rank, 0 = top).

use super::list_of;
use crate::error::{EngineError, Result as EngineResult};
use crate::predict::source::model_at;
use crate::predict::{literal_arg, predict_rows, rows_of, top_classes};
use crate::train::args::external;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Int32Array, ListArray, StringArray, StructArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Int32Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use std::sync::Arc;

/// Which prediction function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prediction {
    Class,
    Probabilities,
    Embedding,
    Score,
}

impl Prediction {
    pub const ALL: [Prediction; 4] =
        [Prediction::Class, Prediction::Probabilities, Prediction::Embedding, Prediction::Score];

    fn name(self) -> &'static str {
        match self {
            Prediction::Class => "kallista_predict",
            Prediction::Probabilities => "kallista_predict_proba",
            Prediction::Embedding => "kallista_embed",
            Prediction::Score => "kallista_score",
        }
    }

    /// Index of the first column argument.
    fn first_column(self) -> usize {
        match self {
            Prediction::Class | Prediction::Probabilities => 1,
            Prediction::Embedding | Prediction::Score => 2,
        }
    }

    fn usage(self) -> &'static str {
        match self {
            Prediction::Class => "kallista_predict(model_uri, column, ...)",
            Prediction::Probabilities => "kallista_predict_proba(model_uri, column, ...)",
            Prediction::Embedding => "kallista_embed(model_uri, layer, column, ...)",
            Prediction::Score => "kallista_score(model_uri, label_column, column, ...)",
        }
    }
}

fn class_fields() -> Fields {
    Fields::from(vec![
        Field::new("class_id", DataType::Int32, false),
        Field::new("probability", DataType::Float32, false),
        Field::new("label", DataType::Utf8, true),
    ])
}

/// [`class_fields`], then the row label's probability and rank.
fn score_fields() -> Fields {
    let mut fields: Vec<Field> = class_fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("label_probability", DataType::Float32, false));
    fields.push(Field::new("label_rank", DataType::Int32, false));
    Fields::from(fields)
}

/// One prediction function (see the module docs).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PredictUdf {
    kind: Prediction,
    signature: Signature,
}

impl PredictUdf {
    pub fn new(kind: Prediction) -> Self {
        // Stable: one model version per query; the model URI's content may change between queries.
        PredictUdf { kind, signature: Signature::variadic_any(Volatility::Stable) }
    }

    fn run(&self, args: &ScalarFunctionArgs) -> EngineResult<ArrayRef> {
        let name = self.kind.name();
        let uri = literal_arg(name, &args.args, 0, "the model URI")?;
        let loaded = model_at(&uri).map_err(|e| EngineError::Invalid(format!("{name} argument 1 ('{uri}'): {e}")))?;
        let rows = rows_of(&args.args, args.number_rows);
        let first = self.kind.first_column();
        let cut;
        let model = match self.kind {
            Prediction::Embedding => {
                let layer = literal_arg(name, &args.args, 1, "the layer name")?;
                cut = loaded.cut_at(&layer).map_err(|e| EngineError::Invalid(format!("{name} argument 2: {e}")))?;
                &*cut
            }
            _ => &loaded.model,
        };
        let (values, width) = predict_rows(name, model, &args.args, &args.arg_fields, first, rows)?;
        let class_labels = |top: &[(i32, f32)]| -> StringArray {
            top.iter()
                .map(|&(c, _)| loaded.labels.as_ref().and_then(|l| l.get(c as usize)).map(String::as_str))
                .collect()
        };
        let list = |values: Vec<f32>| -> ArrayRef {
            let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(width, rows));
            Arc::new(ListArray::new(
                Arc::new(Field::new_list_field(DataType::Float32, true)),
                offsets,
                Arc::new(Float32Array::from(values)),
                None,
            ))
        };
        Ok(match self.kind {
            Prediction::Probabilities | Prediction::Embedding => list(values),
            Prediction::Class => {
                let top = top_classes(&values, width);
                let labels = class_labels(&top);
                Arc::new(StructArray::new(
                    class_fields(),
                    vec![
                        Arc::new(Int32Array::from_iter_values(top.iter().map(|t| t.0))),
                        Arc::new(Float32Array::from_iter_values(top.iter().map(|t| t.1))),
                        Arc::new(labels),
                    ],
                    None,
                ))
            }
            Prediction::Score => {
                let labels = label_ids(name, args, rows, width)?;
                let top = top_classes(&values, width);
                let names = class_labels(&top);
                let mut label_p = Vec::with_capacity(rows);
                let mut rank = Vec::with_capacity(rows);
                for (row, &label) in values.chunks_exact(width.max(1)).zip(&labels) {
                    let p = row[label as usize];
                    label_p.push(p);
                    rank.push(row.iter().filter(|&&q| q > p).count() as i32);
                }
                Arc::new(StructArray::new(
                    score_fields(),
                    vec![
                        Arc::new(Int32Array::from_iter_values(top.iter().map(|t| t.0))),
                        Arc::new(Float32Array::from_iter_values(top.iter().map(|t| t.1))),
                        Arc::new(names),
                        Arc::new(Float32Array::from(label_p)),
                        Arc::new(Int32Array::from(rank)),
                    ],
                    None,
                ))
            }
        })
    }
}

/// `kallista_score`'s label column: class ids within the model's outputs.
fn label_ids(name: &str, args: &ScalarFunctionArgs, rows: usize, classes: usize) -> EngineResult<Vec<i32>> {
    let column = args.arg_fields.get(1).map_or("?", |f| f.name().as_str()).to_string();
    let at = |row: usize, detail: String| {
        EngineError::Invalid(format!("{name} argument 2: row {row}, column '{column}': {detail}"))
    };
    let raw = args.args[1].to_array(rows)?;
    let ids = cast(&raw, &DataType::Int32)
        .map_err(|_| at(0, format!("has type {}, the label must be a class id (an integer)", raw.data_type())))?;
    let ids = ids.as_primitive::<Int32Type>();
    for r in 0..rows {
        if ids.is_null(r) {
            return Err(at(r, "the label is null".into()));
        }
        if ids.value(r) < 0 || ids.value(r) as usize >= classes {
            return Err(at(r, format!("label {} is not one of the model's {classes} classes", ids.value(r))));
        }
    }
    Ok(ids.values().to_vec())
}

impl ScalarUDFImpl for PredictUdf {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if args.len() <= self.kind.first_column() {
            return Err(DataFusionError::Plan(format!("{}: no model input columns", self.kind.usage())));
        }
        Ok(match self.kind {
            Prediction::Class => DataType::Struct(class_fields()),
            Prediction::Score => DataType::Struct(score_fields()),
            Prediction::Probabilities | Prediction::Embedding => list_of(DataType::Float32),
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        // As text: a failed task reaches the client as the Debug form of its
        // error, which would otherwise spell the row and column as struct fields.
        self.run(&args).map(ColumnarValue::Array).map_err(|e| external(EngineError::Invalid(e.to_string())))
    }
}
