//! A cluster of `kallista scheduler` and two `kallista executor` processes on
//! loopback, for the end-to-end tests.

use super::{free_port, kallista, spawn_kallista, temp_dir};
use std::process::Child;
use std::time::{Duration, Instant};

/// Kills the cluster processes when the test ends, however it ends.
pub struct Cluster {
    pub scheduler: Child,
    pub executors: Vec<Child>,
    pub url: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in std::iter::once(&mut self.scheduler).chain(self.executors.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a scheduler and two executors with `slots` task slots each.
pub fn start_cluster(name: &str, slots: usize) -> Cluster {
    let port = free_port();
    let scheduler = spawn_kallista(&["scheduler".into(), "--port".into(), port.to_string()]);
    let executors = (0..2)
        .map(|i| {
            let work = temp_dir(&format!("{name}-exec{i}"));
            spawn_kallista(&[
                "executor".into(),
                "--port".into(),
                free_port().to_string(),
                "--grpc-port".into(),
                free_port().to_string(),
                "--scheduler-port".into(),
                port.to_string(),
                "--task-slots".into(),
                slots.to_string(),
                "--work-dir".into(),
                work.display().to_string(),
            ])
        })
        .collect();
    let cluster = Cluster { scheduler, executors, url: format!("df://127.0.0.1:{port}") };
    // Wait until a query runs (both executors registered takes a moment).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kallista(&["sql", "--scheduler", &cluster.url, "-e", "SELECT 1"]).status.success() {
        assert!(Instant::now() < deadline, "cluster did not come up");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(2));
    cluster
}
