//! Broken Parquet files named before DataFusion reads them, and found after a
//! statement failed on them. DataFusion's Parquet errors say what is wrong but
//! not in which file ("Corrupt footer"), and a footer length larger than the
//! file made the footer reader panic; so a table's files have their footers
//! checked when it is created ([`check_footers`]), and when a statement fails
//! its tables' files are read column by column to find the file, row group
//! and column at fault ([`find_fault`]).

use crate::error::{EngineError, Result};
use crate::store::{blocking, Location};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::ParquetMetaData;

const MAGIC: &[u8; 4] = b"PAR1";

fn corrupt(at: &Location, detail: String) -> EngineError {
    EngineError::Corrupt { path: at.to_string(), detail }
}

/// The Parquet files a table at `location` reads: the file itself, or the
/// `.parquet` files under the folder (hidden `.` and `_` files excluded, as
/// DataFusion and Spark skip them).
pub fn table_files(location: &str) -> Result<Vec<(Location, u64)>> {
    let at = Location::parse(location)?;
    if !location.ends_with('/') {
        if let Some(size) = blocking::size(&at)? {
            return Ok(vec![(at, size)]);
        }
    }
    Ok(blocking::list(&at)?
        .into_iter()
        .filter(|(f, _)| {
            let name = f.file_name();
            name.ends_with(".parquet") && !name.starts_with('.') && !name.starts_with('_')
        })
        .collect())
}

/// Checks what can be checked without trusting the footer: the size, both
/// magic numbers, and the footer length against the file size; then parses
/// the footer, which it returns.
pub fn check_footer(at: &Location, size: u64) -> Result<ParquetMetaData> {
    if size == 0 {
        return Err(corrupt(at, "empty file (0 bytes): not Parquet".into()));
    }
    if size < 12 {
        return Err(corrupt(at, format!("{size} bytes: too short to be Parquet")));
    }
    if &blocking::read_range(at, 0..4)?[..] != MAGIC {
        return Err(corrupt(at, "not a Parquet file (it does not start with PAR1)".into()));
    }
    let tail = blocking::read_range(at, size - 8..size)?;
    match &tail[4..] {
        m if m == MAGIC => {}
        b"PARE" => return Err(corrupt(at, "encrypted Parquet, which Kallista does not read".into())),
        _ => return Err(corrupt(at, "no PAR1 at its end: the file is truncated or not Parquet".into())),
    }
    let footer = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64;
    if footer > size - 12 {
        return Err(corrupt(at, format!("corrupt footer: its length field says {footer} bytes, the file has {size}")));
    }
    blocking::parquet_metadata(at, size)
}

/// [`check_footer`] of every file of a table at `location`.
pub fn check_footers(location: &str) -> Result<()> {
    table_files(location)?.iter().try_for_each(|(at, size)| check_footer(at, *size).map(|_| ()))
}

/// The first fault in a file's data: every column of every row group is
/// decoded on its own, so the error names the row group, its rows and the
/// column. `Ok(())` when the whole file reads.
pub fn check_data(at: &Location, size: u64) -> Result<()> {
    check_footer(at, size)?;
    let bytes = blocking::read(at)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).map_err(|e| corrupt(at, e.to_string()))?;
    let meta = builder.metadata().clone();
    let schema = builder.schema().clone();
    let descr = meta.file_metadata().schema_descr_ptr();
    let mut first_row = 0i64;
    for (rg, group) in meta.row_groups().iter().enumerate() {
        let rows = group.num_rows();
        for (c, field) in schema.fields().iter().enumerate() {
            let read = || -> std::result::Result<(), String> {
                let reader = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
                    .and_then(|b| {
                        b.with_row_groups(vec![rg]).with_projection(ProjectionMask::roots(&descr, [c])).build()
                    })
                    .map_err(|e| e.to_string())?;
                reader.into_iter().try_for_each(|b| b.map(|_| ()).map_err(|e| e.to_string()))
            };
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read))
                .unwrap_or_else(|p| Err(format!("the Parquet reader panicked: {}", panic_text(&p))));
            if let Err(e) = outcome {
                return Err(corrupt(
                    at,
                    format!("row group {rg} (rows {first_row}..{}), column '{}': {e}", first_row + rows, field.name()),
                ));
            }
        }
        first_row += rows;
    }
    Ok(())
}

/// The first broken file of the tables at `locations`, with where it breaks.
pub fn find_fault(locations: &[String]) -> Option<EngineError> {
    locations.iter().find_map(|l| match table_files(l) {
        Err(e) => Some(e),
        Ok(files) => files.iter().find_map(|(at, size)| check_data(at, *size).err()),
    })
}

/// The message of a caught panic.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
