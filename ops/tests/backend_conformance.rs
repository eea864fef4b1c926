//! The backend conformance suite, written once and run against each backend
//! compiled in: matrix products over every view layout (plain, transposed,
//! gapped rows, strided columns; overwrite and accumulate) and every
//! activation forward and backward, against an f64 oracle; every other op
//! family of the backend trait (copies, elementwise, reductions, embedding
//! rows, losses, recurrent gates, im2col, depthwise, pooling, batch norm,
//! optimizer updates; see `conformance/`); typed errors for bad views; and,
//! for a non-CPU backend, a whole model's loss and gradients against the CPU
//! backend's.
//!
//! Tolerances: a product element may differ from the oracle by 1e-4 of
//! `Σ|a_ik·b_kj|` (1e-3 once the reduction is longer than 1024), an
//! activation by 1e-4 of the value (plus 1e-6). The CUDA tests need a GPU:
//! a plain `cargo test` lists them as ignored, never as passed, and
//! `scripts/gpu-check.sh` runs them on a GPU machine.

mod conformance;

use conformance::random;

use kallista_ops::applications::{toy_task, video_qa, VideoQaDims};
use kallista_ops::backend::calls::{LossCall, RecurrentCall};
use kallista_ops::backend::{
    backend_for, cpu_backend, set_default_device, Activation, Backend, Device, MatMut, MatRef,
};
use kallista_ops::losses::Loss;
use kallista_ops::optim::{OptimizerConfig, OptimizerKind};
use std::sync::Mutex;

const ACTIVATIONS: [Activation; 6] = [
    Activation::Linear,
    Activation::Relu,
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::Gelu,
    Activation::Softmax,
];

/// How a test lays a matrix out in its buffer.
#[derive(Clone, Copy, Debug)]
enum Layout {
    /// Dense row-major.
    RowMajor,
    /// Dense column-major (a transposed view).
    ColMajor,
    /// Row-major with 3 unused values after each row.
    GappedRows,
    /// Every other column of a row-major buffer (no unit stride).
    EveryOtherColumn,
}

const LAYOUTS: [Layout; 4] = [Layout::RowMajor, Layout::ColMajor, Layout::GappedRows, Layout::EveryOtherColumn];

/// A `rows x cols` matrix in `layout`: its buffer (with sentinels in the gaps) and strides.
struct Placed {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl Placed {
    fn new(values: &[f32], rows: usize, cols: usize, layout: Layout) -> Self {
        let (row_stride, col_stride, len) = match layout {
            Layout::RowMajor => (cols, 1, rows * cols),
            Layout::ColMajor => (1, rows, rows * cols),
            Layout::GappedRows => (cols + 3, 1, rows * (cols + 3)),
            Layout::EveryOtherColumn => (2 * cols, 2, rows * 2 * cols),
        };
        let mut data = vec![-7.5f32; len.max(1)];
        for i in 0..rows {
            for j in 0..cols {
                data[i * row_stride + j * col_stride] = values[i * cols + j];
            }
        }
        Placed { data, rows, cols, row_stride, col_stride }
    }

    fn view(&self) -> MatRef<'_> {
        MatRef {
            data: &self.data,
            offset: 0,
            rows: self.rows,
            cols: self.cols,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    fn view_mut(&mut self) -> MatMut<'_> {
        let (rows, cols, row_stride, col_stride) = (self.rows, self.cols, self.row_stride, self.col_stride);
        MatMut { data: &mut self.data, offset: 0, rows, cols, row_stride, col_stride }
    }

    fn get(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.row_stride + j * self.col_stride]
    }

    /// The values outside the matrix, which no kernel may touch.
    fn gaps(&self) -> Vec<f32> {
        let mut inside = vec![false; self.data.len()];
        for i in 0..self.rows {
            for j in 0..self.cols {
                inside[i * self.row_stride + j * self.col_stride] = true;
            }
        }
        self.data.iter().zip(&inside).filter(|(_, &inside)| !inside).map(|(v, _)| *v).collect()
    }
}

/// Whether `got` is within `tol · scale (+ 1e-6)` of `want`.
fn close(got: f32, want: f64, scale: f64, tol: f64) -> bool {
    got.is_finite() && (got as f64 - want).abs() <= tol * scale + 1e-6
}

/// Every failure of one product case, as text.
fn check_product(
    be: &dyn Backend,
    (m, k, n): (usize, usize, usize),
    layouts: [Layout; 3],
    accumulate: bool,
) -> Vec<String> {
    let seed = (m * 1_000_003 + k * 1009 + n) as u64;
    let (a, b, c0) = (random(m * k, seed, 1.0), random(k * n, seed + 1, 1.0), random(m * n, seed + 2, 1.0));
    let pa = Placed::new(&a, m, k, layouts[0]);
    let pb = Placed::new(&b, k, n, layouts[1]);
    let mut pc = Placed::new(&c0, m, n, layouts[2]);
    let gaps_before = pc.gaps();
    let case = format!("matmul {m}x{k}x{n} {layouts:?} accumulate={accumulate}");
    if let Err(e) = be.matmul(pa.view(), pb.view(), pc.view_mut(), accumulate) {
        return vec![format!("{case}: {e}")];
    }
    let tol = if k > 1024 { 1e-3 } else { 1e-4 };
    let mut failures = vec![];
    for i in 0..m {
        for j in 0..n {
            let (mut want, mut scale) = (0.0f64, 0.0f64);
            for p in 0..k {
                let term = a[i * k + p] as f64 * b[p * n + j] as f64;
                want += term;
                scale += term.abs();
            }
            if accumulate {
                want += c0[i * n + j] as f64;
                scale += (c0[i * n + j] as f64).abs();
            }
            if !close(pc.get(i, j), want, scale, tol) && failures.len() < 3 {
                failures.push(format!("{case}: c[{i},{j}] = {}, want {want}", pc.get(i, j)));
            }
        }
    }
    if pc.gaps() != gaps_before {
        failures.push(format!("{case}: wrote outside the matrix"));
    }
    // Where the backend packs `b`, products with the packed form give the same bits.
    match be.pack_matrix(pb.view()) {
        Err(e) => failures.push(format!("{case}: pack_matrix: {e}")),
        Ok(None) => {}
        Ok(Some(packed)) => {
            let mut packed_c = Placed::new(&c0, m, n, layouts[2]);
            match be.matmul_packed(pa.view(), pb.view(), Some(&packed), packed_c.view_mut(), accumulate) {
                Err(e) => failures.push(format!("{case}: matmul_packed: {e}")),
                Ok(()) => {
                    let bits = |p: &Placed| p.data.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    if bits(&packed_c) != bits(&pc) {
                        failures.push(format!("{case}: matmul_packed differs from matmul"));
                    }
                }
            }
        }
    }
    failures
}

fn activation_oracle(act: Activation, x: &[f64], cols: usize) -> Vec<f64> {
    let erf_cdf = |v: f64| 0.5 * (1.0 + erf(v / std::f64::consts::SQRT_2));
    match act {
        Activation::Linear => x.to_vec(),
        Activation::Relu => x.iter().map(|v| v.max(0.0)).collect(),
        Activation::Sigmoid => x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
        Activation::Tanh => x.iter().map(|v| v.tanh()).collect(),
        Activation::Gelu => x.iter().map(|&v| v * erf_cdf(v)).collect(),
        Activation::Softmax => x
            .chunks(cols)
            .flat_map(|row| {
                let max = row.iter().cloned().fold(f64::MIN, f64::max);
                let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
                row.iter().map(move |v| (v - max).exp() / sum).collect::<Vec<_>>()
            })
            .collect(),
    }
}

/// The derivative oracle: the input gradient for output gradient `dy`.
fn activation_grad_oracle(act: Activation, x: &[f64], y: &[f64], dy: &[f64], cols: usize) -> Vec<f64> {
    let pdf = |v: f64| (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let cdf = |v: f64| 0.5 * (1.0 + erf(v / std::f64::consts::SQRT_2));
    let each = |f: &dyn Fn(usize) -> f64| (0..dy.len()).map(f).collect::<Vec<f64>>();
    match act {
        Activation::Linear => dy.to_vec(),
        Activation::Relu => each(&|i| if x[i] > 0.0 { dy[i] } else { 0.0 }),
        Activation::Sigmoid => each(&|i| dy[i] * y[i] * (1.0 - y[i])),
        Activation::Tanh => each(&|i| dy[i] * (1.0 - y[i] * y[i])),
        Activation::Gelu => each(&|i| dy[i] * (cdf(x[i]) + x[i] * pdf(x[i]))),
        Activation::Softmax => y
            .chunks(cols)
            .zip(dy.chunks(cols))
            .flat_map(|(y, g)| {
                let dot: f64 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                y.iter().zip(g).map(move |(y, g)| y * (g - dot)).collect::<Vec<_>>()
            })
            .collect(),
    }
}

/// erf (Numerical Recipes' erfc, |error| < 1.2e-7), evaluated in f64.
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 {
        1.0 - erfc
    } else {
        erfc - 1.0
    }
}

/// Every failure of one activation at one size, forward and backward.
fn check_activation(be: &dyn Backend, act: Activation, rows: usize, cols: usize) -> Vec<String> {
    let case = format!("{} over {rows}x{cols}", act.name());
    let x = random(rows * cols, (rows * 31 + cols) as u64, 3.0);
    let dy = random(rows * cols, (rows * 37 + cols) as u64, 1.0);
    let mut y = x.clone();
    if let Err(e) = be.activation_forward(act, &mut y, cols) {
        return vec![format!("{case} forward: {e}")];
    }
    let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let want_y = activation_oracle(act, &x64, cols);
    let mut failures = vec![];
    for (i, (&got, &want)) in y.iter().zip(&want_y).enumerate() {
        if !close(got, want, want.abs(), 1e-4) && failures.len() < 3 {
            failures.push(format!("{case} forward: y[{i}] = {got}, want {want} (x = {})", x[i]));
        }
    }
    let mut dx = dy.clone();
    if let Err(e) = be.activation_backward(act, &x, &y, &mut dx, cols) {
        return vec![format!("{case} backward: {e}")];
    }
    // The oracle takes the backend's own `y` (as the backward pass does), so that only the rule is tested here.
    let y64: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    let dy64: Vec<f64> = dy.iter().map(|&v| v as f64).collect();
    let want_dx = activation_grad_oracle(act, &x64, &y64, &dy64, cols);
    for (i, (&got, &want)) in dx.iter().zip(&want_dx).enumerate() {
        if !close(got, want, want.abs(), 1e-4) && failures.len() < 6 {
            failures.push(format!("{case} backward: dx[{i}] = {got}, want {want} (x = {})", x[i]));
        }
    }
    failures
}

/// Bad views and shapes must be typed errors, not reads past a buffer.
fn check_errors(be: &dyn Backend) -> Vec<String> {
    let (a, b) = (vec![0.0f32; 4], vec![0.0f32; 4]);
    let mut c = vec![0.0f32; 4];
    let mut failures = vec![];
    if be.matmul(MatRef::dense(&a, 3, 2), MatRef::dense(&b, 2, 2), MatMut::dense(&mut c, 3, 2), false).is_ok() {
        failures.push("a view past its buffer was accepted".to_string());
    }
    if be.matmul(MatRef::dense(&a, 2, 2), MatRef::dense(&b, 1, 4), MatMut::dense(&mut c, 2, 2), false).is_ok() {
        failures.push("mismatched inner dimensions were accepted".to_string());
    }
    let mut x = vec![0.0f32; 5];
    if be.activation_forward(Activation::Softmax, &mut x, 2).is_ok() {
        failures.push("5 values as rows of 2 were accepted".to_string());
    }
    failures
}

/// The whole suite on one backend: every failure, as text.
fn conformance(be: &dyn Backend) -> Vec<String> {
    let mut failures = vec![];
    let shapes = [(1, 1, 1), (1, 7, 5), (5, 1, 3), (3, 5, 7), (17, 33, 9), (64, 129, 300), (8, 2048, 24)];
    for &shape in &shapes {
        for la in LAYOUTS {
            for lb in LAYOUTS {
                for lc in LAYOUTS {
                    // Every layout pair on the small shapes; the plain and transposed ones on the large.
                    let large = shape.0 * shape.1 * shape.2 > 100_000;
                    let plain = |l: Layout| matches!(l, Layout::RowMajor | Layout::ColMajor);
                    if large && !(plain(la) && plain(lb) && plain(lc)) {
                        continue;
                    }
                    for accumulate in [false, true] {
                        failures.extend(check_product(be, shape, [la, lb, lc], accumulate));
                    }
                }
            }
        }
    }
    for act in ACTIVATIONS {
        for (rows, cols) in [(1, 1), (7, 13), (3, 1000), (300, 10)] {
            failures.extend(check_activation(be, act, rows, cols));
        }
    }
    failures.extend(check_errors(be));
    for (row, rows) in [(vec![], 3), (vec![1.5], 0), (vec![1.0, -2.0, 3.5], 1), (random(37, 9, 1.0), 45)] {
        let want: Vec<f32> = (0..rows).flat_map(|_| row.iter().copied()).collect();
        match be.rows_of(&row, rows) {
            Ok(got) if got.as_slice() == want.as_slice() => {}
            Ok(_) => failures.push(format!("rows_of {} x {rows}: not the row repeated", row.len())),
            Err(e) => failures.push(format!("rows_of {} x {rows}: {e}", row.len())),
        }
    }
    failures.extend(conformance::check_families(be));
    failures
}

fn assert_conforms(be: &dyn Backend) {
    let failures = conformance(be);
    assert!(failures.is_empty(), "{}: {} failures:\n{}", be.device_name(), failures.len(), failures.join("\n"));
    eprintln!("backend conformance: {} passed", be.device_name());
}

#[test]
fn cpu_backend_conforms() {
    assert_conforms(&*cpu_backend());
}

/// The suite's own power: an answer off by 2e-4 of its scale fails.
#[test]
fn the_tolerances_catch_a_small_error() {
    assert!(close(1.0, 1.0, 1.0, 1e-4));
    assert!(!close(1.0 + 2e-4, 1.0, 1.0, 1e-4));
    assert!(!close(f32::NAN, 0.0, 1.0, 1e-4));
    #[derive(Debug)]
    struct OffByOne;
    impl Backend for OffByOne {
        fn name(&self) -> &'static str {
            "off-by-one"
        }
        fn matmul(&self, a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>, accumulate: bool) -> kallista_ops::Result<()> {
            let (offset, rows, cols) = (c.offset, c.rows, c.cols);
            cpu_backend().matmul(a, b, MatMut { data: &mut *c.data, ..c }, accumulate)?;
            if rows * cols > 1 {
                c.data[offset] *= 1.001;
            }
            Ok(())
        }
        fn activation_forward(&self, act: Activation, x: &mut [f32], cols: usize) -> kallista_ops::Result<()> {
            cpu_backend().activation_forward(act, x, cols)?;
            x.iter_mut().for_each(|v| *v *= 1.001);
            Ok(())
        }
        fn activation_backward(
            &self,
            act: Activation,
            x: &[f32],
            y: &[f32],
            dy: &mut [f32],
            cols: usize,
        ) -> kallista_ops::Result<()> {
            cpu_backend().activation_backward(act, x, y, dy, cols)
        }
        fn recurrent(&self, call: RecurrentCall<'_>) -> kallista_ops::Result<()> {
            match call {
                RecurrentCall::LstmStep { step, dims, mask, gates, cs, tc, hprev, h_last } => {
                    let call = RecurrentCall::LstmStep { step, dims, mask, gates: &mut *gates, cs, tc, hprev, h_last };
                    cpu_backend().recurrent(call)?;
                    gates[step * 4 * dims.units] *= 1.001;
                    Ok(())
                }
                other => cpu_backend().recurrent(other),
            }
        }
        fn loss(&self, call: LossCall<'_>) -> kallista_ops::Result<f64> {
            Ok(cpu_backend().loss(call)? * 1.001)
        }
        fn optimizer_step(
            &self,
            rule: &OptimizerKind,
            lr: f32,
            step: u64,
            w: &mut [f32],
            g: &[f32],
            slots: &mut [&mut [f32]],
        ) -> kallista_ops::Result<()> {
            cpu_backend().optimizer_step(rule, lr * 1.001, step, w, g, slots)
        }
        kallista_ops::host_kernels!(
            copy,
            elementwise,
            sum_rows,
            dot,
            gather_rows,
            scatter_add_rows,
            im2col,
            depthwise,
            pool,
            batch_norm
        );
    }
    let failures = conformance(&OffByOne);
    assert!(failures.iter().any(|f| f.starts_with("matmul")), "a 0.1% product error passed");
    assert!(failures.iter().any(|f| f.starts_with("tanh") && f.contains("forward")), "a 0.1% tanh error passed");
    assert!(failures.iter().any(|f| f.starts_with("lstm step 0 row 0: gates")), "a 0.1% gate error passed");
    assert!(failures.iter().any(|f| f.contains("cross-entropy from logits: loss")), "a 0.1% loss error passed");
    assert!(
        failures.iter().any(|f| f.starts_with("Adam") && f.contains("weights")),
        "a 0.1% learning-rate error passed"
    );
}

/// Tests that change the process's default device take turns.
static DEFAULT_DEVICE: Mutex<()> = Mutex::new(());

/// A W1-shaped model's loss and gradients on `device` against the CPU's:
/// each gradient tensor within 1e-4 of the CPU's norm.
fn assert_model_matches_cpu(device: Device) {
    let _turn = DEFAULT_DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let dims = VideoQaDims::toy();
    let mut model = video_qa(&dims, 11).unwrap();
    model.compile(OptimizerConfig::adam(1e-3), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);
    let (x, y) = toy_task(&dims, 24, 5);
    set_default_device(Device::Cpu).unwrap();
    let (cpu, cpu_grads) = model.gradients_on_batch(&x, &y).unwrap();
    set_default_device(device).unwrap();
    let run = model.gradients_on_batch(&x, &y);
    let predictions = model.predict_on_batch(&x);
    set_default_device(Device::Cpu).unwrap();
    let (dev, dev_grads) = run.unwrap();
    let cpu_predictions = model.predict_on_batch(&x).unwrap();
    assert!(((dev.loss - cpu.loss) / cpu.loss).abs() < 1e-4, "loss {} on {device}, {} on the CPU", dev.loss, cpu.loss);
    for (p, (dev, cpu)) in predictions.unwrap().iter().zip(&cpu_predictions).enumerate() {
        let diff = dev.data().iter().zip(cpu.data()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "output {p}: predictions differ by {diff}");
    }
    let keys = model.weight_keys();
    for ((key, dev), cpu) in keys.iter().zip(&dev_grads.values).zip(&cpu_grads.values) {
        let (Some(dev), Some(cpu)) = (dev, cpu) else {
            assert_eq!(dev.is_some(), cpu.is_some(), "{key}: a gradient on one device only");
            continue;
        };
        let norm = cpu.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let diff = dev.iter().zip(cpu).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
        assert!(diff <= 1e-4 * norm + 1e-9, "{key}: gradient differs by {diff} (norm {norm}) on {device}");
    }
    eprintln!("model gradients on {device} match the CPU's");
}

#[test]
#[ignore = "needs an NVIDIA GPU and a build with feature cuda: scripts/gpu-check.sh runs it"]
fn cuda_backend_conforms() {
    let be = backend_for(Device::Cuda(0)).unwrap_or_else(|e| panic!("CUDA conformance did not run: {e}"));
    assert_conforms(&*be);
}

#[test]
#[ignore = "needs an NVIDIA GPU and a build with feature cuda: scripts/gpu-check.sh runs it"]
fn cuda_model_gradients_match_cpu() {
    assert_model_matches_cpu(Device::Cuda(0));
}
