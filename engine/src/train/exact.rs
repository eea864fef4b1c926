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

/// Fixed-point fraction bits.
const FRACTION_BITS: i32 = 36;
/// Largest magnitude accepted (32768), leaving headroom for summing 2^12 micro-batches.
const LIMIT: f64 = (1u64 << (63 - FRACTION_BITS - 12)) as f64;

/// 1.5 * 2^52: adding it to an f64 of magnitude below 2^51 rounds that value
/// to the nearest integer (ties to even) and leaves the integer in the low
/// bits of the result, so the rounding and the conversion to i64 are two
/// vector instructions instead of a call to `round` per value.
const MAGIC: f64 = 6_755_399_441_055_744.0;

/// Rounds `values` of vector `name` to fixed point and adds them to `sum`.
pub fn add_exact(sum: &mut [i64], values: &[f32], name: &str) -> Result<()> {
    let scale = (2.0f64).powi(FRACTION_BITS);
    let magic_bits = MAGIC.to_bits() as i64;
    let (mut in_range, mut overflow) = (true, false);
    for (s, &v) in sum.iter_mut().zip(values) {
        let v = v as f64;
        // NaN compares false: caught here too.
        in_range &= v.abs() < LIMIT;
        let fixed = ((v * scale + MAGIC).to_bits() as i64).wrapping_sub(magic_bits);
        let (next, o) = s.overflowing_add(fixed);
        *s = next;
        overflow |= o;
    }
    if !in_range {
        let out_of_range = |v: f32| !v.is_finite() || (v as f64).abs() >= LIMIT;
        let (i, v) = values.iter().enumerate().find(|(_, v)| out_of_range(**v)).unwrap_or((0, &0.0));
        return Err(EngineError::Training(format!(
            "'{name}'[{i}] is {v}: gradients must be finite and below {LIMIT} in magnitude to be summed exactly"
        )));
    }
    if overflow {
        return Err(EngineError::Training(format!("'{name}': the fixed-point sum overflowed")));
    }
    Ok(())
}

/// `sum / count` as f32 (one rounding, the same for every grouping of the sum).
pub fn mean_of_exact(sum: &[i64], count: u64) -> Vec<f32> {
    let scale = (2.0f64).powi(-FRACTION_BITS) / count.max(1) as f64;
    sum.iter().map(|&s| (s as f64 * scale) as f32).collect()
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
    fn non_finite_gradients_are_an_error() {
        let mut s = vec![0i64; 2];
        assert!(add_exact(&mut s, &[1.0, f32::NAN], "w").is_err());
        assert!(add_exact(&mut s, &[1e5, 0.0], "w").is_err());
    }
}
