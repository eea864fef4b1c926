//! Does the data fit the model? Checked on the footers of each split's
//! Parquet files (ranged reads on any store) before any work starts: the
//! columns the job reads exist and every label is below the number of model
//! outputs; on local files also that the first row of each input column
//! decodes to the input's type and shape. Remote splits get the shape check
//! from the workers, whose errors name the row.

use super::spec_error;
use crate::error::JobError;
use arrow::array::Array;
use kallista_data::binding::Binding;
use kallista_engine::parquet_check;
use kallista_engine::store::{blocking, Location};
use kallista_engine::tensors::input_values;
use kallista_ops::model::Model;
use parquet::file::statistics::Statistics;
use std::path::Path;

/// Checks `data` (a Parquet file or directory) against the model and the
/// columns `binding` names; `key` names the split in the job file.
pub fn check_split(file: &Path, key: &str, data: &Location, binding: &Binding, model: &Model) -> Result<(), JobError> {
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
    let footer = |at: &Location, size: u64| parquet_check::check_footer(at, size).map_err(|e| bad(e.to_string()));
    let first_meta = footer(&first, first_size)?;
    let schema = first_meta.file_metadata().schema_descr_ptr();
    let top: Vec<String> = schema.root_schema().get_fields().iter().map(|f| f.name().to_string()).collect();
    let label = binding.label.as_deref().unwrap_or_default();
    let mut needed: Vec<(String, &str)> =
        binding.inputs.iter().enumerate().map(|(i, c)| (format!("model.inputs[{i}].column"), c.as_str())).collect();
    needed.push(("data.label".into(), label));
    needed.extend(binding.group_by.iter().map(|g| ("data.group_by".to_string(), g.as_str())));
    needed.extend(binding.key.iter().map(|k| ("data.key".to_string(), k.as_str())));
    if let Some((at, missing)) = needed.iter().find(|(_, c)| !top.iter().any(|t| t == c)) {
        return Err(spec_error(file, at, format!("'{missing}': {first} has no such column (it has {top:?})")));
    }
    let specs = model.input_specs();
    if specs.len() != binding.inputs.len() {
        return Err(spec_error(
            file,
            "model.inputs",
            format!("the model has {} inputs, the job file binds {}", specs.len(), binding.inputs.len()),
        ));
    }
    // The first row decoded for each input, where reading it costs no download.
    if let Some(path) = first.local_path() {
        let open = std::fs::File::open(&path).map_err(|e| bad(format!("{first}: {e}")))?;
        let row = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(open)
            .and_then(|b| b.with_batch_size(1).with_limit(1).build())
            .map_err(|e| bad(format!("{first}: {e}")))?
            .next()
            .transpose()
            .map_err(|e| bad(format!("{first}: {e}")))?
            .ok_or_else(|| bad(format!("{first}: no rows")))?;
        let source = first.to_string();
        for (i, (spec, column)) in specs.iter().zip(&binding.inputs).enumerate() {
            let values = row.column_by_name(column).ok_or_else(|| bad(format!("{first}: no column '{column}'")))?;
            if let Err(e) = input_values(&[values], spec, &source, column, 0) {
                return Err(spec_error(
                    file,
                    &format!("model.inputs[{i}].shape"),
                    format!(
                        "input '{}' is {:?} ({}), which column '{column}' does not fit: {e}",
                        spec.name, spec.spec.shape, spec.spec.dtype
                    ),
                ));
            }
        }
    }
    let classes = model.output_specs().first().and_then(|s| s.shape.last().copied()).unwrap_or(0);
    let col = schema.columns().iter().position(|c| c.name() == label);
    for (f, size) in &files {
        let meta = if f == &first { first_meta.clone() } else { footer(f, *size)? };
        if let Some(c) = col {
            null_labels(f, &meta, c).map_err(|e| spec_error(file, key, e))?;
        }
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
                    format!("{f}: {label} reaches {m} but the model has {classes} outputs (more classes than outputs)"),
                ));
            }
        }
    }
    Ok(())
}

/// Refuses labels that the footer's statistics count as null, naming the
/// file, the row (found by reading the label column of a local file; the row
/// group's rows otherwise) and the column.
fn null_labels(at: &Location, meta: &parquet::file::metadata::ParquetMetaData, col: usize) -> Result<(), String> {
    let mut first_row = 0i64;
    for (g, rg) in meta.row_groups().iter().enumerate() {
        let column = rg.column(col);
        if column.statistics().and_then(|s| s.null_count_opt()).unwrap_or(0) > 0 {
            let name = column.column_descr().name().to_string();
            let row = at.local_path().and_then(|p| first_null(&p, g, &name)).map(|r| first_row + r as i64);
            let place = match row {
                Some(r) => format!("row {r}"),
                None => format!("row group {g} (rows {first_row}..{})", first_row + rg.num_rows()),
            };
            return Err(format!("{at}: {place}, column '{name}': null label"));
        }
        first_row += rg.num_rows();
    }
    Ok(())
}

/// The first null of column `name` in row group `group` of a local file.
fn first_null(path: &Path, group: usize, name: &str) -> Option<usize> {
    let b =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).ok()?).ok()?;
    let leaf = b.parquet_schema().columns().iter().position(|c| c.name() == name)?;
    let mask = parquet::arrow::ProjectionMask::leaves(b.parquet_schema(), [leaf]);
    let mut seen = 0;
    for batch in b.with_row_groups(vec![group]).with_projection(mask).build().ok()? {
        let labels = batch.ok()?.column(0).clone();
        if let Some(r) = (0..labels.len()).find(|&r| labels.is_null(r)) {
            return Some(seen + r);
        }
        seen += labels.len();
    }
    None
}
