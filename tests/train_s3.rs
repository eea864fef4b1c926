//! Multi-host behaviour on one machine: a real S3-compatible server process
//! holds the data and the job dir (no local copy of either), executors run in
//! working directories of their own, and a job submitted from yet another
//! directory resolves its relative job dir where it is submitted.

mod common;

use common::cluster::{start_cluster_with, ClusterOptions};
use common::s3::{S3Server, BUCKET};
use common::*;

#[test]
fn a_job_with_data_and_job_dir_in_s3_learns_on_a_process_cluster_and_resumes_bit_identically() {
    let s3 = S3Server::start("s3-job");
    s3.use_in_this_process();
    let env = s3.env();
    // The data: rendered here, prepared by SQL straight into the bucket, the local copy removed.
    let clips = temp_dir("s3-job-clips");
    let clips_dir = clips.display().to_string();
    ok(kallista_env(
        &[
            "data",
            "make-video-qa",
            "--out",
            &clips_dir,
            "--videos",
            "1000",
            "--frames",
            "4",
            "--size",
            "64",
            "--seed",
            "11",
        ],
        &env,
    ));
    let data = format!("s3://{BUCKET}/prepared");
    let jobs = format!("{}/jobs/video_qa", env!("CARGO_MANIFEST_DIR"));
    let (prepare, export) = (format!("{jobs}/prepare.sql"), format!("{jobs}/export.sql"));
    let vars = [format!("data={clips_dir}"), format!("out={data}")];
    ok(kallista_env(&["sql", "-f", &prepare, "-f", &export, "--set", &vars[0], "--set", &vars[1]], &env));
    std::fs::remove_dir_all(&clips).unwrap();

    let dir = temp_dir("s3-job");
    let job_dir = format!("s3://{BUCKET}/jobs/video_qa");
    let job = learning_job_at(&dir, &job_dir, &data);
    let job = job.to_str().unwrap();
    let cluster = start_cluster_with("s3-job", ClusterOptions { env: env.clone(), ..ClusterOptions::new(2, 1) });
    // Half the job, then `--resume` from the bucket to the end.
    ok(kallista_env(&["submit", job, "--scheduler", &cluster.url, "--max-steps", "176"], &env));
    let out = ok(kallista_env(&["submit", job, "--scheduler", &cluster.url, "--resume"], &env));
    assert!(out.contains("trained"), "{out}");
    check_learned_at(&job_dir, &data, &env, &out);
    assert!(!dir.join("job").exists() && !cluster.homes.iter().any(|h| h.join("target").exists()));
    // The same job straight through, on the embedded cluster with its job
    // dir on local disk (each round is cheaper there): `sync` weights do not
    // depend on where, or in how many runs, they were computed.
    let straight = dir.join("straight");
    ok(kallista_env(&["train", job, "--job-dir", straight.to_str().unwrap()], &env));
    assert_eq!(final_weights_at(&job_dir), weights(&final_weights(&straight)));
}

#[test]
fn executors_bound_everywhere_serve_the_shipped_job_submitted_from_another_directory() {
    // Where the job is submitted from: the shipped job file's relative job
    // dir (`target/jobs/video_qa`) and its data live under it.
    let submitter = temp_dir("hosts-submitter");
    let job_dir = submitter.join("target/jobs/video_qa");
    let clips = job_dir.join("dataset");
    ok(kallista(&[
        "data",
        "make-video-qa",
        "--out",
        clips.to_str().unwrap(),
        "--videos",
        "200",
        "--frames",
        "8",
        "--size",
        "64",
        "--seed",
        "5",
    ]));
    let opts = ClusterOptions {
        bind_host: "0.0.0.0".into(),
        external_host: Some("127.0.0.1".into()),
        ..ClusterOptions::new(2, 1)
    };
    let cluster = start_cluster_with("hosts", opts);
    let shipped = format!("{}/jobs/video_qa/job.yaml", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kallista"))
        .args(["submit", &shipped, "--scheduler", &cluster.url, "--max-steps", "4"])
        .current_dir(&submitter)
        .output()
        .unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("trained 4 steps"), "{text}");
    for f in ["results.json", "model.json", "checkpoints/last.json", "training_curve.png"] {
        assert!(job_dir.join(f).is_file(), "{f} missing from {}\n{text}", job_dir.display());
    }
    for home in &cluster.homes {
        assert!(!home.join("target").exists(), "an executor wrote into its own working directory");
    }
    // The job's data script wrote its vocabularies and nothing else: the
    // splits were staged from its view of the clips.
    let written: Vec<_> = std::fs::read_dir(&clips).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(job_dir.join("dataset/vocab/question_vocab.parquet").is_file(), "{written:?}");
    assert_eq!(written.len(), 2, "the clips and the vocabularies only: {written:?}");
    // Both executors, advertised by their external name, ran workers.
    let job_url = job_dir.display().to_string();
    let ran: std::collections::BTreeSet<String> = train_lines(&job_url)
        .iter()
        .flat_map(|l| l["parts"].as_array().unwrap().iter().map(|p| p["executor"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(ran, cluster.names.iter().cloned().collect(), "{text}");
}
