//! Shards reached by direct calls from their own process. On the embedded
//! cluster the driver (which hosts the shards) and the executors (which run
//! the workers) are one process; there a push through a loopback socket
//! paid for four copies of the weights through the kernel, four AES-GCM
//! passes and two buffer copies per step, for nothing crossing a boundary;
//! here the shard's optimizer reads the worker's gradient where it lies.
//! A worker finds such a shard by its address, and uses it only if the
//! shard belongs to the worker's job and holds the same secret: what a
//! connection would have proved. The shard's rules, locks and counters are
//! the same as for a connection ([`super::shard`]).

use super::shard::{self, Core};
use super::wire::Push;
use crate::collective::frame::{FrameError, Secret};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex, Weak};

/// The shards of this process, by the address workers are told.
static SHARDS: LazyLock<Mutex<HashMap<String, Weak<Core>>>> = LazyLock::new(Default::default);

fn shards() -> std::sync::MutexGuard<'static, HashMap<String, Weak<Core>>> {
    SHARDS.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn register(address: &str, core: &Arc<Core>) {
    let mut all = shards();
    all.retain(|_, c| c.strong_count() > 0);
    all.insert(address.to_string(), Arc::downgrade(core));
}

pub(super) fn unregister(address: &str) {
    shards().remove(address);
}

/// A shard of this process, as one worker uses it.
pub struct LocalShard {
    core: Arc<Core>,
}

/// The shard at `address` if it runs in this process for `job` with `secret`.
pub fn find(address: &str, job: &str, secret: &Secret) -> Option<LocalShard> {
    let core = shards().get(address)?.upgrade()?;
    (core.job == job && core.secret.same_as(secret) && !core.closed.load(Ordering::SeqCst))
        .then_some(LocalShard { core })
}

impl LocalShard {
    fn open(&self) -> Result<&Core, FrameError> {
        match self.core.closed.load(Ordering::SeqCst) {
            true => Err(FrameError::Io("the shard stopped".into())),
            false => Ok(&self.core),
        }
    }

    /// The shard's values into `parts` (one per slice); its version, the
    /// steps of `segment` that `worker` already pushed, and the run this pull starts.
    pub fn pull(&self, worker: usize, segment: u64, parts: &mut [&mut [f32]]) -> Result<(u64, u64, u64), FrameError> {
        let core = self.open()?;
        let shard::Claim { done_steps, run } = shard::record_pull(core, worker, segment, false);
        Ok((shard::copy_values_into(core, parts)?, done_steps, run))
    }

    /// The shard's values into `parts` if they are newer than `version`
    /// (a pull within `worker`'s run); the version `parts` then hold.
    pub fn pull_again(
        &self,
        worker: usize,
        segment: u64,
        version: u64,
        parts: &mut [&mut [f32]],
    ) -> Result<u64, FrameError> {
        let core = self.open()?;
        if core.version.load(Ordering::SeqCst) == version {
            return Ok(version);
        }
        shard::record_pull(core, worker, segment, true);
        shard::copy_values_into(core, parts)
    }

    /// Applies `grads` (one per slice) as a pushed gradient, then writes
    /// the shard's values into `parts`: whether it was applied, its
    /// staleness, and the version written.
    pub fn push(
        &self,
        push: &Push,
        grads: &[&[f32]],
        parts: &mut [&mut [f32]],
    ) -> Result<(bool, u64, u64), FrameError> {
        let core = self.open()?;
        // Checked before anything is applied, as a connection checks every chunk first.
        let lengths = shard::slice_lengths(core);
        if grads.len() != lengths.len() || grads.iter().zip(&lengths).any(|(g, &n)| g.len() != n) {
            let why = "a gradient whose slices differ from the shard's".to_string();
            shard::refuse(core, "this process", &why);
            return Err(FrameError::Refused(why));
        }
        let (accepted, staleness) =
            shard::apply(core, push, grads).inspect_err(|e| shard::refuse(core, "this process", &e.to_string()))?;
        Ok((accepted, staleness, shard::copy_values_into(core, parts)?))
    }
}
