//! Which SGEMM the CPU backend runs on this host, chosen once per process.
//!
//! `avx512`: [`super::sgemm_avx512`] where the CPU has `avx512f`; `avx2`:
//! [`super::sgemm_avx2`] where it has AVX2 and FMA; `portable`: the `gemm`
//! crate (its own choice of kernels), for any other CPU.
//! `KALLISTA_CPU_KERNELS=avx2` forces the AVX2 kernels on an AVX-512 host, to
//! compare the two paths on one machine; `auto` (or unset) picks the best.

use std::sync::OnceLock;

/// The SGEMM kernels in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernels {
    /// Kallista's AVX-512 SGEMM.
    Avx512,
    /// Kallista's AVX2+FMA SGEMM.
    Avx2,
    /// The `gemm` crate, on a CPU without AVX2 and FMA (or when asked for).
    Portable,
}

impl GemmKernels {
    /// The name `KALLISTA_CPU_KERNELS` takes.
    pub fn name(self) -> &'static str {
        match self {
            GemmKernels::Avx512 => "avx512",
            GemmKernels::Avx2 => "avx2",
            GemmKernels::Portable => "portable",
        }
    }
}

/// The kernels of this process (`KALLISTA_CPU_KERNELS`, else the best the CPU runs).
pub fn gemm_kernels() -> GemmKernels {
    static CHOSEN: OnceLock<GemmKernels> = OnceLock::new();
    *CHOSEN.get_or_init(|| choose(std::env::var("KALLISTA_CPU_KERNELS").ok().as_deref(), cpu_kernels()))
}

/// The best kernels this CPU runs.
fn cpu_kernels() -> GemmKernels {
    #[cfg(target_arch = "x86_64")]
    {
        if super::sgemm_avx512::available() {
            return GemmKernels::Avx512;
        }
        if super::sgemm_avx2::available() {
            return GemmKernels::Avx2;
        }
    }
    GemmKernels::Portable
}

/// The choice for a requested name and the best kernels of the CPU (each
/// runs where a later one does: AVX-512, then AVX2, then portable); a request
/// the CPU cannot honour, or a name it does not know, falls back (with a
/// warning on stderr: a benchmark must not silently measure the other path).
fn choose(requested: Option<&str>, best: GemmKernels) -> GemmKernels {
    let runs = |k: GemmKernels| match best {
        GemmKernels::Avx512 => true,
        GemmKernels::Avx2 => k != GemmKernels::Avx512,
        GemmKernels::Portable => k == GemmKernels::Portable,
    };
    let asked = match requested.map(str::trim) {
        None | Some("") | Some("auto") => return best,
        Some("avx512") => Some(GemmKernels::Avx512),
        Some("avx2") => Some(GemmKernels::Avx2),
        Some("portable") => Some(GemmKernels::Portable),
        Some(_) => None,
    };
    match asked {
        Some(k) if runs(k) => k,
        _ => {
            eprintln!(
                "warning: KALLISTA_CPU_KERNELS={} is not available here (expected auto, avx512, avx2 or portable); using {}",
                requested.unwrap_or_default().trim(),
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
        use GemmKernels::*;
        assert_eq!(choose(None, Avx512), Avx512);
        assert_eq!(choose(Some("auto"), Avx2), Avx2);
        assert_eq!(choose(Some("avx2"), Avx512), Avx2);
        assert_eq!(choose(Some("portable"), Avx512), Portable);
        assert_eq!(choose(Some("portable"), Avx2), Portable);
        assert_eq!(choose(Some("avx512"), Avx2), Avx2);
        assert_eq!(choose(Some("avx2"), Portable), Portable);
        assert_eq!(choose(Some("sse9"), Avx512), Avx512);
    }
}
