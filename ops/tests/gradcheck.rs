//! Finite-difference gradient checks of every layer and loss, with respect to
//! inputs and weights, masked and unmasked for the recurrent layers. Each
//! check also shows its own power: the same comparison with the analytic
//! gradient of one weight scaled by 1.1 must fail.

mod common;

use common::*;
use kallista_ops::autodiff::{self, Mask, Tape, Var};
use kallista_ops::backend::Activation;
use kallista_ops::gradcheck::GradCheck;
use kallista_ops::init::Rng;
use kallista_ops::layers::*;
use kallista_ops::tensor::DType;
use kallista_ops::{IntTensor, Result, Tensor};
use std::sync::Arc;

fn padding_mask(b: usize, t: usize, lengths: &[usize]) -> Mask {
    Arc::new((0..b * t).map(|i| (i % t) < lengths[i / t]).collect())
}

#[test]
fn dense_every_activation() {
    for act in ["linear", "relu", "sigmoid", "tanh", "softmax", "gelu"] {
        let mut x = randn(&[3, 4], 1, 1.0);
        // keep relu's kink away from the finite-difference step
        x.data_mut().iter_mut().for_each(|v| *v += 0.05f32.copysign(*v));
        check_layer(&format!("Dense({act})"), Box::new(Dense::new(5).activation(act)), vec![x], None);
    }
}

#[test]
fn dense_on_sequences_and_without_bias() {
    check_layer("Dense 3-D", Box::new(Dense::new(3).activation("tanh")), vec![randn(&[2, 3, 4], 2, 1.0)], None);
    check_layer("Dense no bias", Box::new(Dense::new(3).use_bias(false)), vec![randn(&[2, 4], 3, 1.0)], None);
}

#[test]
fn lstm_unmasked_and_masked() {
    let x = randn(&[3, 5, 4], 4, 1.0);
    check_layer("LSTM last", Box::new(Lstm::new(6)), vec![x.clone()], None);
    check_layer("LSTM sequences", Box::new(Lstm::new(6).return_sequences(true)), vec![x.clone()], None);
    let m = padding_mask(3, 5, &[5, 3, 1]);
    check_layer("LSTM masked last", Box::new(Lstm::new(6)), vec![x.clone()], Some(m.clone()));
    check_layer("LSTM masked sequences", Box::new(Lstm::new(6).return_sequences(true)), vec![x], Some(m));
}

#[test]
fn gru_unmasked_and_masked() {
    let x = randn(&[3, 5, 4], 5, 1.0);
    check_layer("GRU last", Box::new(Gru::new(6)), vec![x.clone()], None);
    check_layer("GRU sequences", Box::new(Gru::new(6).return_sequences(true)), vec![x.clone()], None);
    let m = padding_mask(3, 5, &[2, 5, 4]);
    check_layer("GRU masked last", Box::new(Gru::new(6)), vec![x.clone()], Some(m.clone()));
    check_layer("GRU masked sequences", Box::new(Gru::new(6).return_sequences(true)), vec![x], Some(m));
}

#[test]
fn masked_steps_carry_the_state() {
    // A sequence padded at the end must give the same last output as the unpadded one.
    let mut layer = Lstm::new(4);
    layer.build(&[TensorSpec { shape: vec![5, 3], dtype: DType::F32, masked: true }]).unwrap();
    let w = init_weights(&mut layer, 3);
    let x = randn(&[1, 5, 3], 9, 1.0);
    let short = Tensor::new(&[1, 3, 3], x.data()[..9].to_vec()).unwrap();
    let run = |x: &Tensor, mask: Option<Mask>| {
        let mut tape = Tape::new();
        let xv = tape.leaf(x.clone(), false);
        let wv: Vec<Var> = w.iter().map(|t| tape.leaf(t.clone(), false)).collect();
        let mut rng = Rng::new(0);
        let mut ctx = CallContext::new(false, &mut rng);
        let Value::Float { var, .. } =
            layer.forward(&mut tape, &wv, &[Value::Float { var: xv, mask }], &mut ctx).unwrap()
        else {
            unreachable!()
        };
        tape.value(var).clone()
    };
    let padded = run(&x, Some(padding_mask(1, 5, &[3])));
    let plain = run(&short, None);
    assert!(padded.max_abs_diff(&plain) < 1e-6, "{padded:?} vs {plain:?}");
}

#[test]
fn concatenate_add_flatten_reshape_dropout() {
    let a = randn(&[2, 3], 6, 1.0);
    let b = randn(&[2, 4], 7, 1.0);
    // no weights: corrupt the last input's gradient instead
    check_layer_no_weights("Concatenate", Box::new(Concatenate::new()), vec![a.clone(), b]);
    check_layer_no_weights("Add", Box::new(Add::new()), vec![a.clone(), randn(&[2, 3], 8, 1.0)]);
    check_layer_no_weights("Flatten", Box::new(Flatten::new()), vec![randn(&[2, 3, 2], 9, 1.0)]);
    check_layer_no_weights("Reshape", Box::new(Reshape::new(&[-1, 2])), vec![randn(&[2, 6], 10, 1.0)]);
    check_layer_no_weights("Dropout", Box::new(Dropout::new(0.5)), vec![a]);
}

#[test]
fn embedding_table_gradient_with_repeated_ids() {
    let mut layer = Embedding::new(7, 3).mask_zero(true);
    layer.build(&[TensorSpec { shape: vec![4], dtype: DType::I32, masked: false }]).unwrap();
    let table = init_weights(&mut layer, 2);
    let ids = IntTensor::new(&[2, 4], vec![1, 2, 2, 0, 6, 1, 0, 0]).unwrap();
    assert_grads("Embedding", &table, 0, |tape, vars| {
        let mut rng = Rng::new(0);
        let mut ctx = CallContext::new(true, &mut rng);
        match layer.forward(tape, vars, &[Value::Int(ids.clone())], &mut ctx)? {
            Value::Float { var, .. } => autodiff::activation(tape, var, Activation::Tanh),
            Value::Int(_) => unreachable!(),
        }
    });
}

#[test]
fn losses_with_and_without_logits() {
    let z = randn(&[4, 5], 12, 1.0);
    let labels = IntTensor::new(&[4], vec![0, 3, 4, 1]).unwrap();
    let mut dense = vec![0.0; 20];
    for (r, &l) in labels.data().iter().enumerate() {
        dense[r * 5 + l as usize] = 0.7;
        dense[r * 5 + (l as usize + 1) % 5] = 0.3;
    }
    let soft = Tensor::new(&[4, 5], dense).unwrap();
    let binary = Tensor::new(&[4, 5], (0..20).map(|i| (i % 3 == 0) as i32 as f32).collect()).unwrap();
    let target = randn(&[4, 5], 13, 1.0);
    let zs = [z];
    assert_grads("sparse CE logits", &zs, 0, |t, v| autodiff::sparse_categorical_crossentropy(t, v[0], &labels, true));
    assert_grads("sparse CE probs", &zs, 0, |t, v| {
        let p = autodiff::activation(t, v[0], Activation::Softmax)?;
        autodiff::sparse_categorical_crossentropy(t, p, &labels, false)
    });
    assert_grads("CE logits", &zs, 0, |t, v| autodiff::categorical_crossentropy(t, v[0], &soft, true));
    assert_grads("CE probs", &zs, 0, |t, v| {
        let p = autodiff::activation(t, v[0], Activation::Softmax)?;
        autodiff::categorical_crossentropy(t, p, &soft, false)
    });
    assert_grads("BCE logits", &zs, 0, |t, v| autodiff::binary_crossentropy(t, v[0], &binary, true));
    assert_grads("BCE probs", &zs, 0, |t, v| {
        let p = autodiff::activation(t, v[0], Activation::Sigmoid)?;
        autodiff::binary_crossentropy(t, p, &binary, false)
    });
    assert_grads("MSE", &zs, 0, |t, v| autodiff::mean_squared_error(t, v[0], &target));
}

#[test]
fn broken_backward_rule_is_caught() {
    // A deliberately wrong rule: y = x^2 with dy/dx = 2.2x.
    struct Square(Var);
    impl autodiff::Backward for Square {
        fn name(&self) -> &'static str {
            "square"
        }
        fn inputs(&self) -> Vec<Var> {
            vec![self.0]
        }
        fn backward(&self, tape: &Tape, _o: Var, dy: &[f32], g: &mut autodiff::Gradients) -> Result<()> {
            let x = tape.value(self.0).data().to_vec();
            g.accumulate(self.0, x.iter().zip(dy).map(|(x, d)| 2.2 * x * d).collect())?;
            Ok(())
        }
    }
    let x = randn(&[6], 3, 1.0);
    let report = GradCheck::default()
        .check(&[x], |t, v| {
            let y: Vec<f32> = t.value(v[0]).data().iter().map(|a| a * a).collect();
            Ok(t.push(Tensor::new(&[6], y)?, Box::new(Square(v[0]))))
        })
        .unwrap();
    assert!(!report.ok());
}
