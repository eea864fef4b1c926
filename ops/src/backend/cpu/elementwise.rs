//! The CPU's copies, elementwise arithmetic, row sums, dot products and row
//! gathers: plain loops the compiler vectorises.

use super::super::{calls::Elementwise, MatMut, MatRef};
use crate::error::{OpsError, Result};

pub(super) fn copy(src: MatRef<'_>, dst: MatMut<'_>, accumulate: bool) -> Result<()> {
    if src.rows != dst.rows || src.cols != dst.cols {
        return Err(OpsError::shape("copy", "views differ in shape", &[&[src.rows, src.cols], &[dst.rows, dst.cols]]));
    }
    if !src.in_bounds() || !dst.in_bounds() {
        return Err(OpsError::shape("copy", "a strided view reaches past its buffer", &[&[src.rows, src.cols]]));
    }
    let (mut rows, mut cols) = (src.rows, src.cols);
    let dense = |row_stride: usize, col_stride: usize| col_stride == 1 && (row_stride == cols || rows == 1);
    if dense(src.row_stride, src.col_stride) && dense(dst.row_stride, dst.col_stride) {
        // One run of rows * cols values: one memcpy (or one vectorised add), not one per row.
        (cols, rows) = (rows * cols, rows.min(1));
    }
    for i in 0..rows {
        let (s0, d0) = (src.offset + i * src.row_stride, dst.offset + i * dst.row_stride);
        if src.col_stride == 1 && dst.col_stride == 1 {
            let (s, d) = (&src.data[s0..s0 + cols], &mut dst.data[d0..d0 + cols]);
            if accumulate {
                d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
            } else {
                d.copy_from_slice(s);
            }
            continue;
        }
        for j in 0..cols {
            let v = src.data[s0 + j * src.col_stride];
            let d = &mut dst.data[d0 + j * dst.col_stride];
            *d = if accumulate { *d + v } else { v };
        }
    }
    Ok(())
}

pub(in crate::backend) fn same_len(op: &str, lens: &[usize]) -> Result<()> {
    if lens.windows(2).any(|w| w[0] != w[1]) {
        let shapes: Vec<[usize; 1]> = lens.iter().map(|l| [*l]).collect();
        let shapes: Vec<&[usize]> = shapes.iter().map(|s| &s[..]).collect();
        return Err(OpsError::shape(op, "buffers differ in length", &shapes));
    }
    Ok(())
}

pub(super) fn elementwise(call: Elementwise<'_>) -> Result<()> {
    match call {
        Elementwise::Add { a, b, out } => {
            same_len("add", &[a.len(), b.len(), out.len()])?;
            out.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (a, b))| *o = a + b);
        }
        Elementwise::Mul { a, b, out, accumulate } => {
            same_len("multiply", &[a.len(), b.len(), out.len()])?;
            if accumulate {
                out.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (a, b))| *o += a * b);
            } else {
                out.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (a, b))| *o = a * b);
            }
        }
        Elementwise::AddScaled { x, scale, out } => {
            same_len("add_scaled", &[x.len(), out.len()])?;
            out.iter_mut().zip(x).for_each(|(o, v)| *o += v * scale);
        }
        Elementwise::ScaleShift { x, scale, offset, out } => {
            same_len("scale_shift", &[x.len(), out.len()])?;
            out.iter_mut().zip(x).for_each(|(o, v)| *o = v * scale + offset);
        }
        Elementwise::ScaleInPlace { x, scale } => x.iter_mut().for_each(|v| *v *= scale),
    }
    Ok(())
}

pub(super) fn sum_rows(x: &[f32], cols: usize, acc: &mut [f32]) -> Result<()> {
    super::super::check_rows("sum_rows", x.len(), cols)?;
    same_len("sum_rows", &[cols, acc.len()])?;
    for r in x.chunks_exact(cols) {
        acc.iter_mut().zip(r).for_each(|(a, g)| *a += g);
    }
    Ok(())
}

pub(super) fn dot(a: &[f32], b: &[f32]) -> Result<f64> {
    same_len("dot", &[a.len(), b.len()])?;
    Ok(a.iter().zip(b).map(|(a, b)| (*a as f64) * (*b as f64)).sum())
}

/// Checks that `ids` index rows of a `rows`-row table and that `other` holds one `width` row per id.
pub(in crate::backend) fn check_ids(op: &str, ids: &[i32], rows: usize, width: usize, other: usize) -> Result<()> {
    if let Some(bad) = ids.iter().position(|&id| id < 0 || id as usize >= rows) {
        return Err(OpsError::shape(op, format!("id {} at {bad} is outside [0, {rows})", ids[bad]), &[&[rows, width]]));
    }
    same_len(op, &[ids.len() * width, other])
}

pub(super) fn gather_rows(table: &[f32], width: usize, ids: &[i32], out: &mut [f32]) -> Result<()> {
    super::super::check_rows("gather_rows", table.len(), width)?;
    check_ids("gather_rows", ids, table.len() / width, width, out.len())?;
    for (row, &id) in out.chunks_exact_mut(width).zip(ids) {
        let id = id as usize;
        row.copy_from_slice(&table[id * width..(id + 1) * width]);
    }
    Ok(())
}

pub(super) fn scatter_add_rows(ids: &[i32], width: usize, rows: &[f32], table: &mut [f32]) -> Result<()> {
    super::super::check_rows("scatter_add_rows", table.len(), width)?;
    check_ids("scatter_add_rows", ids, table.len() / width, width, rows.len())?;
    for (row, &id) in rows.chunks_exact(width).zip(ids) {
        let id = id as usize;
        table[id * width..(id + 1) * width].iter_mut().zip(row).for_each(|(a, b)| *a += b);
    }
    Ok(())
}
