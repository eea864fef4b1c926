//! Kernel lab for the convolution of workload W2: each of the three W2
//! convolutions on one shard (64 frames, single-threaded kernels, as
//! `train_on_batch` runs them at batch 16 on 2 threads), forward and
//! forward+backward, median milliseconds and GFLOP/s.
//!
//!     cargo bench --workspace --bench conv

use kallista_ops::autodiff::{conv2d, Conv2dOptions, Padding, Tape};
use kallista_ops::backend::{with_single_threaded_kernels, Activation};
use kallista_ops::init::Rng;
use kallista_ops::Tensor;
use std::time::Instant;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut r = Rng::new(seed);
    Tensor::new(shape, (0..shape.iter().product()).map(|_| r.normal() * 0.1).collect()).unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let frames = 64;
    let opts = Conv2dOptions { strides: (2, 2), dilation: (1, 1), padding: Padding::Same };
    // (name, input size, in channels, out channels, input needs a gradient)
    for (name, hw, c, o, dx) in [("conv1", 64, 3, 32, false), ("conv2", 32, 32, 64, true), ("conv3", 16, 64, 128, true)]
    {
        let x = randn(&[frames, hw, hw, c], 1);
        let k = randn(&[3, 3, c, o], 2);
        let b = randn(&[o], 3);
        let out = hw / 2;
        let flop = 2.0 * (frames * out * out * o * 9 * c) as f64;
        let (mut fwd, mut all) = (vec![], vec![]);
        for _ in 0..15 {
            with_single_threaded_kernels(|| {
                let t = Instant::now();
                let mut tape = Tape::new();
                let xv = tape.leaf(x.clone(), dx);
                let kv = tape.leaf(k.clone(), true);
                let bv = tape.leaf(b.clone(), true);
                let y = conv2d(&mut tape, xv, kv, Some(bv), opts, Activation::Relu).unwrap();
                fwd.push(t.elapsed().as_secs_f64());
                let n = tape.value(y).len();
                let g = tape.backward_with(y, vec![1.0; n]).unwrap();
                assert!(g.get(kv).is_some());
                all.push(t.elapsed().as_secs_f64());
            });
        }
        let (f, a) = (median(fwd), median(all));
        let bwd_flop = if dx { 2.0 * flop } else { flop };
        println!(
            "{name}: fwd {:.2} ms ({:.1} GFLOP/s)   bwd {:.2} ms ({:.1} GFLOP/s)",
            f * 1e3,
            flop / f / 1e9,
            (a - f) * 1e3,
            bwd_flop / (a - f) / 1e9
        );
    }
}
