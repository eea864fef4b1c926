//! Does the data fit the model? Checked on the first Parquet file of each
//! split before any work starts: the columns the job reads exist, clips and
//! questions have the shapes of the model's inputs, and every answer id is
//! below the number of model outputs.

use super::spec_error;
use crate::error::JobError;
use kallista_data::parquet_io::{parquet_files, ClipReader};
use kallista_ops::model::Model;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::statistics::Statistics;
use std::path::Path;

/// Columns staging and the training functions read, besides the inputs.
const REQUIRED: [&str; 8] =
    ["video_id", "question", "family", "frames", "frame_encoding", "num_frames", "height", "width"];

/// Checks `data` (a Parquet file or directory) against the model; `key` names the split.
pub fn check_split(
    file: &Path,
    key: &str,
    data: &Path,
    label: &str,
    model: &Model,
    columns: &[String],
) -> Result<(), JobError> {
    let bad = |detail: String| spec_error(file, key, detail);
    if !data.exists() {
        return Err(bad(format!("{} does not exist", data.display())));
    }
    let files = parquet_files(data).map_err(|e| bad(e.to_string()))?;
    let first = files.first().ok_or_else(|| bad(format!("{}: no .parquet files", data.display())))?;
    let reader =
        SerializedFileReader::new(std::fs::File::open(first).map_err(|e| bad(format!("{}: {e}", first.display())))?)
            .map_err(|e| bad(format!("{}: {e}", first.display())))?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let top: Vec<String> = schema.root_schema().get_fields().iter().map(|f| f.name().to_string()).collect();
    let mut needed: Vec<&str> = REQUIRED.to_vec();
    needed.push(label);
    needed.extend(columns.iter().map(String::as_str));
    if let Some(missing) = needed.iter().find(|c| !top.iter().any(|t| t == *c)) {
        return Err(bad(format!("{}: column '{missing}' is missing (the file has {top:?})", first.display())));
    }
    if label != "answer_id" {
        return Err(spec_error(file, "data.label", "only answer_id is supported as the label"));
    }
    let specs = model.input_specs();
    if specs.len() != columns.len() {
        return Err(spec_error(
            file,
            "model.inputs",
            format!("the model has {} inputs, the job file binds {}", specs.len(), columns.len()),
        ));
    }
    let row = ClipReader::open(first, 1)
        .map_err(|e| bad(e.to_string()))?
        .next()
        .transpose()
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad(format!("{}: no rows", first.display())))?;
    for (i, (spec, column)) in specs.iter().zip(columns).enumerate() {
        let data_shape: Vec<usize> = match column.as_str() {
            "frames" => row.shape[1..].to_vec(),
            _ => vec![row.question_ids.as_ref().map_or(0, |q| q.1)],
        };
        if spec.spec.shape != data_shape {
            return Err(spec_error(
                file,
                &format!("model.inputs[{i}].shape"),
                format!(
                    "input '{}' is {:?} but column '{column}' of {} holds {:?} per row",
                    spec.name,
                    spec.spec.shape,
                    first.display(),
                    data_shape
                ),
            ));
        }
    }
    let classes = model.output_specs().first().and_then(|s| s.shape.last().copied()).unwrap_or(0);
    let col = schema.columns().iter().position(|c| c.name() == label);
    for f in &files {
        let reader =
            SerializedFileReader::new(std::fs::File::open(f).map_err(|e| bad(format!("{}: {e}", f.display())))?)
                .map_err(|e| bad(format!("{}: {e}", f.display())))?;
        for rg in reader.metadata().row_groups() {
            let max = col.and_then(|c| match rg.column(c).statistics() {
                Some(Statistics::Int32(s)) => s.max_opt().map(|m| *m as i64),
                Some(Statistics::Int64(s)) => s.max_opt().copied(),
                _ => None,
            });
            if let Some(m) = max.filter(|&m| m >= classes as i64) {
                return Err(spec_error(
                    file,
                    "model.outputs",
                    format!(
                        "{}: {label} reaches {m} but the model has {classes} outputs (the answer vocabulary is larger)",
                        f.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}
