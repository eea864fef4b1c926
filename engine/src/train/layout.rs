//! Staging: the job's data rewritten once, by a Ballista SQL job, into the
//! layout the rounds read, in the job dir's store.
//!
//! Rows are hashed into `shards` shards first ([`kallista_shard`] of the
//! row key and seed: it does not depend on how the source was sharded), then
//! ranked within their shard by a second hash; rank `r` of shard `s` lands
//! in block `(r / micro_batch) * shards + s`, so file `shard=s` holds blocks
//! `s, s + shards, ...`, in order, one Parquet row group each. Each shard is
//! ranked on its own partition: no node sees every row. A round selects its
//! blocks with `block IN (...)`; with the filter pushed into the Parquet scan
//! the scan decodes the selected row groups only. Where the key identifies
//! every row only the keys are ranked, and each row is written once in its
//! block ([`super::staging_write`]).
//!
//! Each staging writes a new version (`data/<split>/<version>/`) and then its
//! record (`data/<split>.layout.json`) in one put, so a reader never mixes the
//! files of two stagings, on a store no driver can list reliably or clean
//! after a crash. Older versions are deleted afterwards.
//!
//! The files are written with `DataFrame::write_parquet` and explicit options
//! rather than SQL `COPY`: Ballista 55 sends a COPY's `OPTIONS` nowhere and
//! writes with default Parquet options unless the plan itself carries them
//! ([`staging_options`]). The written files are then counted per shard.
//!
//! [`kallista_shard`]: crate::functions::ShardUdf

use super::job_dir::JobDir;
use super::schedule::BlockSchedule;
use super::staging_write::StagingWrite;
use crate::error::{EngineError, Result};
use crate::store::{blocking, Location};
use datafusion::arrow::array::{Array, Int64Array};
use datafusion::config::{ParquetColumnOptions, TableParquetOptions};
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

/// Where a split's rows come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DataSource {
    /// A Parquet file or a prefix of Parquet files (prepared video-QA schema, `data/SCHEMA.md`).
    Parquet(Location),
    /// A query whose result has those columns.
    Sql(String),
}

impl DataSource {
    /// As a SQL relation: a quoted URL (a prefix unless it names a `.parquet` file) or a subquery.
    pub fn relation(&self) -> String {
        match self {
            DataSource::Parquet(p) => {
                let url = if p.file_name().ends_with(".parquet") { p.as_str().to_string() } else { p.dir_url() };
                sql_str(&url)
            }
            DataSource::Sql(q) => format!("({q})"),
        }
    }
}

/// A SQL string literal.
pub fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Where and how a split is staged.
#[derive(Clone, Debug)]
pub struct Layout {
    pub job: JobDir,
    /// `train`, `eval` or `test`.
    pub split: String,
    /// The data columns to keep (besides `block`), as a select list
    /// ([`super::args::staging_select`]).
    pub columns: String,
    /// Columns written plain and uncompressed (the packed float inputs).
    pub plain_columns: Vec<String>,
    /// The columns that identify a row: rows are sharded and ordered by them.
    pub key: Vec<String>,
    pub micro_batch: usize,
    pub shards: usize,
    pub seed: u64,
    /// Keep the same whole number of blocks in every shard (training);
    /// evaluation keeps every row.
    pub full_blocks_only: bool,
}

/// A staged split, as recorded next to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Staged {
    pub source: DataSource,
    /// This staging's version: the prefix that holds its `shard=N/` files.
    pub dir: Location,
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

/// Runs a query and returns its first two columns as integers, row by row.
async fn int_pairs(ctx: &SessionContext, sql: &str) -> Result<Vec<(i64, i64)>> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut out = vec![];
    for b in &batches {
        let cast = |i: usize| {
            datafusion::arrow::compute::cast(b.column(i), &datafusion::arrow::datatypes::DataType::Int64)
                .map_err(datafusion::error::DataFusionError::from)
        };
        let (a, c) = (cast(0)?, cast(1)?);
        let (a, c) = (
            a.as_any().downcast_ref::<Int64Array>().expect("cast to Int64"),
            c.as_any().downcast_ref::<Int64Array>().expect("cast to Int64"),
        );
        out.extend((0..b.num_rows()).filter(|&r| !a.is_null(r)).map(|r| (a.value(r), c.value(r))));
    }
    Ok(out)
}

/// The shard of a row, as SQL.
pub(super) fn shard_expr(shards: usize, key: &[String], seed: u64) -> String {
    format!("kallista_shard({shards}, {}, '{seed}')", super::args::sql_idents(key))
}

/// Rows per shard of `source`.
async fn rows_per_shard(
    ctx: &SessionContext,
    source: &DataSource,
    shards: usize,
    key: &[String],
    seed: u64,
) -> Result<Vec<u64>> {
    let sql =
        format!("SELECT {} AS shard, COUNT(*) FROM {} GROUP BY 1", shard_expr(shards, key, seed), source.relation());
    let mut counts = vec![0u64; shards];
    for (s, n) in int_pairs(ctx, &sql).await? {
        counts[s as usize] = n as u64;
    }
    Ok(counts)
}

/// Parquet options of the staged files: the session's, one row group per
/// block, and `plain` columns stored plain and uncompressed (packed floats
/// gain little from zstd or a dictionary, W1: 8%, and every round decodes
/// them again). Given to the write itself: Ballista 55 encodes a plan's
/// Parquet format with default options where the plan names none, so
/// session settings do not reach it.
fn staging_options(ctx: &SessionContext, plain: &[String], micro_batch: usize) -> TableParquetOptions {
    let mut options = ctx.state().default_table_options().parquet;
    options.global.max_row_group_size = micro_batch;
    for column in plain {
        let column_options = ParquetColumnOptions {
            compression: Some("uncompressed".into()),
            dictionary_enabled: Some(false),
            ..Default::default()
        };
        options.column_specific_options.insert(column.clone(), column_options);
    }
    options
}

/// Stages `source` as `layout` says (reusing the current staging when it was
/// made from the same source with the same parameters).
pub async fn stage(ctx: &SessionContext, source: &DataSource, layout: &Layout) -> Result<Staged> {
    let Layout { job, split, columns, plain_columns, key, micro_batch, shards, seed, full_blocks_only } = layout;
    // The key is part of what was staged: another key is another staging.
    let recorded = format!("{columns}; key {}", super::args::sql_idents(key));
    let (micro_batch, shards, seed) = (*micro_batch, *shards, *seed);
    let record = job.staged_record(split);
    let current = match blocking::exists(&record)? {
        true => serde_json::from_str::<Staged>(&blocking::read_string(&record)?).ok(),
        false => None,
    };
    if let Some(s) = &current {
        if s.source == *source
            && s.columns == recorded
            && s.micro_batch == micro_batch
            && s.shards == shards
            && s.seed == seed
        {
            return Ok(s.clone());
        }
    }
    let per_shard = rows_per_shard(ctx, source, shards, key, seed).await?;
    let min_rows = per_shard.iter().copied().min().unwrap_or(0) as usize;
    let keep_rows_per_shard = if *full_blocks_only { Some(min_rows / micro_batch * micro_batch) } else { None };
    if keep_rows_per_shard == Some(0) || per_shard.iter().all(|&n| n == 0) {
        return Err(EngineError::Invalid(format!(
            "{}: {} rows, fewer than one block of {micro_batch} rows in some shard ({shards} shards: {per_shard:?})",
            source.relation(),
            per_shard.iter().sum::<u64>()
        )));
    }
    // Written once, never changed: executors may keep a copy (`store::cache`).
    let version = format!(
        "{}v{}",
        crate::store::cache::IMMUTABLE_PREFIX,
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
    );
    let dir = job.staged(split).join(&version);
    let keep = keep_rows_per_shard.map_or(String::new(), |n| format!("WHERE rank_in_shard < {n}"));
    let relation = source.relation();
    let write = StagingWrite {
        relation: &relation,
        columns,
        key,
        seed,
        micro_batch,
        shards,
        keep: &keep,
        dir: &dir,
        options: staging_options(ctx, plain_columns, micro_batch),
    };
    match write.repeated_keys(ctx).await? {
        0 => write.by_key_ranks(ctx, &job.staged(split).join(&format!("ranks-{version}"))).await?,
        repeated => {
            log::info!(
                "staging {split}: {repeated} keys of ({}) name several rows: ranking whole rows",
                super::args::sql_idents(key)
            );
            write.by_whole_rows(ctx).await?
        }
    }
    let blocks_per_shard = check_layout(ctx, &dir, micro_batch, shards, keep_rows_per_shard).await?;
    let staged = Staged {
        source: source.clone(),
        dir,
        columns: recorded,
        rows: blocks_rows(&per_shard, keep_rows_per_shard),
        micro_batch,
        shards,
        seed,
        blocks_per_shard,
    };
    let json = serde_json::to_vec_pretty(&staged).map_err(|e| EngineError::Invalid(e.to_string()))?;
    blocking::write(&record, json)?;
    // Older versions, after the record no longer names them.
    for (object, _) in blocking::list(&job.staged(split))? {
        if !object.is_under(&staged.dir) {
            blocking::delete(&object)?;
        }
    }
    Ok(staged)
}

fn blocks_rows(per_shard: &[u64], keep: Option<usize>) -> u64 {
    match keep {
        Some(n) => (n * per_shard.len()) as u64,
        None => per_shard.iter().sum(),
    }
}

/// Counts the rows of each shard as written and checks them against the
/// layout: `keep` rows each (training), and only the blocks of the shard's
/// residue class. Returns the blocks per shard.
async fn check_layout(
    ctx: &SessionContext,
    dir: &Location,
    micro_batch: usize,
    shards: usize,
    keep: Option<usize>,
) -> Result<Vec<usize>> {
    let mut counts = vec![0usize; shards];
    for (s, count) in counts.iter_mut().enumerate() {
        let files = dir.join(&format!("shard={s}"));
        if blocking::list(&files)?.is_empty() {
            continue;
        }
        let sql = format!(
            "SELECT COUNT(*), SUM(CASE WHEN block % {shards} = {s} AND block >= 0 THEN 0 ELSE 1 END) FROM {}",
            sql_str(&files.dir_url())
        );
        let (rows, misplaced) = int_pairs(ctx, &sql).await?.first().copied().unwrap_or((0, 0));
        let (rows, bad) = (rows as usize, misplaced > 0 || keep.is_some_and(|n| rows as usize != n));
        if bad {
            return Err(EngineError::Corrupt {
                path: files.to_string(),
                detail: format!("{rows} rows ({misplaced} in blocks of other shards); the layout expects {keep:?} of blocks of {micro_batch}"),
            });
        }
        *count = rows.div_ceil(micro_batch);
    }
    Ok(counts)
}
