//! A thread that runs only in its core's gaps until it is waited for.
//!
//! During a `sync` step between processes a leader's ring thread sleeps
//! while chunks travel, and the update of the weights that go by rows runs
//! beside it to fill those sleeps. On an executor of one core the two took
//! turns by the scheduler's time slices: a chunk that arrived waited for
//! the update's slice to end, and so did the neighbour waiting on that
//! chunk. A gap filler runs at Linux's idle priority (`SCHED_IDLE`), so a
//! waking ring thread takes the core at once; once the ring is done the
//! owner raises the filler back to normal priority and joins it.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// The thread id of a gap filler, for raising its priority from outside.
#[derive(Clone, Default)]
pub struct GapFiller {
    tid: Arc<AtomicI32>,
}

impl GapFiller {
    pub fn new() -> GapFiller {
        GapFiller::default()
    }

    /// Called on the filler's own thread first: it yields its core to any
    /// other runnable thread from now on, unless the owner raised it already
    /// (nothing happens where the priority cannot be set: the thread then
    /// runs as before).
    pub fn enter(&self) {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            set_policy(0, libc::SCHED_IDLE);
            // Published after the policy is set: a raise from now on undoes it.
            if self.tid.compare_exchange(0, tid, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                set_policy(0, libc::SCHED_OTHER);
            }
        }
    }

    /// Called by the owner when it is about to wait for the filler: the
    /// filler runs at normal priority again (or never leaves it, if it has
    /// not entered yet), so the wait is not stretched by other threads.
    pub fn raise(&self) {
        #[cfg(target_os = "linux")]
        {
            let tid = self.tid.swap(RAISED, Ordering::SeqCst);
            if tid > 0 {
                set_policy(tid, libc::SCHED_OTHER);
            }
        }
    }
}

/// The thread id's value once the owner raised the filler.
const RAISED: i32 = -1;

/// Sets the scheduling policy of thread `tid` (0: the calling one), priority 0.
#[cfg(target_os = "linux")]
fn set_policy(tid: libc::pid_t, policy: libc::c_int) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` lives across the call; a thread that has ended makes it fail, which is harmless.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } != 0 {
        log::debug!("scheduling policy {policy} of thread {tid}: {}", std::io::Error::last_os_error());
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn policy_of(tid: libc::pid_t) -> libc::c_int {
        // SAFETY: no preconditions.
        unsafe { libc::sched_getscheduler(tid) }
    }

    /// A filler runs at idle priority once it entered and at normal priority
    /// once raised; its owner's priority is never touched.
    #[test]
    fn a_filler_idles_until_raised() {
        let filler = GapFiller::new();
        let (entered, raised) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                filler.enter();
                let idle = policy_of(0);
                entered.wait();
                raised.wait();
                (idle, policy_of(0))
            });
            entered.wait();
            filler.raise();
            raised.wait();
            let (idle, after) = worker.join().unwrap();
            assert_eq!(idle, libc::SCHED_IDLE);
            assert_eq!(after, libc::SCHED_OTHER);
        });
        assert_eq!(policy_of(0), libc::SCHED_OTHER, "the owner's policy is unchanged");
        // Raised before it entered: it never idles.
        let early = GapFiller::new();
        early.raise();
        let policy = std::thread::scope(|s| {
            s.spawn(|| {
                early.enter();
                policy_of(0)
            })
            .join()
            .unwrap()
        });
        assert_eq!(policy, libc::SCHED_OTHER);
    }
}
