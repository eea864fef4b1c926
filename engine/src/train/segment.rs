//! `sync` training in segments: one Ballista job runs K optimizer steps on
//! `world` ranks at once (`DESIGN.md`, "Training modes").
//!
//! Each rank (one partition of the job, [`super::segment_udaf`]) registers
//! with the driver's rendezvous, receives the peer table, and then, step by
//! step: reads its own blocks (the blocks of its shards, `shard % world ==
//! rank`, one ranged read per block, the next step's prefetched while this
//! one computes, [`super::blocks`]), computes one gradient per block with
//! single-threaded kernels, rounds and sums them to fixed point
//! ([`super::exact`]), and takes part in the exact all-reduce: ranks of one
//! process sum in memory and share one model replica
//! ([`crate::collective::group`]), one leader per process sums around the
//! ring ([`crate::collective::ring`]); each leader applies the optimizer to
//! its own segment of the weights and the ring carries the updated weights
//! to the others ([`super::sharded_step`]; the whole sum goes around
//! instead when the optimizer clips by norm or BatchNormalization statistics
//! are summed too). No per-step tensor touches storage. At the end rank 0 writes the next weights version (with the
//! optimizer state) and every rank reports a hash of its weights; the final
//! stage fails the job when two differ.
//!
//! A rank's failure tells the driver (which cancels the job and restarts the
//! segment from its first step with the next generation) and fails the ranks
//! of its process; the ranks of other processes see their neighbour's
//! connection close, or, when they are waiting on another rank, their
//! watch on the generation cuts the ring ([`crate::collective::watch`]), so
//! that no rank of a failed generation keeps its executor's task slot.

use super::blocks::BlockReader;
use super::chunked_step::{apply_mean_in_chunks, Sums, CHUNK};
use super::exact::{add_exact, mean_into, row_runs, set_exact};
use super::job_dir::JobDir;
use super::model_cache::{keep, model_for};
use super::round::{ModelRef, PartTimes};
use super::sharded_step::{by_rows, gather_slots, sharded_step, WIRE_CHUNK};
use super::worker::decode_batches;
use crate::cluster::this_executor;
use crate::collective::frame::Secret;
use crate::collective::group::{self, LocalGroup};
use crate::collective::rendezvous::{self, kernel_set, RankInfo};
use crate::collective::ring::{self, Listener, Ring, RingPeers};
use crate::collective::watch::GenerationWatch;
use crate::error::{EngineError, Result};
use crate::store::{blocking, Location};
use datafusion::arrow::record_batch::RecordBatch;
use kallista_ops::autodiff::TouchedRows;
use kallista_ops::model::{BatchResult, Model, WeightGrads};
use kallista_ops::Data;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::time::{Duration, Instant};

/// One segment job, as the driver tells its ranks (a JSON literal in the query).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentSpec {
    pub model: ModelRef,
    pub job: JobDir,
    /// The driver's id of this training job (a random string).
    pub job_id: String,
    /// Each attempt at a segment is a new generation.
    pub generation: u64,
    /// Ranks of this generation.
    pub world: usize,
    pub first_step: u64,
    /// The blocks of each step, in step order.
    pub steps: Vec<Vec<u64>>,
    /// Shard files of the staged split; rank `r` reads shards `s` with `s % world == r`.
    pub shards: usize,
    pub data: Location,
    pub seed: u64,
    /// The driver's rendezvous (`host:port`).
    pub rendezvous: String,
    /// The object holding the job's secret (the secret itself never is in a plan).
    pub secret: Location,
    /// Where rank 0 writes the weights version after the segment.
    pub next_weights: Location,
    /// How long a rank waits for its peers (connections, a step) before giving up.
    pub timeout_s: u64,
    /// Whether leaders on one host pass chunks through shared memory ([`crate::collective::shm`]).
    #[serde(default)]
    pub shared_memory: bool,
}

/// What one rank reports at the end of its segment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RankReport {
    pub rank: usize,
    pub generation: u64,
    pub executor: String,
    pub steps: u64,
    pub rows: u64,
    pub loss_sum: f64,
    pub correct: u64,
    /// SHA-256 of the weights, optimizer slots and iteration count after the segment.
    pub weights_hash: String,
    /// `scan_ms`: waiting for blocks; `load_ms`: the model; `compute_ms`:
    /// gradients; `write_ms`: the version (rank 0).
    pub times: PartTimes,
    /// Time in the exact sum, the all-reduce and the optimizer step (the
    /// leader; waiting for them, the other ranks), summed over the segment.
    pub allreduce_ms: f64,
    /// Bytes this rank sent to other processes, summed over the segment.
    pub sent_bytes: u64,
    /// Processes the ranks ran in.
    pub processes: usize,
    /// Whether this rank's process sent its chunks through shared memory.
    #[serde(default)]
    pub shared_memory: bool,
}

/// Which gradient vectors a step's flat i64 sum holds, in order: every
/// trainable weight's gradient, then every state update (BatchNormalization).
struct FlatLayout {
    weights: usize,
    /// (weight index, is a state update, values)
    entries: Vec<(usize, bool, usize)>,
}

impl FlatLayout {
    fn of(g: &WeightGrads) -> FlatLayout {
        let grads = g.values.iter().enumerate().filter_map(|(i, v)| Some((i, false, v.as_ref()?.len())));
        let states = g.state.iter().enumerate().filter_map(|(i, v)| Some((i, true, v.as_ref()?.len())));
        FlatLayout { weights: g.values.len().max(g.state.len()), entries: grads.chain(states).collect() }
    }

    fn len(&self) -> usize {
        self.entries.iter().map(|e| e.2).sum()
    }

    /// Whether the step has state updates (BatchNormalization), which the
    /// chunked optimizer step does not carry.
    fn has_states(&self) -> bool {
        self.entries.iter().any(|e| e.1)
    }

    /// The weights whose gradients the sum holds, in its order.
    fn weights(&self) -> Vec<usize> {
        self.entries.iter().map(|e| e.0).collect()
    }

    /// Each entry's vector of each micro-batch.
    fn vectors<'g>(&self, grads: &[&'g WeightGrads], keys: &[String]) -> Result<Vec<Vec<&'g [f32]>>> {
        let mut vectors: Vec<Vec<&[f32]>> = vec![];
        for &(i, state, n) in &self.entries {
            let name = keys.get(i).map_or("?", |k| k.as_str());
            let of_entry = grads
                .iter()
                .map(|g| {
                    let v = match state {
                        true => g.state.get(i).and_then(|v| v.as_deref()),
                        false => g.values.get(i).and_then(|v| v.as_deref()),
                    };
                    v.filter(|v| v.len() == n).ok_or_else(|| {
                        EngineError::Training(format!("'{name}': a micro-batch's gradients differ in layout"))
                    })
                })
                .collect::<Result<Vec<&[f32]>>>()?;
            vectors.push(of_entry);
        }
        Ok(vectors)
    }

    /// By entry: the value ranges outside which every micro-batch's gradient
    /// is zero, when each knows its touched rows (an Embedding's).
    fn known(&self, grads: &[&WeightGrads]) -> Vec<Option<Vec<Range<usize>>>> {
        let of_entry = |&(i, state, n): &(usize, bool, usize)| {
            if state {
                return None;
            }
            let (first, rest) = grads.split_first()?;
            let mut rows = first.rows_of(i)?.clone();
            for g in rest {
                rows = TouchedRows::union(&rows, g.rows_of(i)?)?;
            }
            Some(row_runs(&rows.rows, rows.width, n))
        };
        self.entries.iter().map(of_entry).collect()
    }

    /// Sets `flat` to the sum of the micro-batches' gradients, each rounded
    /// to fixed point: in chunks, on all of this process's cores.
    fn sum(&self, flat: &mut [i64], grads: &[&WeightGrads], keys: &[String]) -> Result<()> {
        const CHUNK: usize = 1 << 16;
        let vectors = self.vectors(grads, keys)?;
        // (entry, offset in it, the part of `flat` it fills)
        let mut chunks: Vec<(usize, usize, &mut [i64])> = vec![];
        let mut rest = flat;
        for (e, &(_, _, n)) in self.entries.iter().enumerate() {
            let (mine, next) = rest.split_at_mut(n);
            rest = next;
            for (c, part) in mine.chunks_mut(CHUNK).enumerate() {
                chunks.push((e, c * CHUNK, part));
            }
        }
        chunks.into_par_iter().try_for_each(|(e, offset, part)| {
            let name = keys.get(self.entries[e].0).map_or("?", |k| k.as_str());
            let range = offset..offset + part.len();
            let Some((first, rest)) = vectors[e].split_first() else {
                return Err(EngineError::Training(format!("'{name}': a step without micro-batches")));
            };
            set_exact(part, &first[range.clone()], name)?;
            for v in rest {
                add_exact(part, &v[range.clone()], name)?;
            }
            Ok(())
        })
    }

    /// The mean over `parts` micro-batches, as the optimizer takes it
    /// (converted in chunks, on all of this process's cores).
    fn mean(&self, flat: &[i64], parts: u64) -> WeightGrads {
        const CHUNK: usize = 1 << 16;
        let mut g = WeightGrads {
            values: vec![None; self.weights],
            state: vec![None; self.weights],
            state_parts: 0,
            rows: vec![],
        };
        let mut means: Vec<Vec<f32>> = self.entries.iter().map(|e| vec![0f32; e.2]).collect();
        let mut chunks: Vec<(&mut [f32], &[i64])> = vec![];
        let mut rest = flat;
        for m in &mut means {
            let (mine, next) = rest.split_at(m.len());
            rest = next;
            chunks.extend(m.chunks_mut(CHUNK).zip(mine.chunks(CHUNK)));
        }
        chunks.into_par_iter().for_each(|(out, sum)| mean_into(out, sum, parts));
        for (&(i, state, _), m) in self.entries.iter().zip(means) {
            if state {
                g.state[i] = Some(m);
                g.state_parts = 1;
            } else {
                g.values[i] = Some(m.into());
            }
        }
        g
    }
}

fn dropout_seed(seed: u64, step: u64, block: u64) -> u64 {
    seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ block.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
}

/// This process, as the peer table names it: ranks with the same one share memory.
fn process_id() -> String {
    format!("{}#{}", this_executor().name, std::process::id())
}

/// SHA-256 of everything a step changes: weights, optimizer slots, iterations.
pub fn weights_hash(model: &Model) -> String {
    let mut h = ::ring::digest::Context::new(&::ring::digest::SHA256);
    let mut keys = model.weight_keys();
    keys.sort_unstable();
    for key in keys {
        h.update(key.as_bytes());
        if let Some(w) = model.weight(&key) {
            h.update(bytemuck::cast_slice(w.data()));
        }
    }
    if let Some(opt) = model.optimizer() {
        h.update(&opt.iterations.to_le_bytes());
        for (key, slots) in &opt.slots {
            h.update(key.as_bytes());
            slots.iter().for_each(|s| h.update(bytemuck::cast_slice(s)));
        }
    }
    h.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs rank `rank` of the segment (see the module docs).
pub fn run_rank(spec: &SegmentSpec, rank: usize) -> Result<RankReport> {
    let timeout = Duration::from_secs(spec.timeout_s.max(1));
    let secret = Secret::from_bytes(&blocking::read(&spec.secret)?);
    let me = this_executor();
    let listener = Listener::bind(&me.bind_host, &me.host)?;
    let info = RankInfo {
        rank,
        endpoint: listener.endpoint.clone(),
        process: process_id(),
        executor: me.name.clone(),
        kernels: kernel_set(),
    };
    let peers = rendezvous::register(&spec.rendezvous, &secret, &spec.job_id, spec.generation, info, timeout)?;
    log::info!(
        "rank {rank} of generation {} (steps {}..{}): {} ranks",
        spec.generation,
        spec.first_step,
        spec.first_step + spec.steps.len() as u64,
        peers.len()
    );
    run_registered(spec, rank, &secret, listener, &peers, timeout)
}

fn run_registered(
    spec: &SegmentSpec,
    rank: usize,
    secret: &Secret,
    listener: Listener,
    peers: &[RankInfo],
    timeout: Duration,
) -> Result<RankReport> {
    let process = process_id();
    let mut local: Vec<usize> = peers.iter().filter(|p| p.process == process).map(|p| p.rank).collect();
    local.sort_unstable();
    let mut leaders: Vec<(usize, String)> = vec![];
    for p in peers {
        let first_of_process = peers.iter().filter(|o| o.process == p.process).map(|o| o.rank).min() == Some(p.rank);
        if first_of_process {
            leaders.push((p.rank, p.endpoint.clone()));
        }
    }
    leaders.sort();
    let loading = Instant::now();
    let group = group::join(&spec.job_id, spec.generation, local, || Ok((*model_for(&spec.model)?).clone()))?;
    let mut report = RankReport {
        rank,
        generation: spec.generation,
        executor: this_executor().name.clone(),
        processes: leaders.len(),
        ..Default::default()
    };
    report.times.load_ms = loading.elapsed().as_secs_f64() * 1e3;
    // Only a ring's leaders wait on other processes; the rest wait on their leader.
    let watch = match rank == group.leader() && leaders.len() > 1 {
        true => GenerationWatch::start(&spec.rendezvous, secret, &spec.job_id, spec.generation),
        false => GenerationWatch::none(),
    };
    // Held until this rank's failure has reached the driver: a neighbour that
    // sees the connection close first reports only "the previous rank is gone".
    let mut ring: Option<Ring> = None;
    let result = (|| {
        ring = match rank == group.leader() {
            true => {
                let position = leaders.iter().position(|l| l.0 == rank).unwrap_or(0);
                let ring_peers = RingPeers {
                    job: &spec.job_id,
                    generation: spec.generation,
                    leaders: &leaders,
                    position,
                    shared_memory: spec.shared_memory,
                };
                ring::connect(listener, &ring_peers, secret, timeout, &watch)?
            }
            false => None,
        };
        report.shared_memory = ring.as_ref().is_some_and(Ring::shares_memory);
        run_steps(spec, rank, &group, ring.as_mut(), timeout, &mut report)?;
        finish(spec, rank, &group, &mut report)
    })();
    // Cut off by the watch: the generation's own cause is what this rank reports.
    let result = result.map_err(|e| match watch.failure() {
        Some(why) => EngineError::Collective(format!("rank {rank} stopped: {why} (here: {e})")),
        None => e,
    });
    if let Err(e) = &result {
        log::error!("rank {rank} of generation {} failed: {e}", spec.generation);
        // The driver first, then this process's other ranks and the ring neighbours.
        rendezvous::abort(&spec.rendezvous, secret, &spec.job_id, spec.generation, rank, e);
        group.fail(&e.to_string());
    }
    drop(ring);
    if rank == group.leader() {
        group::leave(&spec.job_id, spec.generation);
    }
    result.map(|()| report)
}

/// A step's blocks of this rank, read ahead of the step.
pub(crate) type StepRows = Result<Vec<(u64, Vec<RecordBatch>)>>;

/// What a rank reads: the blocks of `steps` in its shards (`shard % world
/// == rank`) of the staged split at `data`.
pub(crate) struct RankReads<'a> {
    pub data: &'a Location,
    pub shards: usize,
    pub world: usize,
    pub binding: &'a kallista_data::binding::Binding,
    pub steps: &'a [Vec<u64>],
}

/// Reads this rank's blocks of every step on a thread of its own, at most two steps ahead.
pub(crate) fn prefetch(what: RankReads<'_>, rank: usize) -> Result<std::sync::mpsc::Receiver<StepRows>> {
    let shards: Vec<usize> = (0..what.shards).filter(|s| s % what.world == rank).collect();
    let columns = super::args::data_columns(what.binding);
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    let reader = BlockReader::open(what.data, what.shards, &shards, &columns)?;
    let (world, total) = (what.world as u64, what.shards as u64);
    let steps: Vec<Vec<u64>> =
        what.steps.iter().map(|s| s.iter().copied().filter(|b| (b % total) % world == rank as u64).collect()).collect();
    let (tx, rx) = std::sync::mpsc::sync_channel(2);
    std::thread::Builder::new()
        .name(format!("kallista-rank-{rank}-reads"))
        .spawn(move || {
            for blocks in steps {
                let rows: StepRows = blocks.iter().map(|&b| Ok((b, reader.read(b)?))).collect();
                let failed = rows.is_err();
                if tx.send(rows).is_err() || failed {
                    return;
                }
            }
        })
        .map_err(|e| EngineError::Collective(format!("read-ahead thread: {e}")))?;
    Ok(rx)
}

/// Where a step's blocks come from and how they are seeded.
pub(crate) struct StepBlocks<'a> {
    pub rows: &'a [(u64, Vec<RecordBatch>)],
    pub binding: &'a kallista_data::binding::Binding,
    pub data: &'a Location,
    pub seed: u64,
    pub step: u64,
}

impl StepBlocks<'_> {
    /// A block's inputs and targets, and its dropout seed.
    fn decode(&self, model: &Model, block: u64, batches: &[RecordBatch]) -> Result<(Vec<Data>, Data, u64)> {
        let batches: Vec<&RecordBatch> = batches.iter().collect();
        let source = format!("{} block {block}", self.data);
        let (x, y) = decode_batches(model, &batches, self.binding, &source)?;
        Ok((x, y, dropout_seed(self.seed, self.step, block)))
    }

    /// One gradient per block, on this process's cores.
    pub(crate) fn gradients(&self, model: &Model) -> Result<Vec<(BatchResult, WeightGrads)>> {
        self.rows
            .par_iter()
            .map(|(block, batches)| {
                let (x, y, seed) = self.decode(model, *block, batches)?;
                Ok(model.gradients_on_micro_batch(&x, &[y], seed)?)
            })
            .collect()
    }

    /// All the step's blocks as one batch, its gradient times `scale` added
    /// into `sum` ([`Model::gradients_on_micro_batch_into`]): one pass on
    /// one thread streams the weights once per step instead of once per
    /// block, and weighs every row alike. Dropout is seeded by the first block.
    pub(crate) fn gradient_into(&self, model: &Model, scale: f32, sum: &mut WeightGrads) -> Result<BatchResult> {
        let first = self.rows.first().map_or(0, |(block, _)| *block);
        let batches: Vec<&RecordBatch> = self.rows.iter().flat_map(|(_, batches)| batches).collect();
        let blocks: Vec<u64> = self.rows.iter().map(|(block, _)| *block).collect();
        let source = format!("{} blocks {blocks:?}", self.data);
        let (x, y) = decode_batches(model, &batches, self.binding, &source)?;
        let seed = dropout_seed(self.seed, self.step, first);
        let (result, added) = model.gradients_on_micro_batch_into(&x, &[y], seed, scale, std::mem::take(sum))?;
        *sum = added;
        Ok(result)
    }
}

fn run_steps(
    spec: &SegmentSpec,
    rank: usize,
    group: &LocalGroup,
    mut ring: Option<&mut Ring>,
    timeout: Duration,
    report: &mut RankReport,
) -> Result<()> {
    let what = RankReads {
        data: &spec.data,
        shards: spec.shards,
        world: spec.world,
        binding: &spec.model.binding,
        steps: &spec.steps,
    };
    let reads = prefetch(what, rank)?;
    let keys = group.model.read().unwrap_or_else(|e| e.into_inner()).weight_keys();
    let mut layout: Option<FlatLayout> = None;
    // Which weights went by rows between processes in this segment's first step.
    let mut segment_rows: Option<Vec<bool>> = None;
    // The process's sum of a step (the leader's), reused: a fresh 40 MB buffer per step costs page faults.
    let mut flat: Vec<i64> = vec![];
    for (i, all_blocks) in spec.steps.iter().enumerate() {
        let step = spec.first_step + i as u64;
        let waited = Instant::now();
        let rows = reads
            .recv_timeout(timeout)
            .map_err(|_| EngineError::Collective(format!("rank {rank}: the blocks of step {step} did not arrive")))??;
        report.times.scan_ms += waited.elapsed().as_secs_f64() * 1e3;
        let computing = Instant::now();
        let model = group.model.read().unwrap_or_else(|e| e.into_inner());
        let blocks = StepBlocks { rows: &rows, binding: &spec.model.binding, data: &spec.data, seed: spec.seed, step };
        let per_block = blocks.gradients(&model)?;
        drop(model);
        if per_block.is_empty() {
            return Err(EngineError::Training(format!("rank {rank} has no blocks in step {step}")));
        }
        let mut grads = Vec::with_capacity(per_block.len());
        for (result, g) in per_block {
            report.rows += result.samples as u64;
            report.loss_sum += result.loss as f64 * result.samples as f64;
            report.correct += result.metrics.first().map_or(0, |m| m.1 as u64);
            grads.push(g);
        }
        report.times.compute_ms += computing.elapsed().as_secs_f64() * 1e3;
        let reducing = Instant::now();
        let parts = all_blocks.len() as u64;
        let mut sent = 0;
        group.step(rank, i as u64, grads, timeout, |all| {
            // The leader: every micro-batch of this process in one exact sum.
            let refs: Vec<&WeightGrads> = all.iter().collect();
            let layout = layout.get_or_insert_with(|| FlatLayout::of(refs[0]));
            let weights = layout.weights();
            let names: Vec<&str> = weights.iter().map(|&i| keys.get(i).map_or("?", |k| k.as_str())).collect();
            let mut model = group.model.write().unwrap_or_else(|e| e.into_inner());
            // Made a chunk at a time with the mean, unless the optimizer clips by norm or
            // BatchNormalization statistics are updated too.
            let ranged = match layout.has_states() {
                true => None,
                false => model.ranged_update(&weights)?,
            };
            let last = i + 1 == spec.steps.len();
            match (ranged, ring.as_mut()) {
                // One process: the exact sum too, a chunk at a time.
                (Some(update), None) => {
                    let (vectors, known) = (layout.vectors(&refs, &keys)?, layout.known(&refs));
                    apply_mean_in_chunks(Sums::Parts(&vectors, &known), &names, parts, update, CHUNK)?;
                }
                // Processes: each updates its share of the weights, which then go around.
                (Some(update), Some(r)) => {
                    let (vectors, known) = (layout.vectors(&refs, &keys)?, layout.known(&refs));
                    // Fixed for the segment: a weight's slots are current on every
                    // leader only if it went by rows in every step.
                    let now = by_rows(&known, weights.len());
                    if *segment_rows.get_or_insert_with(|| now.clone()) != now {
                        return Err(EngineError::Training(format!(
                            "step {step}: the weights whose gradients name their rows changed within the segment"
                        )));
                    }
                    sent = sharded_step(r, step, (&vectors, &known), &names, parts, update, WIRE_CHUNK)?;
                    if last {
                        // The version and the hash need every leader's slots.
                        sent += gather_slots(r, step, model.weights_and_slots_mut(&weights)?, &now, WIRE_CHUNK)?;
                    }
                }
                (ranged, ring) => {
                    flat.resize(layout.len(), 0);
                    layout.sum(&mut flat, &refs, &keys)?;
                    if let Some(r) = ring {
                        sent = r.all_reduce(step, &mut flat)?;
                    }
                    match ranged {
                        Some(update) => apply_mean_in_chunks(Sums::Flat(&flat), &names, parts, update, CHUNK)?,
                        None => model.apply_gradients(layout.mean(&flat, parts))?,
                    }
                }
            }
            model.set_steps_run(step + 1);
            Ok(())
        })?;
        report.sent_bytes += sent;
        report.allreduce_ms += reducing.elapsed().as_secs_f64() * 1e3;
        report.steps += 1;
    }
    Ok(())
}

/// The segment's end: the hash, the version (rank 0, written while the hash
/// is taken), the model kept for the next segment.
fn finish(spec: &SegmentSpec, rank: usize, group: &LocalGroup, report: &mut RankReport) -> Result<()> {
    let model = group.model.read().unwrap_or_else(|e| e.into_inner());
    let written = std::thread::scope(|s| {
        // A scratch write, as `average` rounds write theirs: checkpoints are the durable copies.
        let writer = (rank == 0).then(|| {
            s.spawn(|| {
                let writing = Instant::now();
                match blocking::local_with_parent(&spec.next_weights)? {
                    // Streamed to the file, not built in memory first.
                    Some(path) => model.write_weights(&path, false)?,
                    None => blocking::write_scratch(&spec.next_weights, model.weights_bytes()?)?,
                }
                Ok::<f64, EngineError>(writing.elapsed().as_secs_f64() * 1e3)
            })
        });
        report.weights_hash = weights_hash(&model);
        writer.map(|w| w.join().unwrap_or_else(|_| Err(EngineError::Training("the version writer panicked".into()))))
    });
    if let Some(ms) = written {
        report.times.write_ms = ms?;
    }
    if rank == group.leader() {
        // The next segment of this job starts from these weights: no load.
        keep(&spec.model.config, &spec.next_weights, model.clone())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::test_model::{adam, tiny_model};

    /// Each micro-batch's gradient of every weight: values that differ by
    /// weight, element, micro-batch and step, with runs of zeros (of either
    /// sign) in every micro-batch or in some, as untouched Embedding rows.
    fn grads_of(model: &Model, step: usize, parts: usize) -> Vec<WeightGrads> {
        let lens: Vec<usize> = model.weight_keys().iter().map(|k| model.weight(k).map_or(0, |w| w.len())).collect();
        (0..parts)
            .map(|p| WeightGrads {
                values: lens
                    .iter()
                    .enumerate()
                    .map(|(w, &n)| {
                        Some(
                            (0..n)
                                .map(|i| match ((i / 5 + w) % 3, (i / 5 + p) % 4) {
                                    (0, _) => [0.0, -0.0][p % 2],
                                    (_, 0) => 0.0,
                                    _ => ((i * 7 + w * 5 + p * 3 + step) % 11) as f32 * 0.013 - 0.06,
                                })
                                .collect(),
                        )
                    })
                    .collect(),
                // Weights of even index say which rows of 5 they wrote (those not zero in every part).
                rows: lens
                    .iter()
                    .enumerate()
                    .map(|(w, &n)| {
                        let rows = (0..n.div_ceil(5) as u32).filter(|r| !(*r as usize + w).is_multiple_of(3)).collect();
                        (w % 2 == 0).then_some(TouchedRows { width: 5, rows })
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    }

    /// Two steps of the chunked optimizer step, from micro-batch gradients
    /// and from a flat sum (as an all-reduce leaves it), in chunks of 5 that
    /// cut every weight, end with the bits (weights, slots, iterations) of
    /// the whole-vector sum, mean and `apply_gradients`.
    #[test]
    fn chunked_steps_give_the_bits_of_whole_vectors() {
        let base = tiny_model(&adam(&[]));
        let keys = base.weight_keys();
        let (mut whole, mut from_parts, mut from_flat) = (base.clone(), base.clone(), base.clone());
        for step in 0..2 {
            let grads = grads_of(&base, step, 3);
            let refs: Vec<&WeightGrads> = grads.iter().collect();
            let layout = FlatLayout::of(refs[0]);
            let mut flat = vec![0i64; layout.len()];
            layout.sum(&mut flat, &refs, &keys).unwrap();
            whole.apply_gradients(layout.mean(&flat, 3)).unwrap();
            let weights = layout.weights();
            let names: Vec<&str> = weights.iter().map(|&i| keys[i].as_str()).collect();
            let vectors = layout.vectors(&refs, &keys).unwrap();
            let update = from_parts.ranged_update(&weights).unwrap().expect("Adam without clipping");
            apply_mean_in_chunks(Sums::Parts(&vectors, &layout.known(&refs)), &names, 3, update, 5).unwrap();
            let update = from_flat.ranged_update(&weights).unwrap().expect("Adam without clipping");
            apply_mean_in_chunks(Sums::Flat(&flat), &names, 3, update, 5).unwrap();
        }
        assert_ne!(weights_hash(&whole), weights_hash(&base), "the steps changed nothing");
        assert_eq!(weights_hash(&from_parts), weights_hash(&whole), "chunked from the micro-batches");
        assert_eq!(weights_hash(&from_flat), weights_hash(&whole), "chunked from a flat sum");
        // A wrong divisor does not pass.
        let grads = grads_of(&base, 0, 3);
        let refs: Vec<&WeightGrads> = grads.iter().collect();
        let layout = FlatLayout::of(refs[0]);
        let (weights, mut wrong, mut right) = (layout.weights(), base.clone(), base.clone());
        let names: Vec<&str> = weights.iter().map(|&i| keys[i].as_str()).collect();
        let vectors = layout.vectors(&refs, &keys).unwrap();
        apply_mean_in_chunks(Sums::Parts(&vectors, &[]), &names, 2, wrong.ranged_update(&weights).unwrap().unwrap(), 5)
            .unwrap();
        apply_mean_in_chunks(Sums::Parts(&vectors, &[]), &names, 3, right.ranged_update(&weights).unwrap().unwrap(), 5)
            .unwrap();
        assert_ne!(weights_hash(&wrong), weights_hash(&right));
        // The rows a gradient names are taken as they are: naming none of the first weight's changes the step.
        let mut none_named = layout.known(&refs);
        assert!(none_named[0].is_some(), "the first weight names its rows");
        none_named[0] = Some(vec![]);
        let mut blind = base.clone();
        let update = blind.ranged_update(&weights).unwrap().unwrap();
        apply_mean_in_chunks(Sums::Parts(&vectors, &none_named), &names, 3, update, 5).unwrap();
        assert_ne!(weights_hash(&blind), weights_hash(&right));
    }
}
