//! Copies over strided views, elementwise arithmetic, row sums, dot products,
//! and row gathers and scatters.

use super::{random, wide, Failures};
use kallista_ops::backend::calls::Elementwise;
use kallista_ops::backend::{Backend, MatMut, MatRef};

pub fn check(be: &dyn Backend, f: &mut Failures) {
    check_copies(be, f);
    let n = 1003;
    let (a, b) = (random(n, 1, 2.0), random(n, 2, 2.0));
    let (a64, b64) = (wide(&a), wide(&b));
    let mut out = vec![0.0; n];
    if f.ok("add", be.elementwise(Elementwise::Add { a: &a, b: &b, out: &mut out })).is_some() {
        f.compare("add", &out, &a64.iter().zip(&b64).map(|(x, y)| x + y).collect::<Vec<_>>(), 1.0, 1e-6);
    }
    let mut out = b.clone();
    if f.ok("mul", be.elementwise(Elementwise::Mul { a: &a, b: &b, out: &mut out, accumulate: true })).is_some() {
        f.compare("mul accumulate", &out, &a64.iter().zip(&b64).map(|(x, y)| y + x * y).collect::<Vec<_>>(), 1.0, 1e-6);
    }
    let mut out = vec![0.0; n];
    let call = Elementwise::ScaleShift { x: &a, scale: 0.3, offset: -1.5, out: &mut out };
    if f.ok("scale_shift", be.elementwise(call)).is_some() {
        let want: Vec<f64> = a64.iter().map(|x| x * 0.3f32 as f64 - 1.5).collect();
        f.compare("scale_shift", &out, &want, 1.0, 1e-6);
    }
    let mut out = b.clone();
    if f.ok("add_scaled", be.elementwise(Elementwise::AddScaled { x: &a, scale: -0.7, out: &mut out })).is_some() {
        let want: Vec<f64> = a64.iter().zip(&b64).map(|(x, y)| y + x * -0.7f32 as f64).collect();
        f.compare("add_scaled", &out, &want, 1.0, 1e-6);
    }
    let mut x = a.clone();
    if f.ok("scale in place", be.elementwise(Elementwise::ScaleInPlace { x: &mut x, scale: -2.0 })).is_some() {
        f.compare("scale in place", &x, &a64.iter().map(|v| -2.0 * v).collect::<Vec<_>>(), 1.0, 1e-6);
    }
    let mut short = vec![0.0; n - 1];
    f.refused("add into a short buffer", be.elementwise(Elementwise::Add { a: &a, b: &b, out: &mut short }));

    let (rows, cols) = (97, 13);
    let x = random(rows * cols, 3, 1.0);
    let mut acc = vec![1.0; cols];
    if f.ok("sum_rows", be.sum_rows(&x, cols, &mut acc)).is_some() {
        let want: Vec<f64> = (0..cols).map(|j| 1.0 + (0..rows).map(|r| x[r * cols + j] as f64).sum::<f64>()).collect();
        f.compare("sum_rows", &acc, &want, rows as f64, 1e-5);
    }
    f.refused("sum_rows of a partial row", be.sum_rows(&x[1..], cols, &mut acc));
    if let Some(d) = f.ok("dot", be.dot(&a, &b)) {
        let want: f64 = a64.iter().zip(&b64).map(|(x, y)| x * y).sum();
        f.compare("dot", &[d as f32], &[want], n as f64, 1e-5);
    }

    let (vocab, width) = (11, 6);
    let table = random(vocab * width, 4, 1.0);
    let ids = [3, 0, 10, 3, 7];
    let mut rows_out = vec![0.0; ids.len() * width];
    if f.ok("gather_rows", be.gather_rows(&table, width, &ids, &mut rows_out)).is_some() {
        let want: Vec<f64> =
            ids.iter().flat_map(|&i| wide(&table[i as usize * width..(i as usize + 1) * width])).collect();
        f.compare("gather_rows", &rows_out, &want, 1.0, 0.0);
    }
    let grads = random(ids.len() * width, 5, 1.0);
    let mut dtable = vec![0.5; vocab * width];
    if f.ok("scatter_add_rows", be.scatter_add_rows(&ids, width, &grads, &mut dtable)).is_some() {
        let mut want = vec![0.5f64; vocab * width];
        for (k, &i) in ids.iter().enumerate() {
            for j in 0..width {
                want[i as usize * width + j] += grads[k * width + j] as f64;
            }
        }
        f.compare("scatter_add_rows (a repeated id adds up)", &dtable, &want, 1.0, 1e-6);
    }
    f.refused("gather of an id past the table", be.gather_rows(&table, width, &[11], &mut rows_out[..width]));
    f.refused("scatter of a negative id", be.scatter_add_rows(&[-1], width, &grads[..width], &mut dtable));
}

/// Copies between strided views: a transpose into gapped rows, accumulation,
/// a zero-stride broadcast, and nothing written outside the destination.
fn check_copies(be: &dyn Backend, f: &mut Failures) {
    let (rows, cols) = (7, 5);
    let src = random(rows * cols, 6, 1.0);
    // Destination: the transpose (cols x rows) in rows of stride rows + 2, sentinels in the gaps.
    let stride = rows + 2;
    for accumulate in [false, true] {
        let mut dst = vec![9.0f32; cols * stride];
        let view = MatMut { data: &mut dst, offset: 0, rows: cols, cols: rows, row_stride: stride, col_stride: 1 };
        if f.ok("copy", be.copy(MatRef::dense(&src, rows, cols).t(), view, accumulate)).is_none() {
            continue;
        }
        let mut want = vec![9.0f64; cols * stride];
        for i in 0..cols {
            for j in 0..rows {
                want[i * stride + j] = src[j * cols + i] as f64 + if accumulate { 9.0 } else { 0.0 };
            }
        }
        f.compare(&format!("copy of a transpose (accumulate {accumulate})"), &dst, &want, 1.0, 1e-6);
    }
    let bias = random(cols, 7, 1.0);
    let mut dst = vec![0.0; rows * cols];
    let broadcast = MatRef { data: &bias, offset: 0, rows, cols, row_stride: 0, col_stride: 1 };
    if f.ok("broadcast", be.copy(broadcast, MatMut::dense(&mut dst, rows, cols), false)).is_some() {
        let want: Vec<f64> = (0..rows * cols).map(|k| bias[k % cols] as f64).collect();
        f.compare("copy of a zero-stride row", &dst, &want, 1.0, 0.0);
    }
    let mut small = vec![0.0; 4];
    f.refused(
        "copy into a view past its buffer",
        be.copy(MatRef::dense(&src, 2, 3), MatMut::dense(&mut small, 2, 3), false),
    );
    f.refused("copy between shapes", be.copy(MatRef::dense(&src, 2, 3), MatMut::dense(&mut small, 2, 2), false));
}
