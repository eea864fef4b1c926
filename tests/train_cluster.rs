//! Training on a real cluster of processes on loopback: `kallista scheduler`
//! and two `kallista executor`s (one task slot each, so both hold work),
//! jobs sent with `kallista submit`. One test checks that a job learns and
//! fills its job dir; the other kills an executor with SIGKILL in the middle
//! of a `sync` job and checks that the job still finishes, with the weights
//! of the same job run without a fault (on the embedded cluster: `sync`
//! results do not depend on where they were computed).

mod common;

use common::*;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the cluster processes when the test ends, however it ends.
struct Cluster {
    scheduler: Child,
    executors: Vec<Child>,
    url: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in std::iter::once(&mut self.scheduler).chain(self.executors.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kallista")).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

fn start_cluster(name: &str) -> Cluster {
    let port = free_port();
    let scheduler = spawn(&["scheduler".into(), "--port".into(), port.to_string()]);
    let executors = (0..2)
        .map(|i| {
            let work = temp_dir(&format!("{name}-exec{i}"));
            spawn(&[
                "executor".into(),
                "--port".into(),
                free_port().to_string(),
                "--grpc-port".into(),
                free_port().to_string(),
                "--scheduler-port".into(),
                port.to_string(),
                "--task-slots".into(),
                "1".into(),
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

/// The per-family majority baseline of the eval split: the accuracy of always
/// answering each family's most frequent training answer.
fn majority_baseline(data: &Path) -> f64 {
    let q = format!(
        "WITH top AS (SELECT family, answer FROM (SELECT family, answer, ROW_NUMBER() OVER (PARTITION BY family ORDER BY COUNT(*) DESC, answer) AS r FROM '{d}/train/' GROUP BY family, answer) WHERE r = 1) \
         SELECT CAST(SUM(CASE WHEN e.answer = top.answer THEN 1 ELSE 0 END) AS DOUBLE) / COUNT(*) AS acc FROM '{d}/eval/' e JOIN top ON e.family = top.family",
        d = data.display()
    );
    let out = ok(kallista(&["sql", "-e", &q]));
    out.lines().find_map(|l| l.trim_matches(|c| c == '|' || c == ' ').parse::<f64>().ok()).expect(&out)
}

#[test]
fn a_job_submitted_to_a_scheduler_with_two_executors_learns_and_fills_its_job_dir() {
    let data = prepared_set(300);
    let dir = temp_dir("submit");
    let job = small_job(&dir, data, 2, "  epochs: 25\n  eval_every_steps: 60\n  checkpoint_every_steps: 60");
    let cluster = start_cluster("submit");
    let out = ok(kallista(&["submit", job.to_str().unwrap(), "--scheduler", &cluster.url]));
    let job_dir = dir.join("job");
    for f in ["model.json", "metrics.jsonl", "training_curve.png", "results.json", "checkpoints/last.json", "checkpoints/best.safetensors"] {
        assert!(job_dir.join(f).is_file(), "{f} missing from the job dir\n{out}");
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(job_dir.join("results.json")).unwrap()).unwrap();
    let eval = results["eval"]["overall"]["correct"].as_f64().unwrap() / results["eval"]["overall"]["rows"].as_f64().unwrap();
    let baseline = majority_baseline(data);
    assert!(eval >= baseline + 0.15, "eval accuracy {eval:.3} vs majority baseline {baseline:.3}\n{out}");
    let metrics = std::fs::read_to_string(job_dir.join("metrics.jsonl")).unwrap();
    assert!(metrics.lines().filter(|l| l.contains("\"kind\":\"eval\"")).count() >= 2, "{metrics}");
}

#[test]
fn killing_an_executor_mid_job_still_finishes_with_the_same_weights() {
    let data = prepared_set(300);
    let dir = temp_dir("kill");
    let job = small_job(&dir, data, 2, "  max_steps: 40\n  checkpoint_every_steps: 1000");
    let reference = dir.join("reference");
    ok(kallista(&["train", job.to_str().unwrap(), "--job-dir", reference.to_str().unwrap()]));

    let mut cluster = start_cluster("kill");
    let faulty = dir.join("faulty");
    let submit = Command::new(env!("CARGO_BIN_EXE_kallista"))
        .args(["submit", job.to_str().unwrap(), "--scheduler", &cluster.url, "--job-dir", faulty.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for round 10, then SIGKILL the first executor.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rounds = std::fs::read_to_string(faulty.join("metrics.jsonl")).map(|m| m.lines().count()).unwrap_or(0);
        if rounds >= 10 {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not reach round 10");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.executors[0].kill().unwrap();
    cluster.executors[0].wait().unwrap();
    let out = submit.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Say whether Ballista recovered by itself or the driver had to resubmit a round.
    eprintln!("{}", stderr.lines().filter(|l| l.contains("resubmitting")).collect::<Vec<_>>().join("\n"));
    let metrics = std::fs::read_to_string(faulty.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"step\":40"), "{metrics}");
    assert_eq!(weights(&final_weights(&reference)), weights(&final_weights(&faulty)));
}
