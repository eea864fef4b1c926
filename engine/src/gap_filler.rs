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
//!
//! Any thread may lower itself to idle priority, but raising it back takes
//! `CAP_SYS_NICE` or a `RLIMIT_NICE` of 20: where the process cannot, a
//! filler never lowers itself (it would crawl while its owner waits).

use std::sync::{Mutex, OnceLock};

/// Where a filler stands; every change of its policy happens under the lock,
/// so the owner never sets the policy of a thread that has ended.
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    NotEntered,
    /// Lowered, on this thread id.
    Idle(i32),
    Raised,
    Done,
}

/// See the module docs. The owner keeps it and lends it to the filler's
/// (scoped) thread.
pub struct GapFiller {
    state: Mutex<State>,
}

impl Default for GapFiller {
    fn default() -> Self {
        GapFiller { state: Mutex::new(State::NotEntered) }
    }
}

/// Held by the filler's thread while it fills: dropped, the thread is back
/// at normal priority and the owner no longer touches it.
pub struct Filling<'f> {
    filler: &'f GapFiller,
}

impl GapFiller {
    pub fn new() -> GapFiller {
        GapFiller::default()
    }

    /// Called on the filler's own thread first: it yields its core to any
    /// other runnable thread until the owner raises it or the returned guard
    /// drops. Nothing changes where the owner raised it already or where
    /// this process could not raise it back.
    pub fn enter(&self) -> Filling<'_> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *state == State::NotEntered && can_raise() {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            if set_policy(0, libc::SCHED_IDLE) {
                *state = State::Idle(tid);
            }
        }
        Filling { filler: self }
    }

    /// Called by the owner when it is about to wait for the filler: the
    /// filler runs at normal priority again (or never leaves it, if it has
    /// not entered yet), so the wait is not stretched by other threads.
    pub fn raise(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let State::Idle(tid) = *state {
            if !set_policy(tid, libc::SCHED_OTHER) {
                log::warn!("could not raise thread {tid} back to normal priority");
            }
        }
        if *state != State::Done {
            *state = State::Raised;
        }
    }
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        let mut state = self.filler.state.lock().unwrap_or_else(|e| e.into_inner());
        if let State::Idle(_) = *state {
            set_policy(0, libc::SCHED_OTHER);
        }
        *state = State::Done;
    }
}

/// Whether a thread of this process can go to idle priority and back
/// (checked once, on a thread of its own).
fn can_raise() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        std::thread::spawn(|| set_policy(0, libc::SCHED_IDLE) && set_policy(0, libc::SCHED_OTHER))
            .join()
            .unwrap_or(false)
    })
}

/// Sets the scheduling policy of thread `tid` (0: the calling one),
/// priority 0; whether it was set.
fn set_policy(tid: libc::pid_t, policy: libc::c_int) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` lives across the call; the thread `tid` is alive (see `State`).
    let set = unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0;
    if !set {
        log::debug!("scheduling policy {policy} of thread {tid}: {}", std::io::Error::last_os_error());
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of(tid: libc::pid_t) -> libc::c_int {
        // SAFETY: no preconditions.
        unsafe { libc::sched_getscheduler(tid) }
    }

    /// A filler runs at idle priority once it entered (where the process
    /// may raise it back) and at normal priority once raised or done; its
    /// owner's priority is never touched; raised before it entered, it
    /// never idles.
    #[test]
    fn a_filler_idles_until_raised() {
        let filler = GapFiller::new();
        let (entered, raised) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        let (idle, after, done) = std::thread::scope(|s| {
            let worker = s.spawn(|| {
                let filling = filler.enter();
                let idle = policy_of(0);
                entered.wait();
                raised.wait();
                let after = policy_of(0);
                drop(filling);
                (idle, after, policy_of(0))
            });
            entered.wait();
            filler.raise();
            raised.wait();
            worker.join().unwrap()
        });
        let lowered = if can_raise() { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
        assert_eq!((idle, after, done), (lowered, libc::SCHED_OTHER, libc::SCHED_OTHER));
        assert_eq!(policy_of(0), libc::SCHED_OTHER, "the owner's policy is unchanged");
        let early = GapFiller::new();
        early.raise();
        let policy = std::thread::scope(|s| {
            s.spawn(|| {
                let _filling = early.enter();
                policy_of(0)
            })
            .join()
            .unwrap()
        });
        assert_eq!(policy, libc::SCHED_OTHER);
    }

    /// A filler that finished before its owner raised it is not touched again.
    #[test]
    fn a_finished_filler_is_left_alone() {
        let filler = GapFiller::new();
        std::thread::scope(|s| {
            s.spawn(|| drop(filler.enter())).join().unwrap();
        });
        filler.raise();
        assert_eq!(*filler.state.lock().unwrap(), State::Done);
    }
}
