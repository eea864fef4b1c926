//! The CPU backend: SGEMM (Kallista's AVX-512 or AVX2 kernels where the CPU
//! has them, else the pure-Rust `gemm` crate, chosen over ndarray's
//! `matrixmultiply` by `benches/gemm.rs`; see [`super::cpu_kernels`]) and
//! vectorised activation kernels.
//!
//! Threading: a GEMM uses the rayon pool when it is big enough to pay for the
//! fork/join, except inside [`with_single_threaded_kernels`], which the model
//! uses when it already runs one batch shard per thread.

mod conv;
pub(super) mod elementwise;
pub(super) mod loss;
mod norm_pool;
mod optimizer;
pub(super) mod recurrent;

use super::calls::{BatchNormCall, DepthwiseCall, Elementwise, Im2colCall, LossCall, PoolCall, RecurrentCall};
use super::{
    check_activation_backward, check_matmul, check_rows, math, zero_unless_accumulating, Activation, Backend, MatMut,
    MatRef, PackedMat,
};
#[cfg(target_arch = "x86_64")]
use super::{sgemm_avx2::Avx2, sgemm_avx512::Avx512, sgemm_driver as sgemm};
use crate::error::Result;
use crate::optim::OptimizerKind;
use std::cell::Cell;

/// The CPU backend (stateless; see [`super::cpu_backend`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

thread_local! {
    static SINGLE_THREADED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread's kernels kept on this thread (no nested parallelism).
pub fn with_single_threaded_kernels<R>(f: impl FnOnce() -> R) -> R {
    let before = SINGLE_THREADED.with(|s| s.replace(true));
    let out = f();
    SINGLE_THREADED.with(|s| s.set(before));
    out
}

/// Below this many multiply-adds a GEMM runs on one thread.
const PARALLEL_MIN_MACS: usize = 4 << 20;

/// The threads one GEMM may use.
fn gemm_threads(m: usize, n: usize, k: usize) -> usize {
    let threads = rayon::current_num_threads();
    if threads <= 1 || SINGLE_THREADED.with(|s| s.get()) || m * n * k < PARALLEL_MIN_MACS {
        1
    } else {
        threads
    }
}

impl CpuBackend {
    /// `c (+)= a · b` on the `gemm` crate, for CPUs without Kallista's kernels
    /// and for outputs whose columns are strided.
    fn portable_matmul(
        &self,
        a: MatRef<'_>,
        b: MatRef<'_>,
        c: MatMut<'_>,
        accumulate: bool,
        threads: usize,
    ) -> Result<()> {
        let (m, k, n) = (a.rows, a.cols, b.cols);
        // SAFETY: the caller bounds-checked all three views (`check_matmul`); `c` is
        // borrowed mutably and cannot alias `a` or `b`.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.data.as_mut_ptr().add(c.offset),
                c.col_stride as isize,
                c.row_stride as isize,
                accumulate,
                a.data.as_ptr().add(a.offset),
                a.col_stride as isize,
                a.row_stride as isize,
                b.data.as_ptr().add(b.offset),
                b.col_stride as isize,
                b.row_stride as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None },
            );
        }
        Ok(())
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn matmul(&self, a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>, accumulate: bool) -> Result<()> {
        check_matmul(&a, &b, &c)?;
        let (m, k, n) = (a.rows, a.cols, b.cols);
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            let mut c = c;
            zero_unless_accumulating(&mut c, accumulate);
            return Ok(());
        }
        let threads = gemm_threads(m, n, k);
        #[cfg(target_arch = "x86_64")]
        if c.col_stride == 1 {
            // SAFETY: bounds checked above, unit column stride, and the kernels are only
            // chosen where the CPU has their instructions.
            match super::gemm_kernels() {
                super::GemmKernels::Avx512 => unsafe { sgemm::gemm::<Avx512>(a, b, c, accumulate, threads) },
                super::GemmKernels::Avx2 => unsafe { sgemm::gemm::<Avx2>(a, b, c, accumulate, threads) },
                super::GemmKernels::Portable => return self.portable_matmul(a, b, c, accumulate, threads),
            }
            return Ok(());
        }
        self.portable_matmul(a, b, c, accumulate, threads)
    }

    /// Built by doubling copies, with no zeroing first.
    fn rows_of(&self, row: &[f32], rows: usize) -> Result<crate::buf::Buf> {
        let mut y = Vec::new();
        crate::buf::extend_with_rows(&mut y, row, rows);
        Ok(y.into())
    }

    /// Packs for Kallista's own SGEMMs (the `gemm` crate packs as it goes).
    fn pack_matrix(&self, b: MatRef<'_>) -> Result<Option<PackedMat>> {
        #[cfg(target_arch = "x86_64")]
        if b.rows > 0 && b.cols > 0 {
            if !b.in_bounds() {
                return Err(crate::error::OpsError::shape(
                    "pack_matrix",
                    "a strided view reaches past its buffer",
                    &[&[b.rows, b.cols]],
                ));
            }
            // Threads as for a product of 16 rows: packing 1 MB or more is shared out.
            let threads = gemm_threads(16, b.rows, b.cols);
            // SAFETY: bounds checked above; the kernels are only chosen where the CPU has
            // their instructions.
            let layout: Box<dyn std::any::Any + Send + Sync> = match super::gemm_kernels() {
                super::GemmKernels::Avx512 => Box::new(unsafe { sgemm::pack::<Avx512>(b, threads) }),
                super::GemmKernels::Avx2 => Box::new(unsafe { sgemm::pack::<Avx2>(b, threads) }),
                super::GemmKernels::Portable => return Ok(None),
            };
            return Ok(Some(PackedMat { rows: b.rows, cols: b.cols, layout }));
        }
        let _ = b;
        Ok(None)
    }

    fn matmul_packed(
        &self,
        a: MatRef<'_>,
        b: MatRef<'_>,
        packed: Option<&PackedMat>,
        c: MatMut<'_>,
        accumulate: bool,
    ) -> Result<()> {
        check_matmul(&a, &b, &c)?;
        #[cfg(target_arch = "x86_64")]
        if let Some(packed) = packed {
            let usable = c.col_stride == 1 && a.cols > 0 && c.rows > 0 && c.cols > 0;
            let threads = gemm_threads(a.rows, b.cols, a.cols);
            // SAFETY (both): bounds checked above, unit column stride, the kernels chosen
            // (a layout is made only by the kernels of this process), and the layout has
            // `b`'s shape (its values: the caller's contract).
            if let Some(layout) = packed.layout.downcast_ref::<sgemm::PackedB<Avx512>>() {
                if usable && layout.dims() == (b.rows, b.cols) {
                    unsafe { sgemm::gemm_packed(a, layout, c, accumulate, threads) };
                    return Ok(());
                }
            } else if let Some(layout) = packed.layout.downcast_ref::<sgemm::PackedB<Avx2>>() {
                if usable && layout.dims() == (b.rows, b.cols) {
                    unsafe { sgemm::gemm_packed(a, layout, c, accumulate, threads) };
                    return Ok(());
                }
            }
        }
        self.matmul(a, b, c, accumulate)
    }

    /// Kallista's SGEMMs sum every element in one fixed order (see
    /// `sgemm_avx512`, `sgemm_avx2`); the `gemm` crate's blocking is not known to.
    fn rows_are_independent(&self) -> bool {
        cfg!(target_arch = "x86_64") && super::gemm_kernels() != super::GemmKernels::Portable
    }

    fn activation_forward(&self, act: Activation, x: &mut [f32], cols: usize) -> Result<()> {
        check_rows("activation_forward", x.len(), cols)?;
        match act {
            Activation::Linear => {}
            Activation::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Sigmoid => math::sigmoid_inplace(x),
            Activation::Tanh => math::tanh_inplace(x),
            Activation::Gelu => x.iter_mut().for_each(|v| *v = math::gelu(*v)),
            Activation::Softmax => x.chunks_mut(cols).for_each(math::softmax_row),
        }
        Ok(())
    }

    fn activation_backward(&self, act: Activation, x: &[f32], y: &[f32], dy: &mut [f32], cols: usize) -> Result<()> {
        check_activation_backward(act, x, y, dy, cols)?;
        match act {
            Activation::Linear => {}
            // A select, not a conditional store, so that it vectorises (signs are random:
            // a branch would mispredict half the time).
            Activation::Relu => dy.iter_mut().zip(y).for_each(|(g, &y)| *g = if y > 0.0 { *g } else { 0.0 }),
            Activation::Sigmoid => dy.iter_mut().zip(y).for_each(|(g, &y)| *g *= y * (1.0 - y)),
            Activation::Tanh => dy.iter_mut().zip(y).for_each(|(g, &y)| *g *= 1.0 - y * y),
            Activation::Gelu => dy.iter_mut().zip(x).for_each(|(g, &x)| *g *= math::gelu_grad(x)),
            Activation::Softmax => {
                for (g, y) in dy.chunks_mut(cols).zip(y.chunks(cols)) {
                    let dot: f32 = g.iter().zip(y).map(|(a, b)| a * b).sum();
                    g.iter_mut().zip(y).for_each(|(g, &y)| *g = y * (*g - dot));
                }
            }
        }
        Ok(())
    }

    fn copy(&self, src: MatRef<'_>, dst: MatMut<'_>, accumulate: bool) -> Result<()> {
        elementwise::copy(src, dst, accumulate)
    }

    fn elementwise(&self, call: Elementwise<'_>) -> Result<()> {
        elementwise::elementwise(call)
    }

    fn sum_rows(&self, x: &[f32], cols: usize, acc: &mut [f32]) -> Result<()> {
        elementwise::sum_rows(x, cols, acc)
    }

    fn dot(&self, a: &[f32], b: &[f32]) -> Result<f64> {
        elementwise::dot(a, b)
    }

    fn gather_rows(&self, table: &[f32], width: usize, ids: &[i32], out: &mut [f32]) -> Result<()> {
        elementwise::gather_rows(table, width, ids, out)
    }

    fn scatter_add_rows(&self, ids: &[i32], width: usize, rows: &[f32], table: &mut [f32]) -> Result<()> {
        elementwise::scatter_add_rows(ids, width, rows, table)
    }

    fn loss(&self, call: LossCall<'_>) -> Result<f64> {
        loss::loss(call)
    }

    fn recurrent(&self, call: RecurrentCall<'_>) -> Result<()> {
        recurrent::recurrent(call)
    }

    fn im2col(&self, call: Im2colCall<'_>) -> Result<()> {
        conv::im2col(call)
    }

    fn depthwise(&self, call: DepthwiseCall<'_>) -> Result<()> {
        conv::depthwise(call)
    }

    fn pool(&self, call: PoolCall<'_>) -> Result<()> {
        norm_pool::pool(call)
    }

    fn batch_norm(&self, call: BatchNormCall<'_>) -> Result<()> {
        norm_pool::batch_norm(call)
    }

    fn optimizer_step(
        &self,
        rule: &OptimizerKind,
        lr: f32,
        step: u64,
        w: &mut [f32],
        g: &[f32],
        slots: &mut [&mut [f32]],
    ) -> Result<()> {
        super::check_optimizer_step(rule, w, g, slots)?;
        optimizer::update(rule, lr, step, w, g, slots);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matmul_matches_naive_including_transposed_views() {
        let (m, k, n) = (7, 5, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![0.0; m * n];
        CpuBackend
            .matmul(MatRef::dense(&a, m, k), MatRef::dense(&b, k, n), MatMut::dense(&mut c, m, n), false)
            .unwrap();
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-5);
        }
        // (b^T a^T)^T == a b: compute c^T = b^T a^T through transposed views.
        let mut ct = vec![0.0; n * m];
        CpuBackend
            .matmul(MatRef::dense(&b, k, n).t(), MatRef::dense(&a, m, k).t(), MatMut::dense(&mut ct, n, m), false)
            .unwrap();
        for i in 0..m {
            for j in 0..n {
                assert!((ct[j * m + i] - want[i * n + j]).abs() < 1e-5);
            }
        }
        // accumulate adds onto c
        CpuBackend.matmul(MatRef::dense(&a, m, k), MatRef::dense(&b, k, n), MatMut::dense(&mut c, m, n), true).unwrap();
        assert!((c[0] - 2.0 * want[0]).abs() < 1e-5);
    }
}
