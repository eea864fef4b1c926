//! Adding fixed-point gradient sums with the overflow checked: an overflow
//! is an error, never a silent wrap that would change the weights.

use crate::error::{EngineError, Result};

/// The integer widths sums travel in (i32 on the wire when they fit).
pub trait Widen: Copy {
    fn widen(self) -> i64;
}

impl Widen for i64 {
    #[inline(always)]
    fn widen(self) -> i64 {
        self
    }
}

impl Widen for i32 {
    #[inline(always)]
    fn widen(self) -> i64 {
        self as i64
    }
}

/// `acc += x`, element by element; an error if any sum overflows i64.
pub fn add_checked<T: Widen>(acc: &mut [i64], x: &[T]) -> Result<()> {
    #[inline(always)]
    fn body<T: Widen>(acc: &mut [i64], x: &[T]) -> i64 {
        let mut overflow = 0i64;
        for (a, &b) in acc.iter_mut().zip(x) {
            let b = b.widen();
            let s = a.wrapping_add(b);
            // Signed overflow: the result's sign differs from both operands'.
            overflow |= (*a ^ s) & (b ^ s);
            *a = s;
        }
        overflow
    }
    let overflow = (|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                #[target_feature(enable = "avx512f")]
                unsafe fn widest<T: Widen>(acc: &mut [i64], x: &[T]) -> i64 {
                    body(acc, x)
                }
                // SAFETY: the feature was detected at run time.
                return unsafe { widest(acc, x) };
            }
            if std::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                unsafe fn wide<T: Widen>(acc: &mut [i64], x: &[T]) -> i64 {
                    body(acc, x)
                }
                // SAFETY: the feature was detected at run time.
                return unsafe { wide(acc, x) };
            }
        }
        body(acc, x)
    })();
    if overflow < 0 {
        return Err(EngineError::Training(
            "a gradient sum overflowed the fixed-point range (|sum| >= 2^27 per value); lower the learning signal \
             (loss scale, batch) or the micro-batches per step"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_past_the_range_are_an_error_in_both_widths() {
        let mut a = vec![i64::MAX - 1, 0];
        assert!(add_checked(&mut a, &[1i64, 5]).is_ok());
        assert_eq!(a, vec![i64::MAX, 5]);
        assert!(add_checked(&mut a, &[1i64, 0]).is_err());
        let mut b = vec![i64::MIN + 1, 7];
        assert!(add_checked(&mut b, &[-1i32, -9]).is_ok());
        assert_eq!(b, vec![i64::MIN, -2]);
        assert!(add_checked(&mut b, &[-1i32, 0]).is_err());
    }
}
