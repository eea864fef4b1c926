//! The op families a backend runs on the host, through the CPU backend's
//! kernels: a backend that has kernels of its own for only some families
//! (the conformance suite's perturbed backend) forwards the rest with
//! [`crate::host_kernels!`], so that each family it has not written is
//! listed in one place. (The CUDA backend forwards its host families itself:
//! it waits for its stream first.)

/// Implements the named [`crate::backend::Backend`] methods by calling the CPU
/// backend's on the same host buffers. Use inside an `impl Backend` block:
/// `kallista_ops::host_kernels!(copy, elementwise, loss);` Names: `copy`,
/// `elementwise`, `sum_rows`, `dot`, `gather_rows`, `scatter_add_rows`,
/// `loss`, `recurrent`, `im2col`, `depthwise`, `pool`, `batch_norm`,
/// `optimizer_step`.
#[macro_export]
macro_rules! host_kernels {
    ($($family:ident),* $(,)?) => {
        $( $crate::host_kernels!(@one $family); )*
    };
    (@one copy) => {
        fn copy(&self, src: $crate::backend::MatRef<'_>, dst: $crate::backend::MatMut<'_>, accumulate: bool) -> $crate::Result<()> {
            $crate::backend::Backend::copy(&$crate::backend::CpuBackend, src, dst, accumulate)
        }
    };
    (@one elementwise) => {
        fn elementwise(&self, call: $crate::backend::calls::Elementwise<'_>) -> $crate::Result<()> {
            $crate::backend::Backend::elementwise(&$crate::backend::CpuBackend, call)
        }
    };
    (@one sum_rows) => {
        fn sum_rows(&self, x: &[f32], cols: usize, acc: &mut [f32]) -> $crate::Result<()> {
            $crate::backend::Backend::sum_rows(&$crate::backend::CpuBackend, x, cols, acc)
        }
    };
    (@one dot) => {
        fn dot(&self, a: &[f32], b: &[f32]) -> $crate::Result<f64> {
            $crate::backend::Backend::dot(&$crate::backend::CpuBackend, a, b)
        }
    };
    (@one gather_rows) => {
        fn gather_rows(&self, table: &[f32], width: usize, ids: &[i32], out: &mut [f32]) -> $crate::Result<()> {
            $crate::backend::Backend::gather_rows(&$crate::backend::CpuBackend, table, width, ids, out)
        }
    };
    (@one scatter_add_rows) => {
        fn scatter_add_rows(&self, ids: &[i32], width: usize, rows: &[f32], table: &mut [f32]) -> $crate::Result<()> {
            $crate::backend::Backend::scatter_add_rows(&$crate::backend::CpuBackend, ids, width, rows, table)
        }
    };
    (@one loss) => {
        fn loss(&self, call: $crate::backend::calls::LossCall<'_>) -> $crate::Result<f64> {
            $crate::backend::Backend::loss(&$crate::backend::CpuBackend, call)
        }
    };
    (@one recurrent) => {
        fn recurrent(&self, call: $crate::backend::calls::RecurrentCall<'_>) -> $crate::Result<()> {
            $crate::backend::Backend::recurrent(&$crate::backend::CpuBackend, call)
        }
    };
    (@one im2col) => {
        fn im2col(&self, call: $crate::backend::calls::Im2colCall<'_>) -> $crate::Result<()> {
            $crate::backend::Backend::im2col(&$crate::backend::CpuBackend, call)
        }
    };
    (@one depthwise) => {
        fn depthwise(&self, call: $crate::backend::calls::DepthwiseCall<'_>) -> $crate::Result<()> {
            $crate::backend::Backend::depthwise(&$crate::backend::CpuBackend, call)
        }
    };
    (@one pool) => {
        fn pool(&self, call: $crate::backend::calls::PoolCall<'_>) -> $crate::Result<()> {
            $crate::backend::Backend::pool(&$crate::backend::CpuBackend, call)
        }
    };
    (@one batch_norm) => {
        fn batch_norm(&self, call: $crate::backend::calls::BatchNormCall<'_>) -> $crate::Result<()> {
            $crate::backend::Backend::batch_norm(&$crate::backend::CpuBackend, call)
        }
    };
    (@one optimizer_step) => {
        fn optimizer_step(
            &self,
            rule: &$crate::optim::OptimizerKind,
            lr: f32,
            step: u64,
            w: &mut [f32],
            g: &[f32],
            slots: &mut [&mut [f32]],
        ) -> $crate::Result<()> {
            $crate::backend::Backend::optimizer_step(&$crate::backend::CpuBackend, rule, lr, step, w, g, slots)
        }
    };
}
