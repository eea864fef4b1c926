//! Does the data fit the model? Checked on the footers of each split's
//! Parquet files (ranged reads on any store) before any work starts: the
//! columns the job reads exist and every answer id is below the number of
//! model outputs; on local files also that clips and questions have the
//! shapes of the model's inputs (first row). Remote splits get the shape
//! check from the workers, whose errors name the row.

use super::spec_error;
use crate::error::JobError;
use kallista_data::parquet_io::ClipReader;
use kallista_engine::store::{blocking, Location};
use kallista_ops::model::Model;
use parquet::file::statistics::Statistics;
use std::path::Path;

/// Columns staging and the training functions read, besides the inputs.
const REQUIRED: [&str; 8] =
    ["video_id", "question", "family", "frames", "frame_encoding", "num_frames", "height", "width"];

/// Checks `data` (a Parquet file or directory) against the model; `key` names the split.
pub fn check_split(
    file: &Path,
    key: &str,
    data: &Location,
    label: &str,
    model: &Model,
    columns: &[String],
) -> Result<(), JobError> {
    let bad = |detail: String| spec_error(file, key, detail);
    let mut files: Vec<(Location, u64)> = blocking::list(data)
        .map_err(|e| bad(e.to_string()))?
        .into_iter()
        .filter(|(l, _)| l.file_name().ends_with(".parquet") && !l.file_name().starts_with('.'))
        .collect();
    if files.is_empty() {
        // A single file rather than a prefix.
        if let Some(size) = blocking::size(data).map_err(|e| bad(e.to_string()))? {
            files.push((data.clone(), size));
        }
    }
    let (first, first_size) =
        files.first().cloned().ok_or_else(|| bad(format!("{data}: no .parquet files (or it does not exist)")))?;
    let footer = |at: &Location, size: u64| blocking::parquet_metadata(at, size).map_err(|e| bad(e.to_string()));
    let first_meta = footer(&first, first_size)?;
    let schema = first_meta.file_metadata().schema_descr_ptr();
    let top: Vec<String> = schema.root_schema().get_fields().iter().map(|f| f.name().to_string()).collect();
    let mut needed: Vec<&str> = REQUIRED.to_vec();
    needed.push(label);
    needed.extend(columns.iter().map(String::as_str));
    if let Some(missing) = needed.iter().find(|c| !top.iter().any(|t| t == *c)) {
        return Err(bad(format!("{first}: column '{missing}' is missing (the file has {top:?})")));
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
    // The first row's shapes, where reading it costs no download.
    let row = match first.local_path() {
        Some(path) => Some(
            ClipReader::open(&path, 1)
                .map_err(|e| bad(e.to_string()))?
                .next()
                .transpose()
                .map_err(|e| bad(e.to_string()))?
                .ok_or_else(|| bad(format!("{first}: no rows")))?,
        ),
        None => None,
    };
    for (i, (spec, column)) in specs.iter().zip(columns).enumerate() {
        let Some(row) = &row else { break };
        let data_shape: Vec<usize> = match column.as_str() {
            "frames" => row.shape[1..].to_vec(),
            _ => vec![row.question_ids.as_ref().map_or(0, |q| q.1)],
        };
        if spec.spec.shape != data_shape {
            return Err(spec_error(
                file,
                &format!("model.inputs[{i}].shape"),
                format!(
                    "input '{}' is {:?} but column '{column}' of {first} holds {data_shape:?} per row",
                    spec.name, spec.spec.shape
                ),
            ));
        }
    }
    let classes = model.output_specs().first().and_then(|s| s.shape.last().copied()).unwrap_or(0);
    let col = schema.columns().iter().position(|c| c.name() == label);
    for (f, size) in &files {
        let meta = if f == &first { first_meta.clone() } else { footer(f, *size)? };
        for rg in meta.row_groups() {
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
                        "{f}: {label} reaches {m} but the model has {classes} outputs (the answer vocabulary is larger)"
                    ),
                ));
            }
        }
    }
    Ok(())
}
