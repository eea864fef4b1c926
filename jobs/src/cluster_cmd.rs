//! `kallista scheduler`, `kallista executor` and `kallista ps`: run one
//! cluster process in the foreground until it is stopped.

use crate::error::JobError;
use kallista_engine::cluster::{run_executor, run_scheduler, ExecutorOptions, SchedulerOptions};

fn runtime() -> Result<tokio::runtime::Runtime, JobError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 * 1024 * 1024)
        .build()
        .map_err(|e| JobError::Invalid(format!("tokio runtime: {e}")))
}

pub fn scheduler_cmd(opts: &SchedulerOptions) -> Result<(), JobError> {
    eprintln!("kallista scheduler listening on {}:{}", opts.bind_host, opts.port);
    runtime()?.block_on(run_scheduler(opts)).map_err(JobError::from)
}

pub fn executor_cmd(opts: &ExecutorOptions) -> Result<(), JobError> {
    eprintln!(
        "kallista executor on {}:{} (grpc {}), scheduler {}:{}, {} task slots",
        opts.bind_host, opts.port, opts.grpc_port, opts.scheduler_host, opts.scheduler_port, opts.task_slots
    );
    runtime()?.block_on(run_executor(opts)).map_err(JobError::from)
}

pub fn ps_cmd(opts: &kallista_engine::ps::host::PsOptions) -> Result<(), JobError> {
    eprintln!("kallista ps listening on {}:{}", opts.bind_host, opts.port);
    kallista_engine::ps::host::serve(opts).map_err(JobError::from)
}
