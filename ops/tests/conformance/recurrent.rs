//! One step of the LSTM and GRU gate work, forward and backward, on a batch
//! with a masked (padding) row, at the first, a middle and the last step.

use super::{random, Failures};
use kallista_ops::backend::calls::{RecurrentCall, SequenceDims};
use kallista_ops::backend::Backend;

const DIMS: SequenceDims = SequenceDims { batch: 3, steps: 4, units: 5 };

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Row 1 is padding at step 2.
fn mask() -> Vec<bool> {
    (0..DIMS.batch * DIMS.steps).map(|r| r != DIMS.steps + 2).collect()
}

pub fn check(be: &dyn Backend, f: &mut Failures) {
    for step in [0, 2, 3] {
        lstm_forward(be, f, step);
        lstm_backward(be, f, step);
        gru_forward(be, f, step);
        gru_backward(be, f, step);
    }
    let (b, u) = (DIMS.batch, DIMS.units);
    let mask = mask();
    let dh = random(b * u, 40, 1.0);
    let mut dh_prev = vec![7.0; b * u];
    if f.ok(
        "carry masked",
        be.recurrent(RecurrentCall::CarryMasked { step: 2, dims: DIMS, mask: &mask, dh: &dh, dh_prev: &mut dh_prev }),
    )
    .is_some()
    {
        let want: Vec<f64> = (0..b * u).map(|k| if k / u == 1 { dh[k] as f64 } else { 7.0 }).collect();
        f.compare("carry masked: only the padding row passes dh", &dh_prev, &want, 1.0, 0.0);
    }
    let mut short = vec![0.0; 4];
    let call = RecurrentCall::CarryMasked { step: 2, dims: DIMS, mask: &mask, dh: &dh, dh_prev: &mut short };
    f.refused("a state buffer smaller than [batch, units]", be.recurrent(call));
}

fn lstm_forward(be: &dyn Backend, f: &mut Failures, step: usize) {
    let SequenceDims { batch: b, steps: t, units: u } = DIMS;
    let (rows, g4) = (b * t, 4 * u);
    let raw = random(rows * g4, 20 + step as u64, 1.5);
    let (mut gates, mut cs, mut tc) = (raw.clone(), random(rows * u, 21, 1.0), vec![0.0; rows * u]);
    let (mut hprev, mut h_last) = (random(rows * u, 22, 1.0), vec![0.0; b * u]);
    let (cs0, hprev0, mask) = (cs.clone(), hprev.clone(), mask());
    let call = RecurrentCall::LstmStep {
        step,
        dims: DIMS,
        mask: Some(&mask),
        gates: &mut gates,
        cs: &mut cs,
        tc: &mut tc,
        hprev: &mut hprev,
        h_last: &mut h_last,
    };
    if f.ok("lstm step", be.recurrent(call)).is_none() {
        return;
    }
    for row in 0..b {
        let r = row * t + step;
        let z: Vec<f64> = raw[r * g4..(r + 1) * g4].iter().map(|&v| v as f64).collect();
        let act: Vec<f64> =
            (0..g4).map(|k| if (2 * u..3 * u).contains(&k) { z[k].tanh() } else { sigmoid(z[k]) }).collect();
        let c_prev: Vec<f64> = (0..u).map(|k| if step > 0 { cs0[(r - 1) * u + k] as f64 } else { 0.0 }).collect();
        let c: Vec<f64> = (0..u)
            .map(|k| if mask[r] { act[u + k] * c_prev[k] + act[k] * act[2 * u + k] } else { c_prev[k] })
            .collect();
        let h: Vec<f64> =
            (0..u).map(|k| if mask[r] { act[3 * u + k] * c[k].tanh() } else { hprev0[r * u + k] as f64 }).collect();
        let case = format!("lstm step {step} row {row}");
        f.compare(&format!("{case}: gates"), &gates[r * g4..(r + 1) * g4], &act, 1.0, 1e-5);
        f.compare(&format!("{case}: c"), &cs[r * u..(r + 1) * u], &c, 1.0, 1e-5);
        f.compare(
            &format!("{case}: tanh(c)"),
            &tc[r * u..(r + 1) * u],
            &c.iter().map(|v| v.tanh()).collect::<Vec<_>>(),
            1.0,
            1e-5,
        );
        let got_h = if step + 1 < t { &hprev[(r + 1) * u..(r + 2) * u] } else { &h_last[row * u..(row + 1) * u] };
        f.compare(&format!("{case}: h"), got_h, &h, 1.0, 1e-5);
    }
}

fn lstm_backward(be: &dyn Backend, f: &mut Failures, step: usize) {
    let SequenceDims { batch: b, steps: t, units: u } = DIMS;
    let (rows, g4) = (b * t, 4 * u);
    // Activated gates: sigmoid ones in (0, 1), the candidate in (-1, 1).
    let gates: Vec<f32> = random(rows * g4, 30, 1.5)
        .iter()
        .enumerate()
        .map(|(k, &v)| if (2 * u..3 * u).contains(&(k % g4)) { v.tanh() } else { sigmoid(v as f64) as f32 })
        .collect();
    let cs = random(rows * u, 31, 1.0);
    let tc: Vec<f32> = cs.iter().map(|v| v.tanh()).collect();
    let (dh, dc0) = (random(b * u, 32, 1.0), random(b * u, 33, 1.0));
    let (mut dc, mut dz, mask) = (dc0.clone(), vec![7.0; rows * g4], mask());
    let call = RecurrentCall::LstmStepBackward {
        step,
        dims: DIMS,
        mask: Some(&mask),
        gates: &gates,
        cs: &cs,
        tc: &tc,
        dh: &dh,
        dc: &mut dc,
        dz: &mut dz,
    };
    if f.ok("lstm step backward", be.recurrent(call)).is_none() {
        return;
    }
    for row in 0..b {
        let r = row * t + step;
        let (mut want_dz, mut want_dc) = (vec![7.0; g4], vec![0.0; u]);
        for k in 0..u {
            let g = |j: usize| gates[r * g4 + j * u + k] as f64;
            let (ig, fg, gg, og) = (g(0), g(1), g(2), g(3));
            let (dhk, dck, tck) = (dh[row * u + k] as f64, dc0[row * u + k] as f64, tc[r * u + k] as f64);
            if !mask[r] {
                want_dc[k] = dck;
                continue;
            }
            let cp = if step > 0 { cs[(r - 1) * u + k] as f64 } else { 0.0 };
            let dcn = dck + dhk * og * (1.0 - tck * tck);
            want_dz[k] = dcn * gg * ig * (1.0 - ig);
            want_dz[u + k] = dcn * cp * fg * (1.0 - fg);
            want_dz[2 * u + k] = dcn * ig * (1.0 - gg * gg);
            want_dz[3 * u + k] = dhk * tck * og * (1.0 - og);
            want_dc[k] = dcn * fg;
        }
        let case = format!("lstm step {step} backward row {row}");
        f.compare(&format!("{case}: dz"), &dz[r * g4..(r + 1) * g4], &want_dz, 1.0, 1e-5);
        f.compare(&format!("{case}: dc"), &dc[row * u..(row + 1) * u], &want_dc, 1.0, 1e-5);
    }
}

fn gru_forward(be: &dyn Backend, f: &mut Failures, step: usize) {
    let SequenceDims { batch: b, steps: t, units: u } = DIMS;
    let (rows, g3) = (b * t, 3 * u);
    let (xz0, rec) = (random(rows * g3, 50 + step as u64, 1.5), random(rows * g3, 51, 1.5));
    let (mut xz, mut hprev, mut h_last) = (xz0.clone(), random(rows * u, 52, 1.0), vec![0.0; b * u]);
    let (hprev0, mask) = (hprev.clone(), mask());
    let call = RecurrentCall::GruStep {
        step,
        dims: DIMS,
        mask: Some(&mask),
        xz: &mut xz,
        rec: &rec,
        hprev: &mut hprev,
        h_last: &mut h_last,
    };
    if f.ok("gru step", be.recurrent(call)).is_none() {
        return;
    }
    for row in 0..b {
        let r = row * t + step;
        let (x, rc) = (|j: usize| xz0[r * g3 + j] as f64, |j: usize| rec[r * g3 + j] as f64);
        let mut act = vec![0.0; g3];
        let mut h = vec![0.0; u];
        for k in 0..u {
            let z = sigmoid(x(k) + rc(k));
            let rg = sigmoid(x(u + k) + rc(u + k));
            let hh = (x(2 * u + k) + rg * rc(2 * u + k)).tanh();
            (act[k], act[u + k], act[2 * u + k]) = (z, rg, hh);
            let hp = hprev0[r * u + k] as f64;
            h[k] = if mask[r] { z * hp + (1.0 - z) * hh } else { hp };
        }
        let case = format!("gru step {step} row {row}");
        f.compare(&format!("{case}: gates"), &xz[r * g3..(r + 1) * g3], &act, 1.0, 1e-5);
        let got_h = if step + 1 < t { &hprev[(r + 1) * u..(r + 2) * u] } else { &h_last[row * u..(row + 1) * u] };
        f.compare(&format!("{case}: h"), got_h, &h, 1.0, 1e-5);
    }
}

fn gru_backward(be: &dyn Backend, f: &mut Failures, step: usize) {
    let SequenceDims { batch: b, steps: t, units: u } = DIMS;
    let (rows, g3) = (b * t, 3 * u);
    let xz: Vec<f32> = random(rows * g3, 60, 1.5)
        .iter()
        .enumerate()
        .map(|(k, &v)| if k % g3 >= 2 * u { v.tanh() } else { sigmoid(v as f64) as f32 })
        .collect();
    let (rec, hprev, dh) = (random(rows * g3, 61, 1.0), random(rows * u, 62, 1.0), random(b * u, 63, 1.0));
    let (mut dh_prev, mut dxz, mut drec, mask) = (vec![7.0; b * u], vec![7.0; rows * g3], vec![7.0; rows * g3], mask());
    let call = RecurrentCall::GruStepBackward {
        step,
        dims: DIMS,
        mask: Some(&mask),
        xz: &xz,
        rec: &rec,
        hprev: &hprev,
        dh: &dh,
        dh_prev: &mut dh_prev,
        dxz: &mut dxz,
        drec: &mut drec,
    };
    if f.ok("gru step backward", be.recurrent(call)).is_none() {
        return;
    }
    for row in 0..b {
        let r = row * t + step;
        let (mut want_dx, mut want_dr, mut want_dh) = (vec![7.0; g3], vec![7.0; g3], vec![0.0; u]);
        for k in 0..u {
            let dhk = dh[row * u + k] as f64;
            if !mask[r] {
                want_dh[k] = dhk;
                continue;
            }
            let (zg, rg, hh) = (xz[r * g3 + k] as f64, xz[r * g3 + u + k] as f64, xz[r * g3 + 2 * u + k] as f64);
            let hp = hprev[r * u + k] as f64;
            let dah = dhk * (1.0 - zg) * (1.0 - hh * hh);
            let daz = dhk * (hp - hh) * zg * (1.0 - zg);
            let dar = dah * rec[r * g3 + 2 * u + k] as f64 * rg * (1.0 - rg);
            (want_dx[k], want_dx[u + k], want_dx[2 * u + k]) = (daz, dar, dah);
            (want_dr[k], want_dr[u + k], want_dr[2 * u + k]) = (daz, dar, dah * rg);
            want_dh[k] = dhk * zg;
        }
        let case = format!("gru step {step} backward row {row}");
        f.compare(&format!("{case}: dxz"), &dxz[r * g3..(r + 1) * g3], &want_dx, 1.0, 1e-5);
        f.compare(&format!("{case}: drec"), &drec[r * g3..(r + 1) * g3], &want_dr, 1.0, 1e-5);
        f.compare(&format!("{case}: dh_prev"), &dh_prev[row * u..(row + 1) * u], &want_dh, 1.0, 1e-5);
    }
}
