//! End to end through the binary: `kallista demo` trains the video-QA model
//! and reports held-out accuracy; bad arguments exit non-zero.

use std::process::Command;

#[test]
fn demo_trains_and_generalises() {
    let out = Command::new(env!("CARGO_BIN_EXE_kallista"))
        .args(["demo", "--samples", "256", "--epochs", "12"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("video_lstm (LSTM)"), "summary printed");
    let acc: f32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("held-out accuracy "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("accuracy line");
    assert!(acc >= 0.9, "held-out accuracy {acc}");
}

#[test]
fn bad_arguments_exit_non_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_kallista")).args(["demo", "--epochs", "many"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--epochs"));
}
