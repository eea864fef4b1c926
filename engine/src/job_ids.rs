//! Ballista job ids without a clock thread.
//!
//! Ballista's default job id generator keeps a thread that wakes every
//! millisecond for the scheduler's whole life (a snowflake clock). On a
//! 2-core host that thread preempted a training rank about 900 times a
//! second (`perf sched`) for ids a scheduler asks for once per query. These
//! ids are the scheduler's start time (ms) and a counter: unique within a
//! scheduler and ordered; a restarted scheduler's differ as long as it
//! started later than the first one's start plus one millisecond per 2^20
//! jobs that one ran (Ballista's snowflake ids had a like limit).

use ballista_scheduler::scheduler_server::JobIdGenerator;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Counter bits of an id: a scheduler that ran more jobs wraps into the
/// next millisecond of its start, still distinct from its earlier ids.
const COUNTER_BITS: u32 = 20;

/// See the module docs.
pub struct CountingJobIds {
    next: AtomicU64,
}

impl CountingJobIds {
    pub fn new() -> CountingJobIds {
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        CountingJobIds { next: AtomicU64::new(started << COUNTER_BITS) }
    }

    /// The next id: 13 base-32 digits (as Ballista's own ids), lowercase.
    pub fn take(&self) -> String {
        let mut n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut digits = [b'0'; 13];
        for d in digits.iter_mut().rev() {
            *d = b"0123456789abcdefghjkmnpqrstvwxyz"[(n & 31) as usize];
            n >>= 5;
        }
        String::from_utf8_lossy(&digits).into_owned()
    }
}

impl Default for CountingJobIds {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl JobIdGenerator for CountingJobIds {
    async fn next_id(&self) -> String {
        self.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_ordered_and_of_thirteen_digits() {
        let ids = CountingJobIds::new();
        let taken: Vec<String> = (0..1000).map(|_| ids.take()).collect();
        assert!(taken.iter().all(|id| id.len() == 13 && id.bytes().all(|b| b.is_ascii_alphanumeric())));
        assert!(taken.windows(2).all(|w| w[0] < w[1]), "ids are ordered: {:?}", &taken[..3]);
        // A scheduler started later gives other ids.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = CountingJobIds::new().take();
        assert!(!taken.contains(&later) && later > taken[999]);
    }
}
