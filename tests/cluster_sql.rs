//! A real cluster of processes on loopback: `kallista scheduler` and two
//! `kallista executor`s; `kallista sql --scheduler` runs Kallista's functions
//! on it (they must be registered in the client, the scheduler and every
//! executor for this to work).

mod common;

use common::{free_port, spawn_kallista};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Kills the cluster processes when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn sql_with_kallista_functions_on_a_scheduler_and_two_executors() {
    let sched = free_port();
    let mut procs = Procs(vec![spawn_kallista(&["scheduler".into(), "--port".into(), sched.to_string()])]);
    for _ in 0..2 {
        let work = std::env::temp_dir().join(format!("kallista-exec-{}-{}", std::process::id(), free_port()));
        procs.0.push(spawn_kallista(&[
            "executor".into(),
            "--port".into(),
            free_port().to_string(),
            "--grpc-port".into(),
            free_port().to_string(),
            "--scheduler-port".into(),
            sched.to_string(),
            "--work-dir".into(),
            work.display().to_string(),
        ]));
    }
    let url = format!("df://127.0.0.1:{sched}");
    let query =
        "SELECT kallista_pad(kallista_lookup(kallista_tokenize(q), ['<pad>', '<unk>', 'what', 'is']), 5) AS ids \
                 FROM (VALUES ('What is he doing?'), ('what')) t(q) ORDER BY q";
    // The executors take a moment to register: retry until the query runs (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_kallista"))
            .args(["sql", "--scheduler", &url, "-e", query])
            .output()
            .unwrap();
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("[2, 3, 1, 1, 0]") && stdout.contains("[2, 0, 0, 0, 0]"), "{stdout}");
    drop(procs);
}
