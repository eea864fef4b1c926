//! im2col and col2im, depthwise convolution, and windowed and global pooling
//! on NHWC images, with `'same'` padding, strides and dilation.

use super::{inner, random, wide, Failures};
use kallista_ops::autodiff::{Padding, Window2d};
use kallista_ops::backend::calls::{DepthwiseCall, Im2colCall, PoolCall};
use kallista_ops::backend::Backend;

const N: usize = 3;

/// Windows to test: a dilated strided `'same'` one and a plain `'valid'` one.
fn windows() -> Vec<Window2d> {
    vec![
        Window2d::new("test", (7, 6), (3, 2), (2, 1), (1, 2), Padding::Same).unwrap(),
        Window2d::new("test", (5, 6), (2, 3), (1, 1), (1, 1), Padding::Valid).unwrap(),
    ]
}

/// The input pixel under tap `(ky, kx)` of output `(oy, ox)`, from the window's numbers.
fn pixel(w: &Window2d, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<usize> {
    let iy = (oy * w.sh + ky * w.dh) as isize - w.pad_top as isize;
    let ix = (ox * w.sw + kx * w.dw) as isize - w.pad_left as isize;
    let inside = (0..w.in_h as isize).contains(&iy) && (0..w.in_w as isize).contains(&ix);
    inside.then(|| iy as usize * w.in_w + ix as usize)
}

pub fn check(be: &dyn Backend, f: &mut Failures) {
    for (i, w) in windows().iter().enumerate() {
        im2col(be, f, w, i);
        depthwise(be, f, w, i);
        pooling(be, f, w, i);
    }
    global_pooling(be, f);
}

/// im2col rows of images `[f0, f1)`, in f64.
fn im2col_oracle(w: &Window2d, c: usize, x: &[f64], (f0, f1): (usize, usize)) -> Vec<f64> {
    let mut rows = vec![];
    for f in f0..f1 {
        for oy in 0..w.out_h {
            for ox in 0..w.out_w {
                for ky in 0..w.kh {
                    for kx in 0..w.kw {
                        let at = pixel(w, oy, ox, ky, kx);
                        rows.extend((0..c).map(|ci| at.map_or(0.0, |p| x[(f * w.in_h * w.in_w + p) * c + ci])));
                    }
                }
            }
        }
    }
    rows
}

fn im2col(be: &dyn Backend, f: &mut Failures, w: &Window2d, case: usize) {
    let c = 3;
    let x = random(N * w.in_h * w.in_w * c, 70 + case as u64, 1.0);
    let images = (1, 3);
    let want = im2col_oracle(w, c, &wide(&x), images);
    let mut cols = vec![0.0; want.len()];
    if f.ok("im2col", be.im2col(Im2colCall::Gather { win: w, c, x: &x, images, cols: &mut cols })).is_some() {
        f.compare(&format!("im2col, window {case}"), &cols, &want, 1.0, 0.0);
    }
    // col2im is im2col's adjoint: <im2col(x), r> = <x, col2im(r)>.
    let r = random(want.len(), 71, 1.0);
    let mut dx = vec![0.0; x.len()];
    if f.ok("col2im", be.im2col(Im2colCall::ScatterAdd { win: w, c, cols: &r, images, dx: &mut dx })).is_some() {
        let (lhs, rhs) = (inner(&want, &wide(&r)), inner(&wide(&x), &wide(&dx)));
        f.compare(
            &format!("col2im is im2col's adjoint, window {case}"),
            &[rhs as f32],
            &[lhs],
            want.len() as f64,
            1e-5,
        );
    }
    let mut short = vec![0.0; cols.len() - 1];
    f.refused(
        "im2col into a short buffer",
        be.im2col(Im2colCall::Gather { win: w, c, x: &x, images, cols: &mut short }),
    );
}

/// Depthwise convolution in f64: `[N, OH, OW, C * dm]`.
fn depthwise_oracle(w: &Window2d, c: usize, dm: usize, x: &[f64], k: &[f64]) -> Vec<f64> {
    let oc = c * dm;
    let mut y = vec![0.0; N * w.out_h * w.out_w * oc];
    for f in 0..N {
        for oy in 0..w.out_h {
            for ox in 0..w.out_w {
                for ky in 0..w.kh {
                    for kx in 0..w.kw {
                        let Some(p) = pixel(w, oy, ox, ky, kx) else { continue };
                        for ci in 0..c {
                            for m in 0..dm {
                                let xv = x[(f * w.in_h * w.in_w + p) * c + ci];
                                y[((f * w.out_h + oy) * w.out_w + ox) * oc + ci * dm + m] +=
                                    xv * k[(ky * w.kw + kx) * oc + ci * dm + m];
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

fn depthwise(be: &dyn Backend, f: &mut Failures, w: &Window2d, case: usize) {
    let (c, dm) = (3, 2);
    let x = random(N * w.in_h * w.in_w * c, 80 + case as u64, 1.0);
    let k = random(w.kh * w.kw * c * dm, 81, 1.0);
    let want = depthwise_oracle(w, c, dm, &wide(&x), &wide(&k));
    let mut y = vec![0.0; want.len()];
    let call = DepthwiseCall::Forward { win: w, c, dm, x: &x, kernel: &k, y: &mut y };
    if f.ok("depthwise", be.depthwise(call)).is_some() {
        f.compare(&format!("depthwise forward, window {case}"), &y, &want, 1.0, 1e-5);
    }
    // The output is linear in x and in the kernel: <dx, x> = <dk, k> = <y, dy>.
    let dy = random(want.len(), 82, 1.0);
    let (mut dx, mut dk) = (vec![0.0; x.len()], vec![0.0; k.len()]);
    let call = DepthwiseCall::Backward {
        win: w,
        c,
        dm,
        x: &x,
        kernel: &k,
        dy: &dy,
        dx: Some(&mut dx),
        dkernel: Some(&mut dk),
    };
    if f.ok("depthwise backward", be.depthwise(call)).is_some() {
        let target = inner(&want, &wide(&dy));
        let scale = want.len() as f64;
        f.compare(
            &format!("depthwise dx, window {case}"),
            &[inner(&wide(&dx), &wide(&x)) as f32],
            &[target],
            scale,
            1e-5,
        );
        f.compare(
            &format!("depthwise dkernel, window {case}"),
            &[inner(&wide(&dk), &wide(&k)) as f32],
            &[target],
            scale,
            1e-5,
        );
    }
}

fn pooling(be: &dyn Backend, f: &mut Failures, w: &Window2d, case: usize) {
    let c = 4;
    let x = random(N * w.in_h * w.in_w * c, 90 + case as u64, 1.0);
    let outs = N * w.out_h * w.out_w * c;
    let (mut want_max, mut want_arg, mut want_avg) = (vec![f64::MIN; outs], vec![0usize; outs], vec![0.0; outs]);
    let mut inv_count = vec![0.0f32; w.out_h * w.out_w];
    for f in 0..N {
        for oy in 0..w.out_h {
            for ox in 0..w.out_w {
                let cells: Vec<usize> =
                    (0..w.kh).flat_map(|ky| (0..w.kw).filter_map(move |kx| pixel(w, oy, ox, ky, kx))).collect();
                inv_count[oy * w.out_w + ox] = 1.0 / cells.len() as f32;
                for ci in 0..c {
                    let o = ((f * w.out_h + oy) * w.out_w + ox) * c + ci;
                    for &p in &cells {
                        let at = (f * w.in_h * w.in_w + p) * c + ci;
                        if x[at] as f64 > want_max[o] {
                            (want_max[o], want_arg[o]) = (x[at] as f64, at);
                        }
                        want_avg[o] += x[at] as f64 / cells.len() as f64;
                    }
                }
            }
        }
    }
    let (mut y, mut argmax) = (vec![0.0; outs], vec![0usize; outs]);
    if f.ok("max pool", be.pool(PoolCall::MaxForward { win: w, c, x: &x, y: &mut y, argmax: &mut argmax })).is_some() {
        f.compare(&format!("max pool, window {case}"), &y, &want_max, 1.0, 0.0);
        if argmax != want_arg {
            f.0.push(format!("max pool, window {case}: picked other cells than the first maximal ones"));
        }
    }
    let dy = random(outs, 91, 1.0);
    let mut dx = vec![0.0; x.len()];
    if f.ok("max pool backward", be.pool(PoolCall::MaxBackward { dy: &dy, argmax: &want_arg, dx: &mut dx })).is_some() {
        let mut want = vec![0.0; x.len()];
        want_arg.iter().zip(&dy).for_each(|(&a, &g)| want[a] += g as f64);
        f.compare(&format!("max pool backward, window {case}"), &dx, &want, 1.0, 1e-6);
    }
    let call = PoolCall::AverageForward { win: w, c, x: &x, inv_count: &inv_count, y: &mut y };
    if f.ok("average pool", be.pool(call)).is_some() {
        f.compare(&format!("average pool, window {case}"), &y, &want_avg, 1.0, 1e-5);
    }
    let mut dx = vec![0.0; x.len()];
    let call = PoolCall::AverageBackward { win: w, c, dy: &dy, inv_count: &inv_count, dx: &mut dx };
    if f.ok("average pool backward", be.pool(call)).is_some() {
        let (lhs, rhs) = (inner(&want_avg, &wide(&dy)), inner(&wide(&x), &wide(&dx)));
        f.compare(
            &format!("average pool backward is the adjoint, window {case}"),
            &[rhs as f32],
            &[lhs],
            outs as f64,
            1e-5,
        );
    }
    f.refused(
        "max pool backward to a cell outside dx",
        be.pool(PoolCall::MaxBackward { dy: &dy[..1], argmax: &[x.len()], dx: &mut dx }),
    );
}

fn global_pooling(be: &dyn Backend, f: &mut Failures) {
    let (pixels, c) = (10, 6);
    let x = random(N * pixels * c, 95, 1.0);
    let (mut want_max, mut want_arg, mut want_avg) = (vec![f64::MIN; N * c], vec![0usize; N * c], vec![0.0; N * c]);
    for img in 0..N {
        for p in 0..pixels {
            for ci in 0..c {
                let (at, o) = ((img * pixels + p) * c + ci, img * c + ci);
                if x[at] as f64 > want_max[o] {
                    (want_max[o], want_arg[o]) = (x[at] as f64, at);
                }
                want_avg[o] += x[at] as f64 / pixels as f64;
            }
        }
    }
    let (mut y, mut argmax) = (vec![0.0; N * c], vec![0usize; N * c]);
    let call = PoolCall::GlobalMaxForward { pixels, c, x: &x, y: &mut y, argmax: &mut argmax };
    if f.ok("global max pool", be.pool(call)).is_some() {
        f.compare("global max pool", &y, &want_max, 1.0, 0.0);
        if argmax != want_arg {
            f.0.push("global max pool: picked other cells than the first maximal ones".into());
        }
    }
    if f.ok("global average pool", be.pool(PoolCall::GlobalAverageForward { pixels, c, x: &x, y: &mut y })).is_some() {
        f.compare("global average pool", &y, &want_avg, 1.0, 1e-5);
    }
    let dy = random(N * c, 96, 1.0);
    let mut dx = vec![0.0; x.len()];
    if f.ok("global average backward", be.pool(PoolCall::GlobalAverageBackward { pixels, c, dy: &dy, dx: &mut dx }))
        .is_some()
    {
        let want: Vec<f64> = (0..x.len()).map(|k| dy[(k / (pixels * c)) * c + k % c] as f64 / pixels as f64).collect();
        f.compare("global average pool backward", &dx, &want, 1.0, 1e-5);
    }
}
