//! The W2 model (`applications::video_qa_pixels`): the same parameter count
//! and FLOP count as the peers' Keras model, and a training step that runs end
//! to end on uint8 frames.

use kallista_ops::applications::{video_qa_pixels, VideoQaPixelsDims};
use kallista_ops::losses::Loss;
use kallista_ops::optim::OptimizerConfig;
use kallista_ops::{ByteTensor, Data, IntTensor};

#[test]
fn w2_counts_parameters_and_flops_like_the_peers() {
    let d = VideoQaPixelsDims::w2();
    let model = video_qa_pixels(&d, 1).unwrap();
    // `keras_w.build("W2").count_params()` and its summary's td_cnn row.
    assert_eq!(model.count_params(), 340_708);
    let s = model.summary();
    let row = s.lines().find(|l| l.contains("td_cnn (TimeDistributed)")).expect("td_cnn row");
    assert!(row.contains("93,248") && row.contains("(None, 8, 128)"), "{row}");
    assert!(s.contains("(None, 8, 64, 64, 3)"), "{s}");
    // peerlib.FWD_FLOP["W2"]
    assert_eq!(d.forward_flops(), 168_071_680.0);
    assert!(model.weight_keys().iter().any(|k| k == "td_cnn/frame_cnn/conv3/kernel"));
}

#[test]
fn toy_w2_trains_on_uint8_frames() {
    let d = VideoQaPixelsDims::toy();
    let mut model = video_qa_pixels(&d, 3).unwrap();
    model.compile(OptimizerConfig::adam(1e-2), Loss::from_name("sparse_categorical_crossentropy").unwrap(), &[]);
    let b = 8;
    let n = b * d.frames * d.height * d.width * d.channels;
    let video = ByteTensor::new(
        &[b, d.frames, d.height, d.width, d.channels],
        (0..n).map(|i| ((i * 31 + i / 7) % 256) as u8).collect(),
    )
    .unwrap();
    let q =
        IntTensor::new(&[b, d.question_len], (0..b * d.question_len).map(|i| (i % (d.vocab - 1) + 1) as i32).collect())
            .unwrap();
    let y = IntTensor::new(&[b], (0..b).map(|i| (i % d.answers) as i32).collect()).unwrap();
    let (x, y) = (vec![Data::U8(video), Data::I32(q)], vec![Data::I32(y)]);
    let first = model.train_on_batch(&x, &y).unwrap().loss;
    let mut last = first;
    for _ in 0..40 {
        last = model.train_on_batch(&x, &y).unwrap().loss;
    }
    assert!(last < 0.5 * first, "loss {first} -> {last}");
    // A float batch where uint8 is expected is a typed error naming the input.
    let wrong =
        vec![Data::F32(kallista_ops::Tensor::zeros(&[b, d.frames, d.height, d.width, d.channels])), x[1].clone()];
    let err = model.predict_on_batch(&wrong).unwrap_err().to_string();
    assert!(err.contains("'video'") && err.contains("uint8"), "{err}");
}

/// Inference runs the TimeDistributed CNN over blocks of frames on tapes of
/// their own; its predictions keep the bits of one pass over all frames (the
/// pass that keeps gradients, which runs the CNN on all of them at once).
#[test]
fn inference_over_blocks_of_frames_predicts_the_bits_of_one_pass() {
    use kallista_ops::autodiff::Tape;
    use kallista_ops::init::Rng;
    let d = VideoQaPixelsDims::toy();
    let model = video_qa_pixels(&d, 5).unwrap();
    let b = 5; // 15 frames: two blocks, the second one short
    let n = b * d.frames * d.height * d.width * d.channels;
    let video =
        ByteTensor::new(&[b, d.frames, d.height, d.width, d.channels], (0..n).map(|i| (i * 37 % 251) as u8).collect())
            .unwrap();
    let q =
        IntTensor::new(&[b, d.question_len], (0..b * d.question_len).map(|i| (i % 5 + 1) as i32).collect()).unwrap();
    let x = vec![Data::U8(video), Data::I32(q)];
    assert!(b * d.frames > kallista_ops::layers::FRAMES_PER_BLOCK, "the toy must span blocks");
    let mut tape = Tape::new();
    let pass = model.forward_on_tape(&mut tape, &x, false, true, &mut Rng::new(0)).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let predicted = model.predict_on_batch(&x).unwrap();
    assert_eq!(bits(predicted[0].data()), bits(tape.value(pass.outputs[0]).data()));
}
