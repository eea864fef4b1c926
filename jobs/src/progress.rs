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
        Progress::started_at(label, total, Instant::now())
    }

    /// A reporter for work that began at `start`, before its first report:
    /// a bar made on the first result (a training segment's end) would
    /// otherwise divide the whole segment by microseconds.
    pub fn started_at(label: &str, total: usize, start: Instant) -> Self {
        let total = total.max(1);
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64).with_elapsed(start.elapsed());
            let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta}) {msg}")
                .expect("a valid template")
                .progress_chars("#>-");
            bar.set_style(style);
            bar.set_prefix(label.to_string());
            bar
        });
        Progress { label: label.into(), total, bar, logged: Mutex::new(0), start }
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
        let mut logged = self.logged.lock().expect("progress lock");
        if let Some(tenth) = line_due(*logged, done, self.total) {
            *logged = tenth;
            let rate = done as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
            eprintln!("{}: {done}/{} ({}%, {rate:.1}/s) {message}", self.label, self.total, done * 100 / self.total);
        }
    }
}

/// The tenth of the work a plain progress line is due for, given the last
/// tenth logged: one line per tenth passed, and always one at the end.
fn line_due(logged: usize, done: usize, total: usize) -> Option<usize> {
    let tenth = if done >= total { 10 } else { done * 10 / total };
    (tenth > logged).then_some(tenth)
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
    use super::line_due;

    #[test]
    fn plain_lines_come_once_per_tenth_and_once_at_the_end() {
        let mut logged = 0;
        let mut lines = vec![];
        for done in 1..=25 {
            if let Some(t) = line_due(logged, done, 25) {
                logged = t;
                lines.push(done);
            }
        }
        // 25 units: tenths end at 2.5, 5, 7.5, ... units.
        assert_eq!(lines, [3, 5, 8, 10, 13, 15, 18, 20, 23, 25]);
        assert_eq!(line_due(10, 25, 25), None, "nothing after the end line");
        assert_eq!(line_due(0, 7, 7), Some(10), "a short job still logs its end");
    }
}
