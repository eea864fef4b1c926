//! Queries that give up on time: the Ballista job of a query that ran past
//! its deadline is cancelled on the scheduler before anyone resubmits it, so
//! a stuck round never runs beside its own retry.
//!
//! The client learns a query's job id from Ballista's `DistributedQueryExec`
//! (the root of every plan of a Ballista session), when it polls for the
//! job's status ([`Tracking`]), and the scheduler's address
//! from [`SchedulerUrl`], which [`crate::session::training_session`] puts in
//! the session's config.

use crate::error::Result;
use ballista_core::config::BALLISTA_CLIENT_PULL;
use ballista_core::execution_plans::DistributedQueryExec;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::CancelJobParams;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::SessionContext;
use datafusion_proto::protobuf::LogicalPlanNode;
use std::sync::Arc;
use std::time::Duration;

/// The scheduler a session submits to (`df://host:port`), kept in its config.
#[derive(Clone, Debug)]
pub struct SchedulerUrl(pub String);

/// What became of a query run with a deadline.
#[derive(Debug)]
pub enum Deadline<T> {
    Finished(T),
    /// It ran past the deadline; its job, when it had one, was cancelled.
    TimedOut {
        job: Option<String>,
    },
    /// The caller's abort signal came first; its job was cancelled likewise.
    Aborted {
        job: Option<String>,
    },
}

/// How a query learns its job's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracking {
    /// The client polls the scheduler for the job's status (every 50 ms),
    /// and knows the job id from the moment it is queued: long queries.
    Poll,
    /// The scheduler pushes the job's status: no polling delay, but the job
    /// id arrives only with the job's end (Ballista 55), so a timed-out query
    /// cannot be cancelled: short queries.
    Push,
}

/// Runs `sql` on `ctx`; past `timeout`, cancels its Ballista job (when
/// [`Tracking::Poll`] made it known) and returns [`Deadline::TimedOut`].
pub async fn collect_within(
    ctx: &SessionContext,
    sql: &str,
    timeout: Duration,
    tracking: Tracking,
) -> Result<Deadline<Vec<RecordBatch>>> {
    collect_unless(ctx, sql, timeout, tracking, std::future::pending()).await
}

/// [`collect_within`], also giving up (and cancelling the job) as soon as
/// `abort` completes: a `sync` segment whose rank failed.
pub async fn collect_unless(
    ctx: &SessionContext,
    sql: &str,
    timeout: Duration,
    tracking: Tracking,
    abort: impl std::future::Future<Output = ()>,
) -> Result<Deadline<Vec<RecordBatch>>> {
    let plan = ctx.sql(sql).await?.create_physical_plan().await?;
    let config = ctx.copied_config().set_bool(BALLISTA_CLIENT_PULL, tracking == Tracking::Poll);
    let task = Arc::new(TaskContext::from(&ctx.state()).with_session_config(config));
    tokio::select! {
        done = tokio::time::timeout(timeout, collect(plan.clone(), task)) => match done {
            Ok(batches) => Ok(Deadline::Finished(batches?)),
            Err(_) => Ok(Deadline::TimedOut { job: cancel(ctx, &plan, "it ran past its deadline").await }),
        },
        () = abort => Ok(Deadline::Aborted { job: cancel(ctx, &plan, "its collective failed").await }),
    }
}

/// The job id of the Ballista query in `plan`, once the scheduler accepted it.
fn job_id(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    if let Some(q) = plan.downcast_ref::<DistributedQueryExec<LogicalPlanNode>>() {
        return q.job_id().map(|id| id.to_string());
    }
    plan.children().into_iter().find_map(job_id)
}

/// Asks the scheduler to cancel the job of `plan`; returns its id. Failing
/// to cancel is logged, not fatal: the caller is already giving up on it.
async fn cancel(ctx: &SessionContext, plan: &Arc<dyn ExecutionPlan>, why: &str) -> Option<String> {
    let Some(job) = job_id(plan) else {
        log::warn!("a query was given up ({why}) before its Ballista job was known");
        return None;
    };
    let Some(url) = ctx.state().config().get_extension::<SchedulerUrl>() else {
        log::warn!("job {job} given up ({why}); no scheduler address to cancel it with");
        return Some(job);
    };
    let endpoint = url.0.replacen("df://", "http://", 1);
    let cancelled = async {
        let mut client = SchedulerGrpcClient::connect(endpoint.clone()).await.map_err(|e| e.to_string())?;
        let answer = client.cancel_job(CancelJobParams { job_id: job.clone() }).await.map_err(|e| e.to_string())?;
        Ok::<bool, String>(answer.into_inner().cancelled)
    };
    match tokio::time::timeout(Duration::from_secs(10), cancelled).await {
        Ok(Ok(true)) => log::info!("cancelled job {job} on {endpoint}: {why}"),
        Ok(Ok(false)) => log::warn!("scheduler {endpoint} did not cancel job {job} (already ended?)"),
        Ok(Err(e)) => log::warn!("could not cancel job {job} on {endpoint}: {e}"),
        Err(_) => log::warn!("could not cancel job {job} on {endpoint}: no answer within 10 s"),
    }
    Some(job)
}
