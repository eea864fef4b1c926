//! `async` training end to end: workers as long Ballista tasks against
//! parameter servers in the driver. A job with two workers and two shards
//! learns, pushing every step's rows once; a worker that cannot reach its shard fails
//! the job naming the shard's address, and leaves no results behind.

mod common;

use common::*;

/// `job` with `scaling` replaced by an `async` one with these lines.
fn make_async(job: &std::path::Path, scaling: &str) {
    let text = std::fs::read_to_string(job).unwrap();
    let at = text.find("scaling:").expect("a scaling section");
    let end = text[at..].find("\n\n").map_or(text.len(), |e| at + e);
    let text = format!("{}scaling:\n{scaling}{}", &text[..at], &text[end..]);
    std::fs::write(job, text).unwrap();
}

#[test]
fn an_async_job_of_two_workers_and_two_parameter_servers_learns() {
    let data = learning_set();
    let dir = temp_dir("async-learns");
    let job = learning_job(&dir, &data);
    make_async(&job, "  workers: 2\n  mode: async\n  parameter_servers: 2\n  shards: 4\n  round_timeout_seconds: 60\n");
    let out = ok(kallista(&["train", job.to_str().unwrap()]));
    let job_dir = dir.join("job");
    // As `check_learned` asks of `sync` jobs, on the best evaluation: stale
    // gradients (about one version old with two workers) make the curve
    // slower and the last of the 114-row evaluations swings by 0.08 between runs.
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job_dir.join("results.json")).unwrap()).unwrap();
    let best = results["best_eval_accuracy"].as_f64().unwrap();
    let baseline = majority_baseline(&data.display().to_string(), &[]);
    assert!(best >= baseline + 0.10, "best eval accuracy {best:.3} vs majority baseline {baseline:.3}\n{out}");
    for f in ["checkpoints/last.json", "checkpoints/best.safetensors", "training_curve.png"] {
        assert!(job_dir.join(f).exists(), "{f} missing\n{out}");
    }
    let lines = train_lines(&job_dir.display().to_string());
    let rows: u64 = lines.iter().map(|l| l["rows"].as_u64().unwrap()).sum();
    let steps = lines.last().unwrap()["step"].as_u64().unwrap();
    assert_eq!(rows, steps * 32, "every step's rows were pushed once");
    for l in &lines {
        let workers = l["workers"].as_array().expect("per-worker counts");
        assert_eq!(workers.len(), 2, "{l}");
        for w in workers {
            assert!(w["pushes"].as_u64().unwrap() > 0 && w["pulls"].as_u64().unwrap() > 0, "{l}");
            assert!(w["mean_staleness"].as_f64().is_some(), "{l}");
        }
    }
    // The secret is gone with the job.
    assert!(!job_dir.join("collective.secret").exists());
}

#[test]
fn a_worker_that_cannot_reach_its_parameter_server_fails_the_job_naming_its_address() {
    let data = &prepared_set(300);
    let dir = temp_dir("async-unreachable");
    let job = small_job(&dir, data, 2, "  max_steps: 10");
    // The servers listen on 127.0.0.1; the workers are told 127.0.0.2, where nothing listens.
    make_async(
        &job,
        "  workers: 2\n  mode: async\n  parameter_servers: 2\n  shards: 4\n  round_timeout_seconds: 5\n  \
         advertised_host: 127.0.0.2\n",
    );
    let out = kallista(&["train", job.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the job succeeded: {stderr}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("job/servers.json")).unwrap()).unwrap();
    let addresses: Vec<&str> = record["servers"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(addresses.iter().all(|a| a.starts_with("127.0.0.2:")), "{record}");
    assert!(
        addresses.iter().any(|a| stderr.contains(&format!("parameter server shard 0 at {a}"))),
        "the error does not name the shard's address {addresses:?}: {stderr}"
    );
    assert!(!dir.join("job/results.json").exists(), "a failed job wrote results");
    assert!(
        !dir.join("job/weights").read_dir().unwrap().any(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name != "step-0.safetensors"
        }),
        "a failed job published trained weights"
    );
}

#[test]
fn an_async_job_resumed_from_a_checkpoint_of_its_shards_ends_as_an_uninterrupted_run() {
    let data = &prepared_set(300);
    let dir = temp_dir("async-resume");
    let job = small_job(&dir, data, 1, "  max_steps: 8\n  checkpoint_every_steps: 2");
    // One worker: its pushes are the only ones, so the run is deterministic.
    make_async(&job, "  workers: 1\n  mode: async\n  parameter_servers: 3\n  shards: 4\n  round_timeout_seconds: 30\n");
    let straight = dir.join("straight");
    ok(kallista(&["train", job.to_str().unwrap(), "--job-dir", straight.to_str().unwrap()]));
    let resumed = dir.join("resumed");
    let r = resumed.to_str().unwrap();
    ok(kallista(&["train", job.to_str().unwrap(), "--job-dir", r, "--max-steps", "5"]));
    let out = ok(kallista(&["train", job.to_str().unwrap(), "--job-dir", r, "--resume"]));
    assert!(out.contains("trained 8 steps in 2 rounds"), "{out}");
    // Weights and every optimizer slot, gathered from the three shards.
    let (a, b) = (weights(&final_weights(&straight)), weights(&final_weights(&resumed)));
    assert!(a.keys().any(|k| k.starts_with("optimizer")), "{:?}", a.keys());
    assert!(a == b, "the resumed run ended with other weights");
}
