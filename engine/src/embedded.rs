//! The embedded cluster of training jobs: a Ballista scheduler and one
//! executor inside this process, talking gRPC on loopback ports.
//!
//! Ballista's own standalone mode has its executor poll for work every 50 ms
//! and took ~200 ms per query here; a training round is one query, so the
//! embedded cluster instead runs the push-scheduled scheduler and executor of
//! `kallista scheduler` / `kallista executor` as tasks of this process
//! (~50 ms per query, see `shared/BALLISTA-NOTES.md`). Same code as a real
//! cluster, one process: what `kallista train` uses by default.

use crate::cluster::{run_executor, run_scheduler, ExecutorOptions, SchedulerOptions};
use crate::error::{EngineError, Result};
use crate::ports::unused_loopback_port;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Waits until `port` accepts connections; fails with the server's own error
/// if `server` stops first (a port taken, a bad work dir), or after 30 s.
async fn wait_listening(what: &str, port: u16, server: JoinHandle<Result<()>>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if server.is_finished() {
            return Err(match server.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => {
                    EngineError::Invalid(format!("embedded {what} stopped before it listened on port {port}"))
                }
                Err(e) => EngineError::Invalid(format!("embedded {what}: {e}")),
            });
        }
        if Instant::now() > deadline {
            return Err(EngineError::Invalid(format!("embedded {what} did not listen on port {port}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let what = what.to_string();
    tokio::spawn(async move {
        if let Ok(Err(e)) = server.await {
            log::error!("embedded {what} stopped: {e}");
        }
    });
    Ok(())
}

/// Starts a scheduler and an executor with `task_slots` slots on the current
/// tokio runtime; returns the scheduler's `df://` URL once it accepts connections.
pub async fn start_embedded_cluster(task_slots: usize) -> Result<String> {
    let port = unused_loopback_port()?;
    let scheduler = SchedulerOptions { port, ..Default::default() };
    wait_listening("scheduler", port, tokio::spawn(async move { run_scheduler(&scheduler).await })).await?;
    let executor = ExecutorOptions {
        port: unused_loopback_port()?,
        grpc_port: unused_loopback_port()?,
        scheduler_port: port,
        task_slots,
        ..Default::default()
    };
    let flight_port = executor.port;
    wait_listening("executor", flight_port, tokio::spawn(async move { run_executor(&executor).await })).await?;
    Ok(format!("df://127.0.0.1:{port}"))
}
