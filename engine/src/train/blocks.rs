//! A rank's reads of its own blocks, one step at a time: the staged shard
//! files' footers are read once per segment, and each block is one ranged
//! read of its row group (staging writes one row group per block,
//! [`super::layout`]), through the same object-store registry as
//! everything else (on an executor, with its cache of immutable objects).

use crate::error::{EngineError, Result};
use crate::store::{blocking, Location};
use bytes::{Buf, Bytes};
use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::statistics::Statistics;
use std::sync::Arc;

/// One staged shard file: its footer and the blocks of each row group.
struct ShardFile {
    at: Location,
    size: u64,
    meta: ArrowReaderMetadata,
    /// Per row group: the smallest and largest block in it.
    groups: Vec<(i64, i64)>,
    projection: ProjectionMask,
}

/// Reads whole blocks of some shards of a staged split (see the module docs).
pub struct BlockReader {
    shards: usize,
    /// Files of each shard this reader serves, by shard.
    files: Vec<(usize, Vec<ShardFile>)>,
}

/// A byte range of a file, served as the file to Parquet's reader.
pub(crate) struct Window {
    pub(crate) offset: u64,
    pub(crate) bytes: Bytes,
    pub(crate) file_len: u64,
}

/// The byte range that holds every column chunk of row group `rg`.
pub(crate) fn row_group_range(meta: &parquet::file::metadata::ParquetMetaData, rg: usize) -> std::ops::Range<u64> {
    let (mut start, mut end) = (u64::MAX, 0u64);
    for c in meta.row_group(rg).columns() {
        let (s, len) = c.byte_range();
        start = start.min(s);
        end = end.max(s + len);
    }
    start.min(end)..end
}

impl Length for Window {
    fn len(&self) -> u64 {
        self.file_len
    }
}

impl ChunkReader for Window {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        let end = self.offset + self.bytes.len() as u64;
        Ok(self.get_bytes(start, (end.saturating_sub(start)) as usize)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let from = start.checked_sub(self.offset).map(|s| s as usize);
        match from {
            Some(s) if s + length <= self.bytes.len() => Ok(self.bytes.slice(s..s + length)),
            _ => Err(parquet::errors::ParquetError::General(format!(
                "bytes {start}..+{length} outside the row group read ({}..+{})",
                self.offset,
                self.bytes.len()
            ))),
        }
    }
}

fn corrupt(at: &Location, detail: String) -> EngineError {
    EngineError::Corrupt { path: at.to_string(), detail }
}

impl BlockReader {
    /// Opens the files of `shards` in the staged split at `data`, to read `columns` (and `block`).
    pub fn open(data: &Location, total_shards: usize, shards: &[usize], columns: &[&str]) -> Result<BlockReader> {
        let mut files = vec![];
        for &s in shards {
            let mut of_shard = vec![];
            for (at, size) in blocking::list(&data.join(&format!("shard={s}")))? {
                if at.file_name().ends_with(".parquet") {
                    of_shard.push(open_file(at, size, columns)?);
                }
            }
            files.push((s, of_shard));
        }
        Ok(BlockReader { shards: total_shards, files })
    }

    /// The rows of `block`, as stored (one batch per row group read).
    pub fn read(&self, block: u64) -> Result<Vec<RecordBatch>> {
        let shard = (block % self.shards as u64) as usize;
        let files = self.files.iter().find(|(s, _)| *s == shard).map(|(_, f)| f.as_slice()).unwrap_or(&[]);
        let mut out = vec![];
        let b = block as i64;
        for file in files {
            for (rg, &(lo, hi)) in file.groups.iter().enumerate() {
                if lo <= b && b <= hi {
                    out.extend(read_group(file, rg, b, lo == hi)?);
                }
            }
        }
        if out.iter().map(|r| r.num_rows()).sum::<usize>() == 0 {
            let at = files.first().map_or_else(|| "(no file)".to_string(), |f| f.at.to_string());
            return Err(EngineError::Training(format!("block {block}: no rows in shard {shard} ({at})")));
        }
        Ok(out)
    }
}

fn open_file(at: Location, size: u64, columns: &[&str]) -> Result<ShardFile> {
    let meta = Arc::new(blocking::parquet_metadata(&at, size)?);
    let meta = ArrowReaderMetadata::try_new(meta, ArrowReaderOptions::new())
        .map_err(|e| corrupt(&at, format!("parquet schema: {e}")))?;
    let schema = meta.schema().clone();
    let mut roots = vec![];
    for name in columns.iter().chain(&["block"]) {
        roots.push(schema.index_of(name).map_err(|_| corrupt(&at, format!("no column '{name}'")))?);
    }
    let projection = ProjectionMask::roots(meta.metadata().file_metadata().schema_descr(), roots);
    let descr = meta.metadata().file_metadata().schema_descr();
    let block_leaf = (0..descr.num_columns())
        .find(|&i| descr.column(i).name() == "block" && descr.column(i).path().parts().len() == 1);
    let block_leaf = block_leaf.ok_or_else(|| corrupt(&at, "no column 'block'".into()))?;
    let groups = meta
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| match rg.column(block_leaf).statistics() {
            Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                (Some(&lo), Some(&hi)) => (lo, hi),
                _ => (i64::MIN, i64::MAX),
            },
            // Without statistics every row group is read and filtered.
            _ => (i64::MIN, i64::MAX),
        })
        .collect();
    Ok(ShardFile { at, size, meta, groups, projection })
}

/// Row group `rg` of `file`, only the rows of `block` unless `whole`.
fn read_group(file: &ShardFile, rg: usize, block: i64, whole: bool) -> Result<Vec<RecordBatch>> {
    let group = file.meta.metadata().row_group(rg);
    let range = row_group_range(file.meta.metadata(), rg);
    let start = range.start;
    let bytes = blocking::read_range(&file.at, range)?;
    let window = Window { offset: start, bytes, file_len: file.size };
    let bad = |e: parquet::errors::ParquetError| corrupt(&file.at, format!("row group {rg}: {e}"));
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(window, file.meta.clone())
        .with_row_groups(vec![rg])
        .with_projection(file.projection.clone())
        .with_batch_size(group.num_rows().max(1) as usize)
        .build()
        .map_err(bad)?;
    let mut out = vec![];
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(&file.at, format!("row group {rg}: {e}")))?;
        if whole {
            out.push(batch);
            continue;
        }
        let ids = batch.column_by_name("block").and_then(|c| c.as_primitive_opt::<Int64Type>().cloned());
        let ids = ids.ok_or_else(|| corrupt(&file.at, "column 'block' is not BIGINT".into()))?;
        let keep: BooleanArray = ids.iter().map(|v| Some(v == Some(block))).collect();
        out.push(filter_record_batch(&batch, &keep).map_err(|e| corrupt(&file.at, e.to_string()))?);
    }
    Ok(out.into_iter().filter(|b| b.num_rows() > 0).collect())
}
