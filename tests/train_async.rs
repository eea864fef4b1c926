//! `async` training end to end: workers as long Ballista tasks against
//! parameter servers in the driver. A job with two workers and two shards
//! learns its training rows, pushing every step's rows once; workers taking
//! turns on a core push before the next one pulls; a worker that cannot reach its shard fails
//! the job naming the shard's address, and leaves no results behind; a
//! resumed job ends as an uninterrupted one; one worker's run is `sync`'s
//! (to the sums' rounding); shards on `kallista ps`
//! processes close with their driver, however it ends; SIGTERM and Ctrl-C
//! end a job at once.

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
    // 24 epochs, not 16: a run whose pushes' timing kept it on the plateau
    // (see below) ended 16 epochs under CI's load at 0.61 of its first loss.
    let text = std::fs::read_to_string(&job).unwrap().replace("epochs: 16", "epochs: 24");
    std::fs::write(&job, text).unwrap();
    let out = ok(kallista(&["train", job.to_str().unwrap()]));
    let job_dir = dir.join("job");
    // It learns the training rows (the first segment's loss is that of a
    // fresh model, about 2.6, accuracy 0.15), and its evaluations are not
    // below the answer prior. (Not `check_learned`'s margin over the prior:
    // on these 114 eval rows an async run's best ranged from 0.40 to 0.47
    // between runs that all fit the training rows, 0.70 to 0.97. When the
    // timing of pushes keeps a run on the loss plateau longer, the last
    // round's training accuracy is lower: 0.57 once under CI's load, with
    // the loss at 0.40 of the first round's; hence 0.5, over three times
    // a fresh model's.)
    let lines = train_lines(&job_dir.display().to_string());
    let (first, last) = (&lines[0], lines.last().unwrap());
    let loss = |l: &serde_json::Value| l["loss"].as_f64().unwrap();
    assert!(loss(last) < 0.5 * loss(first), "train loss {} -> {}\n{out}", loss(first), loss(last));
    assert!(last["accuracy"].as_f64().unwrap() >= 0.5, "last train accuracy: {last}\n{out}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job_dir.join("results.json")).unwrap()).unwrap();
    let best = results["best_eval_accuracy"].as_f64().unwrap();
    let baseline = majority_baseline(&data.display().to_string(), &[]);
    assert!(best >= baseline, "best eval accuracy {best:.3} vs majority baseline {baseline:.3}\n{out}");
    for f in ["checkpoints/last.json", "checkpoints/best.safetensors", "training_curve.png"] {
        assert!(job_dir.join(f).exists(), "{f} missing\n{out}");
    }
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
fn workers_taking_turns_on_one_core_push_before_the_next_one_pulls() {
    // Four workers, one thread: one turn, so each step runs alone. A worker
    // gives its turn back only after its push, so the next pulls weights
    // with it in: no push is stale, and none is dropped at `max_staleness: 0`.
    // (Given back before the push, 17 of 44 pushes were dropped.)
    let data = &prepared_set(300);
    let dir = temp_dir("async-turns");
    let job = small_job(&dir, data, 4, "  epochs: 4");
    make_async(&job, "  workers: 4\n  mode: async\n  parameter_servers: 2\n  shards: 4\n  max_staleness: 0\n");
    let out = ok(kallista_env(&["train", job.to_str().unwrap()], &[("RAYON_NUM_THREADS".into(), "1".into())]));
    let lines = train_lines(&dir.join("job").display().to_string());
    let workers: Vec<&serde_json::Value> = lines.iter().flat_map(|l| l["workers"].as_array().unwrap()).collect();
    let pushes: u64 = workers.iter().map(|w| w["pushes"].as_u64().unwrap()).sum();
    assert!(pushes >= 16, "{pushes} pushes\n{out}");
    for w in workers {
        assert_eq!((w["dropped"].as_u64(), w["max_staleness"].as_u64()), (Some(0), Some(0)), "{w}\n{out}");
    }
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
    // Through connections: on the embedded cluster a worker would call its shard directly.
    let out = kallista_env(&["train", job.to_str().unwrap()], &[("KALLISTA_PS_DIRECT".into(), "0".into())]);
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

#[test]
fn one_async_worker_takes_the_steps_that_sync_takes() {
    // One worker's pushes are never stale, so its run must be `sync`'s but for
    // the sum's rounding (f32 here, exact fixed point there): a wrong divisor,
    // a lost micro-batch or shard-side Adam state apart from `sync`'s would
    // move the weights or the slots far past that. 8 steps cross an epoch
    // boundary (6 steps an epoch here).
    let data = &prepared_set(300);
    let dir = temp_dir("async-as-sync");
    let job = small_job(&dir, data, 1, "  max_steps: 8");
    let sync = dir.join("sync");
    ok(kallista(&["train", job.to_str().unwrap(), "--job-dir", sync.to_str().unwrap()]));
    make_async(&job, "  workers: 1\n  mode: async\n  parameter_servers: 2\n  shards: 4\n  round_timeout_seconds: 30\n");
    let a = weights(&final_weights(&sync));
    assert!(a.keys().any(|k| k.ends_with("/m")) && a.keys().any(|k| k.ends_with("/v")), "{:?}", a.keys());
    // Its blocks in parallel, then summed; and, with one thread (as many
    // workers on the host as threads), as one batch summed in place into
    // buffers reused from push to push, in turns on the cores.
    let mut runs = vec![];
    // The in-place arm sums its step in another order, so it gets a looser bound.
    for (name, threads, bound) in [("async", "2", 1e-4f32), ("async-in-place", "1", 1e-3)] {
        let job_dir = dir.join(name);
        let env = [("RAYON_NUM_THREADS".to_string(), threads.to_string())];
        ok(kallista_env(&["train", job.to_str().unwrap(), "--job-dir", job_dir.to_str().unwrap()], &env));
        let b = weights(&final_weights(&job_dir));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (key, x) in &a {
            let y = &b[key];
            let largest = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let apart = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            // Seen, of the tensor's largest value: at most 9.5e-7 (fc1's kernel)
            // and, in place, 1.3e-4 (conv1's bias's `m`: a sum of 32K terms in
            // another order). A divisor off by one: 0.4.
            assert!(apart <= bound * largest, "{name}: '{key}' is {apart} from sync (largest value {largest})");
        }
        runs.push(b);
    }
    // The one thread really took the other path: its sums ran in another order.
    assert!(runs[0] != runs[1], "the in-place run ended with the parallel run's bits");
}

/// A `kallista ps` process on a free port, holding `token`; killed when dropped.
struct PsProcess {
    child: std::process::Child,
    address: String,
    log: std::path::PathBuf,
}

impl Drop for PsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_ps(dir: &std::path::Path, i: usize, token: &std::path::Path) -> PsProcess {
    let port = free_port();
    let log = dir.join(format!("ps{i}.log"));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kallista"))
        .args(["ps", "--port", &port.to_string(), "--token-file", token.to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let address = format!("127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(std::time::Instant::now() < deadline, "kallista ps did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    PsProcess { child, address, log }
}

fn listens(address: &str) -> bool {
    std::net::TcpStream::connect(address).is_ok()
}

/// The shards' addresses of the job running in `job_dir`, once it recorded them (`servers.json`).
fn shards_once_started(job_dir: &std::path::Path) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        assert!(std::time::Instant::now() < deadline, "the job did not start its shards");
        if let Ok(b) = std::fs::read(job_dir.join("servers.json")) {
            let r: serde_json::Value = serde_json::from_slice(&b).unwrap();
            return r["servers"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().into()).collect();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn shards_on_kallista_ps_processes_train_and_close_when_the_driver_ends_however_it_ends() {
    let data = &prepared_set(300);
    let dir = temp_dir("async-ps");
    let token = dir.join("cluster.token");
    std::fs::write(&token, (0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect::<Vec<u8>>()).unwrap();
    let mut hosts = [start_ps(&dir, 0, &token), start_ps(&dir, 1, &token)];
    let addresses: Vec<String> = hosts.iter().map(|h| h.address.clone()).collect();
    let scaling = |steps_job: &str| {
        let job = small_job(&dir, data, 2, steps_job);
        make_async(
            &job,
            &format!(
                "  workers: 2\n  mode: async\n  shards: 4\n  round_timeout_seconds: 30\n  \
                 parameter_server_hosts: [{}, {}]\n  parameter_server_token_file: {}\n",
                addresses[0],
                addresses[1],
                token.display()
            ),
        );
        job
    };
    // A job to its end: its shards were on the two hosts, and are closed now; the hosts serve on.
    let job = scaling("  max_steps: 20\n  checkpoint_every_steps: 10");
    let out = ok(kallista(&["train", job.to_str().unwrap(), "--job-dir", dir.join("done").to_str().unwrap()]));
    assert!(out.contains("trained 20 steps"), "{out}");
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("done/servers.json")).unwrap()).unwrap();
    let shards: Vec<String> =
        record["servers"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().into()).collect();
    assert_eq!(shards.len(), 2);
    for (shard, host) in shards.iter().zip(&hosts) {
        assert!(!listens(shard), "shard {shard} still listens after the job");
        assert!(
            std::fs::read_to_string(&host.log).unwrap().contains(&format!("at {shard}")),
            "{shard} not on its host"
        );
    }
    for host in &mut hosts {
        assert!(host.child.try_wait().unwrap().is_none(), "kallista ps exited with the job");
    }
    // A driver killed mid-job (as by Ctrl-C): its shards, on the hosts, close there.
    let job = scaling("  max_steps: 100000\n  checkpoint_every_steps: 100000");
    let killed = dir.join("killed");
    let mut driver = std::process::Command::new(env!("CARGO_BIN_EXE_kallista"))
        .args(["train", job.to_str().unwrap(), "--job-dir", killed.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let shards = shards_once_started(&killed);
    assert!(shards.iter().all(|s| listens(s)), "the shards of a running job listen: {shards:?}");
    driver.kill().unwrap();
    driver.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while shards.iter().any(|s| listens(s)) {
        assert!(std::time::Instant::now() < deadline, "a shard of the killed driver still listens: {shards:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for (shard, host) in shards.iter().zip(&hosts) {
        let log = std::fs::read_to_string(&host.log).unwrap();
        assert!(log.contains(&format!("at {shard}")), "{shard} not on its host:\n{log}");
        assert!(log.contains(&format!("shard at {shard} closed")), "{shard} not closed by its host:\n{log}");
    }
    // A driver without the cluster's token is refused, and the host says so.
    std::fs::write(&token, [7u8; 32]).unwrap();
    let job = scaling("  max_steps: 2");
    let out = kallista(&["train", job.to_str().unwrap(), "--job-dir", dir.join("forged").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("kallista ps at {}", hosts[0].address)), "{stderr}");
    assert!(std::fs::read_to_string(&hosts[0].log).unwrap().contains("refused a message"), "the host did not log it");
    // Asked to stop, a host says so and exits cleanly.
    let pid = hosts[1].child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = hosts[1].child.wait().unwrap();
    let log = std::fs::read_to_string(&hosts[1].log).unwrap();
    assert!(status.success(), "{status}:\n{log}");
    assert!(
        log.contains(&format!("kallista ps on 127.0.0.1:{}: stopped (SIGTERM)", port_of(&hosts[1].address))),
        "{log}"
    );
}

fn port_of(address: &str) -> &str {
    address.rsplit(':').next().unwrap_or_default()
}

/// `kill -SIGNAL pid`.
fn send_signal(child: &std::process::Child, signal: &str) {
    let sent = std::process::Command::new("kill").args([format!("-{signal}"), child.id().to_string()]).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -{signal} failed");
}

#[test]
fn sigterm_and_ctrl_c_end_a_training_job_at_once_and_close_its_shards() {
    let data = &prepared_set(300);
    let dir = temp_dir("async-interrupted");
    // The embedded cluster's executor catches both signals to drain its
    // tasks: without Kallista's own handling the job trained on.
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let job = small_job(&dir, data, 2, "  max_steps: 100000\n  checkpoint_every_steps: 100000");
        make_async(&job, "  workers: 2\n  mode: async\n  shards: 4\n  round_timeout_seconds: 60\n");
        let (job_dir, log) = (dir.join(signal), dir.join(format!("{signal}.log")));
        let mut driver = std::process::Command::new(env!("CARGO_BIN_EXE_kallista"))
            .args(["train", job.to_str().unwrap(), "--job-dir", job_dir.to_str().unwrap()])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let shards = shards_once_started(&job_dir);
        assert!(shards.iter().all(|s| listens(s)), "the shards of a running job listen: {shards:?}");
        std::thread::sleep(std::time::Duration::from_secs(2)); // its workers are training
        send_signal(&driver, signal);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let status = loop {
            if let Some(status) = driver.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = driver.kill();
                let _ = driver.wait();
                panic!("SIG{signal}: still training 15 s later:\n{}", std::fs::read_to_string(&log).unwrap());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let stderr = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(code), "SIG{signal}:\n{stderr}");
        assert!(stderr.contains("interrupted ("), "SIG{signal}:\n{stderr}");
        assert!(!shards.iter().any(|s| listens(s)), "a shard listens after SIG{signal}: {shards:?}");
    }
}
