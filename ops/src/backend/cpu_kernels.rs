//! Which SGEMM the CPU backend runs on this host, chosen once per process.
//!
//! `avx512`: [`super::sgemm_avx512`] where the CPU has `avx512f`; `avx2`: the
//! `gemm` crate (its AVX2+FMA kernels, or its portable ones without them).
//! `KALLISTA_CPU_KERNELS=avx2` forces the latter on an AVX-512 host, to
//! compare the two paths on one machine; `auto` (or unset) picks the best.

use std::sync::OnceLock;

/// The SGEMM kernels in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernels {
    /// Kallista's AVX-512 SGEMM.
    Avx512,
    /// The `gemm` crate (AVX2+FMA when the CPU has them).
    Avx2,
}

impl GemmKernels {
    /// The name `KALLISTA_CPU_KERNELS` takes.
    pub fn name(self) -> &'static str {
        match self {
            GemmKernels::Avx512 => "avx512",
            GemmKernels::Avx2 => "avx2",
        }
    }
}

/// The kernels of this process (`KALLISTA_CPU_KERNELS`, else the best the CPU runs).
pub fn gemm_kernels() -> GemmKernels {
    static CHOSEN: OnceLock<GemmKernels> = OnceLock::new();
    *CHOSEN.get_or_init(|| choose(std::env::var("KALLISTA_CPU_KERNELS").ok().as_deref(), avx512_available()))
}

fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::sgemm_avx512::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The choice for a requested name and the CPU's AVX-512 support; a request
/// the CPU cannot honour, or a name it does not know, falls back (with a
/// warning on stderr: a benchmark must not silently measure the other path).
fn choose(requested: Option<&str>, has_avx512: bool) -> GemmKernels {
    let best = if has_avx512 { GemmKernels::Avx512 } else { GemmKernels::Avx2 };
    match requested.map(str::trim) {
        None | Some("") | Some("auto") => best,
        Some("avx2") => GemmKernels::Avx2,
        Some("avx512") if has_avx512 => GemmKernels::Avx512,
        Some(other) => {
            eprintln!(
                "warning: KALLISTA_CPU_KERNELS={other} is not available here (expected auto, avx512 or avx2); using {}",
                best.name()
            );
            best
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_honoured_only_where_the_cpu_can() {
        assert_eq!(choose(None, true), GemmKernels::Avx512);
        assert_eq!(choose(Some("auto"), false), GemmKernels::Avx2);
        assert_eq!(choose(Some("avx2"), true), GemmKernels::Avx2);
        assert_eq!(choose(Some("avx512"), false), GemmKernels::Avx2);
        assert_eq!(choose(Some("sse9"), true), GemmKernels::Avx512);
    }
}
