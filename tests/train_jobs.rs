//! `kallista train` on the embedded cluster: a job learns (eval accuracy well
//! above the majority baseline) and leaves its job dir; `sync` gives the same bits with
//! 1, 2 and 4 workers; `--resume` continues to the same weights as a run
//! that went straight through; bad job files fail before any work with the
//! key named.

mod common;

use common::*;

#[test]
fn a_job_on_the_embedded_cluster_learns_and_fills_its_job_dir() {
    let data = learning_set();
    let dir = temp_dir("embedded-learns");
    let job = learning_job(&dir, &data);
    let out = ok(kallista(&["train", job.to_str().unwrap()]));
    check_learned(&dir.join("job"), &data, &out);
}

#[test]
fn sync_training_is_bit_identical_for_one_two_and_four_workers() {
    let data = &prepared_set(300);
    let dir = temp_dir("sync-workers");
    let job = small_job(&dir, data, 1, "  max_steps: 5");
    let mut results = vec![];
    for workers in ["1", "2", "4"] {
        let job_dir = dir.join(format!("w{workers}"));
        ok(kallista(&["train", job.to_str().unwrap(), "--workers", workers, "--job-dir", job_dir.to_str().unwrap()]));
        results.push(weights(&final_weights(&job_dir)));
    }
    let initial = {
        let job_dir = dir.join("w0");
        ok(kallista(&["train", job.to_str().unwrap(), "--max-steps", "1", "--job-dir", job_dir.to_str().unwrap()]));
        weights(&final_weights(&job_dir))
    };
    assert_ne!(results[0], initial, "training must change the weights");
    assert_eq!(results[0], results[1], "1 vs 2 workers");
    assert_eq!(results[0], results[2], "1 vs 4 workers");
}

#[test]
fn resume_from_a_checkpoint_ends_with_the_weights_of_an_uninterrupted_run() {
    let data = &prepared_set(300);
    let dir = temp_dir("resume");
    let job = small_job(&dir, data, 2, "  max_steps: 8\n  checkpoint_every_steps: 2");
    let straight = dir.join("straight");
    ok(kallista(&["train", job.to_str().unwrap(), "--job-dir", straight.to_str().unwrap()]));
    let resumed = dir.join("resumed");
    let r = resumed.to_str().unwrap();
    ok(kallista(&["train", job.to_str().unwrap(), "--job-dir", r, "--max-steps", "5"]));
    let last = std::fs::read_to_string(resumed.join("checkpoints/last.json")).unwrap();
    assert!(last.contains("\"step\": 5"), "{last}");
    let out = ok(kallista(&["train", job.to_str().unwrap(), "--job-dir", r, "--resume"]));
    assert!(out.contains("trained 8 steps in 3 rounds"), "{out}");
    assert_eq!(weights(&final_weights(&straight)), weights(&final_weights(&resumed)));
}

/// Runs `train` on a job file edited by `edit` and returns stderr; asserts failure before any work.
fn fails_with(name: &str, edit: impl Fn(String) -> String) -> String {
    let data = &prepared_set(300);
    let dir = temp_dir(&format!("bad-{name}"));
    let job = small_job(&dir, data, 1, "  max_steps: 2");
    let text = std::fs::read_to_string(&job).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit must change the file");
    std::fs::write(&job, edited).unwrap();
    let out = kallista(&["train", job.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!dir.join("job").exists(), "no work may start: {stderr}");
    stderr
}

#[test]
fn bad_job_files_fail_before_any_work_with_the_key_named() {
    let e = fails_with("unknown-key", |t| t.replace("  batch_size: 32", "  batch_size: 32\n  bach_size: 3"));
    assert!(e.contains("training: unknown field `bach_size`"), "{e}");
    let e = fails_with("wrong-type", |t| t.replace("batch_size: 32", "batch_size: many"));
    assert!(e.contains("training.batch_size: invalid type: string \"many\""), "{e}");
    let e = fails_with("missing-data", |t| t.replace("/train/", "/no-such-split/"));
    assert!(e.contains("data.train:") && e.contains("no-such-split") && e.contains("does not exist"), "{e}");
    let e = fails_with("shape", |t| t.replace("shape: [4, 32, 32, 3]", "shape: [8, 32, 32, 3]"));
    assert!(
        e.contains("model.inputs[0].shape: input 'video' is [8, 32, 32, 3]") && e.contains("[4, 32, 32, 3]"),
        "{e}"
    );
    let e = fails_with("column", |t| t.replace("column: question_ids", "column: question_text"));
    assert!(e.contains("model.inputs[1].column: 'question_text'"), "{e}");
    let e = fails_with("classes", |t| t.replace("units: 32, activation: softmax", "units: 3, activation: softmax"));
    assert!(e.contains("model.outputs:") && e.contains("answer_id reaches"), "{e}");
    let e = fails_with("optimizer", |t| t.replace("learning_rate: 0.005", "learning_rate: 0.005, momentun: 0.9"));
    assert!(e.contains("training.optimizer: unknown field `momentun`"), "{e}");
    let e = fails_with("workers", |t| t.replace("workers: 1", "workers: 8"));
    assert!(e.contains("scaling.workers: 8 workers with 4 shards"), "{e}");
    let e = fails_with("layer", |t| t.replace("class: LSTM, input: td_cnn", "class: LSTM, input: nowhere"));
    assert!(e.contains("model.layers[2] (video_lstm)") && e.contains("nowhere"), "{e}");
}

#[test]
fn average_mode_takes_local_steps_and_averages_them_each_round() {
    let data = &prepared_set(300);
    let dir = temp_dir("average");
    let job = small_job(&dir, data, 2, "  max_steps: 6");
    let text = std::fs::read_to_string(&job).unwrap().replace("mode: sync", "mode: average\n  sync_every_steps: 3");
    std::fs::write(&job, text).unwrap();
    let out = ok(kallista(&["train", job.to_str().unwrap()]));
    assert!(out.contains("trained 6 steps in 2 rounds"), "{out}");
    let metrics = std::fs::read_to_string(dir.join("job/metrics.jsonl")).unwrap();
    let rounds: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["kind"] == "train")
        .collect();
    // Each round saw 3 steps of 32 rows, spread over both workers.
    assert_eq!(rounds.len(), 2);
    for r in &rounds {
        assert_eq!(r["rows"], 96, "{r}");
        assert_eq!(r["partitions"], 2, "{r}");
    }
    let one_step = {
        let job_dir = dir.join("one-step");
        ok(kallista(&["train", job.to_str().unwrap(), "--max-steps", "1", "--job-dir", job_dir.to_str().unwrap()]));
        weights(&final_weights(&job_dir))
    };
    let trained = weights(&final_weights(&dir.join("job")));
    assert_ne!(trained, one_step);
}
