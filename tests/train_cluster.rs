//! Training on a real cluster of processes on loopback: `kallista scheduler`
//! and `kallista executor`s, each executor in a working directory of its own,
//! jobs sent with `kallista submit`. A job learns and fills its job dir; the
//! ranks of every `sync` segment run on distinct executors (the placement
//! record in `metrics.jsonl`); killing, with SIGKILL, an executor that holds
//! a rank in the middle of a segment restarts the segment and finishes with
//! the weights of a run without a fault, also when too few executors remain
//! for the old number of ranks; forged and tampered messages to a running
//! job's rendezvous are refused, logged, and change nothing; a bad row fails the job at once, naming
//! where it is; a round that runs past its timeout has its Ballista job
//! cancelled before the retry.

mod common;

use common::cluster::{start_cluster, start_cluster_with, ClusterOptions};
use common::*;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_job_submitted_to_a_scheduler_with_two_executors_learns_and_fills_its_job_dir() {
    let data = learning_set();
    let dir = temp_dir("submit");
    let job = learning_job(&dir, &data);
    let cluster = start_cluster("submit", 1);
    let out = ok(kallista(&["submit", job.to_str().unwrap(), "--scheduler", &cluster.url]));
    check_learned(&dir.join("job"), &data, &out);
}

/// The executors that ran each round's partitions, from `metrics.jsonl`.
fn placements(job_dir: &str) -> Vec<(u64, Vec<String>)> {
    train_lines(job_dir)
        .iter()
        .map(|l| {
            let parts = l["parts"].as_array().unwrap();
            (l["step"].as_u64().unwrap(), parts.iter().map(|p| p["executor"].as_str().unwrap().to_string()).collect())
        })
        .collect()
}

#[test]
fn three_workers_of_every_round_run_on_three_different_executors() {
    let data = &prepared_set(300);
    let dir = temp_dir("placement");
    let job = small_job(&dir, data, 3, "  max_steps: 6");
    let text = std::fs::read_to_string(&job)
        .unwrap()
        .replace("shards: 4", "shards: 3\n  sync_every_steps: 1")
        .replace("batch_size: 32", "batch_size: 30");
    std::fs::write(&job, text).unwrap();
    let cluster = start_cluster_with("placement", ClusterOptions::new(3, 2));
    ok(kallista(&["submit", job.to_str().unwrap(), "--scheduler", &cluster.url]));
    let rounds = placements(&dir.join("job").display().to_string());
    assert_eq!(rounds.len(), 6, "{rounds:?}");
    let all: BTreeSet<String> = cluster.names.iter().cloned().collect();
    for (step, executors) in &rounds {
        let distinct: BTreeSet<String> = executors.iter().cloned().collect();
        assert_eq!(executors.len(), 3, "step {step}: {executors:?}");
        assert_eq!(distinct, all, "step {step}: the three partitions ran on {executors:?}, the cluster is {all:?}");
    }
}

/// Submits `job` to `cluster` with the job dir `job_dir` and returns the
/// submit (its output captured) once the `sync` segment starting at `step`
/// runs, with that segment's placement record (the job dir's `ranks.json`).
fn submit_until_segment(
    job: &std::path::Path,
    cluster: &common::cluster::Cluster,
    job_dir: &str,
    step: u64,
) -> (std::process::Child, serde_json::Value) {
    let mut submit = Command::new(env!("CARGO_BIN_EXE_kallista"))
        .args(["submit", job.to_str().unwrap(), "--scheduler", &cluster.url, "--job-dir", job_dir])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let missed = loop {
        let record: Option<serde_json::Value> =
            job_object(job_dir, "ranks.json").and_then(|b| serde_json::from_slice(&b).ok());
        match record.as_ref().and_then(|r| r["step"].as_u64()) {
            Some(s) if s == step => return (submit, record.unwrap_or_default()),
            Some(s) if s > step => break format!("missed the segment at step {step}: now at {s}"),
            _ if Instant::now() > deadline => break format!("the job did not reach the segment at step {step}"),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let _ = submit.kill();
    let _ = submit.wait();
    panic!("{missed}");
}

/// Waits for a submit to end, asserts it succeeded; returns its stderr.
fn succeeded(submit: std::process::Child) -> String {
    let out = submit.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// Submits `job` to `cluster` with the job dir `job_dir`; once the segment
/// starting at `step` is running, SIGKILLs the executor of its rank 0
/// (chosen from the placement record). Returns the submit's stderr (asserted
/// successful) and the victim's index.
fn kill_a_rank_mid_segment(
    job: &std::path::Path,
    cluster: &mut common::cluster::Cluster,
    job_dir: &str,
    step: u64,
) -> (String, usize) {
    let (submit, record) = submit_until_segment(job, cluster, job_dir, step);
    let executor = record["ranks"][0]["executor"].as_str().unwrap();
    let victim = cluster.names.iter().position(|n| n == executor).expect("a cluster executor");
    cluster.executors[victim].kill().unwrap();
    cluster.executors[victim].wait().unwrap();
    (succeeded(submit), victim)
}

/// A job of 3 segments of 30 `sync` steps on 2 ranks, whose processes on one
/// host pass chunks through `shared_memory` or TCP, and the weights of its
/// run without a fault (embedded: no ring).
fn three_segment_job(
    name: &str,
    rank_start_timeout: u64,
    shared_memory: bool,
) -> (std::path::PathBuf, std::path::PathBuf, std::collections::BTreeMap<String, Vec<f32>>) {
    let data = &prepared_set(300);
    let dir = temp_dir(name);
    let extra = "  max_steps: 90\n  checkpoint_every_steps: 1000";
    let job = small_job(&dir, data, 2, extra);
    let text = std::fs::read_to_string(&job).unwrap().replace(
        "  shards: 4\n",
        &format!(
            "  shards: 4\n  sync_every_steps: 30\n  rank_start_timeout_seconds: {rank_start_timeout}\n  shared_memory: {shared_memory}\n"
        ),
    );
    std::fs::write(&job, text).unwrap();
    let reference = dir.join("reference");
    ok(kallista(&["train", job.to_str().unwrap(), "--job-dir", reference.to_str().unwrap()]));
    let weights = weights(&final_weights(&reference));
    (dir, job, weights)
}

#[test]
fn killing_an_executor_that_holds_a_rank_mid_segment_restarts_the_segment_with_the_same_weights() {
    let (dir, job, reference) = three_segment_job("kill", 20, true);
    // Three executors of one slot: after the kill, two slots remain for the two ranks.
    let mut cluster = start_cluster_with("kill", ClusterOptions::new(3, 1));
    let faulty = dir.join("faulty").display().to_string();
    let (stderr, victim) = kill_a_rank_mid_segment(&job, &mut cluster, &faulty, 30);
    assert!(stderr.contains("restarting it from step 30"), "{stderr}");
    let lines = train_lines(&faulty);
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![30, 60, 90], "{lines:?}");
    // The segment at step 30 ran again as a later generation, on the survivors, with two ranks.
    let restarted = &lines[1];
    assert!(restarted["generation"].as_u64().unwrap() > 2, "{restarted}");
    assert_eq!(restarted["partitions"].as_u64(), Some(2), "{restarted}");
    // Two processes: the ranks' sums crossed the ring, through shared memory (one host).
    assert_eq!(restarted["processes"].as_u64(), Some(2), "{restarted}");
    assert!(restarted["sent_bytes_per_step"].as_f64().unwrap() > 0.0, "{restarted}");
    assert_eq!(restarted["shared_memory_links"].as_u64(), Some(2), "{restarted}");
    for p in restarted["parts"].as_array().unwrap() {
        assert_ne!(p["executor"].as_str().unwrap(), cluster.names[victim], "{restarted}");
    }
    assert!(
        weights(&final_weights(&dir.join("faulty"))) == reference,
        "the weights differ from the run without a fault"
    );
}

#[test]
fn losing_an_executor_for_good_finishes_with_fewer_ranks_and_the_same_weights() {
    // Through TCP, as between hosts.
    let (dir, job, reference) = three_segment_job("lose", 8, false);
    // Two executors of one slot: after the kill, one rank fits.
    let mut cluster = start_cluster_with("lose", ClusterOptions::new(2, 1));
    let faulty = dir.join("faulty").display().to_string();
    let (stderr, _) = kill_a_rank_mid_segment(&job, &mut cluster, &faulty, 30);
    assert!(stderr.contains("1 of 2 ranks started"), "{stderr}");
    let lines = train_lines(&faulty);
    let ranks: Vec<(u64, u64)> =
        lines.iter().map(|l| (l["step"].as_u64().unwrap(), l["partitions"].as_u64().unwrap())).collect();
    assert_eq!(ranks, vec![(30, 2), (60, 1), (90, 1)], "{lines:?}");
    let ring = &lines[0];
    assert!(ring["sent_bytes_per_step"].as_f64().unwrap() > 0.0, "{ring}");
    assert_eq!(ring["shared_memory_links"].as_u64(), Some(0), "{ring}");
    assert!(
        weights(&final_weights(&dir.join("faulty"))) == reference,
        "the weights differ from the run without a fault"
    );
}

/// Sends `body` to the driver's rendezvous at `address` as one request
/// frame signed with `key`, with byte `flip` of the signed frame changed when given.
fn send_to_rendezvous(address: &str, key: &[u8], body: &[u8], flip: Option<usize>) {
    use kallista_engine::collective::frame::{Framed, Secret};
    const REQUEST: u8 = 1;
    let mut signed = Framed::new(std::io::Cursor::new(vec![]), Secret::from_bytes(key));
    signed.send(REQUEST, &[body]).unwrap();
    let mut raw = signed.stream.into_inner();
    if let Some(at) = flip {
        raw[at] ^= 1;
    }
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    std::io::Write::write_all(&mut stream, &raw).unwrap();
    // The service closes the connection after refusing the message.
    let _ = std::io::Read::read_to_end(&mut stream, &mut vec![]);
}

#[test]
fn forged_and_tampered_messages_to_a_running_job_are_refused_logged_and_change_nothing() {
    let (dir, job, reference) = three_segment_job("forge", 20, true);
    let cluster = start_cluster_with("forge", ClusterOptions::new(2, 1));
    let job_dir = dir.join("forged").display().to_string();
    let (submit, record) = submit_until_segment(&job, &cluster, &job_dir, 30);
    let executors: BTreeSet<&str> =
        record["ranks"].as_array().unwrap().iter().map(|r| r["executor"].as_str().unwrap()).collect();
    assert_eq!(executors.len(), 2, "the segment's ranks run in two executor processes: {record}");
    // An abort that, were it taken, would fail the whole job (deterministic):
    // sent signed right and unchanged, it does (checked by hand).
    let abort = serde_json::json!({"Abort": {
        "job": record["job"], "generation": record["generation"], "rank": 0,
        "reason": "forged", "deterministic": true,
    }});
    let body = abort.to_string().into_bytes();
    let address = record["rendezvous"].as_str().unwrap();
    send_to_rendezvous(address, b"a guessed secret", &body, None);
    let secret = job_object(&job_dir, "collective.secret").expect("the job's secret while it runs");
    // Signed with the job's secret, then one byte of the body changed on the way.
    send_to_rendezvous(address, &secret, &body, Some(5 + body.len() / 2));
    let stderr = succeeded(submit);
    assert_eq!(stderr.matches("rendezvous: refused a message").count(), 2, "{stderr}");
    assert!(!stderr.contains("restarting"), "{stderr}");
    assert!(weights(&final_weights(&dir.join("forged"))) == reference, "the weights differ from the run without them");
}

/// The one value a `kallista sql -e` query prints.
fn sql_value(query: &str) -> String {
    let out = ok(kallista(&["sql", "-e", query]));
    // The header line, then the value.
    let line = out.lines().filter(|l| l.starts_with("| ")).nth(1).expect(&out);
    line.trim_matches(|c| c == '|' || c == ' ').to_string()
}

#[test]
fn a_bad_row_fails_the_job_within_one_round_naming_file_row_and_column() {
    let data = &prepared_set(300);
    let dir = temp_dir("bad-row");
    // A copy of the training split with one video's frames cut to a byte each.
    let video = sql_value(&format!("SELECT MAX(video_id) AS v FROM '{}/train/'", data.display()));
    let bad = dir.join("bad-train");
    ok(kallista(&[
        "sql",
        "-e",
        &format!(
            "COPY (SELECT * EXCLUDE (frames), CASE WHEN video_id = '{video}' THEN make_array(X'00', X'00', X'00', X'00') ELSE frames END AS frames FROM '{}/train/') TO '{}/' STORED AS PARQUET",
            data.display(),
            bad.display()
        ),
    ]));
    let job = small_job(&dir, data, 2, "  max_steps: 40\n  checkpoint_every_steps: 1000");
    let cluster = start_cluster("bad-row", 1);
    let out = kallista(&[
        "submit",
        job.to_str().unwrap(),
        "--scheduler",
        &cluster.url,
        "--train-files",
        bad.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error = stderr.lines().find(|l| l.starts_with("error:")).expect(&stderr);
    // The staged file (the job's staging of the split), the row and the column.
    let staged = format!("{}/data/train/immutable-v", dir.join("job").display());
    assert!(error.contains(&staged) && error.contains(": row ") && error.contains("column 'frames'"), "{error}");
    assert!(!stderr.contains("resubmitting"), "a bad row is not a lost executor: {stderr}");
    let logs = cluster.log(0) + &cluster.log(1);
    assert!(logs.contains("column 'frames'") && logs.contains(&staged), "executor logs:\n{logs}");
    let rounds = train_lines(&dir.join("job").display().to_string()).len();
    assert!(rounds < 40, "the job went on after the bad row ({rounds} rounds)");
}

#[test]
fn a_round_past_its_timeout_has_its_job_cancelled_before_it_is_resubmitted() {
    let data = &prepared_set(300);
    let dir = temp_dir("timeout");
    // One `average` round of 100,000 local steps: far past a 5 s timeout.
    let job = small_job(&dir, data, 1, "  max_steps: 100000\n  checkpoint_every_steps: 100000");
    let text = std::fs::read_to_string(&job)
        .unwrap()
        .replace("round_timeout_seconds: 30", "round_timeout_seconds: 5")
        .replace("mode: sync", "mode: average\n  sync_every_steps: 100000");
    std::fs::write(&job, text).unwrap();
    let mut opts = ClusterOptions::new(1, 2);
    opts.env = vec![("RUST_LOG".into(), "info".into())];
    let cluster = start_cluster_with("timeout", opts);
    let out = kallista(&["submit", job.to_str().unwrap(), "--scheduler", &cluster.url]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Each attempt's job was cancelled (the scheduler confirmed it) before the next was sent.
    let scheduler = std::fs::read_to_string(&cluster.scheduler_log).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    let cancelled: Vec<(usize, String)> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let job = l.split("cancelled job ").nth(1)?.split_whitespace().next()?;
            Some((i, job.to_string()))
        })
        .collect();
    assert_eq!(cancelled.len(), 3, "{stderr}");
    for (n, (at, job)) in cancelled.iter().enumerate() {
        assert!(
            scheduler.contains(&format!("Received cancellation request for job {job}")),
            "job {job} not cancelled on the scheduler:\n{scheduler}"
        );
        let resubmitted = lines[*at..].iter().any(|l| l.contains(&format!("(attempt {}/3); resubmitting", n + 1)));
        assert_eq!(resubmitted, n < 2, "attempt {} and its cancellation: {stderr}", n + 1);
    }
    let error = lines.iter().find(|l| l.starts_with("error:")).expect(&stderr);
    assert!(error.contains("did not finish within 5s") && error.contains("3 times"), "{error}");
}

/// Whether any process's command line names `text`.
fn a_process_names(text: &str) -> Option<String> {
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        cmdline.contains(text).then_some(cmdline)
    })
}

#[test]
fn killing_an_executor_mid_async_segment_finishes_the_job_and_leaves_no_process_or_port() {
    let data = &prepared_set(300);
    let dir = temp_dir("async-kill");
    let job = small_job(&dir, data, 2, "  max_steps: 900\n  checkpoint_every_steps: 1000");
    let text = std::fs::read_to_string(&job)
        .unwrap()
        .replace("  mode: sync\n", "  mode: async\n  parameter_servers: 2\n")
        .replace("  shards: 4\n", "  shards: 4\n  sync_every_steps: 300\n");
    std::fs::write(&job, text).unwrap();
    let mut cluster = start_cluster_with("async-kill", ClusterOptions::new(2, 1));
    let job_dir = dir.join("job").display().to_string();
    let submit = Command::new(env!("CARGO_BIN_EXE_kallista"))
        .args(["submit", job.to_str().unwrap(), "--scheduler", &cluster.url, "--job-dir", &job_dir])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The second segment's workers have pushed a few steps (the shards' counters, asked with the job's secret).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(Instant::now() < deadline, "the job did not reach its second segment");
        std::thread::sleep(Duration::from_millis(20));
        let (Some(record), Some(secret)) =
            (job_object(&job_dir, "servers.json"), job_object(&job_dir, "collective.secret"))
        else {
            continue;
        };
        let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
        let secret = kallista_engine::collective::frame::Secret::from_bytes(&secret);
        let (address, job_id) = (record["servers"][0].as_str().unwrap(), record["job"].as_str().unwrap());
        let Ok(stats) = kallista_engine::ps::client::stats(address, &secret, job_id, Duration::from_secs(5)) else {
            continue;
        };
        let pushes: Vec<u64> = stats.workers.values().map(|w| w.pushes).collect();
        if pushes.len() == 2 && pushes.iter().all(|&p| p >= 150 + 10) {
            break;
        }
    }
    cluster.executors[0].kill().unwrap();
    cluster.executors[0].wait().unwrap();
    succeeded(submit);
    let lines = train_lines(&job_dir);
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![300, 600, 900], "{lines:?}");
    // Every step was pushed exactly once: the re-run worker skipped those its lost run pushed.
    let rows: Vec<u64> = lines.iter().map(|l| l["rows"].as_u64().unwrap()).collect();
    assert_eq!(rows, vec![300 * 32; 3], "{lines:?}");
    // Workers and shards share a host: the values of each of the 2 x 2 connections went through shared memory.
    assert_eq!(lines[0]["shared_memory_links"], 4, "{}", lines[0]);
    // Before the kill the two workers ran on the two executors: the victim held one.
    let first: BTreeSet<&str> =
        lines[0]["parts"].as_array().unwrap().iter().map(|p| p["executor"].as_str().unwrap()).collect();
    assert_eq!(first, cluster.names.iter().map(String::as_str).collect(), "{}", lines[0]);
    // The lost worker ran again (a second pull) in the segment of the kill.
    let pulls: Vec<u64> =
        lines[1]["workers"].as_array().unwrap().iter().map(|w| w["pulls"].as_u64().unwrap()).collect();
    assert!(pulls.iter().any(|&p| p >= 2), "no worker was re-run: {}", lines[1]);
    // Nothing of the job is left: no process, no listening port.
    let record: serde_json::Value = serde_json::from_slice(&job_object(&job_dir, "servers.json").unwrap()).unwrap();
    for address in record["servers"].as_array().unwrap() {
        let address = address.as_str().unwrap();
        assert!(std::net::TcpStream::connect(address).is_err(), "the parameter server at {address} still listens");
    }
    assert_eq!(a_process_names(&job_dir), None, "a process of the job is left");
}
