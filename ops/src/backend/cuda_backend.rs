//! The CUDA backend on cudarc: cuBLAS SGEMM for products, NVRTC-compiled
//! kernels ([`super::cuda_kernels`]) for activations. The driver, cuBLAS and
//! NVRTC load at run time, so a build needs no toolkit; a missing library or
//! device is a typed error (cudarc itself would panic).
//!
//! Tensors still live on the host: each call uploads its operands and
//! downloads its result, so only the products and activations run on the GPU;
//! the other op families go through the trait but run the CPU's kernels on
//! the host ([`crate::host_kernels!`]). Calls are serialised on the device's
//! one stream: one worker process per device.

use super::cuda_kernels::{act_code, SOURCE};
use super::{
    check_activation_backward, check_matmul, check_rows, zero_unless_accumulating, Activation, Backend, MatMut, MatRef,
};
use crate::error::{OpsError, Result};
use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// One CUDA device, opened.
pub struct CudaBackend {
    device: String,
    name: String,
    gpu: Mutex<Gpu>,
}

struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    act_forward: CudaFunction,
    act_backward: CudaFunction,
    softmax_rows: CudaFunction,
    softmax_backward_rows: CudaFunction,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBackend({}: {})", self.device, self.name)
    }
}

/// Threads per block of the row kernels (their shared arrays hold this many).
const ROW_THREADS: u32 = 256;

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
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| fail(format!("cannot create a cuBLAS handle: {e}")))?;
        let ptx =
            cudarc::nvrtc::compile_ptx(SOURCE).map_err(|e| fail(format!("NVRTC cannot compile the kernels: {e}")))?;
        let module = ctx.load_module(ptx).map_err(|e| fail(format!("cannot load the kernels: {e}")))?;
        let function = |name: &str| module.load_function(name).map_err(|e| fail(format!("kernel {name}: {e}")));
        let gpu = Gpu {
            act_forward: function("act_forward")?,
            act_backward: function("act_backward")?,
            softmax_rows: function("softmax_rows")?,
            softmax_backward_rows: function("softmax_backward_rows")?,
            ctx,
            stream,
            blas,
        };
        Ok(CudaBackend { device, name, gpu: Mutex::new(gpu) })
    }

    fn error(&self, what: &str, detail: impl std::fmt::Display) -> OpsError {
        OpsError::Cuda { device: self.device.clone(), detail: format!("{what}: {detail}") }
    }

    /// The device, locked and current on this thread.
    fn gpu(&self) -> Result<std::sync::MutexGuard<'_, Gpu>> {
        let gpu = self.gpu.lock().unwrap_or_else(|e| e.into_inner());
        gpu.ctx.bind_to_thread().map_err(|e| self.error("bind the context", e))?;
        Ok(gpu)
    }

    fn upload(&self, gpu: &Gpu, host: &[f32]) -> Result<CudaSlice<f32>> {
        gpu.stream.clone_htod(host).map_err(|e| self.error("copy to the device", e))
    }

    fn download(&self, gpu: &Gpu, device: &CudaSlice<f32>, host: &mut [f32]) -> Result<()> {
        gpu.stream.memcpy_dtoh(device, host).map_err(|e| self.error("copy from the device", e))?;
        gpu.stream.synchronize().map_err(|e| self.error("synchronize", e))
    }

    /// Runs an elementwise kernel over `n` values.
    fn launch_elementwise(&self, n: usize, launch: impl FnOnce(LaunchConfig) -> Result<()>) -> Result<()> {
        let blocks = u32::try_from(n.div_ceil(256)).map_err(|_| self.error("launch", "too many values"))?;
        launch(LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 })
    }

    fn row_config(&self, rows: usize) -> Result<LaunchConfig> {
        let rows = u32::try_from(rows).map_err(|_| self.error("launch", "too many rows"))?;
        Ok(LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: 0 })
    }
}

/// How a strided view reaches cuBLAS: the host span that holds it, whether
/// that span is the view row-major (else column-major), and its leading dimension.
struct Operand<'a> {
    span: Cow<'a, [f32]>,
    row_major: bool,
    ld: usize,
}

impl<'a> Operand<'a> {
    fn of(v: MatRef<'a>) -> Self {
        let (rows, cols) = (v.rows, v.cols);
        if v.col_stride == 1 && (rows == 1 || v.row_stride >= cols) {
            let ld = if rows == 1 { cols } else { v.row_stride };
            let end = v.offset + (rows - 1) * ld + cols;
            return Operand { span: Cow::Borrowed(&v.data[v.offset..end]), row_major: true, ld };
        }
        if v.row_stride == 1 && (cols == 1 || v.col_stride >= rows) {
            let ld = if cols == 1 { rows } else { v.col_stride };
            let end = v.offset + (cols - 1) * ld + rows;
            return Operand { span: Cow::Borrowed(&v.data[v.offset..end]), row_major: false, ld };
        }
        let packed = (0..rows)
            .flat_map(|i| (0..cols).map(move |j| v.data[v.offset + i * v.row_stride + j * v.col_stride]))
            .collect();
        Operand { span: Cow::Owned(packed), row_major: true, ld: cols }
    }

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

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn device_name(&self) -> String {
        format!("{} ({})", self.device, self.name)
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
        let (a_op, b_op) = (Operand::of(a), Operand::of(b));
        // `c` goes up too, so that accumulation and the gaps between its rows survive the copy back.
        let c_dense = c.col_stride == 1 && (m == 1 || c.row_stride >= n);
        let ldc = if c_dense && m > 1 { c.row_stride } else { n };
        let c_range = c.offset..c.offset + (m - 1) * ldc + n;
        // Only a view with no unit column stride is packed; a dense one goes up from its own span.
        let c_packed: Vec<f32> = if c_dense {
            vec![]
        } else {
            (0..m)
                .flat_map(|i| (0..n).map(move |j| (i, j)))
                .map(|(i, j)| c.data[c.offset + i * c.row_stride + j * c.col_stride])
                .collect()
        };
        let config = GemmConfig {
            transa: b_op.op_for_transpose(),
            transb: a_op.op_for_transpose(),
            m: int(n, "columns")?,
            n: int(m, "rows")?,
            k: int(k, "inner dimension")?,
            alpha: 1.0f32,
            lda: int(b_op.ld, "leading dimension")?,
            ldb: int(a_op.ld, "leading dimension")?,
            beta: if accumulate { 1.0 } else { 0.0 },
            ldc: int(ldc, "leading dimension")?,
        };
        let gpu = self.gpu()?;
        let a_dev = self.upload(&gpu, &a_op.span)?;
        let b_dev = self.upload(&gpu, &b_op.span)?;
        let mut c_dev = self.upload(&gpu, if c_dense { &c.data[c_range.clone()] } else { &c_packed })?;
        // SAFETY: the spans hold every element the config reaches (checked bounds, leading
        // dimensions at least the stored rows), and each is a live device allocation.
        unsafe { gpu.blas.gemm(config, &b_dev, &a_dev, &mut c_dev) }.map_err(|e| self.error("cuBLAS SGEMM", e))?;
        if c_dense {
            self.download(&gpu, &c_dev, &mut c.data[c_range])?;
        } else {
            let mut out = vec![0.0f32; m * n];
            self.download(&gpu, &c_dev, &mut out)?;
            for i in 0..m {
                for j in 0..n {
                    c.data[c.offset + i * c.row_stride + j * c.col_stride] = out[i * n + j];
                }
            }
        }
        Ok(())
    }

    fn activation_forward(&self, act: Activation, x: &mut [f32], cols: usize) -> Result<()> {
        check_rows("activation_forward", x.len(), cols)?;
        if act == Activation::Linear || x.is_empty() {
            return Ok(());
        }
        let gpu = self.gpu()?;
        let mut x_dev = self.upload(&gpu, x)?;
        if act == Activation::Softmax {
            let mut launch = gpu.stream.launch_builder(&gpu.softmax_rows);
            let cols = cols as i64;
            launch.arg(&mut x_dev).arg(&cols);
            // SAFETY: one block per row of `cols` values inside `x_dev`.
            unsafe { launch.launch(self.row_config(x.len() / cols as usize)?) }
                .map_err(|e| self.error("softmax", e))?;
        } else {
            let (n, code) = (x.len() as i64, act_code(act));
            self.launch_elementwise(x.len(), |config| {
                let mut launch = gpu.stream.launch_builder(&gpu.act_forward);
                launch.arg(&mut x_dev).arg(&n).arg(&code);
                // SAFETY: threads past `n` return at once.
                unsafe { launch.launch(config) }.map(|_| ()).map_err(|e| self.error(act.name(), e))
            })?;
        }
        self.download(&gpu, &x_dev, x)
    }

    fn activation_backward(&self, act: Activation, x: &[f32], y: &[f32], dy: &mut [f32], cols: usize) -> Result<()> {
        check_activation_backward(act, x, y, dy, cols)?;
        if act == Activation::Linear || dy.is_empty() {
            return Ok(());
        }
        let gpu = self.gpu()?;
        let y_dev = self.upload(&gpu, y)?;
        let mut dy_dev = self.upload(&gpu, dy)?;
        if act == Activation::Softmax {
            let mut launch = gpu.stream.launch_builder(&gpu.softmax_backward_rows);
            let cols = cols as i64;
            launch.arg(&y_dev).arg(&mut dy_dev).arg(&cols);
            // SAFETY: one block per row of `cols` values inside both buffers.
            unsafe { launch.launch(self.row_config(dy.len() / cols as usize)?) }
                .map_err(|e| self.error("softmax backward", e))?;
        } else {
            // Only GELU reads `x`; the others get `y` in its place (no copy).
            let x_dev = if act == Activation::Gelu { Some(self.upload(&gpu, x)?) } else { None };
            let x_dev = x_dev.as_ref().unwrap_or(&y_dev);
            let (n, code) = (dy.len() as i64, act_code(act));
            self.launch_elementwise(dy.len(), |config| {
                let mut launch = gpu.stream.launch_builder(&gpu.act_backward);
                launch.arg(x_dev).arg(&y_dev).arg(&mut dy_dev).arg(&n).arg(&code);
                // SAFETY: threads past `n` return at once.
                unsafe { launch.launch(config) }.map(|_| ()).map_err(|e| self.error(act.name(), e))
            })?;
        }
        self.download(&gpu, &dy_dev, dy)
    }

    // Not on the device yet: these families run on the host, as they did
    // before they went through the trait (tensors still live on the host).
    crate::host_kernels!(
        copy,
        elementwise,
        sum_rows,
        dot,
        gather_rows,
        scatter_add_rows,
        loss,
        recurrent,
        im2col,
        depthwise,
        pool,
        batch_norm,
        optimizer_step,
    );
}
