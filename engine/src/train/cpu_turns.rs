//! Turns on a host's cores for a job's `async` workers. With more of a
//! job's workers on a host than its processes have threads (four
//! single-threaded workers on two cores), the kernel time-slices their
//! steps every few milliseconds and each slice starts on caches the others
//! filled. A worker instead takes one of the host's turns (as many as the
//! process has threads) for each step's compute and its push, so the cores
//! run whole steps one after another, and the worker that takes a turn next
//! pulls weights with that push in them (given back before the push, 4
//! workers on 2 cores pushed gradients 1.65 versions old on average, not
//! 0.95). A turn is an exclusive `flock` on a file in `/dev/shm` named by
//! the job: it holds across the host's processes and
//! the kernel frees it when its process dies. Without `/dev/shm` there are
//! no turns and the kernel schedules as before. A worker's thread runs its
//! turn pinned to the turn's core (each turn a core of its own, starting at
//! a core picked by the job's digest; no pinning with more turns than
//! cores): left to itself, the scheduler ran two turns' threads on one core
//! and let the other idle for 50 ms and more at a time (`perf record` of
//! W1's 4 executor processes on a 2-core host: 8.7% idle, 0.7% pinned).
//! The files go with the job's
//! last worker on the host ([`super::host_workers`] sweeps them); one
//! removed while another worker waits on it costs that worker its place,
//! never a result.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

/// The turns' files: the prefix, the job's digest, `-`, the turn's number.
pub(super) const TURN_PREFIX: &str = "kallista-turn-";

/// The turns of one job on this host, as one worker takes them.
pub struct CpuTurns {
    files: Vec<File>,
    /// The cores this thread may run on when it opened the turns: turn `i`
    /// runs on `cores[(i + offset) % len]`, and the thread gets them all
    /// back after. Empty (no pinning) with more turns than cores.
    cores: Vec<usize>,
    /// The job's first core: jobs of fewer turns than the host has cores
    /// start on different ones (by their digest).
    offset: usize,
    /// The turn this worker looks at first and waits for (spreads the
    /// waiters by rank: on one host, ranks `0..turns` wait on distinct turns).
    first: usize,
}

/// One turn, held until dropped.
pub struct Turn<'a> {
    file: Option<&'a File>,
    /// The cores to give the thread back, if it was pinned.
    unpin: Option<&'a [usize]>,
    /// Given back on the thread that took it (affinity is a thread's).
    not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(cores) = self.unpin {
            pin_to(cores);
        }
        if let Some(f) = self.file {
            let _ = f.unlock();
        }
    }
}

/// The cores the calling thread may run on (none if unknown).
fn allowed_cores() -> Vec<usize> {
    crate::cpu_set::allowed_cpus().unwrap_or_default()
}

/// Lets the calling thread run on `cores` only; best effort (a refused
/// call leaves it where it may run).
fn pin_to(cores: &[usize]) {
    let _ = crate::cpu_set::set_affinity(cores);
}

impl CpuTurns {
    /// `turns` turns in `dir` of the job whose markers are named `job` (a
    /// name-safe digest), worker `rank` looking at turn `rank % turns` first.
    pub(super) fn open_in(dir: &Path, job: &str, turns: usize, rank: usize) -> CpuTurns {
        let files: Option<Vec<File>> = (0..turns.max(1))
            .map(|i| {
                let path = dir.join(format!("{TURN_PREFIX}{job}-{i}"));
                OpenOptions::new().create(true).truncate(false).write(true).open(path).ok()
            })
            .collect();
        let files = files.unwrap_or_default();
        let first = rank % files.len().max(1);
        let cores = Some(allowed_cores()).filter(|c| c.len() > 1 && c.len() >= files.len()).unwrap_or_default();
        let offset = job.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)) % cores.len().max(1);
        CpuTurns { files, cores, offset, first }
    }

    /// A free turn, or, when all are taken, the first one this worker looks
    /// at once it is given back (a blocked `flock` wakes at once; polling
    /// every turn lets a worker back from its push take a turn before the
    /// one waiting, and uneven workers end a segment on one core). No turn
    /// where locks fail (the kernel then schedules).
    pub fn take(&self) -> Turn<'_> {
        let n = self.files.len();
        let no_turn = Turn { file: None, unpin: None, not_send: std::marker::PhantomData };
        for k in 0..n {
            let index = (self.first + k) % n;
            match self.files[index].try_lock() {
                Ok(()) => return self.held(index),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(_)) => return no_turn,
            }
        }
        match self.files.get(self.first) {
            Some(file) if file.lock().is_ok() => self.held(self.first),
            _ => no_turn,
        }
    }

    /// Turn `index`, locked: the thread moves to its core.
    fn held(&self, index: usize) -> Turn<'_> {
        let unpin = (!self.cores.is_empty()).then(|| {
            pin_to(&[self.cores[(index + self.offset) % self.cores.len()]]);
            &self.cores[..]
        });
        Turn { file: Some(&self.files[index]), unpin, not_send: std::marker::PhantomData }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_turns_thread_runs_on_one_core_and_gets_them_all_back_after() {
        let all = allowed_cores();
        if all.len() < 2 {
            return; // one core: nothing to pin
        }
        let dir = std::env::temp_dir().join(format!("kallista-turn-pins-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let turns = CpuTurns::open_in(&dir, "job", all.len(), 0);
        let turn = turns.take();
        let on = allowed_cores();
        assert_eq!(on.len(), 1, "pinned to one core: {on:?}");
        drop(turn);
        assert_eq!(allowed_cores(), all);
        // More turns than cores: not pinned.
        let many = CpuTurns::open_in(&dir, "other", all.len() + 1, 0);
        let turn = many.take();
        assert_eq!(allowed_cores(), all);
        drop(turn);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_more_workers_compute_at_once_than_there_are_turns() {
        let dir = std::env::temp_dir().join(format!("kallista-turns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let workers: Vec<_> = (0..5)
            .map(|rank| {
                let (dir, running, most) = (dir.clone(), running.clone(), most.clone());
                std::thread::spawn(move || {
                    let turns = CpuTurns::open_in(&dir, "job", 2, rank);
                    for _ in 0..10 {
                        let _turn = turns.take();
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(2));
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        workers.into_iter().for_each(|w| w.join().unwrap());
        assert_eq!(most.load(Ordering::SeqCst), 2, "at most (and, with 5 workers, at some time) 2 at once");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
