//! SGEMM for CPUs with AVX-512 (`avx512f`), on stable Rust.
//!
//! Why our own: the `gemm` crate compiles its AVX-512 kernels only with its
//! `nightly` feature, so on stable it runs its AVX2 16x6 kernel on AVX-512
//! hosts; with 32 vector registers a wider tile needs fewer loads per
//! multiply-add.
//!
//! Layout (BLIS's loops, vectors along `n`): `B` is packed in `KC x NR`
//! panels (rows of `NR` contiguous values), `A` in `MR x KC` slivers (columns
//! of `MR` values, broadcast one by one); the micro-kernel keeps an `MR x NR`
//! tile of `C` in 16 registers. Edges use AVX-512 masks, not copies. A small
//! `m` (a recurrent step) reads a row-major `B` in place: packing it would
//! cost as much as the product.
//!
//! A `B` used in many products (a weight during inference) can be packed
//! once for all of them ([`super::sgemm_driver::pack`]): the products then read its panels
//! instead of packing them again, or of reading a small product's `B` in
//! place, whose rows (4 KB apart for W1's recurrent kernel) share cache sets.
//!
//! Determinism: every element of `C` is summed in the same order (a fused
//! multiply-add chain over each `KC` block of `k`, the blocks added to `C` in
//! order) whatever the tiling and the thread count, so one row gives the same
//! bits alone or in a batch, on one thread or several.

use super::sgemm_avx2::transpose8;
use super::sgemm_driver::{aligned, block_depth, with_packs, Isa, Operands};
use std::arch::x86_64::*;

/// Rows of the micro-tile (broadcast values of `A`).
const MR: usize = 8;
/// Columns of the micro-tile: two vectors of 16.
const NR: usize = 32;
/// Largest depth of one block of `k` (an `A` sliver is `MR x KC` = 12 KB, in
/// L1). `k` is cut into equal blocks no deeper than this: 288 is one block,
/// not 256 + 32 (each block costs a load and store of the `C` tile).
const KC: usize = 384;
/// Products at most this wide read full `A` slivers in place.
const DIRECT_A_MAX_COLS: usize = 2 * NR;
/// Columns of one packed block of `B` (`KC x NC` = up to 4 MB, in L3): wide,
/// so that a large `A` (inference inputs) streams from memory once.
const NC: usize = 4096;
/// At most this many rows read `B` in place instead of packing it (measured
/// with `benches/gemm.rs`: 32 rows of a recurrent step gain ~10%).
const UNPACKED_B_MAX_ROWS: usize = 4 * MR;

/// Alignment of the packed panels, in values: 64 bytes, one vector.
const ALIGN: usize = 16;

/// Whether this CPU runs [`Avx512`].
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// This instruction set's SGEMM: `sgemm_driver::gemm::<Avx512>` and its kin run it.
pub struct Avx512;

impl Isa for Avx512 {
    const NR: usize = NR;
    const KC: usize = KC;
    const ALIGN: usize = ALIGN;

    unsafe fn pack_b(ops: Operands, pc: usize, kc: usize, jc: usize, nc: usize, dst: *mut f32) {
        pack_b(ops, pc, kc, jc, nc, dst)
    }

    unsafe fn columns(ops: Operands, j0: usize, j1: usize) {
        columns(ops, j0, j1)
    }
}

/// Columns `[j0, j1)` of `C`, on this thread.
#[target_feature(enable = "avx512f")]
unsafe fn columns(ops: Operands, j0: usize, j1: usize) {
    with_packs(|bbuf, abuf| {
        let a_pack = aligned(abuf, MR * KC, ALIGN).as_mut_ptr();
        let prepacked = !ops.packed.is_null();
        let b_in_place = !prepacked && ops.m <= UNPACKED_B_MAX_ROWS && ops.cs_b == 1;
        let b_pack =
            if b_in_place || prepacked { std::ptr::null_mut() } else { aligned(bbuf, KC * NC, ALIGN).as_mut_ptr() };
        let depth = block_depth(ops.k, KC);
        let mut jc = j0;
        while jc < j1 {
            let nc = NC.min(j1 - jc);
            let mut pc = 0;
            while pc < ops.k {
                let kc = depth.min(ops.k - pc);
                let add = ops.accumulate || pc > 0;
                let (bp, rs_bp, panel_step) = if prepacked {
                    // `jc` is a whole number of panels (threads and blocks split at panels).
                    let panels = ops.packed.add(pc * ops.n_panels + jc / NR * kc * NR);
                    (panels, NR as isize, (kc * NR) as isize)
                } else if b_in_place {
                    (ops.b.offset(pc as isize * ops.rs_b + jc as isize), ops.rs_b, NR as isize)
                } else {
                    pack_b(ops, pc, kc, jc, nc, b_pack);
                    (b_pack as *const f32, NR as isize, (kc * NR) as isize)
                };
                let mut i = 0;
                while i < ops.m {
                    let rows = MR.min(ops.m - i);
                    // A full sliver of a narrow product is read where it lies: packing
                    // it would cost about as much as the one or two tiles it feeds.
                    let direct = rows == MR && nc <= DIRECT_A_MAX_COLS && (ops.cs_a == 1 || ops.rs_a == 1);
                    let a = if direct {
                        (ops.a.offset(i as isize * ops.rs_a + pc as isize * ops.cs_a), ops.rs_a, ops.cs_a)
                    } else {
                        pack_a(ops, i, rows, pc, kc, a_pack);
                        (a_pack as *const f32, 1, MR as isize)
                    };
                    let mut jr = 0;
                    while jr < nc {
                        let cols = NR.min(nc - jr);
                        let b_panel = bp.offset((jr / NR) as isize * panel_step);
                        let c_tile = ops.c.offset(i as isize * ops.rs_c + (jc + jr) as isize);
                        match (direct, cols == NR) {
                            (false, true) => {
                                kernel::<false, false>(kc, a, b_panel, rs_bp, c_tile, ops.rs_c, rows, cols, add)
                            }
                            (false, false) => {
                                kernel::<true, false>(kc, a, b_panel, rs_bp, c_tile, ops.rs_c, rows, cols, add)
                            }
                            (true, true) => {
                                kernel::<false, true>(kc, a, b_panel, rs_bp, c_tile, ops.rs_c, rows, cols, add)
                            }
                            (true, false) => {
                                kernel::<true, true>(kc, a, b_panel, rs_bp, c_tile, ops.rs_c, rows, cols, add)
                            }
                        }
                        jr += NR;
                    }
                    i += MR;
                }
                pc += kc;
            }
            jc += nc;
        }
    });
}

/// Packs `B[pc..pc+kc, jc..jc+nc]` as panels of `NR` columns: panel `q` holds
/// rows of `NR` values (zero past `nc`) at `dst[q*kc*NR + p*NR ..]`.
#[target_feature(enable = "avx512f")]
unsafe fn pack_b(ops: Operands, pc: usize, kc: usize, jc: usize, nc: usize, dst: *mut f32) {
    for q in 0..nc.div_ceil(NR) {
        let (j0, cols) = (jc + q * NR, NR.min(nc - q * NR));
        let panel = dst.add(q * kc * NR);
        if ops.cs_b == 1 {
            let (m0, m1) = masks(cols);
            for p in 0..kc {
                let src = ops.b.offset((pc + p) as isize * ops.rs_b + j0 as isize);
                let row = panel.add(p * NR);
                _mm512_storeu_ps(row, _mm512_maskz_loadu_ps(m0, src));
                _mm512_storeu_ps(row.add(16), _mm512_maskz_loadu_ps(m1, src.add(16)));
            }
        } else {
            // `B` stored transposed: read each column along `k`, where it is contiguous.
            for j in 0..NR {
                if j < cols {
                    let src = ops.b.offset(pc as isize * ops.rs_b + (j0 + j) as isize * ops.cs_b);
                    for p in 0..kc {
                        *panel.add(p * NR + j) = *src.offset(p as isize * ops.rs_b);
                    }
                } else {
                    (0..kc).for_each(|p| *panel.add(p * NR + j) = 0.0);
                }
            }
        }
    }
}

/// Packs `A[i..i+rows, pc..pc+kc]` as `kc` columns of `MR` values (zero past
/// `rows`), reading along whichever axis of `A` is contiguous. (Left to
/// itself the compiler turns the row-major case into scatters, which cost
/// more than the product on AMD cores.)
#[target_feature(enable = "avx512f")]
unsafe fn pack_a(ops: Operands, i: usize, rows: usize, pc: usize, kc: usize, dst: *mut f32) {
    let start = ops.a.offset(i as isize * ops.rs_a + pc as isize * ops.cs_a);
    if rows == MR && ops.cs_a == 1 {
        // Row-major: 8x8 blocks transposed in registers.
        let row = |r: usize| start.offset(r as isize * ops.rs_a);
        let mut p = 0;
        while p + 8 <= kc {
            let block: [__m256; 8] = std::array::from_fn(|r| _mm256_loadu_ps(row(r).add(p)));
            for (q, column) in transpose8(block).into_iter().enumerate() {
                _mm256_storeu_ps(dst.add((p + q) * MR), column);
            }
            p += 8;
        }
        for p in p..kc {
            for r in 0..MR {
                *dst.add(p * MR + r) = *row(r).add(p);
            }
        }
    } else if rows == MR && ops.rs_a == 1 {
        // Stored transposed: each column of the sliver is contiguous.
        for p in 0..kc {
            _mm256_storeu_ps(dst.add(p * MR), _mm256_loadu_ps(start.offset(p as isize * ops.cs_a)));
        }
    } else {
        for p in 0..kc {
            for r in 0..MR {
                *dst.add(p * MR + r) =
                    if r < rows { *start.offset(r as isize * ops.rs_a + p as isize * ops.cs_a) } else { 0.0 };
            }
        }
    }
}

/// Lane masks of the two vectors of a tile row with `cols` valid columns.
fn masks(cols: usize) -> (__mmask16, __mmask16) {
    let lanes = |n: usize| if n >= 16 { 0xFFFF } else { ((1u32 << n) - 1) as __mmask16 };
    (lanes(cols), lanes(cols.saturating_sub(16)))
}

/// `C[0..rows, 0..cols] (+)= A · B` over `kc`: `a` is an `MR x kc` sliver
/// (pointer, row stride, step stride: packed `(_, 1, MR)`, or `A` in place),
/// `b` rows of `NR` values `rs_b` apart, `c` rows `rs_c` apart.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const MASKED: bool, const DIRECT_A: bool>(
    kc: usize,
    (a, a_rs, a_cs): (*const f32, isize, isize),
    b: *const f32,
    rs_b: isize,
    c: *mut f32,
    rs_c: isize,
    rows: usize,
    cols: usize,
    add: bool,
) {
    let (m0, m1) = masks(cols);
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..kc {
        let (b0, b1) = if MASKED {
            (_mm512_maskz_loadu_ps(m0, b), _mm512_maskz_loadu_ps(m1, b.add(16)))
        } else {
            (_mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16)))
        };
        for r in 0..MR {
            // Packed slivers have constant strides (1, MR): the compiler folds them.
            let ar = _mm512_set1_ps(if DIRECT_A { *a.offset(r as isize * a_rs) } else { *a.add(r) });
            lo[r] = _mm512_fmadd_ps(ar, b0, lo[r]);
            hi[r] = _mm512_fmadd_ps(ar, b1, hi[r]);
        }
        a = if DIRECT_A { a.offset(a_cs) } else { a.add(MR) };
        b = b.offset(rs_b);
    }
    for r in 0..rows {
        let row = c.offset(r as isize * rs_c);
        let (mut v0, mut v1) = (lo[r], hi[r]);
        if add {
            v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, row), v0);
            v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, row.add(16)), v1);
        }
        _mm512_mask_storeu_ps(row, m0, v0);
        _mm512_mask_storeu_ps(row.add(16), m1, v1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sgemm_driver::checks;

    #[test]
    fn products_match_the_reference_on_every_edge_and_layout() {
        if available() {
            checks::products_match_the_reference::<Avx512>(&[
                (1, 1, 1),
                (7, 5, 3),
                (8, 256, 32),
                (16, 300, 45),
                (17, 513, 70),
                (40, 257, 600),
                (3, 1000, 1),
            ]);
        }
    }

    #[test]
    fn a_prepacked_b_gives_the_bits_of_b_itself() {
        // Small `m` (B read in place otherwise), narrow and wide, several blocks of `k`
        // (1000 = 3 x 334), columns not a whole number of panels, B stored transposed.
        if available() {
            checks::a_prepacked_b_gives_the_bits_of_b_itself::<Avx512>(&[
                (1, 7, 3),
                (16, 256, 1024),
                (37, 1000, 70),
                (300, 513, 4200),
                (8, 384, 33),
            ]);
        }
    }

    #[test]
    fn bits_do_not_depend_on_threads_or_on_the_rest_of_the_batch() {
        // 700 columns pack `A`; 64 read full slivers of `A` in place; the first rows
        // alone are a partial sliver that reads `B` in place.
        if available() {
            checks::bits_do_not_depend_on_threads_or_on_the_rest_of_the_batch::<Avx512>(37, &[700, 64]);
        }
    }
}
