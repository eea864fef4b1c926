//! Helpers shared by the gradient-check and parity test files: random inputs, layer
//! weights from their initialisers, and the check itself with its power test
//! (a 10% error in one gradient must be caught).
#![allow(dead_code)]

use kallista_ops::autodiff::{self, Mask, Tape, Var};
use kallista_ops::backend::{default_backend, set_default_device, Activation, Device};
use kallista_ops::gradcheck::GradCheck;
use kallista_ops::init::Rng;
use kallista_ops::layers::*;
use kallista_ops::tensor::DType;
use kallista_ops::{Result, Tensor};

pub fn randn(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut r = Rng::new(seed);
    Tensor::new(shape, (0..shape.iter().product()).map(|_| scale * r.normal()).collect()).unwrap()
}

/// Weights of a built layer, drawn from their initialisers (biases nudged off zero).
pub fn init_weights(layer: &mut dyn Layer, seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    layer
        .weights_mut()
        .iter_mut()
        .map(|w| {
            let shape = w.value.shape().to_vec();
            let mut t = w.initializer.init(&shape, &mut rng);
            t.data_mut().iter_mut().for_each(|v| *v += 0.1 * rng.normal());
            t
        })
        .collect()
}

/// Puts the tests on `KALLISTA_DEVICE` (`cpu`, `cuda:N`) when it is set, so
/// that `scripts/gpu-check.sh` runs them on a GPU; a device that cannot open fails the test.
pub fn use_device_from_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(device) = std::env::var("KALLISTA_DEVICE") {
            let opened = Device::parse(&device).and_then(set_default_device);
            opened.unwrap_or_else(|e| panic!("KALLISTA_DEVICE={device}: {e}"));
            eprintln!("tests on {}", default_backend().device_name());
        }
    });
}

/// Checks `f` and that a 10% error in the gradient of input `corrupt` is caught.
pub fn assert_grads<F>(what: &str, inputs: &[Tensor], corrupt: usize, f: F)
where
    F: Fn(&mut Tape, &[Var]) -> Result<Var>,
{
    use_device_from_env();
    let gc = GradCheck::default();
    let report = gc.check(inputs, &f).unwrap();
    assert!(report.ok(), "{what}: gradient mismatch (input, element, analytic, numeric): {:?}", report.failures);
    let mut wrong = report.analytic.clone();
    wrong[corrupt].iter_mut().for_each(|g| *g *= 1.1);
    let caught = gc.compare(inputs, &wrong, &report.proj, &f).unwrap();
    assert!(!caught.ok(), "{what}: a 10% error in input {corrupt}'s gradient went unnoticed");
}

/// Gradient check of a float-input layer in training mode w.r.t. its inputs and
/// its trainable weights.
pub fn check_layer(what: &str, layer: Box<dyn Layer>, inputs: Vec<Tensor>, mask: Option<Mask>) {
    check_layer_in(what, layer, inputs, mask, true)
}

/// [`check_layer`] in training or inference mode. Non-trainable weights
/// (moving statistics) are constants of the forward pass: fed as fixed values,
/// not checked. The power test corrupts the last trainable weight (the last
/// input when there is none).
pub fn check_layer_in(what: &str, mut layer: Box<dyn Layer>, inputs: Vec<Tensor>, mask: Option<Mask>, training: bool) {
    let specs: Vec<TensorSpec> = inputs
        .iter()
        .map(|t| TensorSpec { shape: t.shape()[1..].to_vec(), dtype: DType::F32, masked: mask.is_some() })
        .collect();
    layer.build(&specs).unwrap();
    let weights = init_weights(&mut *layer, 11);
    let trainable: Vec<bool> = layer.weight_paths().iter().map(|p| p.trainable).collect();
    let n_in = inputs.len();
    let mut all = inputs;
    all.extend(weights.iter().zip(&trainable).filter(|(_, t)| **t).map(|(w, _)| w.clone()));
    let corrupt = all.len() - 1;
    assert_grads(what, &all, corrupt, |tape, vars| {
        let args: Vec<Value> = vars[..n_in].iter().map(|v| Value::Float { var: *v, mask: mask.clone() }).collect();
        let mut checked = vars[n_in..].iter();
        let wvars: Vec<Var> = weights
            .iter()
            .zip(&trainable)
            .map(|(w, t)| if *t { *checked.next().unwrap() } else { tape.leaf(w.clone(), false) })
            .collect();
        let mut rng = Rng::new(5);
        let mut ctx = CallContext::new(training, &mut rng);
        match layer.forward(tape, &wvars, &args, &mut ctx)? {
            Value::Float { var, .. } => Ok(var),
            Value::Int(_) => unreachable!("float layers return floats"),
        }
    });
}

/// Values `scale * (a permutation of 1..=n) / n` with a random sign: distinct and at
/// least `scale / n` apart, so that a finite-difference step of 1e-2 never
/// changes which cell a max picks (given `scale / n > 2e-2`).
pub fn distinct(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut rng = Rng::new(seed);
    let mut v: Vec<f32> = (1..=n).map(|i| scale * i as f32 / n as f32).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    Tensor::new(shape, v.into_iter().map(|x| if rng.below(2) == 0 { x } else { -x }).collect()).unwrap()
}

/// Layers without weights: the check covers the inputs; a `Dense` after them gives
/// the projection a weight to corrupt (so the power test still applies).
pub fn check_layer_no_weights(what: &str, mut layer: Box<dyn Layer>, inputs: Vec<Tensor>) {
    let specs: Vec<TensorSpec> = inputs.iter().map(|t| TensorSpec::f32(&t.shape()[1..])).collect();
    layer.build(&specs).unwrap();
    let n = inputs.len();
    assert_grads(what, &inputs, n - 1, |tape, vars| {
        let args: Vec<Value> = vars.iter().map(|v| Value::Float { var: *v, mask: None }).collect();
        let mut rng = Rng::new(5);
        let mut ctx = CallContext::new(true, &mut rng);
        match layer.forward(tape, &[], &args, &mut ctx)? {
            Value::Float { var, .. } => autodiff::activation(tape, var, Activation::Tanh),
            Value::Int(_) => unreachable!(),
        }
    });
}
