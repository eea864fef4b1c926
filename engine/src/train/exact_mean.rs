//! The exact mean of one process's micro-batch gradients in one pass.
//!
//! [`super::exact`] rounds each part into an i64 sum and then reads the sum
//! back for the mean: three passes over a 128 KB sum per chunk, which took
//! as long as the Adam update after it (`perf`, W1 `sync` on the embedded
//! cluster: 4.1% of the cores against Adam's 4.6%). Here each block of
//! values is rounded, summed over every part and averaged while its sums
//! sit in L1, and nothing else is written: the bits of
//! [`super::exact::sum_exact_runs`] followed by [`super::exact::mean_into`].

use super::exact::{mean_into, sum_exact_runs, FRACTION_BITS, LIMIT_F32_BITS, MAGIC};
use crate::error::{EngineError, Result};
use std::ops::Range;

/// Values per block: their i64 sums (4 KB) stay in L1 while every part is added.
const BLOCK: usize = 512;
/// Most parts summed in one pass: a rounded value is below 2^51 in
/// magnitude (below `LIMIT`), so 2^12 of them cannot overflow an i64.
const MOST_PARTS: usize = 1 << 12;

/// Writes the exact mean over `count` micro-batches of `parts` (each as long
/// as `out`) into `out`: where `runs` says (sorted ranges outside which every
/// part is zero, [`super::exact::runs_within`]), or everywhere when `None`;
/// +0.0 outside the runs.
pub fn mean_of_parts(
    out: &mut [f32],
    parts: &[&[f32]],
    runs: Option<Vec<Range<usize>>>,
    count: u64,
    name: &str,
) -> Result<()> {
    if parts.is_empty() {
        return Err(EngineError::Training(format!("'{name}': a sum of no micro-batches")));
    }
    if parts.iter().any(|p| p.len() != out.len()) {
        return Err(EngineError::Training(format!("'{name}': micro-batch gradients of different sizes")));
    }
    let runs = runs.unwrap_or_else(|| std::iter::once(0..out.len()).collect());
    let scale = (2.0f64).powi(-FRACTION_BITS) / count.max(1) as f64;
    let mut done = 0;
    for run in runs {
        out[done..run.start].fill(0.0);
        let of_run: Vec<&[f32]> = parts.iter().map(|p| &p[run.clone()]).collect();
        let largest = match parts.len() <= MOST_PARTS {
            true => multiversion_mean(&mut out[run.clone()], &of_run, scale),
            false => LIMIT_F32_BITS,
        };
        if largest >= LIMIT_F32_BITS {
            // Too many parts or a value out of range: the passes of `exact`, which name the value.
            let mut sum = vec![0i64; run.len()];
            sum_exact_runs(&mut sum, &of_run, name, None)?;
            mean_into(&mut out[run.clone()], &sum, count);
        }
        done = run.end;
    }
    out[done..].fill(0.0);
    Ok(())
}

/// The one pass, compiled for AVX-512 and AVX2 too and picked at run time
/// (the same bits either way). Returns the largest magnitude bits seen.
fn multiversion_mean(out: &mut [f32], parts: &[&[f32]], scale: f64) -> u32 {
    #[inline(always)]
    fn body(out: &mut [f32], parts: &[&[f32]], scale: f64) -> u32 {
        let to_fixed = (2.0f64).powi(FRACTION_BITS);
        let magic_bits = MAGIC.to_bits() as i64;
        // Below 2^51 in magnitude an i64 converts to f64 exactly by the MAGIC trick, which vectorizes.
        const FAST: i64 = 1 << 51;
        let mut sums = [0i64; BLOCK];
        let mut largest = 0u32;
        for (b, out) in out.chunks_mut(BLOCK).enumerate() {
            let at = b * BLOCK..b * BLOCK + out.len();
            let sums = &mut sums[..out.len()];
            for (k, part) in parts.iter().enumerate() {
                for (s, &v) in sums.iter_mut().zip(&part[at.clone()]) {
                    largest = largest.max(v.to_bits() & 0x7fff_ffff);
                    let fixed = ((v as f64 * to_fixed + MAGIC).to_bits() as i64).wrapping_sub(magic_bits);
                    *s = if k == 0 { fixed } else { s.wrapping_add(fixed) };
                }
            }
            let fits = sums.iter().fold(true, |ok, &s| ok & ((s.wrapping_add(FAST) as u64) < (2 * FAST) as u64));
            if fits {
                for (o, &s) in out.iter_mut().zip(sums.iter()) {
                    *o = ((f64::from_bits(s.wrapping_add(magic_bits) as u64) - MAGIC) * scale) as f32;
                }
            } else {
                for (o, &s) in out.iter_mut().zip(sums.iter()) {
                    *o = (s as f64 * scale) as f32;
                }
            }
        }
        largest
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512dq") {
            #[target_feature(enable = "avx512f,avx512dq")]
            unsafe fn widest(out: &mut [f32], parts: &[&[f32]], scale: f64) -> u32 {
                body(out, parts, scale)
            }
            // SAFETY: the features were detected at run time.
            return unsafe { widest(out, parts, scale) };
        }
        if std::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            unsafe fn wide(out: &mut [f32], parts: &[&[f32]], scale: f64) -> u32 {
                body(out, parts, scale)
            }
            // SAFETY: the feature was detected at run time.
            return unsafe { wide(out, parts, scale) };
        }
    }
    body(out, parts, scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::exact::row_runs;

    /// The passes of `exact` over the same parts and runs.
    fn by_passes(parts: &[&[f32]], runs: Option<Vec<Range<usize>>>, count: u64) -> Vec<u32> {
        let n = parts[0].len();
        let mut sum = vec![0i64; n];
        let runs = sum_exact_runs(&mut sum, parts, "w", runs).unwrap();
        let mut mean = vec![0f32; n];
        for run in &runs {
            mean_into(&mut mean[run.clone()], &sum[run.clone()], count);
        }
        mean.iter().map(|v| v.to_bits()).collect()
    }

    /// One pass gives the bits of the passes of `exact`: blocks cut by runs
    /// and by a short last block, zeros of either sign, a denormal, values
    /// near the limit whose sums need the plain conversion, and more parts
    /// than the divisor counts.
    #[test]
    fn one_pass_gives_the_bits_of_the_exact_passes() {
        let n = BLOCK * 3 + 77;
        let mut parts: Vec<Vec<f32>> = (0..3)
            .map(|p| (0..n).map(|i| ((i * 7 + p * 3) % 11) as f32 * 0.013 - 0.06 + (i % 13) as f32 * 1e-9).collect())
            .collect();
        parts[1][..40].fill(-0.0);
        parts[2][5] = f32::from_bits(1);
        parts.iter_mut().for_each(|p| p[BLOCK + 3..BLOCK + 9].fill(32767.5)); // sums beyond 2^51
        let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
        for count in [3, 5] {
            let mut out = vec![f32::NAN; n];
            mean_of_parts(&mut out, &refs, None, count, "w").unwrap();
            assert_eq!(out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), by_passes(&refs, None, count));
        }
        // Runs: +0.0 outside them (the parts are zero there, as an untouched Embedding row's).
        let runs = row_runs(&[1, 2, 5, 9, 10], 100, n);
        for p in parts.iter_mut() {
            let mut zeroed = vec![0.0f32; n];
            runs.iter().for_each(|r| zeroed[r.clone()].copy_from_slice(&p[r.clone()]));
            *p = zeroed;
        }
        let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
        let mut out = vec![f32::NAN; n];
        mean_of_parts(&mut out, &refs, Some(runs.clone()), 3, "w").unwrap();
        assert_eq!(out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), by_passes(&refs, None, 3));
        // A value out of range is refused with its name and index, as `exact` does.
        parts[1][BLOCK * 2 + 1] = f32::INFINITY;
        parts[1][BLOCK * 9 / 10] = 1e6;
        let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
        let e = mean_of_parts(&mut out, &refs, None, 3, "dense/kernel").unwrap_err().to_string();
        assert!(e.contains("'dense/kernel'[460] is 1000000"), "{e}");
    }
}
