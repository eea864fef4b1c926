//! The messages between workers and parameter-server shards, over
//! authenticated frames ([`crate::collective::frame`]): a JSON request or
//! reply (HMAC-signed), then the values it carries as sealed chunks of f32
//! (AES-GCM with the job's key: authenticated and encrypted), each chunk
//! headed by its slice and offset so that a reordered or foreign chunk is
//! refused. Between processes of one host the values go through a
//! region of shared memory the worker offers ([`Request::Share`]) instead:
//! the signed request or reply says they are there, and the side that sent
//! it does not touch the region until the answer.

use crate::collective::frame::{json, parse, FrameError, Framed};
use crate::collective::shm::{Offer, Region};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Write};

pub const REQUEST: u8 = 21;
pub const REPLY: u8 = 22;
/// A chunk of f32 values (sent as their bits).
pub const VALUES: u8 = 23;
/// Values per chunk (4 MB).
const CHUNK: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// The shard's current values (then [`Reply::Weights`] and the values).
    /// `again`: a pull within the worker's run (newer weights before a
    /// step), not the pull that starts a run; `have`: the version the
    /// worker holds, answered by [`Reply::Unchanged`] (no values) if the
    /// shard is still at it.
    Pull {
        job: String,
        worker: usize,
        segment: u64,
        #[serde(default)]
        again: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        have: Option<u64>,
    },
    /// A gradient for the shard's slices (the values follow the request),
    /// computed on the shard's version `base_version`; the last of global
    /// step `step` of `segment` for this worker. Answered by
    /// [`Reply::Pushed`] and the shard's values after it.
    Push(Push),
    /// Counters per worker ([`Reply::Stats`]).
    Stats { job: String },
    /// A region of shared memory for this connection's values, the shard's
    /// slices in order ([`Reply::Shared`] says whether the shard opened it).
    Share { job: String, offer: Offer },
    /// [`Request::Pull`], the values answered in the shared region.
    PullShared {
        job: String,
        worker: usize,
        segment: u64,
        #[serde(default)]
        again: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        have: Option<u64>,
    },
    /// [`Request::Push`], the gradient in the shared region and the values
    /// answered there.
    PushShared(Push),
    /// [`Request::PushShared`] of which only the rows [`Push::sparse`]
    /// names were written. A request of its own: a shard that does not
    /// know it refuses it, where it would have read the rest of the region
    /// (the last values) as gradient.
    PushSharedRows(Push),
}

impl Request {
    /// The job the request is for.
    pub fn job(&self) -> &str {
        match self {
            Request::Pull { job, .. }
            | Request::Stats { job }
            | Request::Share { job, .. }
            | Request::PullShared { job, .. } => job,
            Request::Push(p) | Request::PushShared(p) | Request::PushSharedRows(p) => &p.job,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Push {
    pub job: String,
    pub worker: usize,
    pub segment: u64,
    pub step: u64,
    /// Steps the gradient covers (`push_every_steps`, fewer at a segment's end).
    pub steps: u64,
    pub base_version: u64,
    /// The worker's run this push belongs to, as its pull was answered
    /// ([`Reply::Weights::run`]).
    #[serde(default)]
    pub run: u64,
    pub rows: u64,
    pub loss_sum: f64,
    pub correct: u64,
    /// By the shard's slices, in order, for a [`Request::PushSharedRows`]: the
    /// rows of each slice's gradient that may be non-zero, where known
    /// ([`SparseRows`]); empty, or `None` for a slice: all of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sparse: Vec<Option<SparseRows>>,
}

/// The rows of a weight's gradient that may be non-zero (an Embedding's:
/// the rows of the step's tokens, a few hundred of 10,000); the rest is
/// zero. Through shared memory only these rows are written and read, so
/// a large Embedding's push costs its tokens, not its vocabulary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseRows {
    /// Elements of a row.
    pub width: usize,
    /// Row numbers in the whole weight, ascending.
    pub rows: Vec<u32>,
}

impl SparseRows {
    /// The rows' element ranges within a slice of `len` elements that
    /// starts at element `from` of its weight, relative to the slice, in
    /// order (the rows must be ascending, as [`SparseRows::sorted`] makes them).
    pub fn spans(&self, from: usize, len: usize) -> Vec<std::ops::Range<usize>> {
        let (width, end) = (self.width.max(1), from.saturating_add(len));
        let row_start = |r: u32| (r as usize).saturating_mul(width);
        let first = self.rows.partition_point(|&r| row_start(r).saturating_add(width) <= from);
        self.rows[first..]
            .iter()
            .map(|&r| row_start(r))
            .take_while(|&start| start < end)
            .map(|start| start.max(from) - from..start.saturating_add(width).min(end) - from)
            .collect()
    }

    /// These rows ascending and once each, whatever the sender sent.
    pub fn sorted(mut self) -> SparseRows {
        self.rows.sort_unstable();
        self.rows.dedup();
        self
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The values follow. `done_steps`: steps of `segment` this worker
    /// already pushed (a re-run worker skips them). `run`: this pull's run
    /// of the worker; pushes of an earlier run are refused from now on.
    Weights {
        version: u64,
        done_steps: u64,
        #[serde(default)]
        run: u64,
    },
    /// Whether the gradient was applied (not too stale); the values follow.
    Pushed {
        accepted: bool,
        staleness: u64,
        version: u64,
    },
    /// A pull `again` of the version the worker holds: no values follow.
    Unchanged {
        version: u64,
    },
    Stats(ShardStats),
    /// Whether the shard opened the offered region.
    Shared(bool),
    Refused(String),
}

/// What a shard counted, per worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    pub pulls: u64,
    pub pushes: u64,
    /// Pushes dropped as older than `max_staleness` versions.
    pub dropped: u64,
    /// Summed over the pushes (accepted or not): versions applied since the push's base.
    pub staleness_sum: u64,
    pub max_staleness: u64,
    /// Rows, loss and correct answers of the pushed steps.
    pub rows: u64,
    pub loss_sum: f64,
    pub correct: u64,
}

/// A shard's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardStats {
    pub version: u64,
    /// Messages refused (not authenticated, tampered, replayed, another job's).
    pub refused: u64,
    pub workers: BTreeMap<usize, WorkerStats>,
}

pub fn send_json<S: Read + Write, T: Serialize>(framed: &mut Framed<S>, kind: u8, value: &T) -> Result<(), FrameError> {
    framed.send(kind, &[&json(value)])
}

pub fn receive_json<S: Read + Write, T: serde::de::DeserializeOwned>(
    framed: &mut Framed<S>,
    kind: u8,
) -> Result<T, FrameError> {
    let (got, body) = framed.receive()?;
    if got != kind {
        return Err(FrameError::Refused(format!("expected a message of kind {kind}, got kind {got}")));
    }
    parse(&body)
}

/// Sends `parts` (a shard's slices, in order) as sealed chunks.
pub fn send_values<S: Read + Write>(framed: &mut Framed<S>, parts: &[&[f32]]) -> Result<(), FrameError> {
    let mut buffer: Vec<u8> = vec![];
    for (i, part) in parts.iter().enumerate() {
        for (c, chunk) in part.chunks(CHUNK).enumerate() {
            buffer.clear();
            buffer.extend_from_slice(bytemuck::cast_slice(chunk));
            framed.send_sealed(VALUES, &header(i, c * CHUNK), &mut buffer)?;
        }
    }
    Ok(())
}

/// Receives what [`send_values`] sent into `parts` (their lengths are the
/// expected ones: a chunk out of place or of another size is refused).
pub fn receive_values<S: Read + Write>(framed: &mut Framed<S>, parts: &mut [&mut [f32]]) -> Result<(), FrameError> {
    let (mut wide, mut narrow) = (vec![], vec![]);
    for (i, part) in parts.iter_mut().enumerate() {
        for (c, chunk) in part.chunks_mut(CHUNK).enumerate() {
            let mut head = [0u8; 16];
            framed.receive_values(None, &[VALUES], &mut head, &mut wide, &mut narrow)?;
            if head != header(i, c * CHUNK) || narrow.len() != chunk.len() {
                return Err(FrameError::Refused(format!(
                    "a chunk of {} values out of place (expected {} values of slice {i} at {})",
                    narrow.len(),
                    chunk.len(),
                    c * CHUNK
                )));
            }
            chunk.copy_from_slice(bytemuck::cast_slice(&narrow));
        }
    }
    Ok(())
}

/// Writes `parts` one after another into `region`; `false` if they do not
/// fit. Of a part that `sparse` gives rows for, only those rows (its
/// element `k` is element `froms[i] + k` of its weight); the rest of its
/// place keeps whatever it held.
pub fn write_shared(region: &mut Region, parts: &[&[f32]], sparse: &[Option<SparseRows>], froms: &[usize]) -> bool {
    let mut at = 0;
    for (i, part) in parts.iter().enumerate() {
        let bytes = std::mem::size_of_val(*part);
        let written = match (sparse.get(i).and_then(Option::as_ref), froms.get(i)) {
            (Some(rows), Some(&from)) if at + bytes <= region.len() => rows
                .spans(from, part.len())
                .into_iter()
                .all(|s| region.write(at + s.start * std::mem::size_of::<f32>(), bytemuck::cast_slice(&part[s]))),
            (Some(_), _) => false,
            (None, _) => region.write(at, bytemuck::cast_slice(part)),
        };
        if !written {
            return false;
        }
        at += bytes;
    }
    true
}

/// Reads what [`write_shared`] wrote into `parts` (of the written lengths).
pub fn read_shared(region: &Region, parts: &mut [&mut [f32]]) -> Result<(), FrameError> {
    let mut at = 0;
    for part in parts.iter_mut() {
        if !region.read(at, bytemuck::cast_slice_mut(part)) {
            return Err(FrameError::Refused(format!("values past the shared region's {} bytes", region.len())));
        }
        at += std::mem::size_of_val(*part);
    }
    Ok(())
}

fn header(slice: usize, offset: usize) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&(slice as u64).to_le_bytes());
    h[8..].copy_from_slice(&(offset as u64).to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_rows_give_their_elements_within_a_slice_cut_anywhere() {
        let rows = SparseRows { width: 4, rows: vec![9, 1, 3, 1] }.sorted();
        assert_eq!(rows.rows, vec![1, 3, 9]);
        // The whole weight (10 rows of 4).
        assert_eq!(rows.spans(0, 40), vec![4..8, 12..16, 36..40]);
        // A slice from element 6 to 14 cuts rows 1 and 3.
        assert_eq!(rows.spans(6, 8), vec![0..2, 6..8]);
        // A slice between the rows has none.
        assert_eq!(rows.spans(16, 20), Vec::<std::ops::Range<usize>>::new());
    }
}
