//! Compares the SGEMMs on the shapes W1 runs (row-major, 2 threads): the CPU
//! backend as this host selects it (Kallista's AVX-512 or AVX2 kernels where
//! the CPU has them; `KALLISTA_CPU_KERNELS=portable` forces the `gemm` crate), the `gemm`
//! crate itself (rayon) and `matrixmultiply` (ndarray's default, threaded);
//! last, the backend with `B` packed beforehand (a weight during inference), on one thread.
//!
//!     cargo bench --workspace --bench gemm
use kallista_ops::backend::{cpu_backend, gemm_kernels, with_single_threaded_kernels, MatMut, MatRef};
use std::time::Instant;

fn time_it(mut f: impl FnMut(), reps: usize) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    std::env::set_var("MMTHREADS", "2");
    let shapes = [
        (512usize, 2048usize, 1024usize, "video x@W (B*T x F x 4u)"),
        (2048, 1024, 512, "video dW = X^T dZ"),
        (32, 1024, 256, "recurrent h@U"),
        (32, 256, 1024, "recurrent h@U W1"),
        (16, 256, 1024, "recurrent h@U 16"),
        (64, 256, 1024, "recurrent h@U 64"),
        (256, 1024, 256, "recurrent dU slice"),
        (4096, 1024, 2048, "infer x@W B=256"),
        (8192, 288, 64, "W2 conv2 cols@K"),
        (4096, 576, 128, "W2 conv3 cols@K"),
        (512, 512, 512, "square 512"),
        (8192, 27, 32, "W2 infer conv1 (8 frames)"),
        (2048, 288, 64, "W2 infer conv2 (8 frames)"),
        (512, 576, 128, "W2 infer conv3 (8 frames)"),
    ];
    println!("backend kernels: {}", gemm_kernels().name());
    println!("{:<28} {:>10} {:>10} {:>10} {:>10} {:>10}", "shape", "cpu-1t", "cpu-2t", "gemm-1t", "gemm-2t", "mmul-2t");
    for (m, k, n, name) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.01).collect();
        let mut c = vec![0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let reps = (2e10 / flops).clamp(3.0, 200.0) as usize;
        let mut run_gemm = |par| {
            time_it(
                || unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    )
                },
                reps,
            )
        };
        let g1 = run_gemm(gemm::Parallelism::None);
        let g2 = run_gemm(gemm::Parallelism::Rayon(2));
        let mut run_cpu = || {
            cpu_backend()
                .matmul(MatRef::dense(&a, m, k), MatRef::dense(&b, k, n), MatMut::dense(&mut c, m, n), false)
                .unwrap()
        };
        let c1 = time_it(|| with_single_threaded_kernels(&mut run_cpu), reps);
        let c2 = time_it(&mut run_cpu, reps);
        let mm = time_it(
            || unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.as_ptr(),
                    k as isize,
                    1,
                    b.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            },
            reps,
        );
        let be = cpu_backend();
        let b_view = MatRef::dense(&b, k, n);
        let packed = be.pack_matrix(b_view).unwrap();
        let p1 = time_it(
            || {
                with_single_threaded_kernels(|| {
                    let c = MatMut::dense(&mut c, m, n);
                    be.matmul_packed(MatRef::dense(&a, m, k), b_view, packed.as_ref(), c, false).unwrap()
                })
            },
            reps,
        );
        let gf = |t: f64| flops / t / 1e9;
        println!(
            "{:<28} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}   GFLOP/s ({m}x{k}x{n})   packed-1t {:.1}{}",
            name,
            gf(c1),
            gf(c2),
            gf(g1),
            gf(g2),
            gf(mm),
            gf(p1),
            if packed.is_some() { "" } else { " (these kernels do not pack)" }
        );
    }
}
