//! The CPU's per-step gate work of the LSTM and GRU (see
//! [`crate::backend::calls::RecurrentCall`]): one pass over the batch rows of
//! a step, with the vectorised sigmoid and tanh slices.

use super::super::calls::{RecurrentCall, SequenceDims};
use super::super::math;
use crate::error::{OpsError, Result};

pub(super) fn recurrent(call: RecurrentCall<'_>) -> Result<()> {
    match call {
        RecurrentCall::LstmStep { step, dims, mask, gates, cs, tc, hprev, h_last } => {
            check(dims, step, mask, &[(gates.len(), 4), (cs.len(), 1), (tc.len(), 1), (hprev.len(), 1)])?;
            check_last(dims, h_last.len())?;
            lstm_step(step, dims, mask, gates, cs, tc, hprev, h_last);
        }
        RecurrentCall::LstmStepBackward { step, dims, mask, gates, cs, tc, dh, dc, dz } => {
            check(dims, step, mask, &[(gates.len(), 4), (cs.len(), 1), (tc.len(), 1), (dz.len(), 4)])?;
            check_last(dims, dh.len().min(dc.len()))?;
            lstm_step_backward(step, dims, mask, gates, cs, tc, dh, dc, dz);
        }
        RecurrentCall::CarryMasked { step, dims, mask, dh, dh_prev } => {
            check(dims, step, Some(mask), &[])?;
            check_last(dims, dh.len().min(dh_prev.len()))?;
            let (b, t, u) = (dims.batch, dims.steps, dims.units);
            for row in 0..b {
                if !mask[row * t + step] {
                    dh_prev[row * u..(row + 1) * u].copy_from_slice(&dh[row * u..(row + 1) * u]);
                }
            }
        }
        RecurrentCall::GruStep { step, dims, mask, xz, rec, hprev, h_last } => {
            check(dims, step, mask, &[(xz.len(), 3), (rec.len(), 3), (hprev.len(), 1)])?;
            check_last(dims, h_last.len())?;
            gru_step(step, dims, mask, xz, rec, hprev, h_last);
        }
        RecurrentCall::GruStepBackward { step, dims, mask, xz, rec, hprev, dh, dh_prev, dxz, drec } => {
            let lens = [(xz.len(), 3), (rec.len(), 3), (hprev.len(), 1), (dxz.len(), 3), (drec.len(), 3)];
            check(dims, step, mask, &lens)?;
            check_last(dims, dh.len().min(dh_prev.len()))?;
            gru_step_backward(step, dims, mask, (xz, rec, hprev), dh, dh_prev, dxz, drec);
        }
    }
    Ok(())
}

/// Checks the step, the mask and that each `(len, gates)` buffer holds `gates * u` per row.
pub(in crate::backend) fn check(
    dims: SequenceDims,
    step: usize,
    mask: Option<&[bool]>,
    lens: &[(usize, usize)],
) -> Result<()> {
    let rows = dims.batch * dims.steps;
    let bad_len = lens.iter().any(|&(len, gates)| len < rows * gates * dims.units);
    if step >= dims.steps || mask.is_some_and(|m| m.len() != rows) || bad_len {
        let d = [dims.batch, dims.steps, dims.units];
        return Err(OpsError::shape("recurrent step", "buffers do not fit [batch, steps, units]", &[&d, &[step]]));
    }
    Ok(())
}

/// Checks a `[B, u]` buffer.
pub(in crate::backend) fn check_last(dims: SequenceDims, len: usize) -> Result<()> {
    if len < dims.batch * dims.units {
        return Err(OpsError::shape("recurrent step", "state must be [batch, units]", &[&[dims.batch, dims.units]]));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn lstm_step(
    step: usize,
    SequenceDims { batch: b, steps: t, units: u }: SequenceDims,
    mask: Option<&[bool]>,
    gates: &mut [f32],
    cs: &mut [f32],
    tc: &mut [f32],
    hprev: &mut [f32],
    h_last: &mut [f32],
) {
    let g4 = 4 * u;
    for row in 0..b {
        let r = row * t + step;
        let z = &mut gates[r * g4..(r + 1) * g4];
        math::sigmoid_inplace(&mut z[..2 * u]);
        math::tanh_inplace(&mut z[2 * u..3 * u]);
        math::sigmoid_inplace(&mut z[3 * u..]);
        let valid = mask.is_none_or(|m| m[r]);
        let (before, rest) = cs.split_at_mut(r * u);
        let c_now = &mut rest[..u];
        let c_prev: Option<&[f32]> = if step > 0 { Some(&before[(r - 1) * u..r * u]) } else { None };
        if valid {
            for k in 0..u {
                let cp = c_prev.map_or(0.0, |c| c[k]);
                c_now[k] = z[u + k] * cp + z[k] * z[2 * u + k];
            }
        } else {
            match c_prev {
                Some(cp) => c_now.copy_from_slice(cp),
                None => c_now.fill(0.0),
            }
        }
        let tcr = &mut tc[r * u..(r + 1) * u];
        tcr.copy_from_slice(c_now);
        math::tanh_inplace(tcr);
        let (h_prev, h_new) = h_rows(hprev, h_last, (row, step), (t, u));
        if valid {
            for k in 0..u {
                h_new[k] = z[3 * u + k] * tcr[k];
            }
        } else {
            h_new.copy_from_slice(h_prev);
        }
    }
}

/// Row `(row, step)` of `hprev` (`h_{t-1}`) and where `h_t` goes: the next
/// row of `hprev`, or the row's `h_last` at the last step.
fn h_rows<'a>(
    hprev: &'a mut [f32],
    h_last: &'a mut [f32],
    (row, step): (usize, usize),
    (t, u): (usize, usize),
) -> (&'a [f32], &'a mut [f32]) {
    let r = row * t + step;
    let (before, after) = hprev.split_at_mut((r + 1) * u);
    let h_prev = &before[r * u..];
    match step + 1 < t {
        true => (h_prev, &mut after[..u]),
        false => (h_prev, &mut h_last[row * u..(row + 1) * u]),
    }
}

#[allow(clippy::too_many_arguments)]
fn lstm_step_backward(
    step: usize,
    SequenceDims { batch: b, steps: t, units: u }: SequenceDims,
    mask: Option<&[bool]>,
    gates: &[f32],
    cs: &[f32],
    tc: &[f32],
    dh: &[f32],
    dc: &mut [f32],
    dz: &mut [f32],
) {
    let g4 = 4 * u;
    for row in 0..b {
        let r = row * t + step;
        if !mask.is_none_or(|m| m[r]) {
            continue; // carried state: dh and dc pass through unchanged
        }
        let z = &gates[r * g4..(r + 1) * g4];
        let tcr = &tc[r * u..(r + 1) * u];
        let dzr = &mut dz[r * g4..(r + 1) * g4];
        let dhr = &dh[row * u..(row + 1) * u];
        let dcr = &mut dc[row * u..(row + 1) * u];
        for k in 0..u {
            let (ig, fg, gg, og) = (z[k], z[u + k], z[2 * u + k], z[3 * u + k]);
            let cp = if step > 0 { cs[(r - 1) * u + k] } else { 0.0 };
            let dcn = dcr[k] + dhr[k] * og * (1.0 - tcr[k] * tcr[k]);
            dzr[k] = dcn * gg * ig * (1.0 - ig);
            dzr[u + k] = dcn * cp * fg * (1.0 - fg);
            dzr[2 * u + k] = dcn * ig * (1.0 - gg * gg);
            dzr[3 * u + k] = dhr[k] * tcr[k] * og * (1.0 - og);
            dcr[k] = dcn * fg;
        }
    }
}

fn gru_step(
    step: usize,
    SequenceDims { batch: b, steps: t, units: u }: SequenceDims,
    mask: Option<&[bool]>,
    xz: &mut [f32],
    rec: &[f32],
    hprev: &mut [f32],
    h_last: &mut [f32],
) {
    let g3 = 3 * u;
    for row in 0..b {
        let r = row * t + step;
        let valid = mask.is_none_or(|m| m[r]);
        let z = &mut xz[r * g3..(r + 1) * g3];
        let rc = &rec[r * g3..(r + 1) * g3];
        for k in 0..2 * u {
            z[k] += rc[k];
        }
        math::sigmoid_inplace(&mut z[..2 * u]);
        for k in 0..u {
            z[2 * u + k] += z[u + k] * rc[2 * u + k];
        }
        math::tanh_inplace(&mut z[2 * u..]);
        let (hp, h_new) = h_rows(hprev, h_last, (row, step), (t, u));
        if valid {
            for k in 0..u {
                h_new[k] = z[k] * hp[k] + (1.0 - z[k]) * z[2 * u + k];
            }
        } else {
            h_new.copy_from_slice(hp);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn gru_step_backward(
    step: usize,
    SequenceDims { batch: b, steps: t, units: u }: SequenceDims,
    mask: Option<&[bool]>,
    (xz, rec, hprev): (&[f32], &[f32], &[f32]),
    dh: &[f32],
    dh_prev: &mut [f32],
    dxz: &mut [f32],
    drec: &mut [f32],
) {
    let g3 = 3 * u;
    for row in 0..b {
        let r = row * t + step;
        let valid = mask.is_none_or(|m| m[r]);
        let dhr = &dh[row * u..(row + 1) * u];
        let dnr = &mut dh_prev[row * u..(row + 1) * u];
        if !valid {
            dnr.copy_from_slice(dhr);
            continue;
        }
        let z = &xz[r * g3..(r + 1) * g3];
        let rc = &rec[r * g3..(r + 1) * g3];
        let hp = &hprev[r * u..(r + 1) * u];
        let dx_r = &mut dxz[r * g3..(r + 1) * g3];
        let dr_r = &mut drec[r * g3..(r + 1) * g3];
        for k in 0..u {
            let (zg, rg, hh) = (z[k], z[u + k], z[2 * u + k]);
            let dzg = dhr[k] * (hp[k] - hh);
            let dah = dhr[k] * (1.0 - zg) * (1.0 - hh * hh);
            let drg = dah * rc[2 * u + k];
            let daz = dzg * zg * (1.0 - zg);
            let dar = drg * rg * (1.0 - rg);
            dx_r[k] = daz;
            dx_r[u + k] = dar;
            dx_r[2 * u + k] = dah;
            dr_r[k] = daz;
            dr_r[u + k] = dar;
            dr_r[2 * u + k] = dah * rg;
            dnr[k] = dhr[k] * zg;
        }
    }
}
