//! Scalar and slice math for the CPU kernels: exp-based sigmoid/tanh written
//! so that the compiler vectorises them (no libm calls in the loop), softmax,
//! and erf-based GELU as Keras computes it (`approximate=False`).

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without a call.
const ROUND_MAGIC: f32 = 12_582_912.0;
/// The bits of `ROUND_MAGIC`: `ROUND_MAGIC + n` has the bits `ROUND_MAGIC_BITS + n`.
const ROUND_MAGIC_BITS: u32 = 0x4B40_0000;

/// `e^x` to about 2 ulp on [-87, 88]; clamps outside that range.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Cephes expf polynomial on [-ln2/2, ln2/2].
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from the integer in `shifted`'s low bits: `n as i32` saturates, and
    // the compiler makes that a scalar loop, 3x the cost of the whole rest.
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(ROUND_MAGIC_BITS - 127) << 23);
    e * scale
}

/// Logistic sigmoid.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Hyperbolic tangent, via `1 - 2 / (e^{2x} + 1)` (exact limits at ±inf).
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    if x.abs() < 0.0625 {
        // Near zero the subtraction loses bits: use the odd Taylor series.
        let x2 = x * x;
        return x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))));
    }
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

macro_rules! multiversion_slice_fn {
    ($name:ident, $body:ident) => {
        /// Applies the scalar function to every element, 16 or 8 lanes at a time
        /// where the CPU has AVX-512 or AVX2+FMA (the same bits: Rust never
        /// contracts a product and a sum into one rounding).
        pub fn $name(xs: &mut [f32]) {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    #[target_feature(enable = "avx512f")]
                    unsafe fn widest(xs: &mut [f32]) {
                        xs.iter_mut().for_each(|v| *v = $body(*v));
                    }
                    // SAFETY: the feature was detected at run time.
                    return unsafe { widest(xs) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn wide(xs: &mut [f32]) {
                        xs.iter_mut().for_each(|v| *v = $body(*v));
                    }
                    // SAFETY: the features were detected at run time.
                    return unsafe { wide(xs) };
                }
            }
            xs.iter_mut().for_each(|v| *v = $body(*v));
        }
    };
}

multiversion_slice_fn!(sigmoid_inplace, sigmoid);
multiversion_slice_fn!(tanh_inplace, tanh_branchless);
multiversion_slice_fn!(exp_inplace, exp);

/// tanh without the small-|x| branch, so that slices vectorise; the
/// `2 sigmoid(2x) - 1` form keeps ~1e-7 absolute error near zero.
#[inline(always)]
fn tanh_branchless(x: f32) -> f32 {
    2.0 / (1.0 + exp(-2.0 * x)) - 1.0
}

/// Softmax of one row, in place (max-subtracted).
pub fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// The error function (Abramowitz & Stegun 7.1.26 refined: |error| < 1.2e-7).
pub fn erf(x: f32) -> f32 {
    // Computed in f64 for headroom; GELU is not on any hot path of the W1 model.
    let x = x as f64;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let y = t
        * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    (if x >= 0.0 { 1.0 - y } else { y - 1.0 }) as f32
}

/// GELU, exact form: `x * Φ(x)`.
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2))
}

/// d GELU / dx = Φ(x) + x φ(x).
pub fn gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x / std::f32::consts::SQRT_2));
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f32::consts::PI).sqrt();
    cdf + x * pdf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_sigmoid_tanh_match_std() {
        let mut worst = [0f32; 3];
        for i in -4000..4000 {
            let x = i as f32 * 0.01;
            let rel = |a: f32, b: f32| (a - b).abs() / b.abs().max(1e-30);
            if x.abs() < 80.0 {
                worst[0] = worst[0].max(rel(exp(x), x.exp()));
            }
            worst[1] = worst[1].max((sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs());
            worst[2] = worst[2].max((tanh(x) - x.tanh()).abs().max((tanh_branchless(x) - x.tanh()).abs()));
        }
        assert!(worst[0] < 1e-6, "exp rel err {}", worst[0]);
        assert!(worst[1] < 1e-6, "sigmoid abs err {}", worst[1]);
        assert!(worst[2] < 1e-6, "tanh abs err {}", worst[2]);
    }

    #[test]
    fn slice_kernels_give_the_scalar_bits() {
        let xs: Vec<f32> = (-3000..3000).map(|i| i as f32 * 0.0131).collect();
        for (slice_fn, scalar) in [
            (sigmoid_inplace as fn(&mut [f32]), sigmoid as fn(f32) -> f32),
            (tanh_inplace, tanh_branchless),
            (exp_inplace, exp),
        ] {
            let mut got = xs.clone();
            slice_fn(&mut got);
            for (g, &x) in got.iter().zip(&xs) {
                assert_eq!(g.to_bits(), scalar(x).to_bits(), "at {x}");
            }
        }
    }

    /// `exp` with 2^n made by converting `n` to an integer: `exp` must give its
    /// bits everywhere, clamped ends included (trained weights depend on them).
    fn exp_by_conversion(x: f32) -> f32 {
        let x = x.clamp(-87.0, 88.0);
        let n = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
        let r = x - n * LN2_HI - n * LN2_LO;
        let mut p = 1.987_569_1e-4_f32;
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = p * r + c;
        }
        (p * r * r + r + 1.0) * f32::from_bits(((n as i32 + 127) as u32) << 23)
    }

    #[test]
    fn exp_takes_its_power_of_two_from_the_rounded_bits() {
        let mut xs: Vec<f32> = (-9000..9000).map(|i| i as f32 * 0.0101).collect();
        xs.extend([-87.0, 88.0, -87.5, 88.7, -1e30, 1e30, f32::MIN_POSITIVE, -0.0]);
        let mut sliced = xs.clone();
        exp_inplace(&mut sliced);
        for (&x, s) in xs.iter().zip(&sliced) {
            let want = exp_by_conversion(x).to_bits();
            assert_eq!(exp(x).to_bits(), want, "exp({x})");
            assert_eq!(s.to_bits(), want, "exp_inplace at {x}");
        }
    }

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [(0.0f32, 0.0f32), (0.5, 0.520_499_9), (1.0, 0.842_700_8), (-2.0, -0.995_322_3)] {
            assert!((erf(x) - want).abs() < 1e-6, "erf({x})");
        }
    }

    #[test]
    fn softmax_row_sums_to_one() {
        let mut r = vec![1.0, 2.0, 3.0, 1000.0];
        softmax_row(&mut r);
        assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(r[3] > 0.999);
    }
}
