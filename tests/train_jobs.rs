//! `kallista train` on the embedded cluster: a job learns (eval accuracy well
//! above the majority baseline) and leaves its job dir; `sync` gives the same bits with
//! 1, 2 and 4 workers; `--resume` continues to the same weights as a run
//! that went straight through; splits read through a data script's view
//! train as their exported files do; bad job files fail before any work with
//! the key named.

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

/// [`small_job`] with BatchNormalization (moving statistics averaged across
/// ranks) in the frame CNN and Dropout (seeded per step and block) before the
/// softmax: the layers whose training behaviour a wrong seed or a missing
/// state update would change.
fn job_with_batch_norm_and_dropout(dir: &std::path::Path, data: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let job = small_job(dir, data, 1, extra);
    let text = std::fs::read_to_string(&job).unwrap();
    let edits = [
        (
            "- {name: flatten, class: Flatten, input: conv2}",
            "- {name: bn, class: BatchNormalization, input: conv2}\n        - {name: flatten, class: Flatten, input: bn}",
        ),
        (
            "- {name: fc_out, class: Dense, input: fc1,",
            "- {name: drop, class: Dropout, input: fc1, rate: 0.3}\n    - {name: fc_out, class: Dense, input: drop,",
        ),
    ];
    let mut text = text;
    for (from, to) in edits {
        assert!(text.contains(from), "small_job no longer has {from}");
        text = text.replace(from, to);
    }
    std::fs::write(&job, text).unwrap();
    job
}

#[test]
fn sync_training_is_bit_identical_for_one_two_and_four_workers() {
    let data = &prepared_set(300);
    let dir = temp_dir("sync-workers");
    // Two epochs (6 steps each) in segments of 5 steps: one segment crosses the boundary.
    let job = job_with_batch_norm_and_dropout(&dir, data, "  epochs: 2");
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(&job, text.replace("  shards: 4\n", "  shards: 4\n  sync_every_steps: 5\n")).unwrap();
    let mut results = vec![];
    for workers in [1usize, 2, 4] {
        let job_dir = dir.join(format!("w{workers}"));
        let w = workers.to_string();
        ok(kallista(&["train", job.to_str().unwrap(), "--workers", &w, "--job-dir", job_dir.to_str().unwrap()]));
        let lines = train_lines(&job_dir.display().to_string());
        assert!(lines.len() > 2, "{lines:?}");
        for l in &lines {
            // Every segment really ran on that many ranks, ranks 0..W.
            let ranks: Vec<u64> =
                l["parts"].as_array().unwrap().iter().map(|p| p["first_block"].as_u64().unwrap()).collect();
            assert_eq!(ranks, (0..workers as u64).collect::<Vec<_>>(), "{l}");
            assert_eq!(l["partitions"].as_u64(), Some(workers as u64), "{l}");
        }
        let last = lines.last().unwrap();
        assert!(last["epoch"].as_f64().unwrap() >= 2.0, "the run must cross an epoch boundary: {last}");
        results.push(weights(&final_weights(&job_dir)));
    }
    let initial = {
        let job_dir = dir.join("w0");
        ok(kallista(&["train", job.to_str().unwrap(), "--max-steps", "1", "--job-dir", job_dir.to_str().unwrap()]));
        weights(&final_weights(&job_dir))
    };
    assert_ne!(results[0], initial, "training must change the weights");
    assert!(results[0].keys().any(|k| k.contains("moving_mean")), "the BatchNormalization statistics are compared");
    assert!(
        results[0].keys().any(|k| k.starts_with("optimizer")),
        "the optimizer slots are compared: {:?}",
        results[0].keys()
    );
    // Bit for bit: `weights` holds every value's exact f32, compared as bits.
    let bits = |w: &std::collections::BTreeMap<String, Vec<f32>>| -> Vec<(String, Vec<u32>)> {
        w.iter().map(|(k, v)| (k.clone(), v.iter().map(|x| x.to_bits()).collect())).collect()
    };
    assert!(bits(&results[0]) == bits(&results[1]), "1 vs 2 workers");
    assert!(bits(&results[0]) == bits(&results[2]), "1 vs 4 workers");
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
    // Segments end on checkpoints: steps 5-6 and 6-8.
    assert!(out.contains("trained 8 steps in 2 rounds"), "{out}");
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
        e.contains("model.inputs[0].shape: input 'video' is [8, 32, 32, 3]")
            && e.contains("row 0, column 'frames': 4 frames, the model input takes 8"),
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
    let e = fails_with("script", |t| t.replace("data:\n", "data:\n  script: {file: no-such.sql}\n"));
    assert!(e.contains("data.script.file:") && e.contains("no-such.sql"), "{e}");
    let scripts = temp_dir("bad-scripts");
    std::fs::write(
        scripts.join("set.sql"),
        "CREATE VIEW v AS SELECT 1;\nSET datafusion.execution.target_partitions = 1;",
    )
    .unwrap();
    std::fs::write(scripts.join("var.sql"), "CREATE VIEW v AS SELECT * FROM '${nowhere}/x/';").unwrap();
    let with_script = |name: &str| format!("data:\n  script: {{file: {}}}\n", scripts.join(name).display());
    let e = fails_with("script-set", |t| t.replace("data:\n", &with_script("set.sql")));
    assert!(e.contains("data.script.file:") && e.contains("statement 2: a data script runs in the training"), "{e}");
    let e = fails_with("script-var", |t| t.replace("data:\n", &with_script("var.sql")));
    assert!(e.contains("data.script.set:") && e.contains("nowhere"), "{e}");
    let e = fails_with("ps-in-sync", |t| t.replace("  mode: sync\n", "  mode: sync\n  parameter_servers: 2\n"));
    assert!(e.contains("scaling.parameter_servers: is a setting of mode: async"), "{e}");
    let e = fails_with("ps-token", |t| {
        t.replace("  mode: sync\n", "  mode: async\n  parameter_server_hosts: [127.0.0.1:50070]\n")
    });
    assert!(e.contains("scaling.parameter_server_token_file: is needed with parameter_server_hosts"), "{e}");
    let e = fails_with("device", |t| t.replace("  mode: sync\n", "  mode: sync\n  device: gpu\n"));
    assert!(e.contains("scaling.device: unknown device 'gpu'"), "{e}");
    // No machine has a thousand GPUs: a build without CUDA says how to get it, one with it names the device.
    let e = fails_with("no-device", |t| t.replace("  mode: sync\n", "  mode: sync\n  device: cuda:999\n"));
    assert!(e.contains("scaling.device: ") && (e.contains("--features cuda") || e.contains("cuda:999: ")), "{e}");
}

#[test]
fn splits_staged_from_the_data_scripts_view_train_the_bits_of_the_exported_splits() {
    // The same clips, prepared by `jobs/video_qa/prepare.sql` + `export.sql` into files...
    let data = &prepared_set(300);
    let clips = data.parent().unwrap();
    let dir = temp_dir("data-script");
    let job = small_job(&dir, data, 2, "  max_steps: 6");
    let from_files = dir.join("from-files");
    ok(kallista(&["train", job.to_str().unwrap(), "--job-dir", from_files.to_str().unwrap()]));
    // ...and read through prepare.sql's view, run as the job's data script.
    let text = std::fs::read_to_string(&job).unwrap();
    let script = format!(
        "data:\n  script: {{file: {}/jobs/video_qa/prepare.sql, set: {{data: {}, out: \"${{job_dir}}/vocab\"}}}}\n",
        env!("CARGO_MANIFEST_DIR"),
        clips.display()
    );
    let mut viewed = text.replace("data:\n", &script);
    for split in ["train", "eval", "test"] {
        let from = format!("{}/{split}/", data.display());
        assert!(viewed.contains(&from), "small_job no longer reads {from}");
        viewed = viewed.replace(&from, &format!("{{sql: \"SELECT * FROM prepared WHERE split = '{split}'\"}}"));
    }
    std::fs::write(&job, viewed).unwrap();
    let from_view = dir.join("from-view");
    let out = ok(kallista(&["train", job.to_str().unwrap(), "--job-dir", from_view.to_str().unwrap()]));
    assert!(out.contains("trained 6 steps"), "{out}");
    let staged = || std::fs::read_to_string(from_view.join("data/train.layout.json")).unwrap();
    let record = staged();
    assert!(record.contains("SELECT * FROM prepared WHERE split = 'train'"), "{record}");
    assert!(from_view.join("vocab/question_vocab.parquet").is_file(), "the script's vocabulary");
    let bits = |p: &std::path::Path| -> Vec<(String, Vec<u32>)> {
        weights(&final_weights(p)).into_iter().map(|(k, v)| (k, v.iter().map(|x| x.to_bits()).collect())).collect()
    };
    assert!(bits(&from_files) == bits(&from_view), "the view and the files must give the same rows in the same blocks");
    let results = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("results.json")).unwrap()).unwrap()
    };
    let (a, b) = (results(&from_files), results(&from_view));
    for split in ["eval", "test"] {
        assert!(a[split]["overall"]["rows"].as_u64() > Some(0), "{a}");
        assert_eq!(a[split], b[split], "{split}: the same rows, the same predictions");
    }
    // Run again, the staging is kept; with another vocabulary size, the view
    // gives other token ids and the split is staged anew.
    ok(kallista(&["train", job.to_str().unwrap(), "--job-dir", from_view.to_str().unwrap()]));
    assert_eq!(staged(), record, "the same script and variables: the staging is reused");
    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(&job, text.replace("out: \"${job_dir}/vocab\"", "out: \"${job_dir}/vocab\", vocab_size: 5"))
        .unwrap();
    ok(kallista(&["train", job.to_str().unwrap(), "--job-dir", from_view.to_str().unwrap()]));
    assert_ne!(staged(), record, "another variable of the script: staged anew");
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
