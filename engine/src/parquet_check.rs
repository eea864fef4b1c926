//! Broken Parquet files named before DataFusion reads them, and found after a
//! statement failed on them. DataFusion's Parquet errors say what is wrong but
//! not in which file ("Corrupt footer"), and a footer length larger than the
//! file made the footer reader panic; so a table's files have their footers
//! checked when it is created ([`check_footers`]), and when a statement fails
//! its tables' files are read column by column to find the file, row group
//! and column at fault ([`find_fault`]).

use crate::error::{EngineError, Result};
use crate::store::{blocking, Location};
use crate::train::blocks::{row_group_range, Window};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::ParquetMetaData;
use std::sync::Arc;
use std::time::Instant;

const MAGIC: &[u8; 4] = b"PAR1";

fn corrupt(at: &Location, detail: String) -> EngineError {
    EngineError::Corrupt { path: at.to_string(), detail }
}

/// The Parquet files a table at `location` reads: the file itself, or the
/// `.parquet` files directly in the folder (files in subfolders and hidden
/// `.` and `_` files excluded, as DataFusion skips them by default).
pub fn table_files(location: &str) -> Result<Vec<(Location, u64)>> {
    let at = Location::parse(location)?;
    if !location.ends_with('/') {
        if let Some(size) = blocking::size(&at)? {
            return Ok(vec![(at, size)]);
        }
    }
    let folder = at.object_path().to_string();
    Ok(blocking::list(&at)?
        .into_iter()
        .filter(|(f, _)| {
            let path = f.object_path().to_string();
            let relative = path.strip_prefix(&folder).unwrap_or(&path).trim_start_matches('/');
            let name = f.file_name();
            !relative.contains('/') && name.ends_with(".parquet") && !name.starts_with('.') && !name.starts_with('_')
        })
        .collect())
}

/// Checks what can be checked without trusting the footer: the size, the
/// closing magic number, and the footer length against the file size; then
/// parses the footer, which it returns. (One ranged read for a small footer:
/// a file that is not Parquet at all fails on its last bytes.)
pub fn check_footer(at: &Location, size: u64) -> Result<ParquetMetaData> {
    if size == 0 {
        return Err(corrupt(at, "empty file (0 bytes): not Parquet".into()));
    }
    if size < 12 {
        return Err(corrupt(at, format!("{size} bytes: too short to be Parquet")));
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
/// decoded on its own (one ranged read per row group), so the error names the
/// row group, its rows and the column. `Ok(())` when the whole file reads or
/// `deadline` passes first.
pub fn check_data(at: &Location, size: u64, deadline: Instant) -> Result<()> {
    let meta = Arc::new(check_footer(at, size)?);
    let arrow = ArrowReaderMetadata::try_new(meta.clone(), ArrowReaderOptions::new())
        .map_err(|e| corrupt(at, format!("parquet schema: {e}")))?;
    let descr = meta.file_metadata().schema_descr_ptr();
    let mut first_row = 0i64;
    for rg in 0..meta.num_row_groups() {
        let rows = meta.row_group(rg).num_rows();
        let range = row_group_range(&meta, rg);
        let offset = range.start;
        let bytes = blocking::read_range(at, range)?;
        for (c, field) in arrow.schema().fields().iter().enumerate() {
            if Instant::now() > deadline {
                return Ok(());
            }
            let read = || -> std::result::Result<(), String> {
                let window = Window { offset, bytes: bytes.clone(), file_len: size };
                let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(window, arrow.clone())
                    .with_row_groups(vec![rg])
                    .with_projection(ProjectionMask::roots(&descr, [c]))
                    .build()
                    .map_err(|e| e.to_string())?;
                reader.into_iter().try_for_each(|b| b.map(|_| ()).map_err(|e| e.to_string()))
            };
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(read))
                .unwrap_or_else(|p| Err(format!("the Parquet reader panicked: {}", panic_text(&*p))));
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

/// The first broken file of the tables at `locations`, with where it breaks;
/// the search gives up (`None`) at `deadline`.
pub fn find_fault(locations: &[String], deadline: Instant) -> Option<EngineError> {
    locations.iter().find_map(|l| match table_files(l) {
        Err(e) => Some(e),
        Ok(files) => files
            .iter()
            .take_while(|_| Instant::now() < deadline)
            .find_map(|(at, size)| check_data(at, *size, deadline).err()),
    })
}

/// The message of a caught panic.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
