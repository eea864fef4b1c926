//! Ctrl-C and SIGTERM end a client command at once, as a user at a terminal
//! or a scheduler stopping a job (Kubernetes, Slurm, systemd) expects.
//!
//! Without this, the embedded cluster's Ballista executor catches both
//! signals to drain its running tasks (a whole training segment, minutes)
//! and the process trains on: `kallista train` ignored SIGTERM. Ending the
//! process leaves nothing behind: checkpoints are written atomically, the
//! job's parameter servers and rendezvous are threads of this process, and
//! ranks and workers on other executors lose their driver and fail their
//! tasks. Server commands (`scheduler`, `executor`, `ps`) are left as they
//! are: there Ballista's executor drains its tasks before it stops.

/// A signal that ends the command: its name and the exit code (the shells' 128 + its number).
type Interrupt = (&'static str, i32);

/// Watches for Ctrl-C and SIGTERM on a thread of its own; on either, says
/// so on stderr and exits with 130 or 143.
pub fn exit_on_interrupt() {
    on_interrupt(|(name, code)| {
        eprintln!("interrupted ({name}): stopping");
        code
    });
}

/// For `kallista ps`, which has no tasks to drain: on Ctrl-C or SIGTERM,
/// says that `server` stopped (its drivers see their shards' connections
/// close) and exits with 0, as a server asked to stop does.
pub fn stop_server_on_interrupt(server: String) {
    on_interrupt(move |(name, _)| {
        eprintln!("{server}: stopped ({name})");
        0
    });
}

/// Runs `then` on the first Ctrl-C or SIGTERM and exits with the code it returns.
fn on_interrupt(then: impl FnOnce(Interrupt) -> i32 + Send + 'static) {
    let watcher = std::thread::Builder::new().name("kallista-interrupt".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => return log::warn!("Ctrl-C and SIGTERM keep their default handling: {e}"),
        };
        if let Some(interrupt) = runtime.block_on(next_interrupt()) {
            std::process::exit(then(interrupt));
        }
    });
    if let Err(e) = watcher {
        log::warn!("Ctrl-C and SIGTERM keep their default handling: {e}");
    }
}

#[cfg(unix)]
async fn next_interrupt() -> Option<Interrupt> {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut int, mut term) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            log::warn!("Ctrl-C and SIGTERM keep their default handling: {e}");
            return None;
        }
    };
    tokio::select! {
        _ = int.recv() => Some(("Ctrl-C", 130)),
        _ = term.recv() => Some(("SIGTERM", 143)),
    }
}

#[cfg(not(unix))]
async fn next_interrupt() -> Option<Interrupt> {
    tokio::signal::ctrl_c().await.ok().map(|_| ("Ctrl-C", 130))
}
