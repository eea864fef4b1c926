//! Sessions on a Ballista cluster with Kallista's functions registered.
//!
//! Ballista 55 needs custom functions in several places (see
//! `shared/BALLISTA-NOTES.md`): in the state the embedded cluster is built
//! from, and again on the client context, whose function lists
//! `upgrade_for_ballista` replaces. The adaptive planner stays off: with it,
//! losing an executor that held finished partial results hung jobs forever.

use crate::error::Result;
use crate::functions::{kallista_aggregates, kallista_functions, register_all};
use ballista::prelude::SessionContextExt;
use ballista_core::config::{BALLISTA_ADAPTIVE_PLANNER_ENABLED, BALLISTA_SCHEDULER_MAX_PARTITIONS_PER_TASK};
use ballista_core::extension::SessionConfigExt;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::SessionState;
use datafusion::prelude::{SessionConfig, SessionContext};
use std::sync::Arc;

/// Where queries run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cluster {
    /// A scheduler and an executor in this process ([`crate::embedded`]).
    Embedded,
    /// A running scheduler, `df://host:port`.
    Remote(String),
}

/// The session config every Kallista role uses. One partition per task: a
/// training round's partitions are its workers, each on its own slot (and,
/// with the scheduler's round-robin placement, on distinct executors).
pub fn kallista_config() -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_target_partitions(2)
        .set_bool(BALLISTA_ADAPTIVE_PLANNER_ENABLED, false)
        .set_usize(BALLISTA_SCHEDULER_MAX_PARTITIONS_PER_TASK, 1)
}

/// A session state with Kallista's functions.
pub fn kallista_state() -> Result<SessionState> {
    state_with(kallista_config())
}

/// A session state on `config` with Kallista's functions and object stores.
fn state_with(config: SessionConfig) -> Result<SessionState> {
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(crate::store::runtime_env(None)?)
        .with_default_features()
        .build();
    register_all(&mut state)?;
    Ok(state)
}

/// A client context on `cluster`. The embedded cluster is Kallista's
/// ([`crate::embedded`]), not Ballista's standalone mode: that one plans
/// every query with the state it was started from, so a script's `SET`
/// showed in `SHOW ALL` and changed no plan.
pub async fn connect(cluster: &Cluster) -> Result<SessionContext> {
    let state = kallista_state()?;
    let url = match cluster {
        Cluster::Embedded => crate::embedded::start_embedded_cluster(2).await?,
        Cluster::Remote(url) => url.clone(),
    };
    let ctx = SessionContext::remote_with_state(&url, state).await?;
    register_on_client(&ctx);
    // Lets queries name Parquet files and directories directly: `SELECT ... FROM 'dir/'`.
    Ok(ctx.enable_url_table())
}

/// Registers Kallista's functions on a client context (Ballista replaces the state's lists).
fn register_on_client(ctx: &SessionContext) {
    for f in kallista_functions() {
        ctx.register_udf(f.as_ref().clone());
    }
    for f in kallista_aggregates() {
        ctx.register_udaf(f.as_ref().clone());
    }
}

/// A client context for a training job with `workers` workers: scans split
/// into `workers` partitions of whole files, Parquet filters pushed into the
/// scan (a round reads only its blocks). `Cluster::Embedded` starts the
/// in-process cluster of [`crate::embedded`] with `workers` task slots.
pub async fn training_session(cluster: &Cluster, workers: usize) -> Result<SessionContext> {
    let url = match cluster {
        Cluster::Embedded => crate::embedded::start_embedded_cluster(workers.max(2)).await?,
        Cluster::Remote(url) => url.clone(),
    };
    let mut config = kallista_config()
        .with_target_partitions(workers.max(1))
        .with_extension(Arc::new(crate::cancel::SchedulerUrl(url.clone())));
    let opts = config.options_mut();
    opts.optimizer.repartition_file_scans = false;
    opts.execution.parquet.pushdown_filters = true;
    opts.execution.parquet.reorder_filters = true;
    let ctx = SessionContext::remote_with_state(&url, state_with(config)?).await?;
    register_on_client(&ctx);
    Ok(ctx.enable_url_table())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{run_script, StatementResult};
    use datafusion::arrow::array::{Array, StringArray};
    use std::collections::BTreeMap;

    /// The rendered physical plan of `EXPLAIN query`.
    async fn physical_plan(ctx: &SessionContext, query: &str) -> String {
        let batches = ctx.sql(&format!("EXPLAIN {query}")).await.unwrap().collect().await.unwrap();
        let plans = batches.iter().flat_map(|b| {
            let c = b.column(1).as_any().downcast_ref::<StringArray>().unwrap().clone();
            (0..c.len()).map(move |i| c.value(i).to_string())
        });
        plans.collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn a_scripts_set_reaches_the_plans_of_the_embedded_cluster() {
        let root = std::env::temp_dir().join(crate::cluster::owned_dir_name("kallista-session-set"));
        let _ = std::fs::remove_dir_all(&root);
        let script = format!(
            "COPY (SELECT * FROM (VALUES (1, 'a'), (2, 'b'), (3, 'c')) AS t(id, name)) TO '{root}/a/' STORED AS PARQUET;
             COPY (SELECT * FROM (VALUES (1, 'x'), (2, 'y')) AS t(id, other)) TO '{root}/b/' STORED AS PARQUET;
             CREATE EXTERNAL TABLE a STORED AS PARQUET LOCATION '{root}/a/';
             CREATE EXTERNAL TABLE b STORED AS PARQUET LOCATION '{root}/b/';",
            root = root.display()
        );
        let join = "SELECT a.name, b.other FROM a JOIN b ON a.id = b.id";
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let ctx = connect(&Cluster::Embedded).await.unwrap();
            let run = |sql: String| {
                let ctx = ctx.clone();
                async move {
                    let timeout = std::time::Duration::from_secs(60);
                    run_script(&ctx, "test", &sql, &BTreeMap::new(), timeout, |_, _, _| {}).await.unwrap()
                }
            };
            run(script).await;
            // Ballista's session default, then the script's choice.
            assert!(physical_plan(&ctx, join).await.contains("SortMergeJoinExec"));
            run("SET datafusion.optimizer.prefer_hash_join = true".into()).await;
            let plan = physical_plan(&ctx, join).await;
            assert!(plan.contains("HashJoinExec") && !plan.contains("SortMergeJoinExec"), "{plan}");
            let rows = run(format!("{join} ORDER BY a.name")).await;
            let [StatementResult::Rows(batches)] = &rows[..] else { panic!("{rows:?}") };
            assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        });
        rt.shutdown_background();
        let _ = std::fs::remove_dir_all(&root);
    }
}
