//! The Keras-style model API: summary, JSON config, weights I/O, freezing,
//! shared layers, several outputs, training on a learnable task, and typed
//! errors for bad input.

use kallista_ops::applications::{toy_task, video_qa, VideoQaDims};
use kallista_ops::layers::*;
use kallista_ops::losses::Loss;
use kallista_ops::metrics::Metric;
use kallista_ops::model::{Model, ModelBuilder};
use kallista_ops::optim::OptimizerConfig;
use kallista_ops::{DType, Data, IntTensor, OpsError, Tensor};

fn sce() -> Loss {
    Loss::from_name("sparse_categorical_crossentropy").unwrap()
}

fn toy_model(seed: u64) -> Model {
    video_qa(&VideoQaDims::toy(), seed).unwrap()
}

#[test]
fn w1_summary_counts_parameters_like_keras() {
    let model = video_qa(&VideoQaDims::w1(), 1).unwrap();
    let s = model.summary();
    let line = s.lines().find(|l| l.contains("video_lstm (LSTM)")).expect("video_lstm row");
    assert!(line.contains("2,360,320"), "{line}");
    // Keras prints the same totals for this model (see tests/fixtures/make_keras_fixtures.py's model).
    assert!(s.contains("Total params: 5,295,720"), "{s}");
    assert_eq!(model.count_params(), 5_295_720);
    assert!(s.contains("(None, 16, 2048)") && s.contains("q_embed (Embedding)"));
}

#[test]
fn json_config_rebuilds_a_model_with_identical_outputs() {
    let d = VideoQaDims::toy();
    let mut model = toy_model(7);
    model.compile(OptimizerConfig::adam(1e-2), sce(), &[]);
    let (x, y) = toy_task(&d, 32, 1);
    model.train_on_batch(&x, &y).unwrap();
    let json = model.to_json();
    let mut rebuilt = Model::from_json(&json).unwrap();
    assert_eq!(rebuilt.to_json(), json, "config round-trips");
    // Same seed -> same initial weights; after training, weights travel separately.
    let fresh = toy_model(7);
    assert_eq!(fresh.predict_on_batch(&x).unwrap(), rebuilt.predict_on_batch(&x).unwrap());
    rebuilt.set_weights(&model.named_weights()).unwrap();
    assert_eq!(model.predict_on_batch(&x).unwrap(), rebuilt.predict_on_batch(&x).unwrap());
}

#[test]
fn bad_json_names_what_is_wrong() {
    let json = toy_model(1).to_json().replace("\"units\": 32", "\"unitz\": 32");
    let err = Model::from_json(&json).unwrap_err().to_string();
    assert!(err.contains("unitz") && err.contains("video_lstm"), "{err}");
    let json = toy_model(1).to_json().replace("\"LSTM\"", "\"LSTMM\"");
    assert!(Model::from_json(&json).unwrap_err().to_string().contains("unknown layer class 'LSTMM'"));
}

#[test]
fn learns_the_toy_task_to_95_percent() {
    let d = VideoQaDims::toy();
    let mut model = toy_model(3);
    model.compile(OptimizerConfig::adam(3e-3), sce(), &[Metric::Accuracy]);
    let (x, y) = toy_task(&d, 320, 11);
    let mut acc = 0.0;
    for _epoch in 0..12 {
        let mut correct = 0.0;
        for s in (0..320).step_by(32) {
            let xb: Vec<Data> = x.iter().map(|t| t.slice_rows(s, s + 32)).collect();
            let yb: Vec<Data> = y.iter().map(|t| t.slice_rows(s, s + 32)).collect();
            correct += model.train_on_batch(&xb, &yb).unwrap().metric("accuracy").unwrap() * 32.0;
        }
        acc = correct / 320.0;
    }
    assert!(acc >= 0.95, "train accuracy {acc}");
    let r = model.test_on_batch(&x, &y).unwrap();
    assert!(r.metric("accuracy").unwrap() >= 0.95);
    // An untrained model is near chance: the test can fail.
    let untrained = toy_model(3);
    let mut u = untrained;
    u.compile(OptimizerConfig::adam(3e-3), sce(), &[Metric::Accuracy]);
    assert!(u.test_on_batch(&x, &y).unwrap().metric("accuracy").unwrap() < 0.6);
}

#[test]
fn frozen_layer_gets_no_gradient_and_no_slot() {
    let d = VideoQaDims::toy();
    let mut model = toy_model(5);
    model.set_trainable("video_lstm", false).unwrap();
    model.compile(OptimizerConfig::adam(1e-2), sce(), &[]);
    let before = model.named_weights();
    let (x, y) = toy_task(&d, 16, 2);
    model.train_on_batch(&x, &y).unwrap();
    let after = model.named_weights();
    for key in ["video_lstm/kernel", "video_lstm/recurrent_kernel", "video_lstm/bias"] {
        assert_eq!(before[key], after[key], "{key} changed");
        assert!(!model.optimizer().unwrap().slots.contains_key(key));
    }
    assert_ne!(before["fc1/kernel"], after["fc1/kernel"]);
    assert!(model.count_trainable_params() < model.count_params());
}

#[test]
fn shared_layer_has_one_set_of_weights_and_sums_its_gradients() {
    let mut g = ModelBuilder::new("shared");
    let a = g.input("a", &[3], DType::F32);
    let b = g.input("b", &[3], DType::F32);
    let shared = g.add_layer(Dense::new(4).activation("tanh"));
    let ha = g.call(shared, &[a]).unwrap();
    let hb = g.call(shared, &[b]).unwrap();
    let sum = g.apply(Add::new(), &[ha, hb]).unwrap();
    let out = g.apply(Dense::new(2).activation("softmax"), &[sum]).unwrap();
    let mut model = g.build(&[a, b], &[out], 9).unwrap();
    assert_eq!(model.count_params(), 3 * 4 + 4 + 4 * 2 + 2);
    model.compile(OptimizerConfig::sgd(0.1), sce(), &[]);
    let xa = Tensor::new(&[2, 3], vec![0.1, -0.4, 0.3, 0.9, 0.2, -0.5]).unwrap();
    let xb = Tensor::new(&[2, 3], vec![-0.3, 0.8, 0.1, 0.2, -0.7, 0.4]).unwrap();
    let x = vec![Data::F32(xa), Data::F32(xb)];
    let y = vec![Data::I32(IntTensor::new(&[2], vec![1, 0]).unwrap())];
    let (_, grads) = model.gradients_on_batch(&x, &y).unwrap();
    let k = model.weight_keys().iter().position(|k| k == "dense/kernel").unwrap();
    let analytic = grads.values[k].clone().unwrap();
    // Finite differences through the whole model, on the shared kernel.
    let base = model.named_weights();
    for (i, &a) in analytic.iter().enumerate() {
        let loss_at = |delta: f32| {
            let mut w = base.clone();
            let t = w.get_mut("dense/kernel").unwrap();
            t.data_mut()[i] += delta;
            let mut m = model.clone();
            m.set_weights(&w).unwrap();
            m.test_on_batch(&x, &y).unwrap().loss as f64
        };
        let numeric = ((loss_at(1e-2) - loss_at(-1e-2)) / 2e-2) as f32;
        assert!((numeric - a).abs() < 1e-3 + 1e-2 * numeric.abs(), "element {i}: {a} vs {numeric}");
    }
    let json = model.to_json();
    assert_eq!(Model::from_json(&json).unwrap().count_params(), model.count_params());
}

#[test]
fn two_outputs_with_two_losses() {
    let mut g = ModelBuilder::new("two_heads");
    let x = g.input("x", &[4], DType::F32);
    let h = g.apply(Dense::new(8).activation("relu"), &[x]).unwrap();
    let cls = g.apply(Dense::new(3).activation("softmax"), &[h]).unwrap();
    let reg = g.apply(Dense::new(1), &[h]).unwrap();
    let mut model = g.build(&[x], &[cls, reg], 4).unwrap();
    model.compile_multi(OptimizerConfig::adam(1e-2), vec![sce(), Loss::MeanSquaredError], &[Metric::Accuracy]);
    let xs = Tensor::new(&[8, 4], (0..32).map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0).collect()).unwrap();
    let labels = IntTensor::new(&[8], (0..8).map(|i| i % 3).collect()).unwrap();
    let target = Tensor::new(&[8, 1], (0..8).map(|i| i as f32 / 8.0).collect()).unwrap();
    let first = model.train_on_batch(&[Data::F32(xs.clone())], &[Data::I32(labels.clone()), Data::F32(target.clone())]);
    let first = first.unwrap().loss;
    let mut last = first;
    for _ in 0..100 {
        last = model
            .train_on_batch(&[Data::F32(xs.clone())], &[Data::I32(labels.clone()), Data::F32(target.clone())])
            .unwrap()
            .loss;
    }
    assert!(last < first * 0.5, "{first} -> {last}");
    let out = model.predict_on_batch(&[Data::F32(xs)]).unwrap();
    assert_eq!(out[0].shape(), &[8, 3]);
    assert_eq!(out[1].shape(), &[8, 1]);
}

#[test]
fn weights_and_optimizer_state_round_trip_through_safetensors() {
    let d = VideoQaDims::toy();
    let dir = std::env::temp_dir().join(format!("kallista-ops-weights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ckpt.safetensors");
    let (x, y) = toy_task(&d, 32, 4);
    let mut a = toy_model(8);
    a.compile(OptimizerConfig::adam(1e-2), sce(), &[]);
    a.train_on_batch(&x, &y).unwrap();
    a.train_on_batch(&x, &y).unwrap();
    a.save_weights(&path).unwrap();
    let mut b = Model::from_json(&a.to_json()).unwrap();
    b.compile(OptimizerConfig::adam(1e-2), sce(), &[]);
    b.load_weights(&path).unwrap();
    assert_eq!(b.optimizer().unwrap().iterations, 2);
    assert!(!b.optimizer().unwrap().slots.is_empty());
    // Without the slots: the same weights and iterations, no slots.
    let mut c = Model::from_json(&a.to_json()).unwrap();
    c.compile(OptimizerConfig::adam(1e-2), sce(), &[]);
    c.load_weights_bytes_without_slots(&std::fs::read(&path).unwrap(), "ckpt").unwrap();
    assert_eq!(c.named_weights(), a.named_weights());
    assert_eq!(c.optimizer().unwrap().iterations, 2);
    assert!(c.optimizer().unwrap().slots.is_empty());
    a.train_on_batch(&x, &y).unwrap();
    b.train_on_batch(&x, &y).unwrap();
    assert_eq!(a.named_weights(), b.named_weights(), "resumed training must match");
    // A model of another shape: every mismatch is listed.
    let mut other = video_qa(&VideoQaDims { video_units: 16, ..VideoQaDims::toy() }, 1).unwrap();
    match other.load_weights(&path) {
        Err(OpsError::WeightMismatch(list)) => {
            assert!(list.iter().any(|m| m.contains("video_lstm/kernel")), "{list:?}");
            assert!(list.iter().any(|m| m.contains("video_lstm/recurrent_kernel")), "{list:?}");
            assert!(list.iter().any(|m| m.contains("fc1/kernel")), "{list:?}");
        }
        other => panic!("expected a weight mismatch, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_gives_typed_errors_naming_layer_and_shapes() {
    // Shape mismatch when building.
    let mut g = ModelBuilder::new("bad");
    let v = g.input("v", &[10], DType::F32);
    match g.apply(Lstm::new(4).name("seq"), &[v]) {
        Err(OpsError::LayerInput { layer, got, .. }) => {
            assert_eq!(layer, "seq");
            assert_eq!(got, vec![10]);
        }
        other => panic!("{other:?}"),
    }
    let a = g.input("a", &[5, 3], DType::F32);
    let b = g.input("b", &[4, 3], DType::F32);
    let err = g.apply(Concatenate::new().name("cat"), &[a, b]).unwrap_err().to_string();
    assert!(err.contains("cat") && err.contains("[4, 3]"), "{err}");
    let ids = g.input("ids", &[3], DType::I32);
    let err = g.apply(Dense::new(2).name("d"), &[ids]).unwrap_err().to_string();
    assert!(err.contains("'d'") && err.contains("float32"), "{err}");

    // Token id outside the vocabulary, at runtime.
    let d = VideoQaDims::toy();
    let model = toy_model(1);
    let (mut x, _) = toy_task(&d, 4, 1);
    let mut q = match &x[1] {
        Data::I32(t) => t.data().to_vec(),
        _ => unreachable!(),
    };
    q[2 * d.question_len + 3] = d.vocab as i32;
    x[1] = Data::I32(IntTensor::new(&[4, d.question_len], q).unwrap());
    match model.predict_on_batch(&x) {
        Err(OpsError::TokenOutOfRange { layer, id, row, pos, input_dim }) => {
            assert_eq!((layer.as_str(), id, row, pos, input_dim), ("q_embed", d.vocab as i64, 2, 3, d.vocab));
        }
        other => panic!("{other:?}"),
    }

    // Wrong number of inputs, wrong input shape.
    let (x, _) = toy_task(&d, 4, 1);
    assert!(matches!(model.predict_on_batch(&x[..1]), Err(OpsError::Arity { expected: 2, got: 1, .. })));
    let wrong = vec![Data::F32(Tensor::zeros(&[4, d.frames, d.features + 1])), x[1].clone()];
    let err = model.predict_on_batch(&wrong).unwrap_err().to_string();
    assert!(err.contains("'video'") && err.contains(&format!("{}", d.features + 1)), "{err}");
    // Training an uncompiled model.
    let mut m = toy_model(1);
    let (x, y) = toy_task(&d, 4, 1);
    assert!(matches!(m.train_on_batch(&x, &y), Err(OpsError::NotCompiled(_))));
}

#[test]
fn sharded_batches_match_a_single_shard() {
    // The same batch split over 2 threads or run on 1 gives the same gradients (up to summation order).
    let d = VideoQaDims::toy();
    let mut model = toy_model(2);
    model.compile(OptimizerConfig::adam(1e-3), sce(), &[]);
    let (x, y) = toy_task(&d, 32, 3);
    let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let (r2, g2) = two.install(|| model.gradients_on_batch(&x, &y).unwrap());
    let (r1, g1) = one.install(|| model.gradients_on_batch(&x, &y).unwrap());
    assert!((r1.loss - r2.loss).abs() < 1e-5);
    for (a, b) in g1.values.iter().zip(&g2.values) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-20);
        let err = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(err / scale < 1e-5, "relative difference {}", err / scale);
    }
}

#[test]
fn micro_batches_summed_in_place_equal_the_mean_of_their_gradients() {
    let d = VideoQaDims::toy();
    let mut model = toy_model(4);
    model.compile(OptimizerConfig::adam(1e-3), sce(), &[]);
    let (x, y) = toy_task(&d, 24, 5);
    let part = |i: usize, data: &[Data]| -> Vec<Data> { data.iter().map(|t| t.slice_rows(8 * i, 8 * i + 8)).collect() };
    let seeds = [11u64, 12, 13];
    // Each micro-batch on its own, then their mean (what a worker did before).
    let separate: Vec<_> =
        (0..3).map(|i| model.gradients_on_micro_batch(&part(i, &x), &part(i, &y), seeds[i]).unwrap().1).collect();
    // One after another into one set of buffers, each scaled by 1/3.
    let mut sum = kallista_ops::model::WeightGrads::default();
    let mut losses = vec![];
    for (i, &seed) in seeds.iter().enumerate() {
        let (r, s) = model.gradients_on_micro_batch_into(&part(i, &x), &part(i, &y), seed, 1.0 / 3.0, sum).unwrap();
        losses.push(r.loss);
        sum = s;
    }
    let mut compared = 0;
    for (w, got) in sum.values.iter().enumerate() {
        let Some(got) = got else { continue };
        let want: Vec<f32> = (0..got.len())
            .map(|j| separate.iter().map(|g| g.values[w].as_ref().unwrap()[j]).sum::<f32>() / 3.0)
            .collect();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-20);
        let err = got.iter().zip(&want).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(err / scale < 1e-5, "weight {w}: relative difference {}", err / scale);
        compared += 1;
    }
    assert_eq!(compared, separate[0].values.iter().flatten().count());
    // The Embedding's rows are the union of the micro-batches' rows.
    let table =
        (0..sum.values.len()).find(|&w| separate[0].rows_of(w).is_some()).expect("the Embedding names its rows");
    let mut union = separate[0].rows_of(table).unwrap().clone();
    for g in &separate[1..] {
        union = kallista_ops::autodiff::TouchedRows::union(&union, g.rows_of(table).unwrap()).unwrap();
    }
    assert_eq!(sum.rows_of(table), Some(&union));
    // The loss reported is each micro-batch's own.
    let (first, _) = model.gradients_on_micro_batch(&part(0, &x), &part(0, &y), seeds[0]).unwrap();
    assert_eq!(losses[0].to_bits(), first.loss.to_bits());
    // Into nothing with scale 1: the bits of a micro-batch's gradients.
    let (_, alone) =
        model.gradients_on_micro_batch_into(&part(1, &x), &part(1, &y), seeds[1], 1.0, Default::default()).unwrap();
    assert_eq!(alone.values, separate[1].values);
    // A start that does not fit the model is an error, not a panic.
    let mut wrong = separate[0].clone();
    let first_weight = wrong.values.iter().position(Option::is_some).unwrap();
    wrong.values[first_weight] = Some(vec![0.0; 3].into());
    assert!(model.gradients_on_micro_batch_into(&part(0, &x), &part(0, &y), 1, 1.0, wrong).is_err());
}
