//! Exact sums of gradients, so that `sync` training gives the same bits with
//! any number of workers.
//!
//! Floating-point addition is not associative: summing the same micro-batch
//! gradients as `(a + b) + (c + d)` on two workers and `((a + b) + c) + d` on
//! one differs in the last bits, and those differences grow over a run.
//! Each value is therefore rounded once to fixed point (a resolution of
//! 2^-36, about 1.5e-11, far below an f32 gradient's own rounding at the sizes
//! that move weights) and summed as i64, whose addition is associative: any
//! grouping of the same micro-batches gives the same sum.

use crate::error::{EngineError, Result};
use std::ops::Range;

/// Fixed-point fraction bits.
pub(crate) const FRACTION_BITS: i32 = 36;
/// Largest magnitude accepted (32768), leaving headroom for summing 2^12 micro-batches.
const LIMIT: f64 = (1u64 << (63 - FRACTION_BITS - 12)) as f64;
/// The bits of `LIMIT` as an f32: a value's magnitude bits at or above them
/// (NaN and infinities included) are out of range.
pub(crate) const LIMIT_F32_BITS: u32 = 0x4700_0000;

/// 1.5 * 2^52: adding it to an f64 of magnitude below 2^51 rounds that value
/// to the nearest integer (ties to even) and leaves the integer in the low
/// bits of the result, so the rounding and the conversion to i64 are two
/// vector instructions instead of a call to `round` per value.
pub(crate) const MAGIC: f64 = 6_755_399_441_055_744.0;

/// Rounds `values` of vector `name` to fixed point and adds them to `sum`.
pub fn add_exact(sum: &mut [i64], values: &[f32], name: &str) -> Result<()> {
    let (largest, overflow) = multiversion_round::<false>(sum, values);
    check(values, name, largest, overflow)
}

/// Sets `sum` to `values` of vector `name` rounded to fixed point: the first
/// vector of a sum, without clearing the buffer and reading the zeros back.
pub fn set_exact(sum: &mut [i64], values: &[f32], name: &str) -> Result<()> {
    let (largest, overflow) = multiversion_round::<true>(sum, values);
    check(values, name, largest, overflow)
}

fn check(values: &[f32], name: &str, largest: u32, overflow: i64) -> Result<()> {
    if largest >= LIMIT_F32_BITS {
        let out_of_range = |v: f32| !v.is_finite() || (v as f64).abs() >= LIMIT;
        let (i, v) = values.iter().enumerate().find(|(_, v)| out_of_range(**v)).unwrap_or((0, &0.0));
        return Err(EngineError::Training(format!(
            "'{name}'[{i}] is {v}: gradients must be finite and below {LIMIT} in magnitude to be summed exactly"
        )));
    }
    if overflow < 0 {
        return Err(EngineError::Training(format!("'{name}': the fixed-point sum overflowed")));
    }
    Ok(())
}

/// The rounding loop, compiled for AVX-512 and AVX2 too and picked at run time (the same
/// bits either way: no instruction in it rounds differently). Returns the
/// largest magnitude bits seen and, negative when a sum overflowed, the
/// overflow flags of the adds.
fn multiversion_round<const SET: bool>(sum: &mut [i64], values: &[f32]) -> (u32, i64) {
    #[inline(always)]
    fn body<const SET: bool>(sum: &mut [i64], values: &[f32]) -> (u32, i64) {
        let scale = (2.0f64).powi(FRACTION_BITS);
        let magic_bits = MAGIC.to_bits() as i64;
        let (mut largest, mut overflow) = (0u32, 0i64);
        for (s, &v) in sum.iter_mut().zip(values) {
            largest = largest.max(v.to_bits() & 0x7fff_ffff);
            let fixed = ((v as f64 * scale + MAGIC).to_bits() as i64).wrapping_sub(magic_bits);
            if SET {
                *s = fixed;
            } else {
                let next = s.wrapping_add(fixed);
                // Signed overflow: the result's sign differs from both operands'.
                overflow |= (*s ^ next) & (fixed ^ next);
                *s = next;
            }
        }
        (largest, overflow)
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512dq") {
            #[target_feature(enable = "avx512f,avx512dq")]
            unsafe fn widest<const SET: bool>(sum: &mut [i64], values: &[f32]) -> (u32, i64) {
                body::<SET>(sum, values)
            }
            // SAFETY: the features were detected at run time.
            return unsafe { widest::<SET>(sum, values) };
        }
        if std::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            unsafe fn wide<const SET: bool>(sum: &mut [i64], values: &[f32]) -> (u32, i64) {
                body::<SET>(sum, values)
            }
            // SAFETY: the feature was detected at run time.
            return unsafe { wide::<SET>(sum, values) };
        }
    }
    body::<SET>(sum, values)
}

/// Sets `sum` to the exact sum of `parts` (each as long as `sum`), rounding
/// only the runs `known` (from the rows an Embedding's gradient was written
/// in, [`runs_within`]: every part is zero outside them, and zeros sum to
/// zero without rounding), or the whole range when `None`; returns the runs.
/// Outside them `sum` is left as it was.
/// Within the runs, the values of [`set_exact`] and [`add_exact`] over the
/// whole range.
/// Dense gradients are not scanned for zero groups: the scan cost more than
/// rounding the few it found.
pub fn sum_exact_runs(
    sum: &mut [i64],
    parts: &[&[f32]],
    name: &str,
    known: Option<Vec<Range<usize>>>,
) -> Result<Vec<Range<usize>>> {
    let Some((first, rest)) = parts.split_first() else {
        return Err(EngineError::Training(format!("'{name}': a sum of no micro-batches")));
    };
    let runs = known.unwrap_or_else(|| std::iter::once(0..sum.len()).collect());
    for run in &runs {
        set_exact(&mut sum[run.clone()], &first[run.clone()], name)?;
        for part in rest {
            add_exact(&mut sum[run.clone()], &part[run.clone()], name)?;
        }
    }
    Ok(runs)
}

/// The value ranges of rows `rows` (sorted, distinct) of width `width` in a
/// vector of `n` values, neighbours merged.
pub fn row_runs(rows: &[u32], width: usize, n: usize) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = vec![];
    for &r in rows {
        let (start, end) = ((r as usize * width).min(n), ((r as usize + 1) * width).min(n));
        match runs.last_mut() {
            Some(run) if run.end == start => run.end = end,
            _ if start < end => runs.push(start..end),
            _ => {}
        }
    }
    runs
}

/// The parts of `runs` (sorted ranges of a whole vector) inside `range`, relative to its start.
pub fn runs_within(runs: &[Range<usize>], range: Range<usize>) -> Vec<Range<usize>> {
    let first = runs.partition_point(|r| r.end <= range.start);
    runs[first..]
        .iter()
        .take_while(|r| r.start < range.end)
        .map(|r| r.start.max(range.start) - range.start..r.end.min(range.end) - range.start)
        .collect()
}

/// Writes `sum / count` as f32 into `out` (one rounding, the same for every grouping of the sum).
pub fn mean_into(out: &mut [f32], sum: &[i64], count: u64) {
    #[inline(always)]
    fn body(out: &mut [f32], sum: &[i64], scale: f64) {
        // Below 2^51 in magnitude an i64 converts to f64 exactly by the
        // MAGIC trick, which vectorizes; `as f64` (the same value) does not.
        const FAST: i64 = 1 << 51;
        let fits = sum.iter().fold(true, |ok, &s| ok & ((s.wrapping_add(FAST) as u64) < (2 * FAST) as u64));
        if fits {
            let magic_bits = MAGIC.to_bits() as i64;
            for (o, &s) in out.iter_mut().zip(sum) {
                *o = ((f64::from_bits(s.wrapping_add(magic_bits) as u64) - MAGIC) * scale) as f32;
            }
        } else {
            for (o, &s) in out.iter_mut().zip(sum) {
                *o = (s as f64 * scale) as f32;
            }
        }
    }
    let scale = (2.0f64).powi(-FRACTION_BITS) / count.max(1) as f64;
    const BLOCK: usize = 4096;
    for (o, s) in out.chunks_mut(BLOCK).zip(sum.chunks(BLOCK)) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512dq") {
                #[target_feature(enable = "avx512f,avx512dq")]
                unsafe fn widest(out: &mut [f32], sum: &[i64], scale: f64) {
                    body(out, sum, scale)
                }
                // SAFETY: the features were detected at run time.
                unsafe { widest(o, s, scale) };
                continue;
            }
            if std::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                unsafe fn wide(out: &mut [f32], sum: &[i64], scale: f64) {
                    body(out, sum, scale)
                }
                // SAFETY: the feature was detected at run time.
                unsafe { wide(o, s, scale) };
                continue;
            }
        }
        body(o, s, scale);
    }
}

/// `sum / count` as f32 (see [`mean_into`]).
#[cfg(test)]
fn mean_of_exact(sum: &[i64], count: u64) -> Vec<f32> {
    let mut out = vec![0f32; sum.len()];
    mean_into(&mut out, sum, count);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_does_not_change_the_sum() {
        let parts: Vec<Vec<f32>> = (0..8)
            .map(|k| (0..64).map(|i| ((i * 7 + k * 13) as f32).sin() * 10f32.powi(i % 9 - 6)).collect())
            .collect();
        let exact = |groups: &[&[usize]]| {
            let mut total = vec![0i64; 64];
            for g in groups {
                let mut partial = vec![0i64; 64];
                for &k in *g {
                    add_exact(&mut partial, &parts[k], "g").unwrap();
                }
                total.iter_mut().zip(&partial).for_each(|(t, p)| *t += p);
            }
            mean_of_exact(&total, 8)
        };
        let one = exact(&[&[0, 1, 2, 3, 4, 5, 6, 7]]);
        assert_eq!(one, exact(&[&[0, 1, 2, 3], &[4, 5, 6, 7]]));
        assert_eq!(one, exact(&[&[6, 7], &[0, 3], &[1, 2], &[4, 5]]));
        // Plain f32 sums in the same two groupings do differ: the test can fail.
        let float = |groups: &[&[usize]]| -> Vec<f32> {
            let mut total = vec![0f32; 64];
            for g in groups {
                let mut partial = vec![0f32; 64];
                for &k in *g {
                    partial.iter_mut().zip(&parts[k]).for_each(|(p, v)| *p += v);
                }
                total.iter_mut().zip(&partial).for_each(|(t, p)| *t += p);
            }
            total
        };
        assert_ne!(float(&[&[0, 1, 2, 3, 4, 5, 6, 7]]), float(&[&[6, 7], &[0, 3], &[1, 2], &[4, 5]]));
        // And the fixed-point mean is within 1e-6 relative of the f64 mean.
        for i in 0..64 {
            let m: f64 = parts.iter().map(|p| p[i] as f64).sum::<f64>() / 8.0;
            assert!((one[i] as f64 - m).abs() <= 1e-6 * m.abs() + 1e-10, "{i}: {} vs {m}", one[i]);
        }
    }

    /// Sums and means over known runs (zero outside them in every part)
    /// equal the whole-range ones, bit for bit: zeros of either sign, zeros
    /// in some parts only and a denormal inside the runs; a NaN inside them
    /// is still refused. Without runs, the whole range is summed.
    #[test]
    fn sums_over_known_runs_equal_whole_sums() {
        let n = 64 * 9 + 13;
        let mut parts: Vec<Vec<f32>> =
            (0..3).map(|p| (0..n).map(|i| ((i * 7 + p * 3) % 11) as f32 * 0.013 - 0.06).collect()).collect();
        for (p, part) in parts.iter_mut().enumerate() {
            part[..128].fill([0.0, -0.0][p % 2]); // rows 0 and 1: untouched
            part[64 * 3..64 * 5].fill(0.0); // row 3: zero but one denormal; row 4: untouched
            if p == 1 {
                part[64 * 5..64 * 7].fill(-0.0); // rows 5 and 6: zero in one part only
            }
            part[64 * 9..].fill(0.0); // the short last row, touched but zero
        }
        parts[2][64 * 3 + 40] = f32::from_bits(1);
        let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
        let known = row_runs(&[2, 3, 5, 6, 7, 8, 9], 64, n);
        assert_eq!(known, vec![128..256, 64 * 5..n]);
        let mut whole = vec![0i64; n];
        set_exact(&mut whole, refs[0], "w").unwrap();
        refs[1..].iter().for_each(|p| add_exact(&mut whole, p, "w").unwrap());
        let mut all = vec![7i64; n];
        assert_eq!(sum_exact_runs(&mut all, &refs, "w", None).unwrap(), vec![0..n]);
        assert_eq!(all, whole);
        let mut runs_sum = vec![7i64; n];
        let runs = sum_exact_runs(&mut runs_sum, &refs, "w", Some(known.clone())).unwrap();
        assert_eq!(runs, known);
        for (i, (l, w)) in runs_sum.iter().zip(&whole).enumerate() {
            let in_run = runs.iter().any(|r| r.contains(&i));
            assert_eq!(*l, if in_run { *w } else { 7 }, "{i}");
        }
        let mut whole_mean = vec![0f32; n];
        mean_into(&mut whole_mean, &whole, 3);
        let mut runs_mean = vec![f32::NAN; n];
        crate::train::exact_mean::mean_of_parts(&mut runs_mean, &refs, Some(runs.clone()), 3, "w").unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&runs_mean), bits(&whole_mean));
        parts[0][64 * 3 + 1] = f32::NAN;
        let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
        assert!(sum_exact_runs(&mut runs_sum, &refs, "w", Some(known)).is_err(), "a NaN in a run");
        // Known runs are taken as they are, cut to the range asked.
        let known = row_runs(&[2, 3, 5, 8, 9], 64, n);
        assert_eq!(known, vec![128..256, 320..384, 512..n]);
        assert_eq!(runs_within(&known, 200..540), vec![0..56, 120..184, 312..340]);
        assert!(runs_within(&known, 260..300).is_empty());
    }

    #[test]
    fn the_fixed_point_rounding_is_round_to_nearest() {
        let scale = (2.0f64).powi(FRACTION_BITS);
        let values: Vec<f32> = vec![0.0, -0.0, 1.0, -1.0, 1e-12, -3.5e-11, 0.123_456_7, -32767.9, 7.25e-3];
        let mut sum = vec![0i64; values.len()];
        add_exact(&mut sum, &values, "v").unwrap();
        for (s, v) in sum.iter().zip(&values) {
            assert_eq!(*s, (*v as f64 * scale).round_ties_even() as i64, "{v}");
        }
    }

    #[test]
    fn setting_equals_adding_to_zeros_and_overflow_is_caught() {
        let values: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin() * 10f32.powi(i % 7 - 3)).collect();
        let mut added = vec![0i64; values.len()];
        add_exact(&mut added, &values, "v").unwrap();
        let mut set = vec![i64::MIN; values.len()];
        set_exact(&mut set, &values, "v").unwrap();
        assert_eq!(added, set);
        let mut near_max = vec![i64::MAX - 1; 3];
        assert!(add_exact(&mut near_max, &[0.0, 1.0, 0.0], "w").is_err());
        let mut near_min = vec![i64::MIN + 1; 3];
        assert!(add_exact(&mut near_min, &[0.0, 0.0, -1.0], "w").is_err());
    }

    #[test]
    fn the_mean_converts_large_and_small_sums_alike() {
        let scale = (2.0f64).powi(-FRACTION_BITS) / 3.0;
        let sums: Vec<i64> = vec![0, 1, -1, 12_345_678_901, -(1 << 50), (1 << 51) - 1, -(1 << 51) + 1, 987];
        let expected: Vec<f32> = sums.iter().map(|&s| (s as f64 * scale) as f32).collect();
        assert_eq!(mean_of_exact(&sums, 3), expected);
        // Beyond 2^51 the plain conversion is taken.
        let big: Vec<i64> = vec![(1 << 60) + 12_345, -(1 << 62), 7];
        let expected: Vec<f32> = big.iter().map(|&s| (s as f64 * scale) as f32).collect();
        assert_eq!(mean_of_exact(&big, 3), expected);
    }

    #[test]
    fn non_finite_gradients_are_an_error() {
        let mut s = vec![0i64; 2];
        assert!(add_exact(&mut s, &[1.0, f32::NAN], "w").is_err());
        assert!(add_exact(&mut s, &[1e5, 0.0], "w").is_err());
        assert!(set_exact(&mut s, &[0.0, f32::NEG_INFINITY], "w").is_err());
        assert!(add_exact(&mut s, &[32767.0, -32767.0], "w").is_ok());
    }
}
