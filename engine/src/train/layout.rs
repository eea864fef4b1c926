//! Staging: the job's data rewritten once, by a Ballista SQL job, into the
//! layout the rounds read.
//!
//! Rows are ordered by a hash of (video, question, seed) (a shuffle that does
//! not depend on how the source was sharded) and cut into blocks of
//! `micro_batch` rows; block `b` goes to file `shard=b % shards`, sorted by
//! block. A round selects its blocks with `block IN (...)`; with the filter
//! pushed into the Parquet scan and the page index, the scan decodes the
//! frames of the selected rows only. The files are written with
//! `DataFrame::write_parquet` and explicit options rather than SQL `COPY`:
//! Ballista 55 sends a COPY's `OPTIONS` nowhere and writes with default
//! Parquet options unless the plan itself carries them ([`staging_options`]).
//! The written files are then checked against the expected row counts.

use super::schedule::BlockSchedule;
use crate::error::{EngineError, Result};
use datafusion::config::{ParquetColumnOptions, TableParquetOptions};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::SessionContext;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::statistics::Statistics;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where a split's rows come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DataSource {
    /// A Parquet file or directory (prepared video-QA schema, `data/SCHEMA.md`).
    Parquet(PathBuf),
    /// A query whose result has those columns.
    Sql(String),
}

impl DataSource {
    /// As a SQL relation.
    pub fn relation(&self) -> String {
        match self {
            DataSource::Parquet(p) => {
                let mut s = p.display().to_string();
                if p.is_dir() && !s.ends_with('/') {
                    s.push('/');
                }
                format!("'{}'", s.replace('\'', "''"))
            }
            DataSource::Sql(q) => format!("({q})"),
        }
    }
}

/// Where and how a split is staged.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
    /// The data columns to keep (besides `family` and `block`), as a select
    /// list ([`super::args::staging_select`]).
    pub columns: String,
    /// Columns written plain and uncompressed ([`super::args::packed_columns`]).
    pub plain_columns: Vec<&'static str>,
    pub micro_batch: usize,
    pub shards: usize,
    pub seed: u64,
    /// Drop the rows that do not fill a block in every shard (training);
    /// evaluation keeps every row.
    pub full_blocks_only: bool,
}

/// A staged split, as recorded next to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Staged {
    pub source: DataSource,
    pub dir: PathBuf,
    pub columns: String,
    pub rows: u64,
    pub micro_batch: usize,
    pub shards: usize,
    pub seed: u64,
    /// Blocks in each shard file.
    pub blocks_per_shard: Vec<usize>,
}

impl Staged {
    /// The training schedule over this split with `blocks_per_step_per_shard`.
    pub fn schedule(&self, blocks_per_step_per_shard: usize) -> BlockSchedule {
        BlockSchedule {
            shards: self.shards,
            blocks_per_shard: self.blocks_per_shard.iter().copied().min().unwrap_or(0),
            blocks_per_step_per_shard,
            seed: self.seed,
        }
    }

    /// Total blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks_per_shard.iter().sum::<usize>() as u64
    }
}

fn record_path(dir: &Path) -> PathBuf {
    dir.with_extension("layout.json")
}

async fn count_rows(ctx: &SessionContext, source: &DataSource) -> Result<u64> {
    let df = ctx.sql(&format!("SELECT COUNT(*) AS n FROM {}", source.relation())).await?;
    let batches = df.collect().await?;
    let col = batches.first().map(|b| b.column(0).clone());
    let n = col
        .as_ref()
        .and_then(|c| c.as_any().downcast_ref::<datafusion::arrow::array::Int64Array>())
        .map(|a| a.value(0))
        .ok_or_else(|| EngineError::Invalid("COUNT(*) returned no value".into()))?;
    Ok(n as u64)
}

/// Parquet options of the staged files: the session's, with `plain` columns
/// stored plain and uncompressed (packed floats gain little from zstd or a
/// dictionary, W1: 8%, and every round decodes them again). Given to the
/// write itself: Ballista 55 encodes a plan's Parquet format with default
/// options where the plan names none, so session settings do not reach it.
fn staging_options(ctx: &SessionContext, plain: &[&str]) -> TableParquetOptions {
    let mut options = ctx.state().default_table_options().parquet;
    for column in plain {
        let column_options = ParquetColumnOptions {
            compression: Some("uncompressed".into()),
            dictionary_enabled: Some(false),
            ..Default::default()
        };
        options.column_specific_options.insert(column.to_string(), column_options);
    }
    options
}

/// Stages `source` as `layout` says (reusing an earlier staging of the same
/// source and parameters).
pub async fn stage(ctx: &SessionContext, source: &DataSource, layout: &Layout) -> Result<Staged> {
    let Layout { dir, columns, plain_columns, micro_batch, shards, seed, full_blocks_only } = layout;
    let (dir, micro_batch, shards, seed, full_blocks_only) =
        (dir.as_path(), *micro_batch, *shards, *seed, *full_blocks_only);
    if let Ok(text) = std::fs::read_to_string(record_path(dir)) {
        if let Ok(s) = serde_json::from_str::<Staged>(&text) {
            if s.source == *source
                && s.columns == *columns
                && s.micro_batch == micro_batch
                && s.shards == shards
                && s.seed == seed
            {
                return Ok(s);
            }
        }
    }
    let rows = count_rows(ctx, source).await?;
    let keep_blocks = if full_blocks_only {
        (rows as usize / micro_batch / shards) * shards
    } else {
        (rows as usize).div_ceil(micro_batch)
    };
    if keep_blocks == 0 {
        return Err(EngineError::Invalid(format!(
            "{}: {rows} rows, fewer than one block of {micro_batch} rows per shard ({shards} shards)",
            source.relation()
        )));
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| EngineError::Io { path: dir.display().to_string(), source: e })?;
    }
    let sql = format!(
        "SELECT {columns}, family, block, block % {shards} AS shard FROM (
           SELECT *, CAST((ROW_NUMBER() OVER (
               ORDER BY md5(concat(video_id, '|', question, '|', '{seed}')), video_id, question) - 1)
             / {micro_batch} AS BIGINT) AS block
           FROM {relation}) ranked
         WHERE block < {keep_blocks}
         ORDER BY block",
        relation = source.relation(),
    );
    let write = DataFrameWriteOptions::new().with_partition_by(vec!["shard".into()]);
    let options = staging_options(ctx, plain_columns);
    ctx.sql(&sql).await?.write_parquet(&format!("{}/", dir.display()), write, Some(options)).await?;
    let blocks_per_shard = check_layout(dir, micro_batch, shards, full_blocks_only)?;
    let staged = Staged {
        source: source.clone(),
        dir: dir.to_path_buf(),
        columns: columns.clone(),
        rows: if full_blocks_only { (keep_blocks * micro_batch) as u64 } else { rows },
        micro_batch,
        shards,
        seed,
        blocks_per_shard,
    };
    let json = serde_json::to_vec_pretty(&staged).map_err(|e| EngineError::Invalid(e.to_string()))?;
    kallista_ops::model::write_atomic(&record_path(dir), &json)?;
    Ok(staged)
}

/// Counts the rows of each shard and checks them against the layout:
/// every shard holds whole blocks (`full_blocks_only`) and the blocks of its
/// residue class. Returns the blocks per shard.
fn check_layout(dir: &Path, micro_batch: usize, shards: usize, full_blocks_only: bool) -> Result<Vec<usize>> {
    let mut counts = vec![0usize; shards];
    for (f, count) in counts.iter_mut().enumerate() {
        let shard_dir = dir.join(format!("shard={f}"));
        let mut rows = 0usize;
        let files = if shard_dir.exists() { kallista_data::parquet_io::parquet_files(&shard_dir)? } else { vec![] };
        for path in files {
            let bad = |detail: String| EngineError::Corrupt { path: path.display().to_string(), detail };
            let file = std::fs::File::open(&path)
                .map_err(|e| EngineError::Io { path: path.display().to_string(), source: e })?;
            let reader = SerializedFileReader::new(file).map_err(|e| bad(e.to_string()))?;
            let meta = reader.metadata();
            let block_col = meta
                .file_metadata()
                .schema_descr()
                .columns()
                .iter()
                .position(|c| c.name() == "block")
                .ok_or_else(|| bad("no block column".into()))?;
            for (g, rg) in meta.row_groups().iter().enumerate() {
                if let Some(Statistics::Int64(s)) = rg.column(block_col).statistics() {
                    if let (Some(lo), Some(hi)) = (s.min_opt(), s.max_opt()) {
                        if *lo < 0 || *hi < *lo {
                            return Err(bad(format!("row group {g}: block range {lo}..{hi}")));
                        }
                    }
                }
                rows += rg.num_rows() as usize;
            }
        }
        if full_blocks_only && !rows.is_multiple_of(micro_batch) {
            return Err(EngineError::Corrupt {
                path: shard_dir.display().to_string(),
                detail: format!("{rows} rows, not whole blocks of {micro_batch}"),
            });
        }
        *count = rows.div_ceil(micro_batch);
    }
    Ok(counts)
}
