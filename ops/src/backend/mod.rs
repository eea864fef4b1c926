//! The one place that dispatches between CPU and CUDA.
//!
//! Ops call kernels through [`Backend`]; nothing else in the crate asks which
//! device it runs on. [`backend_for`] returns the CPU backend, or the CUDA one
//! when the crate is built with feature `cuda` (else a typed
//! [`OpsError::NotCompiledWithCuda`]). New tapes run on the process's default
//! backend, the CPU unless [`set_default_device`] chose another.

pub mod calls;
mod cpu;
mod cpu_kernels;
mod cuda;
#[cfg(feature = "cuda")]
mod cuda_args;
#[cfg(feature = "cuda")]
mod cuda_backend;
#[cfg(feature = "cuda")]
mod cuda_kernels;
#[cfg(feature = "cuda")]
mod cuda_memory;
mod default_device;
mod host_fallback;
pub mod math;
mod packed;
#[cfg(target_arch = "x86_64")]
mod sgemm_avx2;
#[cfg(target_arch = "x86_64")]
mod sgemm_avx512;
#[cfg(target_arch = "x86_64")]
mod sgemm_driver;

pub use cpu::{with_single_threaded_kernels, CpuBackend};
pub use cpu_kernels::{gemm_kernels, GemmKernels};
pub use packed::{PackedMat, PackedWeights};

pub use default_device::{default_backend, set_default_device};

use crate::buf::Buf;
use crate::error::{OpsError, Result};
use crate::optim::OptimizerKind;
use calls::{BatchNormCall, DepthwiseCall, Elementwise, Im2colCall, LossCall, PoolCall, RecurrentCall};
use std::sync::Arc;

/// Where tensors live and kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

/// A read-only strided matrix inside a flat buffer: element `(i, j)` is
/// `data[offset + i * row_stride + j * col_stride]`. A transpose swaps the strides.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// A writable strided matrix, as [`MatRef`].
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense row-major `rows x cols` matrix at the start of `data`.
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        MatRef { data, offset: 0, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        MatRef { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    fn last_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return self.offset;
        }
        self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
    }

    pub(crate) fn in_bounds(&self) -> bool {
        self.rows == 0 || self.cols == 0 || self.last_index() < self.data.len()
    }
}

impl<'a> MatMut<'a> {
    /// A dense row-major `rows x cols` matrix at the start of `data`.
    pub fn dense(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        MatMut { data, offset: 0, rows, cols, row_stride: cols, col_stride: 1 }
    }

    pub(crate) fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

impl Device {
    /// Parses `cpu` or `cuda:N` (`cuda` alone is `cuda:0`), as `--device` and `device:` take it.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        match text {
            "cpu" => return Ok(Device::Cpu),
            "cuda" => return Ok(Device::Cuda(0)),
            _ => {}
        }
        if let Some(ordinal) = text.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            return Ok(Device::Cuda(ordinal));
        }
        Err(OpsError::Config(format!("unknown device '{text}' (expected cpu, cuda or cuda:N)")))
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

/// Whether `len` values are worth cutting into chunks of `chunk` over the
/// rayon pool: two chunks at least, and a pool of two threads. A pool of
/// one would run the chunks anyway, but on its own thread, each call a
/// hand-off from the caller and back (a one-core `sync` rank: two wake-ups
/// for each chunk of its ring's update).
pub(crate) fn spread(len: usize, chunk: usize) -> bool {
    len >= 2 * chunk && rayon::current_num_threads() > 1
}

/// Checks that `a · b` fits `c` and that every view lies inside its buffer;
/// every backend's `matmul` starts here.
pub(crate) fn check_matmul(a: &MatRef<'_>, b: &MatRef<'_>, c: &MatMut<'_>) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || c.rows != m || c.cols != n {
        return Err(OpsError::shape(
            "matmul",
            "inner or outer dimensions differ",
            &[&[a.rows, a.cols], &[b.rows, b.cols], &[c.rows, c.cols]],
        ));
    }
    if !a.in_bounds() || !b.in_bounds() || !c.in_bounds() {
        return Err(OpsError::shape("matmul", "a strided view reaches past its buffer", &[&[m, k], &[k, n]]));
    }
    Ok(())
}

/// `c = 0` (a product over an empty inner dimension), unless accumulating.
pub(crate) fn zero_unless_accumulating(c: &mut MatMut<'_>, accumulate: bool) {
    if accumulate {
        return;
    }
    for i in 0..c.rows {
        for j in 0..c.cols {
            c.data[c.offset + i * c.row_stride + j * c.col_stride] = 0.0;
        }
    }
}

/// Checks an `optimizer_step` call: a gradient and the rule's slots, each as
/// long as the variable; every backend's `optimizer_step` starts here.
pub(crate) fn check_optimizer_step(rule: &OptimizerKind, w: &[f32], g: &[f32], slots: &[&mut [f32]]) -> Result<()> {
    if g.len() != w.len() || slots.len() != rule.slot_names().len() || slots.iter().any(|s| s.len() != w.len()) {
        return Err(OpsError::shape("optimizer update", "gradient or slots differ from the variable", &[&[w.len()]]));
    }
    Ok(())
}

/// Checks that `len` values are whole rows of `cols`.
pub(crate) fn check_rows(op: &str, len: usize, cols: usize) -> Result<()> {
    if cols == 0 || !len.is_multiple_of(cols) {
        return Err(OpsError::shape(op, format!("{len} values are not rows of {cols}"), &[&[len], &[cols]]));
    }
    Ok(())
}

/// Checks an `activation_backward` call: whole rows, and values (and, for
/// GELU, inputs) as many as gradients.
pub(crate) fn check_activation_backward(act: Activation, x: &[f32], y: &[f32], dy: &[f32], cols: usize) -> Result<()> {
    check_rows("activation_backward", dy.len(), cols)?;
    if y.len() != dy.len() || (act == Activation::Gelu && x.len() != dy.len()) {
        return Err(OpsError::shape(
            "activation_backward",
            "gradient and value sizes differ",
            &[&[y.len()], &[dy.len()]],
        ));
    }
    Ok(())
}

/// Elementwise activations with a closed-form derivative.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Linear,
    Relu,
    Sigmoid,
    Tanh,
    Softmax,
    Gelu,
}

impl Activation {
    /// The Keras name.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Softmax => "softmax",
            Activation::Gelu => "gelu",
        }
    }

    /// Parses a Keras activation name.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "linear" | "None" | "" => Activation::Linear,
            "relu" => Activation::Relu,
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "softmax" => Activation::Softmax,
            "gelu" => Activation::Gelu,
            other => {
                return Err(OpsError::Config(format!(
                    "unknown activation '{other}' (expected linear, relu, sigmoid, tanh, softmax or gelu)"
                )))
            }
        })
    }
}

/// Compute kernels on one device. Contract: every method validates that its
/// views lie inside their buffers and returns a typed error otherwise; results
/// are deterministic for the same inputs and thread count.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Short name, e.g. `"cpu"`.
    fn name(&self) -> &'static str;

    /// The device for people, e.g. "cuda:0 (NVIDIA H200)".
    fn device_name(&self) -> String {
        self.name().into()
    }

    /// The device this backend's kernels run on.
    fn device(&self) -> Device {
        Device::Cpu
    }

    /// `len` zeros where this backend's kernels read them in place (on the
    /// host by default; a device backend allocates on its device).
    fn zeros(&self, len: usize) -> Result<Buf> {
        Ok(vec![0.0; len].into())
    }

    /// `rows` copies of `row`, one after another (a bias over a batch, which a
    /// product then adds onto).
    fn rows_of(&self, row: &[f32], rows: usize) -> Result<Buf> {
        let mut y = self.zeros(rows * row.len())?;
        let src = MatRef { data: row, offset: 0, rows, cols: row.len(), row_stride: 0, col_stride: 1 };
        self.copy(src, MatMut::dense(&mut y, rows, row.len()), false)?;
        Ok(y)
    }

    /// A copy of `values` where this backend's kernels read them in place.
    fn buf_from(&self, values: &[f32]) -> Result<Buf> {
        Ok(values.to_vec().into())
    }

    /// `values`, moved (on the host) or copied (to a device) to where this
    /// backend's kernels read them in place.
    fn adopt(&self, values: Vec<f32>) -> Result<Buf> {
        Ok(values.into())
    }

    /// `c = a · b` (or `c += a · b` when `accumulate`), with `a: m x k`, `b: k x n`, `c: m x n`.
    fn matmul(&self, a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>, accumulate: bool) -> Result<()>;

    /// `b` laid out for many products with it as the right operand (a weight
    /// during inference), or `None` where this backend has no better layout.
    fn pack_matrix(&self, _b: MatRef<'_>) -> Result<Option<PackedMat>> {
        Ok(None)
    }

    /// [`Backend::matmul`] reading `b` from `packed` where given, which
    /// [`Backend::pack_matrix`] made of it: the same bits.
    fn matmul_packed(
        &self,
        a: MatRef<'_>,
        b: MatRef<'_>,
        _packed: Option<&PackedMat>,
        c: MatMut<'_>,
        accumulate: bool,
    ) -> Result<()> {
        self.matmul(a, b, c, accumulate)
    }

    /// Whether each row of a `matmul` result has the same bits whatever the
    /// other rows of `a` and the thread count: then rows may be computed ahead
    /// (a table of projected tokens) and gathered later without changing a bit.
    fn rows_are_independent(&self) -> bool {
        false
    }

    /// Applies `act` in place to `x`, viewed as rows of `cols` elements (softmax is per row).
    fn activation_forward(&self, act: Activation, x: &mut [f32], cols: usize) -> Result<()>;

    /// Turns `dy` (gradient w.r.t. the output) into the gradient w.r.t. the input, in place.
    /// `y` is the forward output; `x` the forward input (only GELU needs it).
    fn activation_backward(&self, act: Activation, x: &[f32], y: &[f32], dy: &mut [f32], cols: usize) -> Result<()>;

    /// `dst = src` (or `dst += src` when `accumulate`) element by element over two
    /// views of one shape: concatenation, padding, transposes, and (with a zero row
    /// stride) a bias broadcast over rows.
    fn copy(&self, src: MatRef<'_>, dst: MatMut<'_>, accumulate: bool) -> Result<()>;

    /// Elementwise arithmetic over equal-length buffers.
    fn elementwise(&self, call: Elementwise<'_>) -> Result<()>;

    /// `acc[j] += Σ_r x[r * cols + j]`: the gradient of a bias broadcast over rows.
    fn sum_rows(&self, x: &[f32], cols: usize, acc: &mut [f32]) -> Result<()>;

    /// `Σ a_i · b_i`, accumulated in f64 (with `b = a`, the squared L2 norm).
    fn dot(&self, a: &[f32], b: &[f32]) -> Result<f64>;

    /// Row `i` of `out` is row `ids[i]` of `table` (`width` values a row): the
    /// embedding lookup. An id outside the table is a typed error.
    fn gather_rows(&self, table: &[f32], width: usize, ids: &[i32], out: &mut [f32]) -> Result<()>;

    /// Adds row `i` of `rows` onto row `ids[i]` of `table` (repeated ids add up):
    /// the embedding's gradient.
    fn scatter_add_rows(&self, ids: &[i32], width: usize, rows: &[f32], table: &mut [f32]) -> Result<()>;

    /// A loss and its gradient w.r.t. the predictions; returns the batch-mean loss.
    fn loss(&self, call: LossCall<'_>) -> Result<f64>;

    /// One step of recurrent gate work, forward or backward.
    fn recurrent(&self, call: RecurrentCall<'_>) -> Result<()>;

    /// im2col rows of a convolution's input, or their adjoint.
    fn im2col(&self, call: Im2colCall<'_>) -> Result<()>;

    /// Depthwise convolution, forward or backward.
    fn depthwise(&self, call: DepthwiseCall<'_>) -> Result<()>;

    /// Windowed and global pooling, forward or backward.
    fn pool(&self, call: PoolCall<'_>) -> Result<()>;

    /// Batch normalisation's statistics, normalisation and backward sums.
    fn batch_norm(&self, call: BatchNormCall<'_>) -> Result<()>;

    /// One optimizer update of one variable `w` with gradient `g`, learning rate
    /// `lr` and 1-based step `step`, updating the rule's `slots` in place.
    fn optimizer_step(
        &self,
        rule: &OptimizerKind,
        lr: f32,
        step: u64,
        w: &mut [f32],
        g: &[f32],
        slots: &mut [&mut [f32]],
    ) -> Result<()>;
}

/// The backend for a device.
pub fn backend_for(device: Device) -> Result<Arc<dyn Backend>> {
    match device {
        Device::Cpu => Ok(cpu_backend()),
        Device::Cuda(ordinal) => cuda::backend(ordinal),
    }
}

/// The shared CPU backend.
pub fn cpu_backend() -> Arc<dyn Backend> {
    static CPU: std::sync::OnceLock<Arc<dyn Backend>> = std::sync::OnceLock::new();
    CPU.get_or_init(|| Arc::new(CpuBackend)).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_without_feature_is_a_typed_error() {
        if cfg!(feature = "cuda") {
            return;
        }
        assert!(matches!(backend_for(Device::Cuda(0)), Err(OpsError::NotCompiledWithCuda)));
        assert!(set_default_device(Device::Cuda(0)).is_err());
        assert_eq!(default_backend().name(), "cpu", "a failed switch keeps the CPU");
    }

    /// With the feature, a device that is not there (no driver, or no such
    /// ordinal) is a typed error naming it, not cudarc's panic.
    #[test]
    fn a_missing_cuda_device_is_a_typed_error() {
        if !cfg!(feature = "cuda") {
            return;
        }
        match backend_for(Device::Cuda(999)) {
            Err(OpsError::Cuda { device, .. }) => assert_eq!(device, "cuda:999"),
            other => panic!("expected a CUDA error for cuda:999, got {other:?}"),
        }
    }

    #[test]
    fn devices_parse_as_the_flag_takes_them() {
        assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
        assert_eq!(Device::parse("cuda").unwrap(), Device::Cuda(0));
        assert_eq!(Device::parse("cuda:3").unwrap(), Device::Cuda(3));
        assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            assert!(matches!(Device::parse(bad), Err(OpsError::Config(_))), "{bad:?} parsed");
        }
    }

    #[test]
    fn out_of_bounds_view_is_rejected() {
        let a = vec![0.0; 4];
        let b = vec![0.0; 4];
        let mut c = vec![0.0; 4];
        let bad = MatRef::dense(&a, 3, 2);
        let r = cpu_backend().matmul(bad, MatRef::dense(&b, 2, 2), MatMut::dense(&mut c, 3, 2), false);
        assert!(r.is_err());
    }
}
