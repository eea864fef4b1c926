//! The sums of weights whose gradients are zero outside known rows (an
//! Embedding's), between processes: each leader's exact sum over its rows
//! goes around the ring to every other leader (an all-gather of rows), each
//! leader adds them all up and updates the whole weight itself. The weight's
//! updated values never travel: Adam moves every row ever touched in
//! training, so a sharded Embedding would carry its whole table (10 MB for W1) around
//! the ring each step, while one step's rows are a few hundred. The sums are
//! integers, added in any order, and the update is elementwise: the bits of
//! the whole-vector step.

use super::exact::{mean_into, sum_exact_runs};
use super::sharded_step::ROWS;
use crate::collective::checked::add_checked;
use crate::collective::ring::{Inbox, Outbox, Place, Ring};
use crate::error::{EngineError, Result};
use std::ops::Range;

/// The exact sum of one weight's gradients over some of its value ranges,
/// zero outside them.
#[derive(Debug, PartialEq)]
pub(crate) struct RowSums {
    /// Sorted, disjoint ranges of the weight.
    runs: Vec<Range<usize>>,
    /// The sums over `runs`, one after another.
    sums: Vec<i64>,
    /// Where each run starts in `sums`.
    offsets: Vec<usize>,
}

impl RowSums {
    fn new(runs: Vec<Range<usize>>, sums: Vec<i64>) -> RowSums {
        let offsets = runs
            .iter()
            .scan(0, |at, r| {
                let start = *at;
                *at += r.len();
                Some(start)
            })
            .collect();
        RowSums { runs, sums, offsets }
    }

    /// This process's exact sum of `parts` (micro-batch gradients of weight
    /// `name`, zero outside `runs`) over `runs`, which are checked as a
    /// peer's are.
    pub(crate) fn of(parts: &[&[f32]], runs: Vec<Range<usize>>, name: &str) -> Result<RowSums> {
        let n = parts.iter().map(|p| p.len()).min().unwrap_or(0);
        let bounds: Vec<i64> = runs.iter().flat_map(|r| [r.start as i64, r.end as i64]).collect();
        let values = runs.iter().map(|r| r.len()).sum();
        checked_runs(&bounds, n, values)
            .map_err(|why| EngineError::Training(format!("'{name}': the rows its gradient names: {why}")))?;
        let mut sums = vec![0i64; runs.iter().map(|r| r.len()).sum()];
        let mut at = 0;
        for run in &runs {
            let of_run: Vec<&[f32]> = parts.iter().map(|p| &p[run.clone()]).collect();
            sum_exact_runs(&mut sums[at..at + run.len()], &of_run, name, None)?;
            at += run.len();
        }
        Ok(RowSums::new(runs, sums))
    }

    /// The sum of `all` (every leader's sums of one weight) over the union of their runs.
    pub(crate) fn total(all: &[&RowSums]) -> Result<RowSums> {
        let mut ranges: Vec<Range<usize>> = all.iter().flat_map(|s| s.runs.iter().cloned()).collect();
        ranges.sort_by_key(|r| r.start);
        let mut union: Vec<Range<usize>> = vec![];
        for r in ranges {
            match union.last_mut() {
                Some(u) if r.start <= u.end => u.end = u.end.max(r.end),
                _ => union.push(r),
            }
        }
        let mut total = RowSums::new(union, vec![]);
        total.sums = vec![0i64; total.runs.iter().map(|r| r.len()).sum()];
        for one in all {
            for (run, &at) in one.runs.iter().zip(&one.offsets) {
                let k = total.runs.partition_point(|u| u.end <= run.start);
                let into = total.offsets[k] + run.start - total.runs[k].start;
                add_checked(&mut total.sums[into..into + run.len()], &one.sums[at..at + run.len()])?;
            }
        }
        Ok(total)
    }

    /// Writes the mean over `count` micro-batches of `range` of the weight
    /// into `out` (as long as `range`): +0.0 outside the runs, as
    /// [`mean_into`] gives for a zero sum.
    pub(crate) fn mean_within(&self, out: &mut [f32], range: Range<usize>, count: u64) {
        out.fill(0.0);
        let first = self.runs.partition_point(|r| r.end <= range.start);
        for (run, &at) in self.runs[first..].iter().zip(&self.offsets[first..]).take_while(|(r, _)| r.start < range.end)
        {
            let (lo, hi) = (run.start.max(range.start), run.end.min(range.end));
            let from = at + lo - run.start;
            mean_into(&mut out[lo - range.start..hi - range.start], &self.sums[from..from + hi - lo], count);
        }
    }

    /// The furthest value any run reaches.
    pub(crate) fn end(&self) -> usize {
        self.runs.last().map_or(0, |r| r.end)
    }
}

/// Carries `own` (this leader's sums of each weight, named by `weights`:
/// its place among the step's weights and its length) around the ring;
/// returns every leader's, by ring position, and the bytes this leader
/// sent. `chunk` values per frame.
pub(crate) fn all_gather_rows(
    ring: &mut Ring,
    step: u64,
    own: Vec<RowSums>,
    weights: &[(usize, usize)],
    chunk: usize,
) -> Result<(Vec<Vec<RowSums>>, u64)> {
    let (l, p) = (ring.size(), ring.position());
    let mut by_leader: Vec<Vec<RowSums>> = (0..l).map(|_| vec![]).collect();
    by_leader[p] = own;
    let mut sent = 0;
    // Step t sends the sums that started at leader p - t and receives those of p - t - 1.
    for t in 0..l - 1 {
        let (outgoing, arriving) = ((p + l - t) % l, (p + l - t - 1) % l);
        let place = Place { step, phase: ROWS, t: t as u32, offset: 0, n: weights.len() };
        let mut arrived = vec![];
        let rows = &by_leader[outgoing];
        sent += ring.exchange(
            |out| send_rows(out, place, rows, weights, chunk),
            |inbox| {
                arrived = receive_rows(inbox, place, weights, chunk)?;
                Ok(())
            },
        )?;
        by_leader[arriving] = arrived;
    }
    Ok((by_leader, sent))
}

/// Values per weight in the header: its place, its length, its runs and their values.
const HEADER: usize = 4;

/// Frames, in order: a header naming each weight and the size of its sums,
/// then for each weight with rows its runs as (start, end) pairs and its
/// sums, `chunk` values per frame.
fn send_rows(out: &mut Outbox, place: Place, rows: &[RowSums], weights: &[(usize, usize)], chunk: usize) -> Result<()> {
    let header: Vec<i64> = rows
        .iter()
        .zip(weights)
        .flat_map(|(r, &(e, n))| [e as i64, n as i64, r.runs.len() as i64, r.sums.len() as i64])
        .collect();
    out.sums(place, &header)?;
    let mut frame = 1;
    for r in rows.iter().filter(|r| !r.runs.is_empty()) {
        let bounds: Vec<i64> = r.runs.iter().flat_map(|run| [run.start as i64, run.end as i64]).collect();
        for values in bounds.chunks(chunk).chain(r.sums.chunks(chunk)) {
            out.sums(place.plus(frame), values)?;
            frame += 1;
        }
    }
    Ok(())
}

/// Receives what [`send_rows`] sent for the same `weights`: a header that
/// names other weights or sizes beyond them, or runs that are not sorted,
/// disjoint runs of the announced length, are refused before anything is
/// allocated or added.
fn receive_rows(inbox: &mut Inbox, place: Place, weights: &[(usize, usize)], chunk: usize) -> Result<Vec<RowSums>> {
    let malformed = |why: String| EngineError::Collective(format!("malformed row sums from the previous rank: {why}"));
    let mut header = vec![0i64; HEADER * weights.len()];
    inbox.sums(place, header.len())?.set(&mut header)?;
    let mut frame = 1;
    let mut out = Vec::with_capacity(weights.len());
    for (&(e, n), got) in weights.iter().zip(header.chunks(HEADER)) {
        if got[0] != e as i64 || got[1] != n as i64 {
            return Err(malformed(format!(
                "weight {} of {} values where this rank has weight {e} of {n}",
                got[0], got[1]
            )));
        }
        let (Ok(runs), Ok(values)) = (usize::try_from(got[2]), usize::try_from(got[3])) else {
            return Err(malformed(format!("negative counts {got:?}")));
        };
        // Runs are merged, so at least one value apart: at most (n + 1) / 2 of them.
        if values > n || runs > values || runs > n.div_ceil(2) || (runs == 0) != (values == 0) {
            return Err(malformed(format!("{runs} runs of {values} values in a weight of {n}")));
        }
        let mut bounds = vec![0i64; 2 * runs];
        for part in bounds.chunks_mut(chunk) {
            inbox.sums(place.plus(frame), part.len())?.set(part)?;
            frame += 1;
        }
        let runs = checked_runs(&bounds, n, values).map_err(malformed)?;
        let mut sums = vec![0i64; values];
        for part in sums.chunks_mut(chunk) {
            inbox.sums(place.plus(frame), part.len())?.set(part)?;
            frame += 1;
        }
        out.push(RowSums::new(runs, sums));
    }
    Ok(out)
}

/// The runs of (start, end) pairs `bounds`, if they are sorted, merged
/// (a gap between any two), not empty, within `0..n` and `values` long in all.
fn checked_runs(bounds: &[i64], n: usize, values: usize) -> std::result::Result<Vec<Range<usize>>, String> {
    let mut runs: Vec<Range<usize>> = Vec::with_capacity(bounds.len() / 2);
    for pair in bounds.chunks(2) {
        let (start, end) = (pair[0], pair.get(1).copied().unwrap_or(-1));
        let gap_after = runs.last().map_or(0, |r| r.end as i64 + 1);
        if start < gap_after || end <= start || end > n as i64 {
            return Err(format!("run {start}..{end} where runs must start at {gap_after} or later and end by {n}"));
        }
        runs.push(start as usize..end as usize);
    }
    match runs.iter().map(|r| r.len()).sum::<usize>() {
        sum if sum == values => Ok(runs),
        sum => Err(format!("runs of {sum} values, {values} announced")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(runs: &[Range<usize>], parts: &[Vec<f32>]) -> RowSums {
        let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
        RowSums::of(&refs, runs.to_vec(), "w").unwrap()
    }

    /// Leaders' sums over overlapping and disjoint runs add up to the sum of
    /// all their parts over the whole weight, and the mean is the whole
    /// mean's bits, +0.0 outside every run.
    #[test]
    fn totals_over_the_union_equal_whole_sums() {
        let n = 40;
        let part = |seed: usize, runs: &[Range<usize>]| -> Vec<f32> {
            (0..n)
                .map(|i| match runs.iter().any(|r| r.contains(&i)) {
                    true => ((i * 7 + seed * 3) % 11) as f32 * 0.013 - 0.06,
                    false => 0.0,
                })
                .collect()
        };
        let (a, b, c) = (vec![2..6, 10..14], vec![4..8, 20..24], std::iter::once(14..16).collect::<Vec<_>>());
        let leaders = [
            (a.clone(), vec![part(0, &a), part(1, &a)]),
            (b.clone(), vec![part(2, &b)]),
            (c.clone(), vec![part(3, &c)]),
        ];
        let each: Vec<RowSums> = leaders.iter().map(|(runs, parts)| sums(runs, parts)).collect();
        let total = RowSums::total(&each.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(total.runs, vec![2..8, 10..16, 20..24]);
        let all_parts: Vec<Vec<f32>> = leaders.iter().flat_map(|(_, p)| p.clone()).collect();
        let whole = sums(std::slice::from_ref(&(0..n)), &all_parts);
        let mut want = vec![0f32; n];
        mean_into(&mut want, &whole.sums, 4);
        let mut got = vec![f32::NAN; n];
        for range in [0..9, 9..23, 23..n] {
            total.mean_within(&mut got[range.clone()], range, 4);
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
        assert!(want[2..8].iter().any(|&v| v != 0.0), "the runs summed nothing");
    }

    /// Runs from a peer that overlap, touch (merged runs never do), run
    /// backwards, leave the weight, lack an end or disagree with the
    /// announced length are refused.
    #[test]
    fn malformed_runs_are_refused() {
        assert_eq!(checked_runs(&[0, 4, 6, 8], 10, 6), Ok(vec![0..4, 6..8]));
        for (bounds, n, values) in [
            (vec![0, 4, 3, 8], 10, 9),
            (vec![0, 4, 4, 8], 10, 8),
            (vec![0, 4, 6], 10, 4),
            (vec![4, 2], 10, 2),
            (vec![4, 4], 10, 0),
            (vec![6, 12], 10, 6),
            (vec![-2, 2], 10, 4),
            (vec![0, 4, 6, 8], 10, 5),
        ] {
            assert!(checked_runs(&bounds, n, values).is_err(), "{bounds:?} in {n}, {values} values");
        }
    }
}
