//! A cluster of `kallista scheduler` and `kallista executor` processes on
//! loopback, for the end-to-end tests. Each executor runs in its own empty
//! working directory with its own work dir, as on a host of its own, and
//! logs to `executor.log` there.

use super::{free_port, kallista, temp_dir};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the cluster processes when the test ends, however it ends.
pub struct Cluster {
    pub scheduler: Child,
    pub executors: Vec<Child>,
    /// Each executor's name in the placement record (`host:flight_port`).
    pub names: Vec<String>,
    /// Each executor's working directory (its log is `executor.log` there).
    pub homes: Vec<PathBuf>,
    pub scheduler_log: PathBuf,
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

impl Cluster {
    /// The log of executor `i`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.homes[i].join("executor.log")).unwrap_or_default()
    }
}

/// How to start a cluster.
pub struct ClusterOptions {
    pub executors: usize,
    pub slots: usize,
    /// Environment of every process (object-store credentials).
    pub env: Vec<(String, String)>,
    /// `--bind-host` and `--external-host` of the executors.
    pub bind_host: String,
    pub external_host: Option<String>,
}

impl ClusterOptions {
    pub fn new(executors: usize, slots: usize) -> ClusterOptions {
        ClusterOptions { executors, slots, env: vec![], bind_host: "127.0.0.1".into(), external_host: None }
    }
}

/// Starts a scheduler and two executors with `slots` task slots each.
pub fn start_cluster(name: &str, slots: usize) -> Cluster {
    start_cluster_with(name, ClusterOptions::new(2, slots))
}

/// Starts a scheduler and the executors of `opts`; returns once they all registered.
pub fn start_cluster_with(name: &str, opts: ClusterOptions) -> Cluster {
    let port = free_port();
    let root = temp_dir(&format!("{name}-cluster"));
    let scheduler = Command::new(env!("CARGO_BIN_EXE_kallista"))
        .args(["scheduler", "--port", &port.to_string()])
        .envs(opts.env.iter().cloned())
        .current_dir(&root)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("scheduler.log")).unwrap())
        .spawn()
        .unwrap();
    let (mut executors, mut names, mut homes) = (vec![], vec![], vec![]);
    for i in 0..opts.executors {
        let home = root.join(format!("host{i}"));
        let work = home.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let flight = free_port();
        let mut args = vec![
            "executor".to_string(),
            "--bind-host".into(),
            opts.bind_host.clone(),
            "--port".into(),
            flight.to_string(),
            "--grpc-port".into(),
            free_port().to_string(),
            "--scheduler-port".into(),
            port.to_string(),
            "--task-slots".into(),
            opts.slots.to_string(),
            "--work-dir".into(),
            "work".into(),
        ];
        if let Some(h) = &opts.external_host {
            args.extend(["--external-host".to_string(), h.clone()]);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_kallista"))
            .args(&args)
            .envs(opts.env.iter().cloned())
            .current_dir(&home)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(home.join("executor.log")).unwrap())
            .spawn()
            .unwrap();
        executors.push(child);
        names.push(format!("{}:{flight}", opts.external_host.as_deref().unwrap_or(&opts.bind_host)));
        homes.push(home);
    }
    let scheduler_log = root.join("scheduler.log");
    let cluster = Cluster { scheduler, executors, names, homes, scheduler_log, url: format!("df://127.0.0.1:{port}") };
    // Wait until a query runs, and every executor has started its registration.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kallista(&["sql", "--scheduler", &cluster.url, "-e", "SELECT 1"]).status.success()
        || (0..opts.executors).any(|i| !cluster.log(i).contains("task slots"))
    {
        assert!(Instant::now() < deadline, "cluster did not come up");
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(2));
    cluster
}
