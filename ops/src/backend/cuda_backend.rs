//! The CUDA backend on cudarc: cuBLAS SGEMM for products, NVRTC-compiled
//! kernels ([`super::cuda_kernels`]) for activations, copies, elementwise
//! arithmetic and reductions, embedding gathers and scatters, losses, the
//! LSTM/GRU step gate work and optimizer updates. The driver, cuBLAS and
//! NVRTC load at run time, so a build needs no toolkit; a missing library or
//! device is a typed error (cudarc itself would panic).
//!
//! Tensors the backend allocates ([`Backend::zeros`], [`Backend::buf_from`])
//! live in managed memory ([`super::cuda_memory`]) and kernels run on them in
//! place: weights, gradients and optimizer slots stay on the device between
//! steps. A slice in host memory is copied up for the call (and back, for an
//! output). Convolution windows (im2col, depthwise), pooling and batch
//! normalisation still run the CPU's kernels on the host
//! once the stream is idle, on the same managed memory. Work is queued on
//! the device's one stream; the host waits for it whenever a device buffer is
//! handed out as a slice, which today means before every call (asynchronous
//! launches need a way to pass device buffers without that wait).
//! One worker process per device.

use super::calls::{
    BatchNormCall, DepthwiseCall, Elementwise, Im2colCall, LossCall, PoolCall, RecurrentCall, SequenceDims, Targets,
};
use super::cpu::{elementwise as cpu_checks, loss as cpu_loss, recurrent as cpu_recurrent};
use super::cuda_args::CallArgs;
use super::cuda_kernels::{act_code, source, NAMES};
use super::cuda_memory::DeviceMemory;
use super::{
    check_activation_backward, check_matmul, check_optimizer_step, check_rows, zero_unless_accumulating, Activation,
    Backend, CpuBackend, Device, MatMut, MatRef,
};
use crate::buf::Buf;
use crate::error::{OpsError, Result};
use crate::optim::OptimizerKind;
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS;
use cudarc::driver::{CudaContext, CudaFunction, LaunchConfig, PushKernelArg};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One CUDA device, opened.
pub struct CudaBackend {
    device: String,
    name: String,
    memory: Arc<DeviceMemory>,
    gpu: Mutex<Gpu>,
}

struct Gpu {
    blas: CudaBlas,
    kernels: HashMap<&'static str, CudaFunction>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBackend({}: {})", self.device, self.name)
    }
}

/// Threads per block of every kernel (the row kernels' shared arrays hold this many).
const THREADS: u32 = 256;
/// Blocks of the grid-stride kernels at most, and of the partial sums.
const MAX_BLOCKS: usize = 4096;
const PARTIALS: usize = 256;

/// Queues kernel `$name` of `$gpu` with the given arguments (each pushed by
/// reference, living to the end of the statement), and notes the queued work.
macro_rules! launch {
    ($self:ident, $gpu:ident, $name:literal, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let function = $gpu.kernel($name, &$self.memory)?;
        // SAFETY: every pointer argument is a live device address of the extent the kernel
        // reaches (checked lengths; staged or managed blocks kept until the call finishes).
        unsafe { $self.memory.stream.launch_builder(function)$(.arg(&$arg))*.launch($cfg) }
            .map_err(|e| $self.memory.error($name, e))?;
        $self.memory.queued();
    }};
}

impl Gpu {
    fn kernel(&self, name: &str, memory: &DeviceMemory) -> Result<&CudaFunction> {
        self.kernels.get(name).ok_or_else(|| memory.error("kernel", format!("{name} was not compiled")))
    }
}

impl CudaBackend {
    /// Opens device `ordinal`: loads the libraries, creates its stream and
    /// cuBLAS handle, and compiles the kernels.
    pub fn open(ordinal: usize) -> Result<Self> {
        let device = format!("cuda:{ordinal}");
        let fail = |detail: String| OpsError::Cuda { device: device.clone(), detail };
        // SAFETY: these only try to open the shared libraries.
        let libraries = unsafe {
            [
                ("libcuda (the NVIDIA driver)", cudarc::driver::sys::is_culib_present()),
                ("libcublas", cudarc::cublas::sys::is_culib_present()),
                ("libnvrtc", cudarc::nvrtc::sys::is_culib_present()),
            ]
        };
        let missing: Vec<&str> = libraries.iter().filter(|(_, present)| !present).map(|(name, _)| *name).collect();
        if !missing.is_empty() {
            return Err(fail(format!(
                "cannot load {}: install the NVIDIA driver and the CUDA 13 libraries, or put their folder on \
                 LD_LIBRARY_PATH; or use device cpu",
                missing.join(", ")
            )));
        }
        let count = CudaContext::device_count().map_err(|e| fail(format!("cannot count CUDA devices: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(fail(format!("no such CUDA device: this machine has {count}")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| fail(format!("cannot open the device: {e}")))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        // Tensors live in managed memory that the host reads while the device works on others.
        let concurrent = ctx.attribute(CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS);
        if concurrent.map_or(true, |v| v == 0) {
            return Err(fail(format!(
                "{name} lacks concurrent managed memory access (a Pascal or newer GPU on Linux has it); use device cpu"
            )));
        }
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| fail(format!("cannot create a cuBLAS handle: {e}")))?;
        let ptx =
            cudarc::nvrtc::compile_ptx(source()).map_err(|e| fail(format!("NVRTC cannot compile the kernels: {e}")))?;
        let module = ctx.load_module(ptx).map_err(|e| fail(format!("cannot load the kernels: {e}")))?;
        let mut kernels = HashMap::new();
        for &kernel in NAMES {
            let function = module.load_function(kernel).map_err(|e| fail(format!("kernel {kernel}: {e}")))?;
            kernels.insert(kernel, function);
        }
        let memory = DeviceMemory::new(ordinal, ctx, stream);
        Ok(CudaBackend { device, name, memory, gpu: Mutex::new(Gpu { blas, kernels }) })
    }

    fn gpu(&self) -> Result<std::sync::MutexGuard<'_, Gpu>> {
        let gpu = self.gpu.lock().unwrap_or_else(|e| e.into_inner());
        self.memory.bind()?;
        Ok(gpu)
    }

    /// One thread per value of `n`, in blocks of [`THREADS`].
    fn per_value(&self, n: usize) -> Result<LaunchConfig> {
        let blocks = u32::try_from(n.div_ceil(THREADS as usize).max(1))
            .map_err(|_| self.memory.error("launch", "too many values"))?;
        Ok(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
    }

    /// A grid-stride kernel over `n` values.
    fn strided(&self, n: usize) -> LaunchConfig {
        let blocks = n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32;
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
    }

    /// One block per row.
    fn per_row(&self, rows: usize) -> Result<LaunchConfig> {
        let rows = u32::try_from(rows).map_err(|_| self.memory.error("launch", "too many rows"))?;
        Ok(LaunchConfig { grid_dim: (rows.max(1), 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
    }

    /// Queues `dst = src` (or `+=`) over two strided views at device addresses.
    fn copy_on_device(
        &self,
        gpu: &Gpu,
        src: (u64, &MatRef<'_>),
        dst: (u64, StridedOut),
        accumulate: bool,
    ) -> Result<()> {
        let (s, sv) = src;
        let (d, dv) = dst;
        let n = sv.rows * sv.cols;
        if n == 0 {
            return Ok(());
        }
        let (so, srs, scs) = (sv.offset as i64, sv.row_stride as i64, sv.col_stride as i64);
        let (d0, drs, dcs) = (dv.offset as i64, dv.row_stride as i64, dv.col_stride as i64);
        let (rows, cols, acc) = (sv.rows as i64, sv.cols as i64, accumulate as i32);
        launch!(self, gpu, "copy_view", self.strided(n); s, so, srs, scs, d, d0, drs, dcs, rows, cols, acc);
        Ok(())
    }

    /// Adds the device's `count` f64 values at `partials` in order.
    fn sum_partials(&self, partials: u64, count: usize) -> Result<f64> {
        let mut host = vec![0f64; count];
        self.memory.copy(partials, host.as_mut_ptr() as u64, count * 8)?;
        self.memory.settle()?;
        Ok(host.iter().sum())
    }
}

/// Where a strided output view lies in its buffer.
#[derive(Clone, Copy)]
struct StridedOut {
    offset: usize,
    row_stride: usize,
    col_stride: usize,
}

/// How a strided view reaches cuBLAS: its first element's device address,
/// whether it is row-major there (else column-major), and its leading dimension.
struct Operand {
    ptr: u64,
    row_major: bool,
    ld: usize,
}

impl Operand {
    /// cuBLAS sees a row-major span as the transpose of the view (column-major).
    fn op_for_transpose(&self) -> cublasOperation_t {
        if self.row_major {
            cublasOperation_t::CUBLAS_OP_N
        } else {
            cublasOperation_t::CUBLAS_OP_T
        }
    }
}

fn int(value: usize, what: &str) -> Result<i32> {
    i32::try_from(value)
        .map_err(|_| OpsError::shape("matmul", format!("{what} {value} exceeds cuBLAS's int range"), &[]))
}

impl CudaBackend {
    /// A product operand: in place when one of its strides is 1, else packed
    /// row-major into a scratch block.
    fn operand(&self, gpu: &Gpu, args: &mut CallArgs<'_, '_>, v: MatRef<'_>) -> Result<Operand> {
        let (rows, cols) = (v.rows, v.cols);
        if v.col_stride == 1 && (rows == 1 || v.row_stride >= cols) {
            let ptr = args.input(v.data)? + 4 * v.offset as u64;
            return Ok(Operand { ptr, row_major: true, ld: if rows == 1 { cols } else { v.row_stride } });
        }
        if v.row_stride == 1 && (cols == 1 || v.col_stride >= rows) {
            let ptr = args.input(v.data)? + 4 * v.offset as u64;
            return Ok(Operand { ptr, row_major: false, ld: if cols == 1 { rows } else { v.col_stride } });
        }
        let (src, packed) = (args.input(v.data)?, args.scratch(rows * cols)?);
        let dense = StridedOut { offset: 0, row_stride: cols, col_stride: 1 };
        self.copy_on_device(gpu, (src, &v), (packed, dense), false)?;
        Ok(Operand { ptr: packed, row_major: true, ld: cols })
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn device_name(&self) -> String {
        format!("{} ({})", self.device, self.name)
    }

    fn device(&self) -> Device {
        Device::Cuda(self.memory.ordinal)
    }

    fn zeros(&self, len: usize) -> Result<Buf> {
        Ok(self.memory.zeros(len)?.into_buf())
    }

    fn buf_from(&self, values: &[f32]) -> Result<Buf> {
        Ok(self.memory.copy_of(values)?.into_buf())
    }

    fn adopt(&self, values: Vec<f32>) -> Result<Buf> {
        // `copy_of` waits for a copy from host memory, so `values` may be freed after it.
        Ok(self.memory.copy_of(&values)?.into_buf())
    }

    /// Row-major `c = a · b` is column-major `cᵀ = bᵀ · aᵀ`: cuBLAS reads each
    /// row-major span as the transpose it needs, with no copy.
    fn matmul(&self, a: MatRef<'_>, b: MatRef<'_>, mut c: MatMut<'_>, accumulate: bool) -> Result<()> {
        check_matmul(&a, &b, &c)?;
        let (m, k, n) = (a.rows, a.cols, b.cols);
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            zero_unless_accumulating(&mut c, accumulate);
            return Ok(());
        }
        let gpu = self.gpu()?;
        let mut args = CallArgs::new(&self.memory);
        let (a_op, b_op) = (self.operand(&gpu, &mut args, a)?, self.operand(&gpu, &mut args, b)?);
        let c_view = StridedOut { offset: c.offset, row_stride: c.row_stride, col_stride: c.col_stride };
        let c_base = args.output(c.data)?;
        // A result view with no unit column stride goes through a dense scratch block.
        let c_dense = c.col_stride == 1 && (m == 1 || c.row_stride >= n);
        let (c_ptr, ldc) = if c_dense {
            (c_base + 4 * c.offset as u64, if m == 1 { n } else { c.row_stride })
        } else {
            let scratch = args.scratch(m * n)?;
            if accumulate {
                let view = MatRef {
                    data: &[],
                    offset: c.offset,
                    rows: m,
                    cols: n,
                    row_stride: c.row_stride,
                    col_stride: c.col_stride,
                };
                let dense = StridedOut { offset: 0, row_stride: n, col_stride: 1 };
                self.copy_on_device(&gpu, (c_base, &view), (scratch, dense), false)?;
            }
            (scratch, n)
        };
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        // SAFETY: the operands hold every element the leading dimensions reach (bounds checked
        // above, leading dimensions at least the stored rows); the handle runs on the stream.
        unsafe {
            cudarc::cublas::result::sgemm(
                *gpu.blas.handle(),
                b_op.op_for_transpose(),
                a_op.op_for_transpose(),
                int(n, "columns")?,
                int(m, "rows")?,
                int(k, "inner dimension")?,
                &alpha,
                b_op.ptr as *const f32,
                int(b_op.ld, "leading dimension")?,
                a_op.ptr as *const f32,
                int(a_op.ld, "leading dimension")?,
                &beta,
                c_ptr as *mut f32,
                int(ldc, "leading dimension")?,
            )
        }
        .map_err(|e| self.memory.error("cuBLAS SGEMM", e))?;
        self.memory.queued();
        if !c_dense {
            let view = MatRef { data: &[], offset: 0, rows: m, cols: n, row_stride: n, col_stride: 1 };
            self.copy_on_device(&gpu, (c_ptr, &view), (c_base, c_view), false)?;
        }
        args.finish()
    }

    fn activation_forward(&self, act: Activation, x: &mut [f32], cols: usize) -> Result<()> {
        check_rows("activation_forward", x.len(), cols)?;
        if act == Activation::Linear || x.is_empty() {
            return Ok(());
        }
        let gpu = self.gpu()?;
        let mut args = CallArgs::new(&self.memory);
        let (rows, n) = (x.len() / cols, x.len() as i64);
        let xd = args.output(x)?;
        if act == Activation::Softmax {
            let cols = cols as i64;
            launch!(self, gpu, "softmax_rows", self.per_row(rows)?; xd, cols);
        } else {
            let code = act_code(act);
            launch!(self, gpu, "act_forward", self.per_value(n as usize)?; xd, n, code);
        }
        args.finish()
    }

    fn activation_backward(&self, act: Activation, x: &[f32], y: &[f32], dy: &mut [f32], cols: usize) -> Result<()> {
        check_activation_backward(act, x, y, dy, cols)?;
        if act == Activation::Linear || dy.is_empty() {
            return Ok(());
        }
        let gpu = self.gpu()?;
        let mut args = CallArgs::new(&self.memory);
        let (rows, n) = (dy.len() / cols, dy.len() as i64);
        let yd = args.input(y)?;
        // Only GELU reads `x`; the others get `y` in its place.
        let xd = if act == Activation::Gelu { args.input(x)? } else { yd };
        let dyd = args.output(dy)?;
        if act == Activation::Softmax {
            let cols = cols as i64;
            launch!(self, gpu, "softmax_backward_rows", self.per_row(rows)?; yd, dyd, cols);
        } else {
            let code = act_code(act);
            launch!(self, gpu, "act_backward", self.per_value(n as usize)?; xd, yd, dyd, n, code);
        }
        args.finish()
    }

    fn copy(&self, src: MatRef<'_>, dst: MatMut<'_>, accumulate: bool) -> Result<()> {
        if src.rows != dst.rows || src.cols != dst.cols {
            return Err(OpsError::shape(
                "copy",
                "views differ in shape",
                &[&[src.rows, src.cols], &[dst.rows, dst.cols]],
            ));
        }
        if !src.in_bounds() || !dst.in_bounds() {
            return Err(OpsError::shape("copy", "a strided view reaches past its buffer", &[&[src.rows, src.cols]]));
        }
        let gpu = self.gpu()?;
        let mut args = CallArgs::new(&self.memory);
        let s = args.input(src.data)?;
        let view = StridedOut { offset: dst.offset, row_stride: dst.row_stride, col_stride: dst.col_stride };
        let d = args.output(dst.data)?;
        self.copy_on_device(&gpu, (s, &src), (d, view), accumulate)?;
        args.finish()
    }

    fn elementwise(&self, call: Elementwise<'_>) -> Result<()> {
        let gpu = self.gpu()?;
        let mut args = CallArgs::new(&self.memory);
        let (op, a, b, out, n, scale, offset, acc): (i32, u64, u64, u64, usize, f32, f32, i32) = match call {
            Elementwise::Add { a, b, out } => {
                cpu_checks::same_len("add", &[a.len(), b.len(), out.len()])?;
                let n = out.len();
                (0, args.input(a)?, args.input(b)?, args.output(out)?, n, 1.0, 0.0, 0)
            }
            Elementwise::Mul { a, b, out, accumulate } => {
                cpu_checks::same_len("multiply", &[a.len(), b.len(), out.len()])?;
                let n = out.len();
                (1, args.input(a)?, args.input(b)?, args.output(out)?, n, 1.0, 0.0, accumulate as i32)
            }
            Elementwise::AddScaled { x, scale, out } => {
                cpu_checks::same_len("add_scaled", &[x.len(), out.len()])?;
                let n = out.len();
                (2, args.input(x)?, 0, args.output(out)?, n, scale, 0.0, 0)
            }
            Elementwise::ScaleShift { x, scale, offset, out } => {
                cpu_checks::same_len("scale_shift", &[x.len(), out.len()])?;
                let n = out.len();
                (3, args.input(x)?, 0, args.output(out)?, n, scale, offset, 0)
            }
            Elementwise::ScaleInPlace { x, scale } => {
                let n = x.len();
                (4, 0, 0, args.output(x)?, n, scale, 0.0, 0)
            }
        };
        if n > 0 {
            let n64 = n as i64;
            launch!(self, gpu, "elementwise", self.strided(n); op, a, b, out, n64, scale, offset, acc);
        }
        args.finish()
    }

    fn sum_rows(&self, x: &[f32], cols: usize, acc: &mut [f32]) -> Result<()> {
        check_rows("sum_rows", x.len(), cols)?;
        cpu_checks::same_len("sum_rows", &[cols, acc.len()])?;
        let gpu = self.gpu()?;
        let mut args = CallArgs::new(&self.memory);
        let (xd, ad) = (args.input(x)?, args.output(acc)?);
        let (rows, cols64) = ((x.len() / cols) as i64, cols as i64);
        launch!(self, gpu, "sum_rows", self.per_value(cols)?; xd, rows, cols64, ad);
        args.finish()
    }

    fn dot(&self, a: &[f32], b: &[f32]) -> Result<f64> {
        cpu_checks::same_len("dot", &[a.len(), b.len()])?;
        let gpu = self.gpu()?;
        let mut args = CallArgs::new(&self.memory);
        let (ad, bd, n) = (args.input(a)?, args.input(b)?, a.len() as i64);
        let partials = args.scratch(2 * PARTIALS)?;
        let config =
            LaunchConfig { grid_dim: (PARTIALS as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        launch!(self, gpu, "dot_partials", config; ad, bd, n, partials);
        let sum = self.sum_partials(partials, PARTIALS)?;
        args.finish()?;
        Ok(sum)
    }

    fn gather_rows(&self, table: &[f32], width: usize, ids: &[i32], out: &mut [f32]) -> Result<()> {
        check_rows("gather_rows", table.len(), width)?;
        cpu_checks::check_ids("gather_rows", ids, table.len() / width, width, out.len())?;
        if ids.is_empty() {
            return Ok(());
        }
        let gpu = self.gpu()?;
        let mut args = CallArgs::new(&self.memory);
        let n = out.len();
        let (td, idd, od) = (args.input(table)?, args.input(ids)?, args.output(out)?);
        let (w, count) = (width as i64, ids.len() as i64);
        launch!(self, gpu, "gather_rows", self.strided(n); td, w, idd, count, od);
        args.finish()
    }

    fn scatter_add_rows(&self, ids: &[i32], width: usize, rows: &[f32], table: &mut [f32]) -> Result<()> {
        check_rows("scatter_add_rows", table.len(), width)?;
        cpu_checks::check_ids("scatter_add_rows", ids, table.len() / width, width, rows.len())?;
        if ids.is_empty() {
            return Ok(());
        }
        // Each distinct id's positions, in increasing order: the CPU's order of additions.
        let mut positions_of: HashMap<i32, Vec<i32>> = HashMap::new();
        let mut distinct = Vec::new();
        for (p, &id) in ids.iter().enumerate() {
            positions_of.entry(id).or_insert_with(|| {
                distinct.push(id);
                Vec::new()
            });
            positions_of.get_mut(&id).expect("inserted").push(p as i32);
        }
        let mut starts = vec![0i32];
        let mut positions = Vec::with_capacity(ids.len());
        for id in &distinct {
            positions.extend_from_slice(&positions_of[id]);
            starts.push(positions.len() as i32);
        }
        let gpu = self.gpu()?;
        let mut args = CallArgs::new(&self.memory);
        let (dd, sd, pd) = (args.input(&distinct)?, args.input(&starts)?, args.input(&positions)?);
        let (rd, td, w) = (args.input(rows)?, args.output(table)?, width as i64);
        launch!(self, gpu, "scatter_add_rows", self.per_row(distinct.len())?; dd, sd, pd, w, rd, td);
        args.finish()
    }

    fn loss(&self, call: LossCall<'_>) -> Result<f64> {
        let gpu = self.gpu()?;
        let mut args = CallArgs::new(&self.memory);
        let total = match call {
            LossCall::CrossEntropy { pred, classes: c, target, from_logits, grad } => {
                const OP: &str = "categorical_crossentropy";
                check_rows(OP, pred.len(), c)?;
                let rows = pred.len() / c;
                let targets = match target {
                    Targets::Sparse(labels) => labels.len(),
                    Targets::Dense(t) => t.len() / c,
                };
                if grad.len() != pred.len() || targets != rows {
                    return Err(OpsError::shape(
                        OP,
                        "one target per prediction row",
                        &[&[rows, c], &[targets], &[grad.len()]],
                    ));
                }
                let (labels, dense) = match target {
                    Targets::Sparse(labels) => {
                        if let Some(r) = labels.iter().position(|&l| l < 0 || l as usize >= c) {
                            let label = labels[r];
                            return Err(OpsError::shape(
                                OP,
                                format!("label {label} at row {r} is outside [0, {c})"),
                                &[&[c]],
                            ));
                        }
                        (args.input(labels)?, 0)
                    }
                    Targets::Dense(t) => (0, args.input(t)?),
                };
                if rows == 0 {
                    return Ok(f64::NAN); // the mean over no rows, as the CPU gives it
                }
                let (pd, gd) = (args.input(pred)?, args.output(grad)?);
                let row_loss = args.scratch(2 * rows)?;
                let (c64, logits, inv) = (c as i64, from_logits as i32, 1.0 / rows as f32);
                launch!(self, gpu, "cross_entropy_rows", self.per_row(rows)?; pd, c64, labels, dense, logits, gd, inv, row_loss);
                self.sum_partials(row_loss, rows)? / rows as f64
            }
            LossCall::Binary { pred, target, from_logits, grad } => {
                cpu_loss::check_lengths("binary_crossentropy", pred.len(), target.len(), grad.len())?;
                self.elementwise_loss(&gpu, &mut args, 0, (pred, target, from_logits), grad)?
            }
            LossCall::MeanSquared { pred, target, grad } => {
                cpu_loss::check_lengths("mean_squared_error", pred.len(), target.len(), grad.len())?;
                self.elementwise_loss(&gpu, &mut args, 1, (pred, target, false), grad)?
            }
        };
        args.finish()?;
        Ok(total)
    }

    fn recurrent(&self, call: RecurrentCall<'_>) -> Result<()> {
        let gpu = self.gpu()?;
        let mut args = CallArgs::new(&self.memory);
        let dims_of = |d: SequenceDims, step: usize| (step as i64, d.batch as i64, d.steps as i64, d.units as i64);
        let mask_of = |args: &mut CallArgs<'_, '_>, m: Option<&[bool]>| m.map_or(Ok(0), |m| args.input(m));
        match call {
            RecurrentCall::LstmStep { step, dims, mask, gates, cs, tc, hprev, h_last } => {
                cpu_recurrent::check(
                    dims,
                    step,
                    mask,
                    &[(gates.len(), 4), (cs.len(), 1), (tc.len(), 1), (hprev.len(), 1)],
                )?;
                cpu_recurrent::check_last(dims, h_last.len())?;
                let (s, b, t, u) = dims_of(dims, step);
                let md = mask_of(&mut args, mask)?;
                let (gd, cd, td) = (args.output(gates)?, args.output(cs)?, args.output(tc)?);
                let (hd, ld) = (args.output(hprev)?, args.output(h_last)?);
                launch!(self, gpu, "lstm_step", self.per_value(dims.batch * dims.units)?; s, b, t, u, md, gd, cd, td, hd, ld);
            }
            RecurrentCall::LstmStepBackward { step, dims, mask, gates, cs, tc, dh, dc, dz } => {
                cpu_recurrent::check(
                    dims,
                    step,
                    mask,
                    &[(gates.len(), 4), (cs.len(), 1), (tc.len(), 1), (dz.len(), 4)],
                )?;
                cpu_recurrent::check_last(dims, dh.len().min(dc.len()))?;
                let (s, b, t, u) = dims_of(dims, step);
                let md = mask_of(&mut args, mask)?;
                let (gd, cd, td, hd) = (args.input(gates)?, args.input(cs)?, args.input(tc)?, args.input(dh)?);
                let (dcd, dzd) = (args.output(dc)?, args.output(dz)?);
                launch!(self, gpu, "lstm_step_backward", self.per_value(dims.batch * dims.units)?; s, b, t, u, md, gd, cd, td, hd, dcd, dzd);
            }
            RecurrentCall::CarryMasked { step, dims, mask, dh, dh_prev } => {
                cpu_recurrent::check(dims, step, Some(mask), &[])?;
                cpu_recurrent::check_last(dims, dh.len().min(dh_prev.len()))?;
                let (s, b, t, u) = dims_of(dims, step);
                let (md, hd, pd) = (args.input(mask)?, args.input(dh)?, args.output(dh_prev)?);
                launch!(self, gpu, "carry_masked", self.per_value(dims.batch * dims.units)?; s, b, t, u, md, hd, pd);
            }
            RecurrentCall::GruStep { step, dims, mask, xz, rec, hprev, h_last } => {
                cpu_recurrent::check(dims, step, mask, &[(xz.len(), 3), (rec.len(), 3), (hprev.len(), 1)])?;
                cpu_recurrent::check_last(dims, h_last.len())?;
                let (s, b, t, u) = dims_of(dims, step);
                let md = mask_of(&mut args, mask)?;
                let (xd, rd, hd, ld) = (args.output(xz)?, args.input(rec)?, args.output(hprev)?, args.output(h_last)?);
                launch!(self, gpu, "gru_step", self.per_value(dims.batch * dims.units)?; s, b, t, u, md, xd, rd, hd, ld);
            }
            RecurrentCall::GruStepBackward { step, dims, mask, xz, rec, hprev, dh, dh_prev, dxz, drec } => {
                let lens = [(xz.len(), 3), (rec.len(), 3), (hprev.len(), 1), (dxz.len(), 3), (drec.len(), 3)];
                cpu_recurrent::check(dims, step, mask, &lens)?;
                cpu_recurrent::check_last(dims, dh.len().min(dh_prev.len()))?;
                let (s, b, t, u) = dims_of(dims, step);
                let md = mask_of(&mut args, mask)?;
                let (xd, rd, hd, dhd) = (args.input(xz)?, args.input(rec)?, args.input(hprev)?, args.input(dh)?);
                let (pd, dxd, drd) = (args.output(dh_prev)?, args.output(dxz)?, args.output(drec)?);
                launch!(self, gpu, "gru_step_backward", self.per_value(dims.batch * dims.units)?; s, b, t, u, md, xd, rd, hd, dhd, pd, dxd, drd);
            }
        }
        args.finish()
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
        check_optimizer_step(rule, w, g, slots)?;
        if w.is_empty() {
            return Ok(());
        }
        let (code, a, b, c, d, e, flag) = match *rule {
            OptimizerKind::Sgd { momentum, nesterov } if momentum != 0.0 => {
                (1, momentum, 0.0, 0.0, 0.0, 0.0, nesterov as i32)
            }
            OptimizerKind::Sgd { .. } => (0, 0.0, 0.0, 0.0, 0.0, 0.0, 0),
            OptimizerKind::Adam { beta_1, beta_2, epsilon } => {
                (2, adam_alpha(lr, step, beta_1, beta_2), beta_1, beta_2, epsilon, 0.0, 0)
            }
            OptimizerKind::Adamw { beta_1, beta_2, epsilon, weight_decay } => {
                (2, adam_alpha(lr, step, beta_1, beta_2), beta_1, beta_2, epsilon, weight_decay * lr, 0)
            }
            OptimizerKind::Rmsprop { rho, momentum, epsilon } => (3, rho, momentum, epsilon, 0.0, 0.0, 0),
        };
        let gpu = self.gpu()?;
        let mut args = CallArgs::new(&self.memory);
        let (wd, gd, n) = (args.output(w)?, args.input(g)?, g.len() as i64);
        let mut slot_ptrs = [0u64; 2];
        for (ptr, slot) in slot_ptrs.iter_mut().zip(slots.iter_mut()) {
            *ptr = args.output(&mut slot[..])?;
        }
        let [s0, s1] = slot_ptrs;
        launch!(self, gpu, "optimizer_step", self.strided(g.len()); code, wd, gd, s0, s1, n, lr, a, b, c, d, e, flag);
        args.finish()
    }

    // Not on the device yet: convolution windows, pooling and batch
    // normalisation run the CPU's kernels on the host, on the same buffers,
    // once the device's queued work is done.
    fn im2col(&self, call: Im2colCall<'_>) -> Result<()> {
        self.memory.settle()?;
        CpuBackend.im2col(call)
    }

    fn depthwise(&self, call: DepthwiseCall<'_>) -> Result<()> {
        self.memory.settle()?;
        CpuBackend.depthwise(call)
    }

    fn pool(&self, call: PoolCall<'_>) -> Result<()> {
        self.memory.settle()?;
        CpuBackend.pool(call)
    }

    fn batch_norm(&self, call: BatchNormCall<'_>) -> Result<()> {
        self.memory.settle()?;
        CpuBackend.batch_norm(call)
    }
}

/// Adam's step size at 1-based `step`, as the CPU computes it (in f64).
fn adam_alpha(lr: f32, step: u64, b1: f32, b2: f32) -> f32 {
    let t = step as f64;
    (lr as f64 * (1.0 - (b2 as f64).powf(t)).sqrt() / (1.0 - (b1 as f64).powf(t))) as f32
}

impl CudaBackend {
    /// Binary cross-entropy (`kind` 0) or squared error (1): the mean loss.
    fn elementwise_loss<'a>(
        &self,
        gpu: &Gpu,
        args: &mut CallArgs<'_, 'a>,
        kind: i32,
        (pred, target, from_logits): (&[f32], &[f32], bool),
        grad: &'a mut [f32],
    ) -> Result<f64> {
        let n = pred.len();
        if n == 0 {
            return Ok(f64::NAN);
        }
        let (pd, td, gd) = (args.input(pred)?, args.input(target)?, args.output(grad)?);
        let partials = args.scratch(2 * PARTIALS)?;
        let config =
            LaunchConfig { grid_dim: (PARTIALS as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
        let (logits, n64) = (from_logits as i32, n as i64);
        launch!(self, gpu, "elementwise_loss", config; kind, pd, td, logits, gd, n64, partials);
        Ok(self.sum_partials(partials, PARTIALS)? / n as f64)
    }
}
