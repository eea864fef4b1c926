//! How many workers of a job this host runs now, whichever process runs
//! them: an `async` worker computes its micro-batches one after another
//! when its job's workers on the host already fill its cores, and in
//! parallel when they do not. (Only the job's own: a one-worker job then
//! decides the same way whatever else the host runs, so it stays
//! deterministic.) Counting one process's workers misses a host shared by
//! several executor processes (each sees one worker and two cores, and
//! two workers then run four threads on two cores). Each running worker
//! holds a marker file in `/dev/shm` named by its job and process; markers of
//! processes that are gone are removed when counted. Where `/dev/shm`
//! cannot be used, the count is this process's.

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
        let in_process = IN_PROCESS.load(Ordering::SeqCst);
        if self.marker.is_none() {
            return in_process;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return in_process };
        let mut alive = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let mut fields = name.to_str().and_then(|n| n.strip_prefix(PREFIX)).into_iter().flat_map(|n| n.split('-'));
            let (job, pid) = (fields.next(), fields.next());
            let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else { continue };
            if Path::new(&format!("/proc/{pid}")).exists() {
                alive += usize::from(job == Some(self.job.as_str()));
            } else {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        alive
    }
}

impl Drop for HostWorker {
    fn drop(&mut self) {
        IN_PROCESS.fetch_sub(1, Ordering::SeqCst);
        if let Some(path) = self.marker.take() {
            let _ = std::fs::remove_file(path);
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
        drop((first, other_job));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
