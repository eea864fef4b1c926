//! Staging's one write of the rows: ranked by their keys alone where the key
//! identifies every row, by whole rows where it does not.
//!
//! The ranking (shard, then rank in shard, hence block) needs a window sort.
//! Over whole rows that sort shuffles every row, frames included, Ballista's
//! sort shuffle spills it once more, and the Parquet sink, which takes one
//! partition, has it shuffled again: 4.3 bytes were written per staged byte
//! for the video-QA job. [`StagingWrite::by_key_ranks`] ranks the key columns
//! alone and writes them next to the staging (`staged_key_N`,
//! `staged_shard`, `staged_rank`, `staged_block`). Then one single-task
//! Ballista job per group of shards (as many groups as the session runs tasks
//! at once, side by side) reads the rows of its shards (the shard filter is
//! pushed into the scan), finds each row's block through a hash join on the
//! key with those shards' ranks, sorts by block and rank and writes the
//! shards' files: each row is written once, and the source read once per
//! group. The files hold the same rows, in the same order and row groups, as
//! [`StagingWrite::by_whole_rows`] writes.
//!
//! A repeated key cannot say which of its rows takes which rank (the join
//! would pair each of them with every rank of the key): such sources keep the
//! whole-row ranking, where the sort picks the order of a key's rows.

use super::args::{sql_ident, sql_idents};
use super::layout::{shard_expr, sql_str};
use crate::error::Result;
use crate::store::{blocking, Location};
use datafusion::arrow::array::Int64Array;
use datafusion::config::{ConfigNonZeroUsize, TableParquetOptions};
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::SessionContext;

/// Rows per batch in the wide queries. A video-QA row is about 100 KB:
/// batches of DataFusion's 8192 rows are allocations of 800 MB, which the
/// sort and the sink copy again (the kernel clearing fresh pages took 72% of
/// the CPU). The video-QA job's staging took 16-23 s with 64 rows, 27-31 s
/// with 8192 (alternating runs).
const WIDE_BATCH_ROWS: usize = 64;

/// One staging's write: where the rows come from, how they are ranked into
/// blocks, and where the `shard=N/` files go.
pub struct StagingWrite<'a> {
    /// The source, as a SQL relation.
    pub relation: &'a str,
    /// The select list of the staged columns (source columns, unqualified).
    pub columns: &'a str,
    pub key: &'a [String],
    /// Seeds the shard of a row and its order in the shard.
    pub seed: u64,
    pub micro_batch: usize,
    pub shards: usize,
    /// `WHERE` on `rank_in_shard` (training keeps whole blocks), or empty.
    pub keep: &'a str,
    pub dir: &'a Location,
    pub options: TableParquetOptions,
}

impl StagingWrite<'_> {
    /// How many keys of the source name more than one row.
    pub async fn repeated_keys(&self, ctx: &SessionContext) -> Result<u64> {
        let sql = format!(
            "SELECT COUNT(*) FROM (SELECT 1 FROM {} GROUP BY {} HAVING COUNT(*) > 1) repeated",
            self.relation,
            sql_idents(self.key)
        );
        let batches = ctx.sql(&sql).await?.collect().await?;
        let count = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| b.column(0).as_any().downcast_ref::<Int64Array>().map(|a| a.value(0)));
        Ok(count.unwrap_or(0) as u64)
    }

    /// The row's shard (`kallista_shard` of the key), as SQL.
    fn shard(&self) -> String {
        shard_expr(self.shards, self.key, self.seed)
    }

    /// `FROM` the source with `shard` and `rank_in_shard` (rows ordered by
    /// the seeded hash of their key, then the key), its columns `select`;
    /// `WHERE` the rows kept. Whole blocks follow from the ranks.
    fn ranked(&self, select: &str) -> String {
        let hashed = self.key.iter().map(|k| sql_ident(k)).collect::<Vec<_>>().join(", '|', ");
        format!(
            "FROM (
               SELECT *, CAST(ROW_NUMBER() OVER (
                   PARTITION BY shard ORDER BY md5(concat({hashed}, '|', '{seed}')), {keys})
                 AS BIGINT) - 1 AS rank_in_shard
               FROM (SELECT {select}, {shard} AS shard FROM {relation}) hashed) ranked
             {keep}",
            seed = self.seed,
            keys = sql_idents(self.key),
            shard = self.shard(),
            relation = self.relation,
            keep = self.keep,
        )
    }

    /// The block of rank `rank_in_shard` in `shard`, as SQL.
    fn block(&self) -> String {
        format!("CAST((rank_in_shard / {}) * {} + shard AS BIGINT)", self.micro_batch, self.shards)
    }

    /// Ranks the keys into `ranks`, writes the rows in block order, deletes
    /// the ranks. Needs a key that no two rows share.
    pub async fn by_key_ranks(self, ctx: &SessionContext, ranks: &Location) -> Result<()> {
        let renamed: Vec<String> = (0..self.key.len()).map(|i| format!("staged_key_{i}")).collect();
        let key_as: Vec<String> =
            self.key.iter().zip(&renamed).map(|(k, r)| format!("{} AS {r}", sql_ident(k))).collect();
        let rank_sql = format!(
            "SELECT {}, shard AS staged_shard, rank_in_shard AS staged_rank, {} AS staged_block {}",
            key_as.join(", "),
            self.block(),
            self.ranked(&sql_idents(self.key)),
        );
        ctx.sql(&rank_sql).await?.write_parquet(&ranks.dir_url(), DataFrameWriteOptions::new(), None).await?;
        let on: Vec<String> = self
            .key
            .iter()
            .zip(&renamed)
            .map(|(k, r)| format!("(s.{} IS NOT DISTINCT FROM r.{r})", sql_ident(k)))
            .collect();
        // One job per group of shards, as many as the session runs tasks at
        // once: each reads the source once and writes its shards' rows once.
        let jobs = ctx.state().config().target_partitions().clamp(1, self.shards);
        let one_task = one_task(ctx);
        let group_rows = |group: usize| {
            let sql = format!(
                "SELECT {columns}, r.staged_block AS block, r.staged_shard AS shard
                 FROM (SELECT * FROM {ranks} WHERE staged_shard % {jobs} = {group}) r
                 JOIN (SELECT * FROM {relation} WHERE {shard} % {jobs} = {group}) s ON {on}
                 ORDER BY r.staged_block, r.staged_rank",
                columns = self.columns,
                relation = self.relation,
                shard = self.shard(),
                ranks = sql_str(&ranks.dir_url()),
                on = on.join(" AND "),
            );
            let (ctx, this) = (&one_task, &self);
            async move { this.write(ctx, &sql).await }
        };
        let written = futures::future::try_join_all((0..jobs).map(group_rows)).await;
        blocking::delete_all(ranks)?;
        written.map(|_| ())
    }

    /// Ranks whole rows and writes them.
    pub async fn by_whole_rows(self, ctx: &SessionContext) -> Result<()> {
        let sql = format!("SELECT {}, {} AS block, shard {}", self.columns, self.block(), self.ranked("*"));
        self.write(ctx, &sql).await
    }

    /// Writes the rows of `sql` (the staged columns, `block` and `shard`) as `shard=N/` files.
    async fn write(&self, ctx: &SessionContext, sql: &str) -> Result<()> {
        let write = DataFrameWriteOptions::new().with_partition_by(vec!["shard".into()]);
        ctx.sql(sql).await?.write_parquet(&self.dir.dir_url(), write, Some(self.options.clone())).await?;
        Ok(())
    }
}

/// `ctx` (the same cluster, functions and tables) planning each query as one
/// task, so that a group's rows are read, joined, sorted and written with no
/// shuffle between (a Parquet sink takes one partition, which Ballista would
/// otherwise merge through a shuffle). With one partition DataFusion plans
/// every join as a hash join that holds its left side (here the group's
/// ranks, about 1/groups of the split's keys); reordering by statistics is
/// off, since it made the rows, filtered by shard, the side to hold.
fn one_task(ctx: &SessionContext) -> SessionContext {
    let mut state = ctx.state();
    let options = state.config_mut().options_mut();
    options.optimizer.join_reordering = false;
    options.execution.target_partitions = 1;
    options.execution.batch_size = ConfigNonZeroUsize::try_new(WIDE_BATCH_ROWS).expect("not zero");
    SessionContext::new_with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{training_session, Cluster};
    use crate::train::job_dir::JobDir;
    use crate::train::layout::{stage, DataSource, Layout};
    use datafusion::arrow::array::{Array, AsArray, BinaryArray, Int32Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use datafusion::parquet::arrow::ArrowWriter;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    /// 203 rows: a unique `id`, a `grp` of 5 values, a `payload` of 100-106 bytes; two files.
    fn source(dir: &Path) -> Location {
        std::fs::create_dir_all(dir).unwrap();
        for (file, rows) in [(0, 0..120), (1, 120..203)] {
            let ids: Vec<String> = rows.clone().map(|i| format!("row-{i}")).collect();
            let payloads: Vec<Vec<u8>> = rows.clone().map(|i| vec![i as u8; 100 + i % 7]).collect();
            let batch = RecordBatch::try_from_iter([
                ("id", Arc::new(StringArray::from(ids)) as Arc<dyn Array>),
                ("grp", Arc::new(Int32Array::from_iter_values(rows.clone().map(|i| (i % 5) as i32)))),
                ("payload", Arc::new(BinaryArray::from_iter_values(payloads.iter()))),
            ])
            .unwrap();
            let f = std::fs::File::create(dir.join(format!("part-{file}.parquet"))).unwrap();
            let mut w = ArrowWriter::try_new(f, batch.schema(), None).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
        }
        Location::from_path(dir).unwrap()
    }

    /// Per shard: its rows' (id, block, payload length) in file order, and its row groups' sizes.
    type ShardFiles = Vec<(Vec<(String, i64, usize)>, Vec<i64>)>;

    fn read_shards(dir: &Path, shards: usize) -> ShardFiles {
        (0..shards)
            .map(|s| {
                let mut rows = vec![];
                let mut groups = vec![];
                let mut files: Vec<PathBuf> =
                    std::fs::read_dir(dir.join(format!("shard={s}"))).unwrap().map(|e| e.unwrap().path()).collect();
                files.sort();
                for f in files {
                    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap()).unwrap();
                    groups.extend(reader.metadata().row_groups().iter().map(|g| g.num_rows()));
                    for b in reader.build().unwrap() {
                        let b = b.unwrap();
                        let (ids, blocks, payloads) = (
                            b.column_by_name("id").unwrap().as_string::<i32>(),
                            b.column_by_name("block").unwrap().as_primitive::<Int64Type>(),
                            b.column_by_name("payload").unwrap().as_binary::<i32>(),
                        );
                        rows.extend(
                            (0..b.num_rows())
                                .map(|r| (ids.value(r).to_string(), blocks.value(r), payloads.value(r).len())),
                        );
                    }
                }
                (rows, groups)
            })
            .collect()
    }

    fn with_runtime<T>(f: impl std::future::Future<Output = T>) -> T {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let out = rt.block_on(f);
        rt.shutdown_background();
        out
    }

    #[test]
    fn key_ranks_write_the_files_a_whole_row_ranking_writes_and_repeated_keys_keep_every_row_once() {
        let root = std::env::temp_dir().join(crate::cluster::owned_dir_name("kallista-staging-write"));
        let _ = std::fs::remove_dir_all(&root);
        let src = source(&root.join("src"));
        let relation = DataSource::Parquet(src.clone()).relation();
        let key = vec!["id".to_string()];
        let (micro_batch, shards) = (4, 3);
        let (by_keys, by_rows) = ["by_keys", "by_rows"].map(|d| Location::from_path(&root.join(d)).unwrap()).into();
        with_runtime(async {
            let ctx = training_session(&Cluster::Embedded, 2).await.unwrap();
            let write = |dir: &'static str, keep: &'static str| StagingWrite {
                relation: &relation,
                columns: "\"id\", \"grp\", \"payload\"",
                key: &key,
                seed: 7,
                micro_batch,
                shards,
                keep,
                dir: if dir == "by_keys" { &by_keys } else { &by_rows },
                options: TableParquetOptions {
                    global: datafusion::config::ParquetOptions {
                        max_row_group_size: micro_batch,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            };
            assert_eq!(write("by_keys", "").repeated_keys(&ctx).await.unwrap(), 0);
            for keep in ["", "WHERE rank_in_shard < 60"] {
                let ranks = Location::from_path(&root.join("ranks")).unwrap();
                write("by_keys", keep).by_key_ranks(&ctx, &ranks).await.unwrap();
                write("by_rows", keep).by_whole_rows(&ctx).await.unwrap();
                let (by_keys, by_rows) =
                    (read_shards(&root.join("by_keys"), shards), read_shards(&root.join("by_rows"), shards));
                assert_eq!(by_keys, by_rows, "keep {keep:?}");
                let rows: usize = by_keys.iter().map(|(r, _)| r.len()).sum();
                assert_eq!(rows, if keep.is_empty() { 203 } else { 180 }, "keep {keep:?}");
                for (s, (rows, groups)) in by_keys.iter().enumerate() {
                    // Blocks s, s + shards, ... in order, one row group each.
                    let blocks: Vec<i64> = rows.iter().map(|r| r.1).collect();
                    assert!(blocks.windows(2).all(|w| w[0] <= w[1]), "shard {s}: {blocks:?}");
                    assert!(blocks.iter().all(|b| *b as usize % shards == s), "shard {s}: {blocks:?}");
                    assert!(
                        groups[..groups.len() - 1].iter().all(|&g| g == micro_batch as i64),
                        "shard {s}: {groups:?}"
                    );
                }
                assert!(!root.join("ranks").exists(), "the ranks outlive the write");
                std::fs::remove_dir_all(root.join("by_keys")).unwrap();
                std::fs::remove_dir_all(root.join("by_rows")).unwrap();
            }

            // A key that repeats: staged by whole rows, every row once.
            let layout = Layout {
                job: JobDir::new(Location::from_path(&root.join("job")).unwrap()),
                split: "train".into(),
                columns: "\"id\", \"grp\", \"payload\"".into(),
                plain_columns: vec![],
                key: vec!["grp".into()],
                micro_batch,
                shards,
                seed: 7,
                full_blocks_only: false,
            };
            let staged = stage(&ctx, &DataSource::Parquet(src), &layout).await.unwrap();
            assert_eq!(staged.rows, 203);
            let mut ids: Vec<String> = read_shards(&staged.dir.local_path().unwrap(), shards)
                .into_iter()
                .flat_map(|(rows, _)| rows.into_iter().map(|r| r.0))
                .collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 203);
        });
        let _ = std::fs::remove_dir_all(&root);
    }
}
