//! SGEMM for CPUs with AVX2 and FMA, on stable Rust.
//!
//! Why our own, beside the `gemm` crate's AVX2 kernels of the same tile: the
//! crate packs `B` again at every call, so W1's recurrent product repacked
//! the same 1 MB recurrent kernel at 15 of its 16 steps, per shard (about
//! half of the core's peak for 32 rows); here a weight used in many products
//! is packed once ([`super::sgemm_driver::pack`]). And every element of `C`
//! is summed in one fixed order, which the crate's blocking does not
//! promise, so inference may look projected tokens up in a table
//! (`model/token_tables.rs`).
//!
//! Layout (BLIS's loops, vectors along `n`): `B` is packed in `KC x NR`
//! panels (rows of `NR` contiguous values, one panel in L1 while every row
//! sliver of an `MC`-row block of `A` passes over it), `A` in `MR x KC`
//! slivers (columns of `MR` values, broadcast one by one); the micro-kernel
//! keeps an `MR x NR` tile of `C` in 12 of the 16 vector registers. Edges use
//! AVX2 masked loads and stores. A small `m` reads a row-major `B` in place
//! unless it was packed beforehand.
//!
//! Determinism: every element of `C` is a fused multiply-add chain over each
//! `KC` block of `k` in order, the blocks added to `C` in order, whatever the
//! tiling, the packing and the thread count: one row gives the same bits
//! alone or in a batch, on one thread or several.

use super::sgemm_driver::{aligned, block_depth, with_packs, Isa, Operands};
use std::arch::x86_64::*;

/// Rows of the micro-tile (broadcast values of `A`).
const MR: usize = 6;
/// Columns of the micro-tile: two vectors of 8.
const NR: usize = 16;
/// Largest depth of one block of `k`: a `B` panel is `KC x NR` = 20 KB, in a
/// 32 KB L1. `k` is cut into equal blocks no deeper than this (W2's 288- and
/// 576-deep convolutions: one block and two, not two and three as with 256).
const KC: usize = 320;
/// Rows of `A` packed at once (`MC x KC` = 120 KB, in L2) and run over each `B` panel.
const MC: usize = 16 * MR;
/// Products at most this wide read full `A` slivers in place.
const DIRECT_A_MAX_COLS: usize = 8 * NR;
/// Columns of one packed block of `B` (`KC x NC` = up to 5 MB, in L3).
const NC: usize = 4096;
/// At most this many rows read an unpacked `B` in place instead of packing it.
const UNPACKED_B_MAX_ROWS: usize = 4 * MR;
/// Values written past a packed `A` block by the overlapping stores of [`pack_a`].
const A_SLACK: usize = 8;

/// Alignment of the packed panels, in values: 32 bytes, one vector.
const ALIGN: usize = 8;

/// Whether this CPU runs [`Avx2`].
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// This instruction set's SGEMM: `sgemm_driver::gemm::<Avx2>` and its kin run it.
pub struct Avx2;

impl Isa for Avx2 {
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
#[target_feature(enable = "avx2,fma")]
unsafe fn columns(ops: Operands, j0: usize, j1: usize) {
    with_packs(|bbuf, abuf| {
        let depth = block_depth(ops.k, KC);
        let a_pack = aligned(abuf, MC * depth + A_SLACK, ALIGN).as_mut_ptr();
        let prepacked = !ops.packed.is_null();
        let b_in_place = !prepacked && ops.m <= UNPACKED_B_MAX_ROWS && ops.cs_b == 1;
        let b_pack =
            if b_in_place || prepacked { std::ptr::null_mut() } else { aligned(bbuf, depth * NC, ALIGN).as_mut_ptr() };
        let mut jc = j0;
        while jc < j1 {
            let nc = NC.min(j1 - jc);
            // A full sliver of a narrow product is read where it lies: packing
            // it would cost about as much as the one or two tiles it feeds.
            let direct_a = nc <= DIRECT_A_MAX_COLS && (ops.cs_a == 1 || ops.rs_a == 1);
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
                let mut ic = 0;
                while ic < ops.m {
                    let mc = MC.min(ops.m - ic);
                    let mut ir = 0;
                    while ir < mc {
                        let rows = MR.min(mc - ir);
                        if !(direct_a && rows == MR) {
                            pack_a(ops, ic + ir, rows, pc, kc, a_pack.add(ir * kc));
                        }
                        ir += MR;
                    }
                    let mut jr = 0;
                    while jr < nc {
                        let cols = NR.min(nc - jr);
                        let b_panel = bp.offset((jr / NR) as isize * panel_step);
                        let mut ir = 0;
                        while ir < mc {
                            let rows = MR.min(mc - ir);
                            let i = ic + ir;
                            let c_tile = ops.c.offset(i as isize * ops.rs_c + (jc + jr) as isize);
                            let tile = Tile { b: b_panel, rs_b: rs_bp, c: c_tile, rs_c: ops.rs_c, rows, cols, add };
                            if direct_a && rows == MR {
                                let a =
                                    (ops.a.offset(i as isize * ops.rs_a + pc as isize * ops.cs_a), ops.rs_a, ops.cs_a);
                                if cols == NR {
                                    kernel::<false, true>(kc, a, tile)
                                } else {
                                    kernel::<true, true>(kc, a, tile)
                                }
                            } else {
                                let a = (a_pack.add(ir * kc) as *const f32, 1, MR as isize);
                                if cols == NR {
                                    kernel::<false, false>(kc, a, tile)
                                } else {
                                    kernel::<true, false>(kc, a, tile)
                                }
                            }
                            ir += MR;
                        }
                        jr += NR;
                    }
                    ic += mc;
                }
                pc += kc;
            }
            jc += nc;
        }
    });
}

/// Packs `B[pc..pc+kc, jc..jc+nc]` as panels of `NR` columns: panel `q` holds
/// rows of `NR` values (zero past `nc`) at `dst[q*kc*NR + p*NR ..]`.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_b(ops: Operands, pc: usize, kc: usize, jc: usize, nc: usize, dst: *mut f32) {
    for q in 0..nc.div_ceil(NR) {
        let (j0, cols) = (jc + q * NR, NR.min(nc - q * NR));
        let panel = dst.add(q * kc * NR);
        if ops.cs_b == 1 {
            let (m0, m1) = masks(cols);
            for p in 0..kc {
                let src = ops.b.offset((pc + p) as isize * ops.rs_b + j0 as isize);
                let row = panel.add(p * NR);
                _mm256_storeu_ps(row, _mm256_maskload_ps(src, m0));
                _mm256_storeu_ps(row.add(8), _mm256_maskload_ps(src.add(8), m1));
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
/// `rows`), reading along whichever axis of `A` is contiguous. Full slivers
/// store whole vectors one column after another, each overwriting the two
/// values the previous one wrote past its column: up to [`A_SLACK`] values
/// past the sliver are written.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a(ops: Operands, i: usize, rows: usize, pc: usize, kc: usize, dst: *mut f32) {
    let start = ops.a.offset(i as isize * ops.rs_a + pc as isize * ops.cs_a);
    if rows == MR && ops.cs_a == 1 {
        // Row-major: 8x8 blocks (two rows of zeros) transposed in registers.
        let row = |r: usize| start.offset(r as isize * ops.rs_a);
        let mut p = 0;
        while p + 8 <= kc {
            let block: [__m256; 8] =
                std::array::from_fn(|r| if r < MR { _mm256_loadu_ps(row(r).add(p)) } else { _mm256_setzero_ps() });
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
        // Stored transposed: each column of the sliver is contiguous (read as 6 lanes).
        let (six, _) = masks(MR);
        for p in 0..kc {
            _mm256_storeu_ps(dst.add(p * MR), _mm256_maskload_ps(start.offset(p as isize * ops.cs_a), six));
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

/// The transpose of an 8x8 block held as 8 rows (also packs the AVX-512 kernels' slivers).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// Lane masks of the two vectors of a tile row with `cols` valid columns.
#[target_feature(enable = "avx2")]
unsafe fn masks(cols: usize) -> (__m256i, __m256i) {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let below = |n: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), lanes);
    (below(cols), below(cols.saturating_sub(8)))
}

/// Where one micro-tile reads `B` and writes `C`: `b` rows of `NR` values
/// `rs_b` apart, `c` rows `rs_c` apart, `rows x cols` of the tile valid;
/// `add`: onto `C`'s values rather than over them.
#[derive(Clone, Copy)]
struct Tile {
    b: *const f32,
    rs_b: isize,
    c: *mut f32,
    rs_c: isize,
    rows: usize,
    cols: usize,
    add: bool,
}

/// Asks for the tile's rows of `C` before the loop over `k`, which hides
/// their misses: rows a whole `C` row apart (4 KB for W1's 1024 columns)
/// are not followed by the hardware prefetcher, and loaded only after the
/// loop they stalled each tile (W1's inference ran about 7% faster with it
/// on a 2-core AMD EPYC). The rows are the tile's own, which it writes.
#[target_feature(enable = "avx2,fma")]
unsafe fn prefetch_c(tile: Tile) {
    for r in 0..tile.rows {
        let row = tile.c.offset(r as isize * tile.rs_c) as *const i8;
        // A tile row is 64 bytes, on one or two cache lines.
        _mm_prefetch::<_MM_HINT_T0>(row);
        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(63));
    }
}

/// `C[0..rows, 0..cols] (+)= A · B` over `kc`: `a` is an `MR x kc` sliver
/// (pointer, row stride, step stride: packed `(_, 1, MR)`, or `A` in place).
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const MASKED: bool, const DIRECT_A: bool>(
    kc: usize,
    (a, a_rs, a_cs): (*const f32, isize, isize),
    tile: Tile,
) {
    let (m0, m1) = masks(tile.cols);
    prefetch_c(tile);
    let mut lo = [_mm256_setzero_ps(); MR];
    let mut hi = [_mm256_setzero_ps(); MR];
    let (mut a, mut b) = (a, tile.b);
    for _ in 0..kc {
        let (b0, b1) = if MASKED {
            (_mm256_maskload_ps(b, m0), _mm256_maskload_ps(b.add(8), m1))
        } else {
            (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8)))
        };
        for r in 0..MR {
            // Packed slivers have constant strides (1, MR): the compiler folds them.
            let ar = _mm256_broadcast_ss(&*(if DIRECT_A { a.offset(r as isize * a_rs) } else { a.add(r) }));
            lo[r] = _mm256_fmadd_ps(ar, b0, lo[r]);
            hi[r] = _mm256_fmadd_ps(ar, b1, hi[r]);
        }
        a = if DIRECT_A { a.offset(a_cs) } else { a.add(MR) };
        b = b.offset(tile.rs_b);
    }
    for r in 0..tile.rows {
        let row = tile.c.offset(r as isize * tile.rs_c);
        let (mut v0, mut v1) = (lo[r], hi[r]);
        if MASKED {
            if tile.add {
                v0 = _mm256_add_ps(_mm256_maskload_ps(row, m0), v0);
                v1 = _mm256_add_ps(_mm256_maskload_ps(row.add(8), m1), v1);
            }
            _mm256_maskstore_ps(row, m0, v0);
            _mm256_maskstore_ps(row.add(8), m1, v1);
        } else {
            if tile.add {
                v0 = _mm256_add_ps(_mm256_loadu_ps(row), v0);
                v1 = _mm256_add_ps(_mm256_loadu_ps(row.add(8)), v1);
            }
            _mm256_storeu_ps(row, v0);
            _mm256_storeu_ps(row.add(8), v1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sgemm_driver::checks;

    #[test]
    fn products_match_the_reference_on_every_edge_and_layout() {
        // Rows past one `MC` block (100, 200), depths past one `KC` block (513, 1000),
        // columns narrow (`A` read in place), partial panels and wide.
        if available() {
            checks::products_match_the_reference::<Avx2>(&[
                (1, 1, 1),
                (7, 5, 3),
                (6, 256, 16),
                (16, 300, 45),
                (17, 513, 70),
                (40, 257, 600),
                (3, 1000, 1),
                (100, 64, 33),
                (200, 9, 20),
            ]);
        }
    }

    #[test]
    fn a_prepacked_b_gives_the_bits_of_b_itself() {
        // Small `m` (B read in place otherwise), narrow and wide, several blocks of `k`
        // (1000 = 4 x 250), columns not a whole number of panels, B stored transposed.
        if available() {
            checks::a_prepacked_b_gives_the_bits_of_b_itself::<Avx2>(&[
                (1, 7, 3),
                (16, 256, 1024),
                (37, 1000, 70),
                (300, 513, 4200),
                (6, 384, 33),
            ]);
        }
    }

    #[test]
    fn bits_do_not_depend_on_threads_or_on_the_rest_of_the_batch() {
        // 700 columns pack `A`; 32 read full slivers of `A` in place; 137 rows cross an
        // `MC` block; the first rows alone are a partial sliver that reads `B` in place.
        if available() {
            checks::bits_do_not_depend_on_threads_or_on_the_rest_of_the_batch::<Avx2>(137, &[700, 32]);
        }
    }
}
