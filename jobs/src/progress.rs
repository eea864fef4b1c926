//! Progress for long work: an `indicatif` bar on a terminal, plain log lines
//! (every 10%) otherwise, so that logs of batch runs stay readable.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A progress reporter for `total` units of work.
pub struct Progress {
    label: String,
    total: usize,
    bar: Option<ProgressBar>,
    /// The last tenth logged (plain lines only).
    logged: Mutex<usize>,
    start: Instant,
}

impl Progress {
    pub fn new(label: &str, total: usize) -> Self {
        let total = total.max(1);
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta}) {msg}")
                .expect("a valid template")
                .progress_chars("#>-");
            bar.set_style(style);
            bar.set_prefix(label.to_string());
            bar
        });
        Progress { label: label.into(), total, bar, logged: Mutex::new(0), start: Instant::now() }
    }

    /// Reports that `done` units are finished.
    pub fn update(&self, done: usize) {
        self.update_with(done, "");
    }

    /// Reports progress with a status message (step, loss, speed).
    pub fn update_with(&self, done: usize, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_position(done as u64);
            bar.set_message(message.to_string());
            if done >= self.total {
                bar.finish();
            }
            return;
        }
        let tenth = done * 10 / self.total;
        let mut logged = self.logged.lock().expect("progress lock");
        if tenth > *logged || (done >= self.total && *logged < 10) {
            *logged = tenth.max(if done >= self.total { 10 } else { 0 });
            let rate = done as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
            eprintln!("{}: {done}/{} ({}%, {rate:.1}/s) {message}", self.label, self.total, done * 100 / self.total);
        }
    }
}

/// A phase of unknown length (one distributed query): a spinner with the
/// elapsed time on a terminal, a start line otherwise.
pub struct Phase {
    spinner: Option<ProgressBar>,
}

impl Phase {
    pub fn start(message: &str) -> Phase {
        let spinner = std::io::stderr().is_terminal().then(|| {
            let s = ProgressBar::new_spinner();
            s.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"));
            s.set_message(message.to_string());
            s.enable_steady_tick(Duration::from_millis(120));
            s
        });
        if spinner.is_none() {
            eprintln!("{message}");
        }
        Phase { spinner }
    }

    /// Ends the phase, leaving `message` as its line on a terminal.
    pub fn finish(self, message: &str) {
        match self.spinner {
            Some(s) => s.finish_with_message(message.to_string()),
            None => eprintln!("{message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn plain_lines_come_every_tenth_and_once_at_the_end() {
        // Tests run without a terminal on stderr: the plain-line path.
        let p = Progress::new("work", 20);
        assert!(p.bar.is_none());
        for done in 1..=20 {
            p.update(done);
        }
        assert_eq!(*p.logged.lock().unwrap(), 10);
    }
}
