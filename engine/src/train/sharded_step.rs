//! The optimizer step of a `sync` step between processes, sharded (ZeRO
//! stage 1): the ring's reduce-scatter leaves each leader the exact sum of
//! one segment of the flat gradient; that leader alone takes the mean and
//! applies the optimizer to that segment of the weights and of their slots,
//! then the ring's all-gather carries the updated weights (f32 bits), not
//! the sums, each chunk as soon as it is updated. Each process thus rounds,
//! sums, averages and updates only its share, a chunk at a time while the
//! chunk is in cache, and no 8-byte-per-value sum of the whole model is
//! ever written. Every operation is
//! elementwise, so the weights have the bits of the whole-vector step.
//!
//! Weights whose rows are known (an Embedding's) are not sharded: their
//! sums travel as rows to every leader, which updates them whole (on a
//! thread of its own, while the other weights' sums travel)
//! ([`super::row_sums`]).
//!
//! A leader's slots are current only on its own segment until the segment
//! job ends: [`gather_slots`] then carries every segment's slots around the
//! ring, before the weights are hashed and written.

use super::chunked_step::{apply_mean_in_chunks, Known, Sums, CHUNK};
use super::exact::{add_exact, mean_into, sum_exact_runs};
use super::exact_mean::mean_of_parts;
use super::row_sums::{all_gather_rows, RowSums};
use crate::collective::ring::{bounds, Arrived, Inbox, Outbox, Place, Ring};
use crate::error::{EngineError, Result};
use crate::gap_filler::GapFiller;
use kallista_ops::model::RangedUpdate;
use kallista_ops::optim::RangedStep;
use std::ops::Range;

/// Values per frame: half the doorbells of 64 Ki, each a system call and a
/// wake-up on both sides (`perf`: on W1's two processes `send` and `recv`
/// took about 2.3 ms of a rank's step in the kernel). Its i64 sums (rings
/// of three or more) fill one 1 MB shared slot. W1, two pinned executors,
/// 12 runs of each interleaved: the all-reduce 11.4 ms a step against 12.7
/// with 64 Ki, lower in 10 of the 12 pairs.
pub(crate) const WIRE_CHUNK: usize = 1 << 17;
/// Phases of the collective, in chunk headers.
const SUMS: u8 = 0;
const WEIGHTS: u8 = 1;
pub(crate) const ROWS: u8 = 2;
/// Slot `k` travels in phase `SLOTS + k`.
const SLOTS: u8 = 3;

/// Pieces of one segment of a flat vector made of several vectors: (flat
/// offset, values), in order.
type Pieces<'a> = Vec<(usize, &'a mut [f32])>;

/// Cuts the vectors `parts` (one flat vector, in order) at the bounds of
/// `segments` segments; returns each segment's pieces.
fn by_segment(parts: Vec<&mut [f32]>, segments: usize) -> Vec<Pieces<'_>> {
    let n: usize = parts.iter().map(|p| p.len()).sum();
    let mut out: Vec<Pieces<'_>> = (0..segments).map(|_| vec![]).collect();
    let mut flat = 0;
    for mut rest in parts {
        while !rest.is_empty() {
            let s = (0..segments).find(|&s| bounds(n, segments, s).contains(&flat)).unwrap_or(segments - 1);
            let take = rest.len().min(bounds(n, segments, s).end - flat);
            let (mine, next) = rest.split_at_mut(take);
            out[s].push((flat, mine));
            flat += take;
            rest = next;
        }
    }
    out
}

/// Calls `f(piece index, range in the piece, range in [a, b))` for each
/// piece (flat offset, length) of `pieces` that `[a, b)` (flat) overlaps.
fn overlaps(
    pieces: &[(usize, usize)],
    range: Range<usize>,
    mut f: impl FnMut(usize, Range<usize>, Range<usize>) -> Result<()>,
) -> Result<()> {
    for (j, &(start, len)) in pieces.iter().enumerate() {
        let (lo, hi) = (range.start.max(start), range.end.min(start + len));
        if lo < hi {
            f(j, lo - start..hi - start, lo - range.start..hi - range.start)?;
        }
    }
    Ok(())
}

/// This process's micro-batch gradients, one flat vector per micro-batch.
struct Grads<'a> {
    /// Each weight's gradient of each micro-batch.
    vectors: &'a [Vec<&'a [f32]>],
    names: &'a [&'a str],
    /// (flat offset, length) of each weight.
    spans: Vec<(usize, usize)>,
    /// Values per frame.
    chunk: usize,
}

impl Grads<'_> {
    /// Sets `out` to this process's exact sum of `range` (flat).
    fn sum(&self, range: Range<usize>, out: &mut [i64]) -> Result<()> {
        overlaps(&self.spans, range, |e, inside, at| {
            let parts: Vec<&[f32]> = self.vectors[e].iter().map(|v| &v[inside.clone()]).collect();
            sum_exact_runs(&mut out[at], &parts, self.names[e], None).map(|_| ())
        })
    }

    /// The pieces of `range` (flat) when this process holds one gradient
    /// of each weight there: those travel as they are, and the receiver
    /// rounds them, instead of being rounded and encoded here.
    fn own(&self, range: Range<usize>) -> Option<Vec<&[f32]>> {
        let (mut pieces, mut one_each) = (vec![], true);
        let _ = overlaps(&self.spans, range, |e, inside, _| {
            match self.vectors[e].as_slice() {
                [one] => pieces.push(&one[inside]),
                _ => one_each = false,
            }
            Ok(())
        });
        one_each.then_some(pieces)
    }

    /// Writes the mean over `parts` micro-batches of `own` (this process's
    /// gradients of `range`, flat, as [`Grads::own`] gives them) and
    /// `theirs` (a neighbour's own gradients of `range`) into `mean`.
    fn mean_of_both(
        &self,
        range: Range<usize>,
        own: &[&[f32]],
        theirs: &[f32],
        parts: u64,
        mean: &mut [f32],
    ) -> Result<()> {
        let mut pieces = own.iter();
        overlaps(&self.spans, range, |e, _, at| {
            let mine = pieces.next().ok_or_else(|| EngineError::Training("a gradient piece is missing".into()))?;
            mean_of_parts(&mut mean[at.clone()], &[mine, &theirs[at]], None, parts, self.names[e])
        })
    }

    /// Adds the chunk of `range` (flat) that arrived to `target`: sums as
    /// they are, a neighbour's own gradients rounded here.
    fn add_arrived(&self, arrived: &Arrived, range: Range<usize>, target: &mut [i64]) -> Result<()> {
        let Some(values) = arrived.gradients() else { return arrived.add_to(target) };
        overlaps(&self.spans, range, |e, _, at| add_exact(&mut target[at.clone()], &values[at], self.names[e]))
    }
}

/// Which of `count` weights are updated whole by every leader rather than
/// sharded: those whose rows are `known`.
pub(crate) fn by_rows(known: &Known, count: usize) -> Vec<bool> {
    (0..count).map(|e| known.get(e).is_some_and(|k| k.is_some())).collect()
}

/// Takes one sharded `sync` step over the ring (see the module docs): the
/// mean over `parts` micro-batches of all processes of `vectors` (this
/// process's gradients of the weights `names`, in `update`'s order) applied
/// by `update`, `chunk` values per frame ([`WIRE_CHUNK`]). The weights whose
/// rows are `known` ([`by_rows`]) go by rows. Returns the bytes this leader sent.
pub(crate) fn sharded_step(
    ring: &mut Ring,
    step: u64,
    (vectors, known): (&[Vec<&[f32]>], &Known),
    names: &[&str],
    parts: u64,
    update: RangedUpdate<'_>,
    chunk: usize,
) -> Result<u64> {
    let RangedUpdate { step: rule, parts: weights } = update;
    if vectors.len() != weights.len() || names.len() != weights.len() {
        return Err(EngineError::Training(format!(
            "a sharded step of {} weights with gradients of {} and names of {}",
            weights.len(),
            vectors.len(),
            names.len()
        )));
    }
    for (e, (values, _)) in weights.iter().enumerate() {
        if vectors[e].iter().any(|g| g.len() != values.len()) {
            return Err(EngineError::Training(format!("'{}': gradient and weight sizes differ", names[e])));
        }
    }
    let rows = by_rows(known, weights.len());
    let (mut dense, mut whole) = (Subset::default(), Subset::default());
    for (e, weight) in weights.into_iter().enumerate() {
        let into = if rows[e] { &mut whole } else { &mut dense };
        into.places.push(e);
        into.weights.push(weight);
        into.vectors.push(vectors[e].clone());
        into.names.push(names[e]);
    }
    let mut sent = 0;
    let mut rows_update = None;
    if !whole.weights.is_empty() {
        let mut own = vec![];
        for (j, &e) in whole.places.iter().enumerate() {
            own.push(RowSums::of(&whole.vectors[j], known[e].clone().unwrap_or_default(), whole.names[j])?);
        }
        let places: Vec<(usize, usize)> =
            whole.places.iter().zip(&whole.weights).map(|(&e, w)| (e, w.0.len())).collect();
        let (by_leader, bytes) = all_gather_rows(ring, step, own, &places, chunk)?;
        sent += bytes;
        let totals = (0..places.len())
            .map(|i| RowSums::total(&by_leader.iter().map(|of_leader| &of_leader[i]).collect::<Vec<_>>()))
            .collect::<Result<Vec<_>>>()?;
        rows_update = Some((totals, RangedUpdate { step: rule.clone(), parts: whole.weights }));
    }
    let names = &whole.names;
    // The weights updated whole (every row: the optimizer's slots decay
    // where no token was) are updated while the dense sums travel: that
    // exchange waits on the network and on the peers for much of its time.
    // On a core of its own the update fills the ring's waits ([`GapFiller`]).
    let filler = GapFiller::new();
    std::thread::scope(|s| {
        let rows = rows_update.map(|(totals, update)| {
            let filler = &filler;
            s.spawn(move || {
                let _filling = filler.enter();
                apply_mean_in_chunks(Sums::Rows(&totals), names, parts, update, CHUNK)
            })
        });
        let dense_sent = match dense.weights.is_empty() {
            true => Ok(0),
            false => sharded_dense(ring, step, dense, rule, parts, chunk),
        };
        filler.raise();
        let rows_done = rows.map_or(Ok(()), |h| {
            h.join()
                .unwrap_or_else(|_| Err(EngineError::Training("the update of the row-wise weights panicked".into())))
        });
        sent += dense_sent?;
        rows_done.map(|()| sent)
    })
}

/// Some of a step's weights, in order: their places among the step's
/// weights, values and slots, gradients and names.
#[derive(Default)]
struct Subset<'w, 'g> {
    places: Vec<usize>,
    weights: Vec<(&'w mut [f32], Vec<&'w mut [f32]>)>,
    vectors: Vec<Vec<&'g [f32]>>,
    names: Vec<&'g str>,
}

/// The step of the sharded weights `dense`: reduce-scatter of the sums,
/// each leader's update of its segment by `rule`, all-gather of the
/// updated values (its first ring step fused with the update).
fn sharded_dense(
    ring: &mut Ring,
    step: u64,
    dense: Subset<'_, '_>,
    rule: RangedStep,
    parts: u64,
    chunk: usize,
) -> Result<u64> {
    let Subset { weights, vectors, names, .. } = dense;
    let (vectors, names) = (vectors.as_slice(), names.as_slice());
    let mut spans = Vec::with_capacity(weights.len());
    let mut n = 0;
    for (values, _) in &weights {
        spans.push((n, values.len()));
        n += values.len();
    }
    let grads = Grads { vectors, names, spans, chunk };
    let (l, p) = (ring.size(), ring.position());
    let slot_count = weights.first().map_or(0, |w| w.1.len());
    let (values, slots): (Vec<&mut [f32]>, Vec<Vec<&mut [f32]>>) = weights.into_iter().unzip();
    let mut value_segments = by_segment(values, l);
    let mut slot_segments: Vec<Vec<Pieces<'_>>> = vec![];
    let mut slots_by_index: Vec<Vec<&mut [f32]>> = (0..slot_count).map(|_| vec![]).collect();
    for of_weight in slots {
        if of_weight.len() != slot_count {
            return Err(EngineError::Training("the weights' optimizer slots differ in number".into()));
        }
        for (k, s) in of_weight.into_iter().enumerate() {
            slots_by_index[k].push(s);
        }
    }
    for of_slot in slots_by_index {
        slot_segments.push(by_segment(of_slot, l));
    }
    let mut sent = 0;
    // Reduce-scatter, every ring step but the last (below): partial sums of
    // segments go around.
    let mut partials = [vec![], vec![]];
    for t in 0..l - 2 {
        let (send, recv) = ((p + l - t) % l, (p + l - t - 1) % l);
        let place = Place { step, phase: SUMS, t: t as u32, offset: 0, n };
        let (read, write) = partials.split_at_mut(1);
        let (sent_partial, next_partial) = match t % 2 {
            0 => (&read[0], &mut write[0]),
            _ => (&write[0], &mut read[0]),
        };
        let sent_partial: &[i64] = sent_partial;
        let grads = &grads;
        sent += ring.exchange(
            |out| send_sums(out, place, bounds(n, l, send), (t > 0).then_some(sent_partial), grads),
            |inbox| {
                next_partial.resize(bounds(n, l, recv).len(), 0);
                receive_partial(inbox, place, bounds(n, l, recv), grads, next_partial)
            },
        )?;
    }
    // The last ring step: this leader updates its own segment a chunk at a
    // time as the sums arrive, and each updated chunk goes on at once, as
    // the all-gather's first ring step (whose segment, p, arrives after the
    // sums), while the rest of the segment is being updated. A separate
    // first step waited for every leader's whole update, then sent 1/l of
    // the weights in lockstep (W1, two processes: 2.3-2.5 ms a step).
    // A ring has two leaders at least (`ring::connect`).
    let t = l - 2;
    let (send, own, gathered) = ((p + 2) % l, (p + 1) % l, p);
    let place = Place { step, phase: SUMS, t: t as u32, offset: 0, n };
    let weights_place = Place { step, phase: WEIGHTS, t: 0, offset: 0, n };
    let sent_partial: Option<&[i64]> = (t > 0).then_some(&partials[t % 2]);
    let mine = std::mem::take(&mut value_segments[own]);
    let my_slots: Vec<Pieces<'_>> = slot_segments.iter_mut().map(|s| std::mem::take(&mut s[own])).collect();
    let (updated, to_send) = std::sync::mpsc::channel::<(Place, Vec<&[f32]>)>();
    let into = &mut value_segments[gathered];
    let grads = &grads;
    sent += ring.exchange(
        |out| {
            send_sums(out, place, bounds(n, l, send), sent_partial, grads)?;
            let mut chunks = 0;
            for (at, values) in to_send {
                out.floats(at, &values)?;
                chunks += 1;
            }
            // An update that stopped early has its error; this side does not
            // wait for acknowledgements of a segment the neighbour can never finish.
            match chunks == bounds(n, l, own).len().div_ceil(chunk) {
                true => Ok(()),
                false => Err(EngineError::Collective("this leader's update of its segment stopped".into())),
            }
        },
        |inbox| {
            let own_range = bounds(n, l, own);
            // A sender gone has failed the exchange already.
            let done = |start, values| drop(updated.send((weights_place.plus(start), values)));
            update_own(inbox, place, own_range, grads, parts, &rule, (mine, my_slots), done)?;
            drop(updated);
            receive_floats(inbox, weights_place, bounds(n, l, gathered), into, chunk)
        },
    )?;
    // The all-gather's other ring steps.
    sent += all_gather(ring, weights_place, &mut value_segments, chunk, 1)?;
    Ok(sent)
}

/// Brings every leader's optimizer slots in line after sharded steps: the
/// slots of `weights` (each weight's values and slots) around the ring,
/// except those of the weights updated whole by every leader (`by_rows`).
/// `chunk` values per frame. Returns the bytes this leader sent.
#[allow(clippy::type_complexity)]
pub(crate) fn gather_slots(
    ring: &mut Ring,
    step: u64,
    weights: Vec<(&mut [f32], Vec<&mut [f32]>)>,
    by_rows: &[bool],
    chunk: usize,
) -> Result<u64> {
    let weights: Vec<_> = weights
        .into_iter()
        .enumerate()
        .filter(|(e, _)| !by_rows.get(*e).copied().unwrap_or(false))
        .map(|(_, w)| w)
        .collect();
    let slot_count = weights.first().map_or(0, |w| w.1.len());
    let mut by_index: Vec<Vec<&mut [f32]>> = (0..slot_count).map(|_| vec![]).collect();
    for (_, slots) in weights {
        for (k, s) in slots.into_iter().enumerate() {
            by_index.get_mut(k).ok_or_else(|| EngineError::Training("slots differ in number".into()))?.push(s);
        }
    }
    let mut sent = 0;
    for (k, of_slot) in by_index.into_iter().enumerate() {
        let n = of_slot.iter().map(|s| s.len()).sum();
        let mut segments = by_segment(of_slot, ring.size());
        let place = Place { step, phase: SLOTS + k as u8, t: 0, offset: 0, n };
        sent += all_gather(ring, place, &mut segments, chunk, 0)?;
    }
    Ok(sent)
}

fn spans_of(pieces: &Pieces<'_>) -> Vec<(usize, usize)> {
    pieces.iter().map(|(start, v)| (*start, v.len())).collect()
}

/// Sends segment `range`: this process's own sums (the first ring step) or
/// the partial sums that arrived in the previous one (with its own added).
fn send_sums(
    out: &mut Outbox,
    place: Place,
    range: Range<usize>,
    partial: Option<&[i64]>,
    grads: &Grads,
) -> Result<()> {
    let mut scratch = vec![0i64; grads.chunk];
    for start in range.clone().step_by(grads.chunk) {
        let end = (start + grads.chunk).min(range.end);
        if let (None, Some(pieces)) = (partial, grads.own(start..end)) {
            out.gradients(place.plus(start), &pieces)?;
            continue;
        }
        let values = match partial {
            Some(p) => &p[start - range.start..end - range.start],
            None => {
                grads.sum(start..end, &mut scratch[..end - start])?;
                &scratch[..end - start]
            }
        };
        out.sums(place.plus(start), values)?;
    }
    Ok(())
}

/// Receives the partial sums of segment `range` and adds this process's own (rings of more than two).
fn receive_partial(
    inbox: &mut Inbox,
    place: Place,
    range: Range<usize>,
    grads: &Grads,
    into: &mut [i64],
) -> Result<()> {
    for start in range.clone().step_by(grads.chunk) {
        let end = (start + grads.chunk).min(range.end);
        let target = &mut into[start - range.start..end - range.start];
        grads.sum(start..end, target)?;
        let chunk = inbox.sums(place.plus(start), end - start)?;
        grads.add_arrived(&chunk, start..end, target)?;
    }
    Ok(())
}

/// Takes the front of `pieces` (flat offset, values; in flat order) up to
/// flat offset `end`, cutting the piece that crosses it: one chunk's pieces.
fn take_chunk<'a>(pieces: &mut std::collections::VecDeque<(usize, &'a mut [f32])>, end: usize) -> Pieces<'a> {
    let mut out = vec![];
    while let Some((start, values)) = pieces.pop_front() {
        if start >= end {
            pieces.push_front((start, values));
            break;
        }
        if start + values.len() <= end {
            out.push((start, values));
            continue;
        }
        let (head, tail) = values.split_at_mut(end - start);
        out.push((start, head));
        pieces.push_front((end, tail));
        break;
    }
    out
}

/// This leader's own segment: the other processes' sums arrive, its own are
/// added, and the mean updates that segment of the weights and slots, a
/// chunk at a time; each chunk's updated values go to `done` (its flat
/// start and its pieces).
#[allow(clippy::too_many_arguments)]
fn update_own<'a>(
    inbox: &mut Inbox,
    place: Place,
    range: Range<usize>,
    grads: &Grads,
    parts: u64,
    rule: &RangedStep,
    (values, slots): (Pieces<'a>, Vec<Pieces<'a>>),
    mut done: impl FnMut(usize, Vec<&'a [f32]>),
) -> Result<()> {
    let mut values: std::collections::VecDeque<_> = values.into();
    let mut slots: Vec<std::collections::VecDeque<_>> = slots.into_iter().map(Into::into).collect();
    let (mut sum, mut mean) = (vec![0i64; grads.chunk], vec![0f32; grads.chunk]);
    for start in range.clone().step_by(grads.chunk) {
        let end = (start + grads.chunk).min(range.end);
        let (sum, mean) = (&mut sum[..end - start], &mut mean[..end - start]);
        let own = grads.own(start..end);
        if own.is_none() {
            // Summed while the chunk may still be on its way.
            grads.sum(start..end, sum)?;
        }
        let chunk = inbox.sums(place.plus(start), end - start)?;
        match (own, chunk.gradients()) {
            // One gradient here and one from the neighbour (a ring of two): the mean in one pass.
            (Some(own), Some(theirs)) => grads.mean_of_both(start..end, &own, theirs, parts, mean)?,
            (Some(_), None) => {
                grads.sum(start..end, sum)?;
                grads.add_arrived(&chunk, start..end, sum)?;
                mean_into(mean, sum, parts);
            }
            (None, _) => {
                grads.add_arrived(&chunk, start..end, sum)?;
                mean_into(mean, sum, parts);
            }
        }
        let mut chunk_values = take_chunk(&mut values, end);
        let mut chunk_slots: Vec<Pieces<'a>> = slots.iter_mut().map(|s| take_chunk(s, end)).collect();
        for (j, (at, piece)) in chunk_values.iter_mut().enumerate() {
            let mut s: Vec<&mut [f32]> = chunk_slots.iter_mut().map(|k| &mut *k[j].1).collect();
            let mean = &mean[*at - start..*at - start + piece.len()];
            rule.apply(piece, mean, &mut s)?;
        }
        done(start, chunk_values.into_iter().map(|(_, v)| &*v).collect());
    }
    Ok(())
}

/// The ring's all-gather of f32 segments from its ring step `first` on:
/// before step `first` a leader holds segments p + 1, p, ..., p + 1 - first
/// (its own, then what each step brought), and it ends with all of them.
/// Returns the bytes sent.
fn all_gather(ring: &mut Ring, place: Place, segments: &mut [Pieces<'_>], chunk: usize, first: usize) -> Result<u64> {
    let (l, p) = (ring.size(), ring.position());
    let mut sent = 0;
    for t in first..l - 1 {
        let (send, recv) = ((p + 1 + l - t) % l, (p + l - t) % l);
        let place = Place { t: t as u32, ..place };
        let (out_pieces, in_pieces) = two_mut(segments, send, recv);
        let (out_range, in_range) = (bounds(place.n, l, send), bounds(place.n, l, recv));
        sent += ring.exchange(
            |out| send_floats(out, place, out_range, out_pieces, chunk),
            |inbox| receive_floats(inbox, place, in_range, in_pieces, chunk),
        )?;
    }
    Ok(sent)
}

/// Sends the f32 values of segment `range` (its `pieces`), `chunk` values per frame.
fn send_floats(out: &mut Outbox, place: Place, range: Range<usize>, pieces: &Pieces<'_>, chunk: usize) -> Result<()> {
    let spans = spans_of(pieces);
    for start in range.clone().step_by(chunk) {
        let end = (start + chunk).min(range.end);
        let mut values: Vec<&[f32]> = vec![];
        overlaps(&spans, start..end, |j, inside, _| {
            values.push(&pieces[j].1[inside]);
            Ok(())
        })?;
        out.floats(place.plus(start), &values)?;
    }
    Ok(())
}

/// Receives the f32 values of segment `range` into its `pieces`, `chunk` values per frame.
fn receive_floats(
    inbox: &mut Inbox,
    place: Place,
    range: Range<usize>,
    pieces: &mut Pieces<'_>,
    chunk: usize,
) -> Result<()> {
    let spans = spans_of(pieces);
    for start in range.clone().step_by(chunk) {
        let end = (start + chunk).min(range.end);
        let arrived = inbox.floats(place.plus(start), end - start)?;
        let floats = arrived.floats();
        overlaps(&spans, start..end, |j, inside, at| {
            pieces[j].1[inside].copy_from_slice(&floats[at]);
            Ok(())
        })?;
    }
    Ok(())
}

/// Segment `a` to read and segment `b` to write (`a != b`).
fn two_mut<'s, 'a>(segments: &'s mut [Pieces<'a>], a: usize, b: usize) -> (&'s Pieces<'a>, &'s mut Pieces<'a>) {
    if a < b {
        let (lo, hi) = segments.split_at_mut(b);
        (&lo[a], &mut hi[0])
    } else {
        let (lo, hi) = segments.split_at_mut(a);
        (&hi[0], &mut lo[b])
    }
}

#[cfg(test)]
mod tests {
    use super::super::chunked_step::{apply_mean_in_chunks, Sums};
    use super::*;
    use crate::collective::frame::Secret;
    use crate::collective::ring::{connect, Listener, RingPeers};
    use crate::collective::watch::GenerationWatch;
    use crate::train::segment::weights_hash;
    use crate::train::test_model::{adam, tiny_model};
    use kallista_ops::model::Model;
    use std::time::Duration;

    /// Micro-batch `m`'s gradient of each weight of lengths `lens` at `step`,
    /// zero in a third of its rows of 7 (untouched Embedding rows), not the
    /// same third in every micro-batch, and in every fifth row of all of
    /// them; micro-batch 3 leaves every fourth weight untouched.
    fn gradient(lens: &[usize], step: usize, m: usize) -> Vec<Vec<f32>> {
        let untouched = |w: usize, row: usize| {
            (row + w + m).is_multiple_of(3) || row.is_multiple_of(5) || (m == 3 && w.is_multiple_of(4))
        };
        let value = |w: usize, i: usize| match untouched(w, i / 7) {
            true => 0.0,
            false => ((i * 7 + w * 5 + m * 3 + step) % 11) as f32 * 0.013 - 0.06,
        };
        lens.iter().enumerate().map(|(w, &n)| (0..n).map(|i| value(w, i)).collect()).collect()
    }

    /// The rows of 7 where any of `grads` (one weight's) is not zero, as runs.
    fn rows_of(grads: &[&[f32]]) -> Vec<Range<usize>> {
        let n = grads[0].len();
        let rows: Vec<u32> = (0..n.div_ceil(7))
            .filter(|r| grads.iter().any(|g| g[r * 7..(r * 7 + 7).min(n)].iter().any(|&v| v != 0.0)))
            .map(|r| r as u32)
            .collect();
        super::super::exact::row_runs(&rows, 7, n)
    }

    /// Two sharded steps and the slots' gather on rings of 2, 3 and 4
    /// leaders, in frames of 7 values that cut every weight and segment,
    /// with the 5 micro-batches of a step spread unevenly over the leaders
    /// (and 2 or 3 over as many leaders: each sends its own gradients for
    /// the next to round), and every other weight's rows known (different
    /// rows on each leader, none on some, some rows on none: those go by
    /// rows), leave every leader with the bits (weights, slots, iterations)
    /// of one process's chunked step on all micro-batches; a wrong divisor
    /// does not.
    #[test]
    fn every_leader_ends_with_the_bits_of_one_process_step() {
        check_rings(5, &[(2, false), (2, true), (3, false), (3, true), (4, true)]);
        // One micro-batch per leader: each sends its own gradients, which the next one rounds.
        check_rings(2, &[(2, false), (2, true)]);
        check_rings(3, &[(3, true)]);
    }

    /// With one micro-batch per leader, a leader's own gradients reach the
    /// next one unrounded, and it is the next one that rounds them: a NaN in
    /// the part leader 1 sends (the last dense value) is refused by leader
    /// 0, naming the weight, while leader 1, which never rounds that part,
    /// fails only because its neighbour left the ring.
    #[test]
    fn a_neighbours_own_gradients_are_rounded_where_they_arrive() {
        let base = tiny_model(&adam(&[]));
        let entries = base.trainable_entries();
        let weights: Vec<usize> = entries.iter().map(|e| e.0).collect();
        let names: Vec<&str> = entries.iter().map(|e| e.1.as_str()).collect();
        let lens: Vec<usize> = entries.iter().map(|e| e.2).collect();
        // Every weight dense; the last one's last value of leader 1 is NaN.
        let last = lens.len() - 1;
        let mut grads: Vec<Vec<Vec<f32>>> = (0..2).map(|m| gradient(&lens, 0, m)).collect();
        *grads[1][last].last_mut().unwrap() = f32::NAN;
        let listeners: Vec<Listener> = (0..2).map(|_| Listener::bind("127.0.0.1", "127.0.0.1").unwrap()).collect();
        let endpoints: Vec<(usize, String)> =
            listeners.iter().enumerate().map(|(r, l)| (r, l.endpoint.clone())).collect();
        let (secret, _) = Secret::generate().unwrap();
        let results: Vec<Result<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = listeners
                .into_iter()
                .enumerate()
                .map(|(position, listener)| {
                    let (endpoints, grads, secret, weights, names) = (&endpoints, &grads, &secret, &weights, &names);
                    let mut model: Model = base.clone();
                    s.spawn(move || {
                        let peers =
                            RingPeers { job: "j", generation: 1, leaders: endpoints, position, shared_memory: true };
                        let none = GenerationWatch::none();
                        let mut ring =
                            connect(listener, &peers, secret, Duration::from_secs(10), &none).unwrap().unwrap();
                        let vectors: Vec<Vec<&[f32]>> = grads[position].iter().map(|g| vec![g.as_slice()]).collect();
                        let known = vec![None; weights.len()];
                        let update = model.ranged_update(weights).unwrap().unwrap();
                        sharded_step(&mut ring, 0, (&vectors, &known), names, 2, update, 7)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let refused = results[0].as_ref().expect_err("leader 0 rounds leader 1's NaN").to_string();
        assert!(refused.contains(names[last]) && refused.contains("finite"), "{refused}");
        let gone = results[1].as_ref().expect_err("leader 1 loses its neighbour").to_string();
        assert!(!gone.contains("finite"), "leader 1 rounded the part it sent: {gone}");
    }

    /// The steps of `micro_batches` micro-batches on each ring of `rings` (leaders, shared memory).
    fn check_rings(micro_batches: usize, rings: &[(usize, bool)]) {
        let base = tiny_model(&adam(&[]));
        let entries = base.trainable_entries();
        let weights: Vec<usize> = entries.iter().map(|e| e.0).collect();
        let names: Vec<&str> = entries.iter().map(|e| e.1.as_str()).collect();
        let lens: Vec<usize> = entries.iter().map(|e| e.2).collect();
        let steps: Vec<Vec<Vec<Vec<f32>>>> =
            (0..2).map(|s| (0..micro_batches).map(|m| gradient(&lens, s, m)).collect()).collect();
        let one_process = |divisor: u64| {
            let mut model = base.clone();
            for grads in &steps {
                let vectors: Vec<Vec<&[f32]>> =
                    (0..lens.len()).map(|w| grads.iter().map(|g| g[w].as_slice()).collect()).collect();
                let update = model.ranged_update(&weights).unwrap().expect("Adam without clipping");
                apply_mean_in_chunks(Sums::Parts(&vectors, &[]), &names, divisor, update, 5).unwrap();
            }
            weights_hash(&model)
        };
        let want = one_process(micro_batches as u64);
        assert_ne!(want, weights_hash(&base), "the steps changed nothing");
        assert_ne!(want, one_process(micro_batches as u64 - 1), "a wrong divisor passes");
        let (secret, _) = Secret::generate().unwrap();
        for &(leaders, shared_memory) in rings {
            let listeners: Vec<Listener> =
                (0..leaders).map(|_| Listener::bind("127.0.0.1", "127.0.0.1").unwrap()).collect();
            let endpoints: Vec<(usize, String)> =
                listeners.iter().enumerate().map(|(r, l)| (r, l.endpoint.clone())).collect();
            let hashes: Vec<String> = std::thread::scope(|s| {
                let handles: Vec<_> = listeners
                    .into_iter()
                    .enumerate()
                    .map(|(position, listener)| {
                        let (endpoints, steps, secret, weights, names) =
                            (&endpoints, &steps, &secret, &weights, &names);
                        let mut model: Model = base.clone();
                        s.spawn(move || {
                            let peers =
                                RingPeers { job: "j", generation: 1, leaders: endpoints, position, shared_memory };
                            let none = GenerationWatch::none();
                            let mut ring =
                                connect(listener, &peers, secret, Duration::from_secs(10), &none).unwrap().unwrap();
                            let mut known: Vec<Option<Vec<Range<usize>>>> = vec![];
                            for (step, grads) in steps.iter().enumerate() {
                                let mine: Vec<&Vec<Vec<f32>>> = grads.iter().skip(position).step_by(leaders).collect();
                                let vectors: Vec<Vec<&[f32]>> = (0..weights.len())
                                    .map(|w| mine.iter().map(|g| g[w].as_slice()).collect())
                                    .collect();
                                known =
                                    vectors.iter().enumerate().map(|(w, v)| (w % 2 == 0).then(|| rows_of(v))).collect();
                                let update = model.ranged_update(weights).unwrap().unwrap();
                                let parts = micro_batches as u64;
                                sharded_step(&mut ring, step as u64, (&vectors, &known), names, parts, update, 7)
                                    .unwrap();
                            }
                            let whole = by_rows(&known, weights.len());
                            assert!(whole.contains(&true) && whole.contains(&false), "both ways: {whole:?}");
                            gather_slots(&mut ring, 1, model.weights_and_slots_mut(weights).unwrap(), &whole, 7)
                                .unwrap();
                            weights_hash(&model)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (position, got) in hashes.iter().enumerate() {
                assert_eq!(got, &want, "leader {position} of {leaders}, shared memory {shared_memory}");
            }
        }
    }
}
