//! The `kallista scheduler` and `kallista executor` processes: Ballista's
//! scheduler and executor with Kallista's session config and functions
//! registered in every role (scheduler: session builder; executor: function
//! registry), as `shared/BALLISTA-NOTES.md` says Ballista 55 needs.
//!
//! Both bind loopback by default; `--bind-host 0.0.0.0` listens everywhere,
//! and `--external-host` is the name others reach a process by (without it,
//! an executor bound everywhere is known by the address its registration
//! came from). Every role resolves object-store URLs with the same registry
//! ([`crate::store`]). Fault detection is tightened from Ballista's defaults
//! (executor lost after 180 s) to seconds: executors heartbeat every 2 s and
//! the scheduler expires one after 6 s of silence, so lost tasks are re-run
//! promptly.
//!
//! Placement: the scheduler hands out tasks round-robin over executors and
//! puts one partition in each task, so the workers of a round land on
//! distinct executors while free slots allow (Ballista's default fills the
//! first executor's slots first and packs partitions into tasks).

use crate::error::{EngineError, Result};
use crate::functions::{kallista_aggregates, kallista_functions};
use crate::job_ids::CountingJobIds;
use crate::session::kallista_config;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionConfig;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// Options of [`run_scheduler`].
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    pub bind_host: String,
    /// The name clients and executors reach this scheduler by (default: the bind host).
    pub external_host: Option<String>,
    pub port: u16,
    /// An executor silent this long is declared lost and its tasks re-run.
    pub executor_timeout_seconds: u64,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            bind_host: "127.0.0.1".into(),
            external_host: None,
            port: 50050,
            executor_timeout_seconds: 6,
        }
    }
}

/// Options of [`run_executor`].
#[derive(Clone, Debug)]
pub struct ExecutorOptions {
    pub bind_host: String,
    /// The name the scheduler and other executors reach this one by; without
    /// it, the bind host, or (bound to `0.0.0.0`) the address the scheduler
    /// sees its registration come from.
    pub external_host: Option<String>,
    /// Flight (data) port.
    pub port: u16,
    /// gRPC (control) port.
    pub grpc_port: u16,
    pub scheduler_host: String,
    pub scheduler_port: u16,
    /// Concurrent tasks.
    pub task_slots: usize,
    /// Shuffle files, scratch space and the object cache.
    pub work_dir: Option<String>,
    /// The most bytes of immutable objects (staged data) kept in the work
    /// dir's `object-cache/` ([`crate::store::cache`]); 0 turns it off.
    pub object_cache_bytes: u64,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        ExecutorOptions {
            bind_host: "127.0.0.1".into(),
            external_host: None,
            port: 50051,
            grpc_port: 50052,
            scheduler_host: "127.0.0.1".into(),
            scheduler_port: 50050,
            task_slots: 2,
            work_dir: None,
            object_cache_bytes: 16 << 30,
        }
    }
}

/// Builds the session state the scheduler plans with: Kallista's functions
/// and object stores on the given config.
fn session_builder(config: SessionConfig) -> datafusion::common::Result<datafusion::execution::SessionState> {
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(crate::store::runtime_env(None)?)
        .with_default_features()
        .build();
    crate::functions::register_all(&mut state)?;
    Ok(state)
}

/// Who runs a partition: this process's executor, as the placement record
/// (`metrics.jsonl`) names it.
#[derive(Clone, Debug)]
pub struct ExecutorIdentity {
    /// The advertised host and Flight port (`host:port`).
    pub name: String,
    /// Tasks it runs at once: the workers that share its cores.
    pub task_slots: usize,
    /// Where its ranks listen for their peers, and the host peers reach them by.
    pub bind_host: String,
    pub host: String,
}

static THIS_EXECUTOR: OnceLock<ExecutorIdentity> = OnceLock::new();

/// The executor of this process (an in-process, unregistered one when the
/// process runs none: unit tests).
pub fn this_executor() -> &'static ExecutorIdentity {
    THIS_EXECUTOR.get_or_init(|| ExecutorIdentity {
        name: format!("in-process (pid {})", std::process::id()),
        task_slots: std::thread::available_parallelism().map_or(1, |n| n.get()),
        bind_host: "127.0.0.1".into(),
        host: "127.0.0.1".into(),
    })
}

/// Whether `host` means every interface.
fn unspecified(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified())
}

/// This host's name, for a process bound everywhere with no `--external-host`.
fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs a scheduler until the process ends.
pub async fn run_scheduler(opts: &SchedulerOptions) -> Result<()> {
    let addr: SocketAddr = format!("{}:{}", opts.bind_host, opts.port)
        .parse()
        .map_err(|e| EngineError::Invalid(format!("--bind-host/--port: {e}")))?;
    let external_host = opts.external_host.clone().unwrap_or_else(|| match unspecified(&opts.bind_host) {
        true => host_name(),
        false => opts.bind_host.clone(),
    });
    let mut config = SchedulerConfig {
        bind_host: opts.bind_host.clone(),
        external_host,
        bind_port: opts.port,
        task_distribution: TaskDistributionPolicy::RoundRobin,
        ..Default::default()
    };
    log::info!("scheduler listening on {addr} (advertised as {})", config.external_host);
    config.executor_timeout_seconds = opts.executor_timeout_seconds;
    config.expire_dead_executor_interval_seconds = 2;
    let config = config
        .with_override_config_producer(Arc::new(kallista_config))
        .with_override_session_builder(Arc::new(session_builder))
        .with_job_id_generator(Arc::new(CountingJobIds::new()));
    let cluster =
        BallistaCluster::new_from_config(&config).await.map_err(|e| EngineError::Invalid(format!("scheduler: {e}")))?;
    start_server(cluster, addr, Arc::new(config)).await.map_err(|e| EngineError::Invalid(format!("scheduler: {e}")))
}

/// The default work dirs: `<temp>/kallista-executor-pid<pid>`.
const WORK_DIR_PREFIX: &str = "kallista-executor";

/// The name of a dir of this process in the temp dir: `{name}-pid{pid}`,
/// which [`remove_dirs_of_ended_processes`] removes once the process ended.
pub fn owned_dir_name(name: &str) -> String {
    format!("{name}-pid{}", std::process::id())
}

/// Removes the entries of the temp dir named `{prefix}...-pid{pid}`
/// ([`owned_dir_name`]) whose process has ended: executors' default work
/// dirs (shuffle files, object caches) and the tests' dirs, which nobody
/// else cleans up. Any other name is left alone: a bare trailing number is
/// not a process's (a user's `/tmp/kallista-data-2024` was once taken for
/// one). Does nothing where live processes cannot be told (`/proc` missing).
pub fn remove_dirs_of_ended_processes(prefix: &str) {
    if !std::path::Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().filter(|n| n.starts_with(prefix)).and_then(|n| n.rsplit_once("-pid")).map(|(_, p)| p);
        if pid
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Runs an executor until the process ends.
pub async fn run_executor(opts: &ExecutorOptions) -> Result<()> {
    let mut registry = BallistaFunctionRegistry::default();
    // Ballista's default registry lacks DataFusion's array functions
    // (`cardinality`, `array_length`, ...): without them any task using one is rejected.
    for f in datafusion::functions_nested::all_default_nested_functions() {
        registry.scalar_functions.insert(f.name().to_string(), f);
    }
    for f in kallista_functions() {
        registry.scalar_functions.insert(f.name().to_string(), f);
    }
    for f in kallista_aggregates() {
        registry.aggregate_functions.insert(f.name().to_string(), f);
    }
    let external_host =
        opts.external_host.clone().or_else(|| (!unspecified(&opts.bind_host)).then(|| opts.bind_host.clone()));
    let advertised = external_host.clone().unwrap_or_else(host_name);
    let _ = THIS_EXECUTOR.set(ExecutorIdentity {
        name: format!("{advertised}:{}", opts.port),
        task_slots: opts.task_slots.max(1),
        bind_host: opts.bind_host.clone(),
        host: advertised.clone(),
    });
    // Shuffle files and spills in one place: the given work dir, or one of this process's.
    let work_dir = opts.work_dir.clone().unwrap_or_else(|| {
        remove_dirs_of_ended_processes(WORK_DIR_PREFIX);
        std::env::temp_dir().join(owned_dir_name(WORK_DIR_PREFIX)).display().to_string()
    });
    std::fs::create_dir_all(&work_dir).map_err(|e| EngineError::Io { path: work_dir.clone(), source: e })?;
    let cache_dir = std::path::Path::new(&work_dir).join("object-cache");
    crate::store::cache::install(cache_dir.clone(), opts.object_cache_bytes)
        .map_err(|e| EngineError::Io { path: cache_dir.display().to_string(), source: e })?;
    let spill_dir = work_dir.clone();
    let runtime: ballista_core::RuntimeProducer =
        Arc::new(move |_: &SessionConfig| crate::store::runtime_env(Some(&spill_dir)));
    log::info!(
        "executor {advertised}:{} (bind {}, grpc {}), {} task slots, scheduler {}:{}",
        opts.port,
        opts.bind_host,
        opts.grpc_port,
        opts.task_slots,
        opts.scheduler_host,
        opts.scheduler_port
    );
    let config = ExecutorProcessConfig {
        bind_host: opts.bind_host.clone(),
        external_host,
        port: opts.port,
        grpc_port: opts.grpc_port,
        scheduler_host: opts.scheduler_host.clone(),
        scheduler_port: opts.scheduler_port,
        scheduler_connect_timeout_seconds: 30,
        vcores: opts.task_slots,
        work_dir: Some(work_dir),
        executor_heartbeat_interval_seconds: 2,
        override_function_registry: Some(Arc::new(registry)),
        override_runtime_producer: Some(runtime),
        override_config_producer: Some(Arc::new(kallista_config)),
        ..Default::default()
    };
    start_executor_process(Arc::new(config)).await.map_err(|e| EngineError::Invalid(format!("executor: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_of_ended_processes_go_and_those_of_live_ones_stay() {
        if !std::path::Path::new("/proc/self").exists() {
            return;
        }
        let tmp = std::env::temp_dir();
        // No process has this id (above Linux's pid_max).
        let ended = tmp.join("kallista-sweep-check-pid4000000000");
        let live = tmp.join(owned_dir_name("kallista-sweep-check"));
        // A user's dir that merely ends in a number.
        let users = tmp.join("kallista-sweep-check-data-4000000000");
        let other = tmp.join("other-sweep-check-pid4000000000");
        for d in [&ended, &live, &users, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        remove_dirs_of_ended_processes("kallista-sweep-check");
        let (ended_gone, live_kept, users_kept, other_kept) =
            (!ended.exists(), live.exists(), users.exists(), other.exists());
        for d in [&ended, &live, &users, &other] {
            let _ = std::fs::remove_dir_all(d);
        }
        assert!(
            ended_gone && live_kept && users_kept && other_kept,
            "{ended_gone} {live_kept} {users_kept} {other_kept}"
        );
    }
}
