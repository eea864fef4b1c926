//! Progress for long work: a bar redrawn in place on a terminal, plain log
//! lines (every 10%) otherwise.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Instant;

/// A progress reporter for `total` units of work.
pub struct Progress {
    label: String,
    total: usize,
    tty: bool,
    state: Mutex<(usize, Instant)>,
    start: Instant,
}

impl Progress {
    pub fn new(label: &str, total: usize) -> Self {
        let now = Instant::now();
        Progress {
            label: label.into(),
            total: total.max(1),
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new((0, now)),
            start: now,
        }
    }

    /// Reports that `done` units are finished.
    pub fn update(&self, done: usize) {
        self.update_with(done, "");
    }

    /// Reports progress with a status message (step, loss, speed).
    pub fn update_with(&self, done: usize, message: &str) {
        let mut st = self.state.lock().expect("progress lock");
        let pct = done * 100 / self.total;
        let rate = done as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        if self.tty {
            let filled = pct * 30 / 100;
            eprint!(
                "\r{} [{}{}] {done}/{} ({rate:.1}/s) {message}\x1b[K",
                self.label,
                "#".repeat(filled),
                " ".repeat(30 - filled),
                self.total
            );
            if done >= self.total {
                eprintln!();
            }
            let _ = std::io::stderr().flush();
        } else if pct / 10 > st.0 * 100 / self.total / 10 || done >= self.total {
            eprintln!("{}: {done}/{} ({pct}%, {rate:.1}/s) {message}", self.label, self.total);
        }
        *st = (done, Instant::now());
    }
}
