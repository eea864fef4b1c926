//! The `kallista scheduler` and `kallista executor` processes: Ballista's
//! scheduler and executor with Kallista's session config and functions
//! registered in every role (scheduler: session builder; executor: function
//! registry), as `shared/BALLISTA-NOTES.md` says Ballista 55 needs.
//!
//! Both bind loopback by default. Fault detection is tightened from
//! Ballista's defaults (executor lost after 180 s) to seconds: executors
//! heartbeat every 2 s and the scheduler expires one after 6 s of silence,
//! so lost tasks are re-run promptly.

use crate::error::{EngineError, Result};
use crate::functions::{kallista_aggregates, kallista_functions};
use crate::session::kallista_config;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionConfig;
use std::net::SocketAddr;
use std::sync::Arc;

/// Options of [`run_scheduler`].
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    pub bind_host: String,
    pub port: u16,
    /// An executor silent this long is declared lost and its tasks re-run.
    pub executor_timeout_seconds: u64,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions { bind_host: "127.0.0.1".into(), port: 50050, executor_timeout_seconds: 6 }
    }
}

/// Options of [`run_executor`].
#[derive(Clone, Debug)]
pub struct ExecutorOptions {
    pub bind_host: String,
    /// Flight (data) port.
    pub port: u16,
    /// gRPC (control) port.
    pub grpc_port: u16,
    pub scheduler_host: String,
    pub scheduler_port: u16,
    /// Concurrent tasks.
    pub task_slots: usize,
    /// Shuffle files and scratch space.
    pub work_dir: Option<String>,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        ExecutorOptions {
            bind_host: "127.0.0.1".into(),
            port: 50051,
            grpc_port: 50052,
            scheduler_host: "127.0.0.1".into(),
            scheduler_port: 50050,
            task_slots: 2,
            work_dir: None,
        }
    }
}

/// Builds the session state the scheduler plans with: Kallista's functions on the given config.
fn session_builder(config: SessionConfig) -> datafusion::common::Result<datafusion::execution::SessionState> {
    let mut state = SessionStateBuilder::new().with_config(config).with_default_features().build();
    crate::functions::register_all(&mut state)?;
    Ok(state)
}

/// Runs a scheduler until the process ends.
pub async fn run_scheduler(opts: &SchedulerOptions) -> Result<()> {
    let addr: SocketAddr = format!("{}:{}", opts.bind_host, opts.port)
        .parse()
        .map_err(|e| EngineError::Invalid(format!("--bind-host/--port: {e}")))?;
    let mut config = SchedulerConfig {
        bind_host: opts.bind_host.clone(),
        external_host: opts.bind_host.clone(),
        bind_port: opts.port,
        ..Default::default()
    };
    config.executor_timeout_seconds = opts.executor_timeout_seconds;
    config.expire_dead_executor_interval_seconds = 2;
    let config = config
        .with_override_config_producer(Arc::new(kallista_config))
        .with_override_session_builder(Arc::new(session_builder));
    let cluster =
        BallistaCluster::new_from_config(&config).await.map_err(|e| EngineError::Invalid(format!("scheduler: {e}")))?;
    start_server(cluster, addr, Arc::new(config)).await.map_err(|e| EngineError::Invalid(format!("scheduler: {e}")))
}

/// Runs an executor until the process ends.
pub async fn run_executor(opts: &ExecutorOptions) -> Result<()> {
    let mut registry = BallistaFunctionRegistry::default();
    for f in kallista_functions() {
        registry.scalar_functions.insert(f.name().to_string(), f);
    }
    for f in kallista_aggregates() {
        registry.aggregate_functions.insert(f.name().to_string(), f);
    }
    let config = ExecutorProcessConfig {
        bind_host: opts.bind_host.clone(),
        external_host: Some(opts.bind_host.clone()),
        port: opts.port,
        grpc_port: opts.grpc_port,
        scheduler_host: opts.scheduler_host.clone(),
        scheduler_port: opts.scheduler_port,
        scheduler_connect_timeout_seconds: 30,
        vcores: opts.task_slots,
        work_dir: opts.work_dir.clone(),
        executor_heartbeat_interval_seconds: 2,
        override_function_registry: Some(Arc::new(registry)),
        override_config_producer: Some(Arc::new(kallista_config)),
        ..Default::default()
    };
    start_executor_process(Arc::new(config)).await.map_err(|e| EngineError::Invalid(format!("executor: {e}")))
}
