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
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A free loopback port (the OS picks it; released before use).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| EngineError::Invalid(format!("no free port: {e}")))?;
    Ok(l.local_addr().map_err(|e| EngineError::Invalid(e.to_string()))?.port())
}

/// Starts a scheduler and an executor with `task_slots` slots on the current
/// tokio runtime; returns the scheduler's `df://` URL once it accepts connections.
pub async fn start_embedded_cluster(task_slots: usize) -> Result<String> {
    let port = free_port()?;
    let scheduler = SchedulerOptions { port, ..Default::default() };
    tokio::spawn(async move {
        if let Err(e) = run_scheduler(&scheduler).await {
            log::error!("embedded scheduler stopped: {e}");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            return Err(EngineError::Invalid(format!("embedded scheduler did not listen on port {port}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let executor = ExecutorOptions {
        port: free_port()?,
        grpc_port: free_port()?,
        scheduler_port: port,
        task_slots,
        ..Default::default()
    };
    tokio::spawn(async move {
        if let Err(e) = run_executor(&executor).await {
            log::error!("embedded executor stopped: {e}");
        }
    });
    Ok(format!("df://127.0.0.1:{port}"))
}
