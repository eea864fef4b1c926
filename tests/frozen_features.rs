//! Frozen-feature caching (`training.cache_frozen`, `kallista features`):
//! training the rest of a model from the stored features of its frozen
//! TimeDistributed CNN ends with the weights of training through the CNN;
//! the job dir then holds the whole model, which evaluates on raw frames;
//! caches are reused until the frozen model or the data change. And the
//! talk's InceptionV3 job (`jobs/video_qa_inception`) runs end to end on a
//! small set, its CNN weights from the Keras-written file of the fixtures.

mod common;

use common::cluster::{start_cluster_with, ClusterOptions};
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// [`small_job`] with the frame CNN frozen.
fn frozen_job(dir: &Path, data: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let job = small_job(dir, data, 2, extra);
    let text = std::fs::read_to_string(&job).unwrap();
    let frozen = text.replace("layer: frame_cnn}", "layer: frame_cnn, trainable: false}");
    assert_ne!(frozen, text);
    std::fs::write(&job, frozen).unwrap();
    job
}

fn results(job_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(job_dir.join("results.json")).unwrap()).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        match e.file_type().unwrap().is_dir() {
            true => copy_dir(&e.path(), &to.join(e.file_name())),
            false => drop(std::fs::copy(e.path(), to.join(e.file_name())).unwrap()),
        }
    }
}

/// `kallista features JOB [ARGS]`: its log, and each split's cache (its
/// output lines, `split<TAB>cache`).
fn features(job: &Path, args: &[&str]) -> (String, BTreeMap<String, String>) {
    let mut all = vec!["features", job.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = kallista(&all);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let caches = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(split, cache)| (split.to_string(), cache.to_string()))
        .collect();
    (stderr, caches)
}

#[test]
fn training_from_cached_features_ends_with_the_weights_of_training_through_the_frozen_cnn() {
    let dir = temp_dir("frozen-features");
    // A copy of the data, so that the test can change it.
    let data = dir.join("data");
    copy_dir(&prepared_set(300), &data);
    let steps = "  max_steps: 16\n  eval_every_steps: 8\n";
    let through = frozen_job(&dir.join("through"), &data, steps);
    let cached = frozen_job(&dir.join("cached"), &data, &format!("{steps}  cache_frozen: true\n"));
    ok(kallista(&["train", through.to_str().unwrap()]));
    let out = kallista(&["train", cached.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    for split in ["train", "eval", "test"] {
        assert!(log.contains(&format!("{split} features of 'td_cnn' (computed")), "{log}");
    }
    // The rest of the model trained in a job dir of its own, on the features alone.
    let from_features = dir.join("cached/job/from_features");
    assert_eq!(results(&from_features)["steps"], 16);
    let tail = std::fs::read_to_string(from_features.join("model.json")).unwrap();
    assert!(tail.contains("\"td_cnn\"") && !tail.contains("frame_cnn"), "the part after the CNN: {tail}");

    // The same weights, to float tolerance: the features are the CNN's outputs,
    // computed in other batches.
    let a = weights(&final_weights(&dir.join("through/job")));
    let b = weights(&final_weights(&dir.join("cached/job")));
    assert!(b.keys().any(|k| k.starts_with("td_cnn/")), "the whole model: {:?}", b.keys());
    let mut worst = 0f32;
    for (key, got) in &b {
        let want = &a[key];
        let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let diff = want.iter().zip(got).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale;
        if key.starts_with("td_cnn/") {
            assert_eq!(diff, 0.0, "{key}: a frozen weight changed");
        }
        worst = worst.max(diff);
    }
    eprintln!("largest weight difference, relative to each tensor's max: {worst:e}");
    assert!(worst < 1e-4, "weights differ by {worst:e} (relative to each tensor's max)");
    let (ra, rb) = (results(&dir.join("through/job")), results(&dir.join("cached/job")));
    assert_eq!(ra["steps"], rb["steps"]);
    assert_eq!(ra["test"]["overall"]["rows"], rb["test"]["overall"]["rows"]);

    // The job dir holds the whole model: it evaluates on raw frames to the run's test accuracy.
    let out_dir = dir.join("evaluate");
    let job_dir = dir.join("cached/job").display().to_string();
    let test_split = data.join("test").display().to_string();
    ok(kallista(&["evaluate", "--model", &job_dir, "--data", &test_split, "--out", out_dir.to_str().unwrap()]));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("metrics.json")).unwrap()).unwrap();
    let test = &rb["test"]["overall"];
    let rows = test["rows"].as_f64().unwrap();
    let accuracy = test["correct"].as_f64().unwrap() / rows;
    assert!((metrics["accuracy"].as_f64().unwrap() - accuracy).abs() <= 1.0 / rows, "{metrics} vs {accuracy}");

    // Reused while nothing changes (the caches training read); rebuilt for the
    // split whose data changed (a file rewritten), and for every split when
    // the frozen model changes (another seed), then by the executors of a
    // cluster of processes.
    let (again, reused) = features(&cached, &[]);
    assert_eq!(again.matches("(cached)").count(), 3, "{again}");
    assert_eq!(reused.len(), 3, "{reused:?}");
    for (split, cache) in &reused {
        assert!(log.contains(cache.as_str()), "{split}: training did not read {cache}:\n{log}");
    }
    let eval_file = std::fs::read_dir(data.join("eval")).unwrap().next().unwrap().unwrap().path();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(&eval_file, std::fs::read(&eval_file).unwrap()).unwrap();
    let (changed, rebuilt) = features(&cached, &[]);
    assert!(changed.contains("eval features of 'td_cnn' (computed"), "{changed}");
    assert_eq!((changed.matches("(computed").count(), changed.matches("(cached)").count()), (1, 2), "{changed}");
    assert_ne!(rebuilt["eval"], reused["eval"]);
    assert_eq!((&rebuilt["train"], &rebuilt["test"]), (&reused["train"], &reused["test"]));
    let text = std::fs::read_to_string(&cached).unwrap();
    std::fs::write(&cached, text.replace("seed: 7", "seed: 8")).unwrap();
    let cluster = start_cluster_with("features", ClusterOptions::new(2, 1));
    let (reseeded, _) = features(&cached, &["--scheduler", &cluster.url]);
    assert_eq!(reseeded.matches("(computed").count(), 3, "{reseeded}");
    let executors: String = (0..2).map(|i| cluster.log(i)).collect();
    assert!(executors.contains("loaded model") && executors.contains("head-"), "no executor ran the CNN:\n{executors}");
}

#[test]
fn the_talks_inception_v3_job_runs_end_to_end_from_cached_features() {
    let h5 = fixtures().join("inception_v3/inception_v3.weights.h5");
    assert!(h5.exists(), "{} is missing: run scripts/test-setup.sh first", h5.display());
    // The job as committed, beside the Keras-written weights, on a small set.
    let dir = temp_dir("inception-job");
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/jobs/video_qa_inception/job.yaml")).unwrap();
    let small = text
        .replace("videos: 2000", "videos: 160")
        .replace("file: ../video_qa/prepare.sql", &format!("file: {root}/jobs/video_qa/prepare.sql"));
    assert_ne!(small, text);
    std::fs::write(dir.join("job.yaml"), small).unwrap();
    std::fs::copy(&h5, dir.join("inception_v3.weights.h5")).unwrap();
    let job_dir = dir.join("job");
    let out = kallista(&["run", dir.to_str().unwrap(), "--job-dir", job_dir.to_str().unwrap(), "--max-steps", "4"]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert!(log.contains("train features of 'td_cnn' (computed"), "{log}");
    let r = results(&job_dir);
    assert_eq!(r["steps"], 4, "{r}");
    assert!(r["test"]["overall"]["rows"].as_u64().unwrap() > 0, "{r}");

    // The whole model's CNN holds Keras's weights, unchanged by training.
    let model = std::fs::read_to_string(job_dir.join("model.json")).unwrap();
    assert!(model.contains("mixed10"), "InceptionV3 is part of the model");
    let keras = kallista_ops::model::read_keras_weights_h5(&h5).unwrap();
    let got = weights(&final_weights(&job_dir));
    // The first and the last convolution's kernels (Keras's first variable of each).
    for layer in ["conv2d", "conv2d_93"] {
        let key = format!("td_cnn/inception/{layer}/kernel");
        assert_eq!(&got[&key], keras[layer].weights[0].data(), "{key}");
    }
}
