//! A real S3-compatible server on loopback for the multi-host tests: the
//! `s3s-fs` server from crates.io (`.ci/run` installs it), storing objects
//! as files under a directory of its own that no Kallista process is given.

use super::{free_port, temp_dir};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bucket the tests use.
pub const BUCKET: &str = "kallista";

/// A running server; killed when dropped.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server binary: `$KALLISTA_S3_SERVER`, or where `scripts/test-setup.sh`
/// installs it (`$KALLISTA_TOOLS`, by default `~/.cache/kallista/tools`).
fn server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("KALLISTA_S3_SERVER") {
        return PathBuf::from(p);
    }
    let tools = std::env::var("KALLISTA_TOOLS")
        .unwrap_or_else(|_| format!("{}/.cache/kallista/tools", std::env::var("HOME").unwrap_or_default()));
    let p = PathBuf::from(tools).join("bin/s3s-fs");
    assert!(p.is_file(), "no S3 server at {}: run scripts/test-setup.sh, or set KALLISTA_S3_SERVER", p.display());
    p
}

impl S3Server {
    /// Starts a server with one empty bucket, [`BUCKET`].
    pub fn start(name: &str) -> S3Server {
        let root = temp_dir(&format!("{name}-s3"));
        std::fs::create_dir_all(root.join(BUCKET)).unwrap();
        let port = free_port();
        let child = Command::new(server_binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "kallista-test", "--secret-key"])
            .arg("kallista-test-secret")
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the S3 server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the S3 server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server { child, endpoint: format!("http://127.0.0.1:{port}") }
    }

    /// The standard AWS variables that point object-store clients at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "kallista-test"),
            ("AWS_SECRET_ACCESS_KEY", "kallista-test-secret"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Sets [`S3Server::env`] in this test process, for its own reads of the bucket.
    pub fn use_in_this_process(&self) {
        for (k, v) in self.env() {
            std::env::set_var(k, v);
        }
    }
}
