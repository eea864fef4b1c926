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
    /// Scheduler and executor in this process (Ballista's standalone mode).
    Embedded,
    /// A running scheduler, `df://host:port`.
    Remote(String),
}

/// The session config every Kallista role uses. One partition per task: a
/// training round's partitions are its workers, each on its own slot (and,
/// with the scheduler's round-robin placement, on distinct executors).
pub fn kallista_config() -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_ballista_standalone_parallelism(2)
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

/// A client context on `cluster`.
pub async fn connect(cluster: &Cluster) -> Result<SessionContext> {
    let state = kallista_state()?;
    let ctx = match cluster {
        Cluster::Embedded => SessionContext::standalone_with_state(state).await?,
        Cluster::Remote(url) => SessionContext::remote_with_state(url, state).await?,
    };
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
