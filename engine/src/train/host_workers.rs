//! How many workers of a job this host runs now, whichever process runs
//! them: an `async` worker computes each step as one batch on one thread,
//! in the host's turns ([`super::cpu_turns`]), when its job's workers on
//! the host already fill its cores, and its blocks in parallel when they
//! do not. (Only the job's own: a one-worker job then decides the same way
//! whatever else the host runs, so it stays deterministic.) Counting one
//! process's workers misses a host shared by
//! several executor processes (each sees one worker and two cores, and
//! two workers then run four threads on two cores). Each running worker
//! holds a marker file in `/dev/shm` named by its job and process; markers of
//! processes that are gone are removed when counted, and so are the turns
//! ([`super::cpu_turns`]) of jobs none of whose workers runs here any more.
//! Where `/dev/shm` cannot be used, the count is this process's.

use super::cpu_turns::{CpuTurns, TURN_PREFIX};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

const DIR: &str = "/dev/shm";
const PREFIX: &str = "kallista-worker-";

/// Workers of this process, counted while each runs.
static IN_PROCESS: AtomicUsize = AtomicUsize::new(0);
/// Numbers the markers of this process.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// One running worker, counted until dropped.
pub struct HostWorker {
    dir: PathBuf,
    /// The markers' prefix for the worker's job.
    job: String,
    marker: Option<PathBuf>,
}

impl HostWorker {
    /// A worker of job `job`.
    pub fn start(job: &str) -> HostWorker {
        Self::start_in(Path::new(DIR), job)
    }

    /// [`Self::start`], with the markers in `dir`.
    fn start_in(dir: &Path, job: &str) -> HostWorker {
        IN_PROCESS.fetch_add(1, Ordering::SeqCst);
        // A name-safe form of the job's id.
        let digest = ring::digest::digest(&ring::digest::SHA256, job.as_bytes());
        let job: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("{PREFIX}{job}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let path = dir.join(name);
        let marker = std::fs::write(&path, b"").ok().map(|()| path);
        HostWorker { dir: dir.to_path_buf(), job, marker }
    }

    /// The job's workers running on this host now (this one included).
    pub fn count(&self) -> usize {
        match self.marker {
            Some(_) => sweep(&self.dir, &self.job).unwrap_or_else(|| IN_PROCESS.load(Ordering::SeqCst)),
            None => IN_PROCESS.load(Ordering::SeqCst),
        }
    }

    /// The job's turns on this host's cores ([`super::cpu_turns`]), `turns`
    /// of them, for worker `rank`; none where the markers cannot be made.
    pub fn turns(&self, turns: usize, rank: usize) -> Option<CpuTurns> {
        self.marker.as_ref().map(|_| CpuTurns::open_in(&self.dir, &self.job, turns, rank))
    }
}

/// Counts the live workers of `job` in `dir`, removing the markers of
/// ended processes and the turns of jobs without a live worker here;
/// `None` if `dir` cannot be read.
fn sweep(dir: &Path, job: &str) -> Option<usize> {
    let entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    let mut live_jobs = HashSet::new();
    let mut alive = 0;
    for entry in &entries {
        let name = entry.file_name();
        let mut fields = name.to_str().and_then(|n| n.strip_prefix(PREFIX)).into_iter().flat_map(|n| n.split('-'));
        let (marker_job, pid) = (fields.next(), fields.next());
        let (Some(marker_job), Some(pid)) = (marker_job, pid.and_then(|p| p.parse::<u32>().ok())) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            alive += usize::from(marker_job == job);
            live_jobs.insert(marker_job.to_string());
        } else {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for entry in &entries {
        let name = entry.file_name();
        let turn_job = name.to_str().and_then(|n| n.strip_prefix(TURN_PREFIX)).and_then(|n| n.split('-').next());
        if turn_job.is_some_and(|j| !live_jobs.contains(j)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Some(alive)
}

impl Drop for HostWorker {
    fn drop(&mut self) {
        IN_PROCESS.fetch_sub(1, Ordering::SeqCst);
        if let Some(path) = self.marker.take() {
            let _ = std::fs::remove_file(path);
            // The job's turns go with its last worker here.
            sweep(&self.dir, &self.job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jobs_workers_of_other_processes_count_and_those_of_ended_processes_or_other_jobs_do_not() {
        let dir = std::env::temp_dir().join(format!("kallista-host-workers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = HostWorker::start_in(&dir, "job-a");
        assert_eq!(first.count(), 1);
        let turn_files = || {
            let names = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().into_string().unwrap());
            names.filter(|n| n.starts_with(TURN_PREFIX)).count()
        };
        let turns = first.turns(2, 0).expect("markers can be made here");
        assert_eq!(turn_files(), 2);
        let other_job = HostWorker::start_in(&dir, "job-b");
        assert_eq!((first.count(), other_job.count()), (1, 1), "another job's worker counted");
        // A worker of another live process (pid 1 is always there), and one of a process that is gone.
        let gone = dir.join(format!("{PREFIX}{}-{}-0", first.job, u32::MAX - 1));
        std::fs::write(dir.join(format!("{PREFIX}{}-1-0", first.job)), b"").unwrap();
        std::fs::write(&gone, b"").unwrap();
        let second = HostWorker::start_in(&dir, "job-a");
        assert_eq!(second.count(), 3, "two of this process and one of another");
        assert!(!gone.exists(), "the marker of an ended process is removed");
        drop(second);
        assert_eq!(first.count(), 2, "a worker's marker goes with it");
        assert_eq!(turn_files(), 2, "the job's turns stay while one of its workers runs here");
        std::fs::remove_file(dir.join(format!("{PREFIX}{}-1-0", first.job))).unwrap();
        drop((turns, first, other_job));
        assert_eq!(turn_files(), 0, "the job's turns go with its last worker here");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
