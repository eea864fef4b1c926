//! One parameter-server shard: it owns its slices of the weights
//! ([`super::slices`]) and their optimizer state, and serves pulls and
//! pushes over authenticated connections ([`super::wire`]), the values
//! through shared memory where the worker's process can share a region.
//!
//! Downpour (the default): a push is applied as one optimizer step under
//! the shard's lock, so every pull sees one version. `hogwild`: pushes are
//! applied without that lock, slice by slice (each slice under its own
//! lock only), so concurrent pushes interleave and a pull may see parts of
//! several versions. A gradient computed on a version more than
//! `max_staleness` versions old is dropped (not applied, counted); one
//! `τ > 1` versions old is applied with the learning rate divided by `τ`
//! when `divide_lr_by_staleness` (staleness-aware ASGD, Zhang et al. 2016;
//! off by default: lowering Adam's `beta_1` for the staleness of the
//! pushes applied, [`super::momentum`], learns about three times faster).
//! Every connection is authenticated with the job's secret; a refused
//! message (unsigned, tampered, replayed, another job's) is logged and
//! counted, closes its connection, and changes nothing: a push is applied
//! only after all its values passed their checks. Workers in the shard's
//! own process call it directly instead ([`super::local`]).

use super::momentum::{self, MomentumCompensation, RunningStaleness};
use super::slices::Slice;
use super::wire::{self, Push, Reply, Request, ShardStats, REPLY, REQUEST};
use crate::collective::frame::{FrameError, Framed, Secret};
use crate::collective::shm::Region;
use crate::error::{EngineError, Result};
use kallista_ops::optim::{BorrowedUpdate, Optimizer, OptimizerConfig};
use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How a shard applies pushes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardRules {
    /// The job's optimizer, clipping removed (workers clip whole gradients).
    pub optimizer: OptimizerConfig,
    pub hogwild: bool,
    pub max_staleness: Option<u64>,
    /// A gradient `τ > 1` versions old is applied with `learning_rate / τ`.
    #[serde(default = "yes")]
    pub divide_lr_by_staleness: bool,
    /// Adam's `beta_1` lowered for the pushes' staleness; none: the job's.
    #[serde(default)]
    pub momentum: Option<MomentumCompensation>,
}

fn yes() -> bool {
    true
}

impl ShardRules {
    /// The learning rate's factor for a gradient `staleness` versions old.
    pub fn lr_scale(&self, staleness: u64) -> f32 {
        if self.divide_lr_by_staleness && staleness > 1 {
            1.0 / staleness as f32
        } else {
            1.0
        }
    }
}

/// A slice's values and optimizer state.
pub struct SliceState {
    pub slice: Slice,
    pub values: Vec<f32>,
    pub optimizer: Optimizer,
}

#[derive(Default)]
struct Book {
    stats: ShardStats,
    /// The last step each worker pushed, per segment, and the run that pushed it.
    last_step: BTreeMap<(u64, usize), u64>,
    last_run: BTreeMap<(u64, usize), u64>,
    /// Steps of a segment each worker pushed.
    done_steps: BTreeMap<(u64, usize), u64>,
    /// Each worker's current run in a segment: one per task (a pull `again` keeps it).
    runs: BTreeMap<(u64, usize), u64>,
    /// Refusals, as logged (the newest 100).
    refusals: Vec<String>,
    /// The mean staleness of the pushes applied ([`momentum`]).
    staleness: Option<RunningStaleness>,
}

pub(super) struct Core {
    pub(super) job: String,
    pub(super) index: usize,
    pub(super) secret: Secret,
    rules: ShardRules,
    /// Held for a whole push or pull in Downpour mode.
    step_lock: Mutex<()>,
    slices: Vec<Mutex<SliceState>>,
    pub(super) version: AtomicU64,
    book: Mutex<Book>,
    pub(super) closed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running shard (see the module docs). Stops listening when dropped.
pub struct Shard {
    address: String,
    core: Arc<Core>,
}

impl Shard {
    /// Serves `slices` of job `job` on `bind_host` (a free port), reached by workers at `advertised_host`.
    pub fn start(
        bind_host: &str,
        advertised_host: &str,
        index: usize,
        job: String,
        secret: Secret,
        rules: ShardRules,
        slices: Vec<SliceState>,
    ) -> Result<Shard> {
        let failed = |e: std::io::Error| {
            EngineError::Invalid(format!("parameter server shard {index}: cannot listen on {bind_host}: {e}"))
        };
        let listener = TcpListener::bind((bind_host, 0)).map_err(failed)?;
        let port = listener.local_addr().map_err(failed)?.port();
        listener.set_nonblocking(true).map_err(failed)?;
        let core = Arc::new(Core {
            job,
            index,
            secret,
            rules,
            step_lock: Mutex::new(()),
            slices: slices.into_iter().map(Mutex::new).collect(),
            version: AtomicU64::new(0),
            book: Mutex::new(Book::default()),
            closed: AtomicBool::new(false),
        });
        let accepting = core.clone();
        std::thread::Builder::new()
            .name(format!("kallista-ps-{index}"))
            .spawn(move || accept_loop(listener, accepting))
            .map_err(|e| EngineError::Invalid(format!("parameter server thread: {e}")))?;
        let address = format!("{advertised_host}:{port}");
        super::local::register(&address, &core);
        Ok(Shard { address, core })
    }

    /// `host:port`, as workers reach it.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn stats(&self) -> ShardStats {
        let mut stats = lock(&self.core.book).stats.clone();
        stats.version = self.core.version.load(Ordering::SeqCst);
        stats
    }

    /// What was refused, as logged.
    pub fn refusals(&self) -> Vec<String> {
        lock(&self.core.book).refusals.clone()
    }

    /// Calls `f` with every slice's state, consistently (no push in between,
    /// hogwild pushes included: the caller runs between segments).
    pub fn with_slices<T>(&self, f: impl FnOnce(&[&SliceState]) -> T) -> T {
        let _step = lock(&self.core.step_lock);
        let guards: Vec<MutexGuard<'_, SliceState>> = self.core.slices.iter().map(lock).collect();
        let refs: Vec<&SliceState> = guards.iter().map(|g| &**g).collect();
        f(&refs)
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        self.core.closed.store(true, Ordering::SeqCst);
        super::local::unregister(&self.address);
    }
}

fn accept_loop(listener: TcpListener, core: Arc<Core>) {
    while !core.closed.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let core = core.clone();
                let _ = std::thread::Builder::new()
                    .name(format!("kallista-ps-{}-conn", core.index))
                    .spawn(move || serve(stream, peer.to_string(), &core));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                log::warn!("parameter server shard {}: accept failed: {e}", core.index);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // Dropping the listener frees the port; open connections end at their next read.
}

/// Serves one worker's connection until it closes, the shard stops, or a message is refused.
fn serve(stream: TcpStream, peer: String, core: &Core) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    // Wakes up now and then to notice that the shard stopped.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut framed = Framed::new(stream, core.secret.clone());
    let mut shared = Shared::default();
    while !core.closed.load(Ordering::SeqCst) {
        let mut head = [0u8; 1];
        match framed.stream.peek(&mut head) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
        let _ = framed.stream.set_read_timeout(Some(Duration::from_secs(60)));
        match answer(&mut framed, core, &mut shared) {
            Ok(()) => {}
            Err(FrameError::Refused(why)) => {
                refuse(core, &peer, &why);
                return;
            }
            Err(FrameError::Io(e)) => {
                log::debug!("parameter server shard {}: connection from {peer} ended: {e}", core.index);
                return;
            }
        }
        let _ = framed.stream.set_read_timeout(Some(Duration::from_millis(500)));
    }
}

pub(super) fn refuse(core: &Core, peer: &str, why: &str) {
    let line = format!("parameter server shard {}: refused a message from {peer}: {why}", core.index);
    log::warn!("{line}");
    let mut book = lock(&core.book);
    book.stats.refused += 1;
    if book.refusals.len() < 100 {
        book.refusals.push(line);
    }
}

/// A connection's region of shared memory, once the worker offered one
/// the shard could open, and the buffer a piece of a pushed gradient is read into.
#[derive(Default)]
struct Shared {
    region: Option<Region>,
    piece: Vec<f32>,
}

/// Values per piece of a push through shared memory: the piece's values,
/// gradient and optimizer slots stay in a core's cache between reading the
/// gradient, the update and writing the new values. (A few in tests, whose
/// models are small, so that their slices span several pieces.)
const PIECE: usize = if cfg!(test) { 5 } else { 1 << 14 };

fn answer(framed: &mut Framed<TcpStream>, core: &Core, shared: &mut Shared) -> std::result::Result<(), FrameError> {
    let request: Request = wire::receive_json(framed, REQUEST)?;
    if request.job() != core.job {
        return Err(FrameError::Refused("a message for another job".into()));
    }
    match request {
        Request::Stats { .. } => {
            let mut stats = lock(&core.book).stats.clone();
            stats.version = core.version.load(Ordering::SeqCst);
            wire::send_json(framed, REPLY, &Reply::Stats(stats))
        }
        Request::Share { offer, .. } => {
            let bytes = slice_lengths(core).iter().sum::<usize>() * std::mem::size_of::<f32>();
            shared.region = Region::open(&offer, bytes)
                .map_err(|e| log::info!("parameter server shard {}: values go by TCP ({e})", core.index))
                .ok();
            wire::send_json(framed, REPLY, &Reply::Shared(shared.region.is_some()))
        }
        Request::Pull { again: true, have: Some(have), .. }
        | Request::PullShared { again: true, have: Some(have), .. }
            if core.version.load(Ordering::SeqCst) == have =>
        {
            // Not counted as a pull, as a direct call's is not.
            wire::send_json(framed, REPLY, &Reply::Unchanged { version: have })
        }
        Request::Pull { worker, segment, again, .. } => {
            let Claim { done_steps, run } = record_pull(core, worker, segment, again);
            let (version, values) = copy_values(core)?;
            wire::send_json(framed, REPLY, &Reply::Weights { version, done_steps, run })?;
            send_copies(framed, &values)
        }
        Request::PullShared { worker, segment, again, .. } => {
            let region = shared.region.as_mut().ok_or_else(no_region)?;
            let Claim { done_steps, run } = record_pull(core, worker, segment, again);
            let version = write_values_shared(core, region)?;
            wire::send_json(framed, REPLY, &Reply::Weights { version, done_steps, run })
        }
        Request::Push(push) => {
            // The whole gradient first: nothing is applied unless every chunk passed its check.
            let mut grads: Vec<Vec<f32>> = slice_lengths(core).into_iter().map(|n| vec![0f32; n]).collect();
            let mut parts: Vec<&mut [f32]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();
            wire::receive_values(framed, &mut parts)?;
            apply_push(framed, core, &push, grads)
        }
        Request::PushShared(push) | Request::PushSharedRows(push) => {
            let Shared { region, piece } = shared;
            let region = region.as_mut().ok_or_else(no_region)?;
            let (accepted, staleness, version) =
                apply_shared(core, &push, region, piece).map_err(|e| told(framed, e))?;
            wire::send_json(framed, REPLY, &Reply::Pushed { accepted, staleness, version })
        }
    }
}

/// `e`, first told to the worker if it refuses the worker's (authenticated)
/// push: a run that was replaced learns why its push failed.
fn told(framed: &mut Framed<TcpStream>, e: FrameError) -> FrameError {
    if let FrameError::Refused(why) = &e {
        let _ = wire::send_json(framed, REPLY, &Reply::Refused(why.clone()));
    }
    e
}

fn no_region() -> FrameError {
    FrameError::Refused("values in shared memory, but no region was shared".into())
}

/// Writes the shard's values into `region`, one slice after another; the shard's version.
fn write_values_shared(core: &Core, region: &mut Region) -> std::result::Result<u64, FrameError> {
    let mut at = 0;
    read_values(core, |s| {
        if !region.write(at, bytemuck::cast_slice(&s.values)) {
            return Err(FrameError::Refused(format!("'{}' does not fit the shared region", s.slice.key)));
        }
        at += std::mem::size_of_val(s.values.as_slice());
        Ok(())
    })
}

/// The length of each of the shard's slices, in order.
pub(super) fn slice_lengths(core: &Core) -> Vec<usize> {
    core.slices.iter().map(|s| lock(s).values.len()).collect()
}

/// What a pull tells a worker about its place in a segment.
pub(super) struct Claim {
    /// Steps of the segment the worker already pushed.
    pub done_steps: u64,
    /// The run this pull starts.
    pub run: u64,
}

/// Counts a pull of `worker` and, unless it is one `again` within a run,
/// starts the worker's next run in `segment`: a worker starts a run once
/// per task, so a second start means that Ballista (or the driver, past a
/// round's deadline) re-ran it, and the earlier run, which may still be
/// computing, must not push any more.
pub(super) fn record_pull(core: &Core, worker: usize, segment: u64, again: bool) -> Claim {
    let mut book = lock(&core.book);
    book.stats.workers.entry(worker).or_default().pulls += 1;
    let run = book.runs.entry((segment, worker)).or_default();
    *run += u64::from(!again);
    let run = *run;
    Claim { done_steps: book.done_steps.get(&(segment, worker)).copied().unwrap_or(0), run }
}

/// The shard's version, its values written into `parts` (one per slice, of
/// the slice's length), read as [`copy_values`] reads them.
pub(super) fn copy_values_into(core: &Core, parts: &mut [&mut [f32]]) -> std::result::Result<u64, FrameError> {
    if parts.len() != core.slices.len() {
        return Err(FrameError::Refused(format!("{} parts for {} slices", parts.len(), core.slices.len())));
    }
    let mut parts = parts.iter_mut();
    read_values(core, |s| {
        let part = parts.next().expect("one part per slice, checked above");
        if part.len() != s.values.len() {
            return Err(FrameError::Refused(format!(
                "'{}': {} values for {}",
                s.slice.key,
                part.len(),
                s.values.len()
            )));
        }
        part.copy_from_slice(&s.values);
        Ok(())
    })
}

/// The shard's version and values, copied so that they are sent while pushes go on.
fn copy_values(core: &Core) -> std::result::Result<(u64, Vec<Vec<f32>>), FrameError> {
    let mut values = vec![];
    let version = read_values(core, |s| {
        values.push(s.values.clone());
        Ok(())
    })?;
    Ok((version, values))
}

/// Calls `read` with each slice in order, under the shard's lock in
/// Downpour mode (one version), slice by slice in hogwild mode; the
/// shard's version.
fn read_values(
    core: &Core,
    mut read: impl FnMut(&SliceState) -> std::result::Result<(), FrameError>,
) -> std::result::Result<u64, FrameError> {
    let _step = (!core.rules.hogwild).then(|| lock(&core.step_lock));
    for slice in &core.slices {
        read(&lock(slice))?;
    }
    Ok(core.version.load(Ordering::SeqCst))
}

fn send_copies(framed: &mut Framed<TcpStream>, values: &[Vec<f32>]) -> std::result::Result<(), FrameError> {
    let parts: Vec<&[f32]> = values.iter().map(Vec::as_slice).collect();
    wire::send_values(framed, &parts)
}

fn apply_push(
    framed: &mut Framed<TcpStream>,
    core: &Core,
    push: &Push,
    grads: Vec<Vec<f32>>,
) -> std::result::Result<(), FrameError> {
    let grads: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
    let (accepted, staleness) = apply(core, push, &grads).map_err(|e| told(framed, e))?;
    let (version, values) = copy_values(core)?;
    wire::send_json(framed, REPLY, &Reply::Pushed { accepted, staleness, version })?;
    send_copies(framed, &values)
}

/// Applies `push`'s gradient (one vector per slice, checked sizes), or
/// drops it as too stale, and counts it: whether it was applied, and its
/// staleness.
pub(super) fn apply(core: &Core, push: &Push, grads: &[&[f32]]) -> std::result::Result<(bool, u64), FrameError> {
    let (accepted, staleness, _) = apply_with(core, push, |index, state, lr_scale| {
        let SliceState { slice, values, optimizer } = state;
        let mut update = [BorrowedUpdate { key: &slice.key, value: values, grad: grads[index] }];
        optimizer.apply_borrowed(&mut update, lr_scale).map_err(bug(core))
    })?;
    Ok((accepted, staleness))
}

/// Applies a push whose gradient lies in `region` (the slices one after
/// another, as [`wire::write_shared`] puts them), a piece at a time, each
/// piece's new values written over its gradient at once; the values of a
/// dropped push are written whole. Whether it was applied, its staleness,
/// and the version of the values in the region.
fn apply_shared(
    core: &Core,
    push: &Push,
    region: &mut Region,
    piece: &mut Vec<f32>,
) -> std::result::Result<(bool, u64, u64), FrameError> {
    let lengths = slice_lengths(core);
    let size = std::mem::size_of::<f32>();
    if lengths.iter().sum::<usize>() * size > region.len() {
        return Err(FrameError::Refused(format!("a gradient past the shared region's {} bytes", region.len())));
    }
    let starts: Vec<usize> = lengths.iter().scan(0, |at, n| Some(std::mem::replace(at, *at + n * size))).collect();
    if !push.sparse.is_empty() && push.sparse.len() != lengths.len() {
        return Err(FrameError::Refused(format!(
            "rows for {} slices, the shard has {}",
            push.sparse.len(),
            lengths.len()
        )));
    }
    if push.sparse.iter().flatten().any(|r| r.width == 0) {
        return Err(FrameError::Refused("sparse rows of width 0".into()));
    }
    let (accepted, staleness, version) = apply_with(core, push, |index, state, lr_scale| {
        let SliceState { slice, values, optimizer } = state;
        let no_rule = || bug(core)(format!("'{}': no ranged step (clipping on a shard)", slice.key));
        let rule = optimizer.ranged_step(&[(&slice.key, values.len())]).map_err(bug(core))?.ok_or_else(no_rule)?;
        let rule = rule.lr_scaled(lr_scale);
        let slots = optimizer.slots.get_mut(&slice.key).ok_or_else(|| bug(core)("no slots".to_string()))?;
        // On a device, one call per slice.
        let span = if rule.on_host() { PIECE } else { values.len().max(1) };
        if piece.len() < span.min(values.len()) {
            piece.resize(span.min(values.len()), 0.0);
        }
        // Where the worker wrote only some rows, the rest of the gradient is zero.
        let rows = push.sparse.get(index).cloned().flatten().map(|r| r.sorted().spans(slice.range.start, values.len()));
        let mut next_row = 0;
        for start in (0..values.len()).step_by(span) {
            let end = (start + span).min(values.len());
            let (grad, at) = (&mut piece[..end - start], starts[index] + start * size);
            let mut slot_pieces: Vec<&mut [f32]> =
                slots.iter_mut().map(|s| &mut s.as_mut_slice()[start..end]).collect();
            // Within the region, checked above.
            match &rows {
                None => {
                    region.read(at, bytemuck::cast_slice_mut(grad));
                }
                Some(rows) => {
                    grad.fill(0.0);
                    while let Some(row) = rows.get(next_row).filter(|r| r.start < end) {
                        let (from, to) = (row.start.max(start), row.end.min(end));
                        region.read(
                            starts[index] + from * size,
                            bytemuck::cast_slice_mut(&mut grad[from - start..to - start]),
                        );
                        match row.end <= end {
                            true => next_row += 1,
                            false => break,
                        }
                    }
                }
            }
            rule.apply(&mut values[start..end], grad, &mut slot_pieces).map_err(bug(core))?;
            region.write(at, bytemuck::cast_slice(&values[start..end]));
        }
        Ok(())
    })?;
    match accepted {
        true => Ok((accepted, staleness, version)),
        false => Ok((accepted, staleness, write_values_shared(core, region)?)),
    }
}

/// An update that failed after the sizes were checked: a bug, not bad input.
fn bug<E: std::fmt::Display>(core: &Core) -> impl Fn(E) -> FrameError + '_ {
    move |e| {
        log::error!("parameter server shard {}: {e}", core.index);
        FrameError::Io(e.to_string())
    }
}

/// Applies `push` with `update` (each slice's state, by index, and the
/// learning rate's factor for its staleness), or drops it as too stale,
/// and counts it: whether it was applied, its staleness, and the shard's
/// version after it (read under the shard's lock in Downpour mode).
fn apply_with(
    core: &Core,
    push: &Push,
    mut update: impl FnMut(usize, &mut SliceState, f32) -> std::result::Result<(), FrameError>,
) -> std::result::Result<(bool, u64, u64), FrameError> {
    {
        let mut book = lock(&core.book);
        let key = (push.segment, push.worker);
        let run = book.runs.get(&key).copied().unwrap_or(0);
        if push.run < run {
            return Err(FrameError::Refused(format!(
                "a push of worker {} for step {} from its run {} (run {} replaced it)",
                push.worker, push.step, push.run, run
            )));
        }
        // Steps of a worker only go forward: a replayed push is refused.
        if let Some(&last) = book.last_step.get(&key).filter(|&&last| push.step <= last) {
            if book.last_run.get(&key).is_some_and(|&r| r < push.run) {
                // A re-run's first step that its earlier run pushed here
                // after the re-run's pull read the count (of shard 0): in the
                // weights already, applied once; not applied again, and
                // answered as a dropped push is (with the values whole).
                drop(book);
                return Ok((false, 0, core.version.load(Ordering::SeqCst)));
            }
            return Err(FrameError::Refused(format!(
                "a second push of worker {} for step {} (a replay; its last was step {last})",
                push.worker, push.step
            )));
        }
        book.last_step.insert(key, push.step);
        book.last_run.insert(key, push.run);
    }
    let step_guard = (!core.rules.hogwild).then(|| lock(&core.step_lock));
    let version = core.version.load(Ordering::SeqCst);
    let staleness = version.saturating_sub(push.base_version);
    let accepted = core.rules.max_staleness.is_none_or(|s| staleness <= s);
    if accepted {
        let lr_scale = core.rules.lr_scale(staleness);
        let beta_1 = core.rules.momentum.as_ref().map(|m| {
            let mut book = lock(&core.book);
            let running = book.staleness.unwrap_or(RunningStaleness::new(m.prior_staleness)).updated(staleness);
            book.staleness = Some(running);
            m.beta_1_for(running.mean)
        });
        for (index, slice) in core.slices.iter().enumerate() {
            let mut state = lock(slice);
            if let Some(b) = beta_1 {
                momentum::set_beta_1(&mut state.optimizer.config, b);
            }
            update(index, &mut state, lr_scale)?;
        }
        core.version.fetch_add(1, Ordering::SeqCst);
    }
    let version = core.version.load(Ordering::SeqCst);
    {
        let mut book = lock(&core.book);
        let w = book.stats.workers.entry(push.worker).or_default();
        w.pushes += 1;
        w.dropped += u64::from(!accepted);
        w.staleness_sum += staleness;
        w.max_staleness = w.max_staleness.max(staleness);
        w.rows += push.rows;
        w.loss_sum += push.loss_sum;
        w.correct += push.correct;
        *book.done_steps.entry((push.segment, push.worker)).or_default() += push.steps;
    }
    drop(step_guard);
    Ok((accepted, staleness, version))
}
