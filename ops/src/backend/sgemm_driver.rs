//! What Kallista's two SGEMMs (`sgemm_avx512`, `sgemm_avx2`) share: the
//! operands handed to the threads, `B` packed once for many products, the
//! cut of `k` into equal blocks, the split of the columns among threads, and
//! the per-thread packing buffers. Each instruction set brings its panels,
//! its loops and its micro-kernel ([`Isa`]).
//!
//! The packed form of `B` is the one the products would make: panel `q` of
//! the block of rows starting at `pc` (of depth `kc`) is at
//! `pc * n_panels + q * kc * NR`, so that a product reads the same values,
//! in the same order, packed beforehand or not.

use super::{MatMut, MatRef};
use std::cell::RefCell;
use std::marker::PhantomData;

/// One instruction set's SGEMM, driven by [`pack`], [`gemm`] and [`gemm_packed`].
pub(super) trait Isa: 'static {
    /// Columns of a panel of `B`.
    const NR: usize;
    /// Largest depth of one block of `k`.
    const KC: usize;
    /// Alignment of the packed panels, in values.
    const ALIGN: usize;

    /// Packs `B[pc..pc+kc, jc..jc+nc]` as panels of `NR` columns: panel `q`
    /// holds rows of `NR` values (zero past `nc`) at `dst[q*kc*NR + p*NR ..]`.
    ///
    /// # Safety
    /// `ops.b` in bounds for those rows and columns, `dst` holding the panels,
    /// and the CPU has the instruction set.
    unsafe fn pack_b(ops: Operands, pc: usize, kc: usize, jc: usize, nc: usize, dst: *mut f32);

    /// Columns `[j0, j1)` of `C` (`j0` a whole number of panels), on this thread.
    ///
    /// # Safety
    /// The operands in bounds, no other thread writing those columns, and the
    /// CPU has the instruction set.
    unsafe fn columns(ops: Operands, j0: usize, j1: usize);
}

/// Raw pointers of one product, shared by the threads that compute disjoint
/// column ranges of `C`.
#[derive(Clone, Copy)]
pub(super) struct Operands {
    pub a: *const f32,
    pub rs_a: isize,
    pub cs_a: isize,
    pub b: *const f32,
    pub rs_b: isize,
    pub cs_b: isize,
    pub c: *mut f32,
    pub rs_c: isize,
    pub m: usize,
    pub k: usize,
    pub accumulate: bool,
    /// `B` packed whole ([`PackedB`]), or null.
    pub packed: *const f32,
    /// Columns of `B` rounded up to panels: a packed block of `kc` rows holds `kc * n_panels` values.
    pub n_panels: usize,
}

// SAFETY: threads write disjoint column ranges of `c` and only read `a` and `b`.
unsafe impl Send for Operands {}
unsafe impl Sync for Operands {}

/// `B` packed once for many products of one instruction set's SGEMM
/// ([`pack`]): each block of rows that [`gemm`] cuts `k` into, as the panels
/// it would pack, for all columns.
pub struct PackedB<I> {
    values: Vec<f32>,
    /// Where the aligned panels begin in `values`.
    skip: usize,
    k: usize,
    n: usize,
    isa: PhantomData<fn() -> I>,
}

impl<I> PackedB<I> {
    fn start(&self) -> *const f32 {
        self.values[self.skip..].as_ptr()
    }

    /// `(rows, cols)` of the matrix packed.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }
}

/// The depth of each block of `k` no deeper than `most` (the last may be
/// shallower): equal blocks, as each costs a load and store of the `C` tile.
pub(super) fn block_depth(k: usize, most: usize) -> usize {
    k.div_ceil(k.div_ceil(most).max(1)).max(1)
}

/// `b` packed for [`gemm_packed`], its blocks of rows shared out among `threads` threads.
///
/// # Safety
/// `b` must be in bounds and the CPU must have `I`'s instruction set.
pub(super) unsafe fn pack<I: Isa>(b: MatRef<'_>, threads: usize) -> PackedB<I> {
    let (k, n) = (b.rows, b.cols);
    let n_panels = n.div_ceil(I::NR) * I::NR;
    let mut values = vec![0.0f32; k * n_panels + I::ALIGN];
    let skip = values.as_ptr().align_offset(4 * I::ALIGN).min(I::ALIGN);
    let ops = Operands {
        a: std::ptr::null(),
        rs_a: 0,
        cs_a: 0,
        b: b.data.as_ptr().add(b.offset),
        rs_b: b.row_stride as isize,
        cs_b: b.col_stride as isize,
        c: std::ptr::null_mut(),
        rs_c: 0,
        m: 0,
        k,
        accumulate: false,
        packed: std::ptr::null(),
        n_panels,
    };
    let depth = block_depth(k, I::KC);
    // Block `i` (rows `i * depth..`) is the `i`-th chunk: the blocks are disjoint.
    let blocks = values[skip..skip + k * n_panels].chunks_mut(depth * n_panels).enumerate();
    let pack_block = |(i, block): (usize, &mut [f32])| {
        let pc = i * depth;
        // SAFETY: `b` in bounds (the caller's), the block holds `kc * n_panels` values.
        unsafe { I::pack_b(ops, pc, depth.min(k - pc), 0, n, block.as_mut_ptr()) };
    };
    if threads > 1 {
        use rayon::prelude::*;
        blocks.collect::<Vec<_>>().into_par_iter().with_max_len(1).for_each(pack_block);
    } else {
        blocks.for_each(pack_block);
    }
    PackedB { values, skip, k, n, isa: PhantomData }
}

/// `c = a · b` (or `c += a · b`), with `c` of unit column stride, on `threads`
/// threads (split by columns).
///
/// # Safety
/// The views must be in bounds (checked by the caller), `c.col_stride == 1`,
/// and the CPU must have `I`'s instruction set.
pub(super) unsafe fn gemm<I: Isa>(a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>, accumulate: bool, threads: usize) {
    gemm_with::<I>(a, b, None, c, accumulate, threads)
}

/// [`gemm`] reading `b` from `packed` (made of `b` by [`pack`]): the same bits.
///
/// # Safety
/// As for [`gemm`]; `packed` must be `b`'s ([`PackedB::dims`] are checked).
pub(super) unsafe fn gemm_packed<I: Isa>(
    a: MatRef<'_>,
    packed: &PackedB<I>,
    c: MatMut<'_>,
    accumulate: bool,
    threads: usize,
) {
    assert_eq!((a.cols, c.cols), packed.dims(), "a packed B of another shape");
    // `b`'s values are read from the panels only.
    let b = MatRef { data: &[], offset: 0, rows: packed.k, cols: packed.n, row_stride: 0, col_stride: 0 };
    gemm_with::<I>(a, b, Some(packed), c, accumulate, threads)
}

unsafe fn gemm_with<I: Isa>(
    a: MatRef<'_>,
    b: MatRef<'_>,
    packed: Option<&PackedB<I>>,
    c: MatMut<'_>,
    accumulate: bool,
    threads: usize,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let ops = Operands {
        a: a.data.as_ptr().add(a.offset),
        rs_a: a.row_stride as isize,
        cs_a: a.col_stride as isize,
        b: b.data.as_ptr().add(b.offset),
        rs_b: b.row_stride as isize,
        cs_b: b.col_stride as isize,
        c: c.data.as_mut_ptr().add(c.offset),
        rs_c: c.row_stride as isize,
        m,
        k,
        accumulate,
        packed: packed.map_or(std::ptr::null(), PackedB::start),
        n_panels: n.div_ceil(I::NR) * I::NR,
    };
    let panels = n.div_ceil(I::NR);
    let threads = threads.clamp(1, panels);
    if threads == 1 {
        I::columns(ops, 0, n);
        return;
    }
    use rayon::prelude::*;
    (0..threads).into_par_iter().for_each(|t| {
        let start = t * panels / threads * I::NR;
        let end = ((t + 1) * panels / threads * I::NR).min(n);
        // SAFETY: as for `gemm`; the column ranges of the threads are disjoint.
        unsafe { I::columns(ops, start, end) };
    });
}

thread_local! {
    /// Packing buffers for `B` and `A`, kept between calls (fresh ones would
    /// fault their pages in each time).
    static PACKS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with this thread's packing buffers for `B` and `A`.
pub(super) fn with_packs<R>(f: impl FnOnce(&mut Vec<f32>, &mut Vec<f32>) -> R) -> R {
    PACKS.with(|packs| {
        let mut packs = packs.borrow_mut();
        let (bbuf, abuf) = &mut *packs;
        f(bbuf, abuf)
    })
}

/// A slice of `len` values inside `buf` (grown as needed) aligned to `align` values.
pub(super) fn aligned(buf: &mut Vec<f32>, len: usize, align: usize) -> &mut [f32] {
    if buf.len() < len + align {
        buf.resize(len + align, 0.0);
    }
    let skip = buf.as_ptr().align_offset(4 * align).min(align);
    &mut buf[skip..skip + len]
}

/// The checks both SGEMMs pass, each run by the instruction set's own tests
/// (and by [`checks::Scalar`] here, on any CPU).
#[cfg(test)]
pub(super) mod checks {
    use super::*;

    /// A plain-Rust instruction set with narrow panels and shallow blocks: the
    /// driver's packing, its cut of `k`, its column split and the packed layout
    /// are checked on any host, the AVX-512 one's included.
    pub struct Scalar;

    impl Isa for Scalar {
        const NR: usize = 4;
        const KC: usize = 8;
        const ALIGN: usize = 4;

        unsafe fn pack_b(ops: Operands, pc: usize, kc: usize, jc: usize, nc: usize, dst: *mut f32) {
            for q in 0..nc.div_ceil(Self::NR) {
                for p in 0..kc {
                    for lane in 0..Self::NR {
                        let j = q * Self::NR + lane;
                        let at = ops.b.offset((pc + p) as isize * ops.rs_b + (jc + j) as isize * ops.cs_b);
                        *dst.add(q * kc * Self::NR + p * Self::NR + lane) = if j < nc { *at } else { 0.0 };
                    }
                }
            }
        }

        unsafe fn columns(ops: Operands, j0: usize, j1: usize) {
            let depth = block_depth(ops.k, Self::KC);
            with_packs(|bbuf, _| {
                let mut pc = 0;
                while pc < ops.k {
                    let kc = depth.min(ops.k - pc);
                    // Panel `q` of this thread's columns, packed here or found in the whole.
                    let (panels, first_panel) = if ops.packed.is_null() {
                        let buf = aligned(bbuf, kc * (j1 - j0).div_ceil(Self::NR) * Self::NR, Self::ALIGN);
                        Self::pack_b(ops, pc, kc, j0, j1 - j0, buf.as_mut_ptr());
                        (buf.as_ptr(), j0 / Self::NR)
                    } else {
                        (ops.packed.add(pc * ops.n_panels), 0)
                    };
                    for i in 0..ops.m {
                        for j in j0..j1 {
                            let panel = panels.add((j / Self::NR - first_panel) * kc * Self::NR);
                            let mut sum = 0.0f32;
                            for p in 0..kc {
                                let a = *ops.a.offset(i as isize * ops.rs_a + (pc + p) as isize * ops.cs_a);
                                sum = a.mul_add(*panel.add(p * Self::NR + j % Self::NR), sum);
                            }
                            let c = ops.c.offset(i as isize * ops.rs_c + j as isize);
                            *c = if ops.accumulate || pc > 0 { *c + sum } else { sum };
                        }
                    }
                    pc += kc;
                }
            })
        }
    }

    #[test]
    fn the_driver_packs_cuts_and_splits_as_the_kernels_expect() {
        // Depths of one block and of several unequal ones (13 = 7 + 6), partial panels.
        let shapes = [(1, 1, 1), (5, 8, 4), (7, 13, 9), (3, 40, 17), (9, 17, 30)];
        products_match_the_reference::<Scalar>(&shapes);
        a_prepacked_b_gives_the_bits_of_b_itself::<Scalar>(&shapes);
        bits_do_not_depend_on_threads_or_on_the_rest_of_the_batch::<Scalar>(11, &[9, 33]);
    }

    fn values(len: usize, seed: f32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32 * 0.618 + seed).sin() * 3.0).round() / 4.0 + 0.01 * (i % 7) as f32).collect()
    }

    /// `a·b` in f64, from strided views.
    fn reference(a: MatRef<'_>, b: MatRef<'_>) -> Vec<f64> {
        let at = |v: &MatRef<'_>, i: usize, j: usize| v.data[v.offset + i * v.row_stride + j * v.col_stride] as f64;
        let mut c = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                c[i * b.cols + j] = (0..a.cols).map(|p| at(&a, i, p) * at(&b, p, j)).sum();
            }
        }
        c
    }

    /// Each product of `shapes` with `a` and `b` stored transposed or not (and
    /// on 2 threads) against the f64 reference, also with `accumulate`, onto a
    /// strided `c` whose values outside the view must stay.
    pub fn products_match_the_reference<I: Isa>(shapes: &[(usize, usize, usize)]) {
        for &(m, k, n) in shapes {
            for (a_t, b_t, threads) in
                [(false, false, 1), (true, false, 1), (false, true, 1), (true, true, 1), (false, false, 2)]
            {
                check::<I>(m, k, n, a_t, b_t, threads);
            }
        }
    }

    fn check<I: Isa>(m: usize, k: usize, n: usize, a_t: bool, b_t: bool, threads: usize) {
        let (ad, bd) = (values(m * k, 0.3), values(k * n, 1.7));
        let a = if a_t { MatRef::dense(&ad, k, m).t() } else { MatRef::dense(&ad, m, k) };
        let b = if b_t { MatRef::dense(&bd, n, k).t() } else { MatRef::dense(&bd, k, n) };
        let want = reference(a, b);
        // c lives in a wider buffer (row stride n + 3) with values outside the view.
        let stride = n + 3;
        let mut c = vec![5.0f32; m * stride];
        fn view(c: &mut [f32], m: usize, n: usize, stride: usize) -> MatMut<'_> {
            MatMut { data: c, offset: 0, rows: m, cols: n, row_stride: stride, col_stride: 1 }
        }
        unsafe { gemm::<I>(a, b, view(&mut c, m, n, stride), false, threads) };
        for i in 0..m {
            for j in 0..n {
                let (got, w) = (c[i * stride + j] as f64, want[i * n + j]);
                assert!((got - w).abs() <= 1e-4 * (1.0 + w.abs()), "{m}x{k}x{n} ({i},{j}): {got} vs {w}");
            }
            assert!(c[i * stride + n..(i + 1) * stride].iter().all(|&v| v == 5.0), "wrote outside the view");
        }
        unsafe { gemm::<I>(a, b, view(&mut c, m, n, stride), true, threads) };
        for i in 0..m {
            for j in 0..n {
                let (got, w) = (c[i * stride + j] as f64, 2.0 * want[i * n + j]);
                assert!((got - w).abs() <= 2e-4 * (1.0 + w.abs()), "accumulate {m}x{k}x{n} ({i},{j}): {got} vs {w}");
            }
        }
    }

    /// For each of `shapes`, with `B` stored transposed or not, on 1 to 3
    /// threads, accumulating or not: a packed `B` gives the bits of `B` itself.
    pub fn a_prepacked_b_gives_the_bits_of_b_itself<I: Isa>(shapes: &[(usize, usize, usize)]) {
        for &(m, k, n) in shapes {
            for b_t in [false, true] {
                let (ad, bd) = (values(m * k, 0.4), values(k * n, 1.1));
                let a = MatRef::dense(&ad, m, k);
                let b = if b_t { MatRef::dense(&bd, n, k).t() } else { MatRef::dense(&bd, k, n) };
                let packed = unsafe { pack::<I>(b, 2) };
                for (threads, accumulate) in [(1, false), (2, false), (3, true)] {
                    let start = values(m * n, 2.5);
                    let (mut want, mut got) = (start.clone(), start);
                    unsafe { gemm::<I>(a, b, MatMut::dense(&mut want, m, n), accumulate, threads) };
                    unsafe { gemm_packed::<I>(a, &packed, MatMut::dense(&mut got, m, n), accumulate, threads) };
                    let same = want.iter().zip(&got).all(|(w, g)| w.to_bits() == g.to_bits());
                    assert!(same, "{m}x{k}x{n}, b transposed {b_t}, {threads} threads, accumulate {accumulate}");
                }
            }
        }
    }

    /// `m x 600` times `600 x n` for each of `widths`: the same bits on 1, 2
    /// and 3 threads, and its first 5 rows alone give their bits in the batch.
    pub fn bits_do_not_depend_on_threads_or_on_the_rest_of_the_batch<I: Isa>(m: usize, widths: &[usize]) {
        for &n in widths {
            let k = 600;
            let (ad, bd) = (values(m * k, 0.1), values(k * n, 0.9));
            let run = |rows: usize, threads: usize| {
                let mut c = vec![0.0f32; rows * n];
                let (a, b) = (MatRef::dense(&ad[..rows * k], rows, k), MatRef::dense(&bd, k, n));
                unsafe { gemm::<I>(a, b, MatMut::dense(&mut c, rows, n), false, threads) };
                c
            };
            let one = run(m, 1);
            assert_eq!(one, run(m, 2));
            assert_eq!(one, run(m, 3));
            assert_eq!(&one[..5 * n], &run(5, 1)[..]);
        }
    }
}
