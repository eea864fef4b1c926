//! A statement that never finishes does not hang `kallista sql`: it fails
//! after `--statement-timeout-seconds`, naming the statement. The query used
//! is one Ballista 55 never finishes (a FROM-less SELECT unioned with a table
//! scan; `jobs/video_qa/prepare.sql` avoids it). If Ballista fixes that, this
//! test fails and the workaround can be revisited.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_stuck_statement_times_out_with_its_number() {
    let dir = std::env::temp_dir().join(kallista_engine::cluster::owned_dir_name("kallista-timeout"));
    let _ = std::fs::remove_dir_all(&dir);
    let k = env!("CARGO_BIN_EXE_kallista");
    let made = Command::new(k)
        .args([
            "data",
            "make-video-qa",
            "--out",
            dir.to_str().unwrap(),
            "--videos",
            "4",
            "--frames",
            "1",
            "--size",
            "16",
        ])
        .output()
        .unwrap();
    assert!(made.status.success());
    let script = dir.join("stuck.sql");
    std::fs::write(
        &script,
        format!("CREATE EXTERNAL TABLE clips STORED AS PARQUET LOCATION '{}/clips/';\nSELECT split FROM clips UNION ALL SELECT 'x';", dir.display()),
    )
    .unwrap();
    let start = Instant::now();
    let out = Command::new(k)
        .args(["sql", "-f", script.to_str().unwrap(), "--statement-timeout-seconds", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the stuck statement finished:\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("statement 2") && stderr.contains("did not finish within 2 s"), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(30));
    std::fs::remove_dir_all(&dir).ok();
}
