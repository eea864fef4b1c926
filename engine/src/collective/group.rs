//! The ranks of one generation that run in one process: they share one model
//! replica and hand their gradients to the smallest of them (the leader),
//! which sums them all in one pass (each value read once, the sum written
//! once), takes the process's sum around the ring of processes
//! ([`super::ring`]) and applies the optimizer step to the shared replica
//! before any of them goes on. A failing rank fails the whole group at once,
//! so no rank of it waits for a step that will never come.

use crate::error::{EngineError, Result};
use kallista_ops::model::{Model, WeightGrads};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

/// See the module docs.
pub struct LocalGroup {
    /// This process's ranks, ascending; the first is the leader.
    pub ranks: Vec<usize>,
    pub model: RwLock<Model>,
    state: Mutex<StepState>,
    changed: Condvar,
}

#[derive(Default)]
struct StepState {
    /// Steps applied.
    done: u64,
    /// Ranks that handed in their gradients for the step in progress.
    arrived: usize,
    /// The gradients of the step in progress, one per micro-batch.
    pending: Vec<WeightGrads>,
    failed: Option<String>,
}

type Key = (String, u64);

static GROUPS: LazyLock<Mutex<HashMap<Key, Arc<LocalGroup>>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The group of `ranks` of `(job, generation)` in this process, made by the
/// first of them to arrive with the model `model` gives.
pub fn join(
    job: &str,
    generation: u64,
    ranks: Vec<usize>,
    model: impl FnOnce() -> Result<Model>,
) -> Result<Arc<LocalGroup>> {
    let mut groups = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    let key = (job.to_string(), generation);
    if let Some(g) = groups.get(&key) {
        return Ok(g.clone());
    }
    let group = Arc::new(LocalGroup {
        ranks,
        model: RwLock::new(model()?),
        state: Mutex::new(StepState::default()),
        changed: Condvar::new(),
    });
    groups.insert(key, group.clone());
    Ok(group)
}

/// Forgets the group of `(job, generation)` (its ranks keep their handles).
pub fn leave(job: &str, generation: u64) {
    GROUPS.lock().unwrap_or_else(|e| e.into_inner()).remove(&(job.to_string(), generation));
}

impl LocalGroup {
    pub fn leader(&self) -> usize {
        self.ranks[0]
    }

    /// Fails the group: every rank waiting in it returns an error.
    pub fn fail(&self, why: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.failed.is_none() {
            st.failed = Some(why.to_string());
        }
        self.changed.notify_all();
    }

    /// Hands in `rank`'s gradients for step `index` of the segment and
    /// returns once the step is applied. The leader, once every rank of the
    /// group has handed in, runs `finish` on all of them (sum, all-reduce and apply).
    pub fn step(
        &self,
        rank: usize,
        index: u64,
        grads: Vec<WeightGrads>,
        timeout: Duration,
        finish: impl FnOnce(&[WeightGrads]) -> Result<()>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let failed = |why: &str| EngineError::Collective(format!("rank {rank}: a rank of this process failed: {why}"));
        if let Some(why) = &st.failed {
            return Err(failed(why));
        }
        st.pending.extend(grads);
        st.arrived += 1;
        self.changed.notify_all();
        let leader = rank == self.leader();
        loop {
            if let Some(why) = &st.failed {
                return Err(failed(why));
            }
            if (leader && st.arrived == self.ranks.len()) || (!leader && st.done > index) {
                break;
            }
            if Instant::now() > deadline {
                let why = format!("step {index} of the segment did not complete within {}s", timeout.as_secs());
                st.failed = Some(why.clone());
                self.changed.notify_all();
                return Err(EngineError::Collective(why));
            }
            st = self.changed.wait_timeout(st, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
        if !leader {
            return Ok(());
        }
        let pending = std::mem::take(&mut st.pending);
        st.arrived = 0;
        drop(st);
        let result = finish(&pending);
        drop(pending);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &result {
            Ok(()) => st.done += 1,
            Err(e) => st.failed = Some(e.to_string()),
        }
        self.changed.notify_all();
        result
    }
}
