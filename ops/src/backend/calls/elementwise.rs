//! Elementwise arithmetic over equal-length buffers.

/// One elementwise kernel call; every buffer has `out`'s length.
#[derive(Debug)]
pub enum Elementwise<'a> {
    /// `out = a + b`.
    Add { a: &'a [f32], b: &'a [f32], out: &'a mut [f32] },
    /// `out = a * b`, or `out += a * b` when `accumulate`.
    Mul { a: &'a [f32], b: &'a [f32], out: &'a mut [f32], accumulate: bool },
    /// `out += x * scale`.
    AddScaled { x: &'a [f32], scale: f32, out: &'a mut [f32] },
    /// `out = x * scale + offset`.
    ScaleShift { x: &'a [f32], scale: f32, offset: f32, out: &'a mut [f32] },
    /// `x *= scale` in place.
    ScaleInPlace { x: &'a mut [f32], scale: f32 },
}
