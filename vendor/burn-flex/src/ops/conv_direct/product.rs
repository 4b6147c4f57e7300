//! The product every pass of the direct convolution reduces to:
//! `C[j][m] = Σ_k A[k][m] · src[cols[j] + offsets[k]]`, written to
//! `dst[dst_cols[j] + m · m_stride]`.
//!
//! The broadcast operand is read where it lies (a zero-padded input or output gradient), so
//! no column matrix is built: `cols[j]` says where column `j` starts (an output pixel, or a
//! kernel tap), `offsets[k]` how far step `k` moves from there.
//!
//! The reduction is summed as gemm sums it (vendor/gemm-common/LOSSBENCH.md): `k` in
//! `⌈k / 512⌉` blocks of equal length (the last shorter), each block one fused multiply-add
//! after the other from zero, the block sums added in order. So the forward convolution gives
//! the bits of the im2col + gemm path it replaces, on any thread count and instruction set.

use alloc::vec;
use alloc::vec::Vec;
use core::mem::MaybeUninit;

use super::kernel::{self, End, Isa, Mode, NR};

/// Register tiles per group.
const MAX_GROUP: usize = 32;

/// Bytes of `A` one pass over a group's tiles reads: most of a 32–48 KiB L1 data cache.
const PASS_BYTES: usize = 24 << 10;

/// The blocking of the reduction: gemm's (`kc ≤ 512`, balanced).
pub(crate) fn reduction_blocks(k: usize) -> impl Iterator<Item = (usize, usize)> {
    let blocks = k.div_ceil(512).max(1);
    let kc = k.div_ceil(blocks).max(1);
    (0..k).step_by(kc).map(move |k0| (k0, kc.min(k - k0)))
}

/// `A[k][m]` in panels of the ISA's panel width (64 with AVX-512): panel `m0..m0 + width`
/// is `k` rows of `width` floats, from `m0 · k` on. A panel's rows are contiguous, so the
/// slice of a pass is contiguous in the L1 cache (rows `lda` floats apart, `lda` a multiple of
/// 512, would fall into a few cache sets and evict each other). `m` is rounded up to whole
/// vectors (`lda`) with zeros.
pub(crate) struct PackedA {
    pub data: Vec<f32>,
    pub k: usize,
    pub m: usize,
    pub lda: usize,
    pub panel: usize,
}

impl PackedA {
    /// Builds `A` by chunks of `chunk_rows` rows of a panel, in parallel:
    /// `fill(m0, width, k0, chunk)` writes rows `k0..` of the panel that starts at row `m0`
    /// (`width` floats a row), every lane below `m` of each. A chunk of the panel that reaches
    /// past `m` is zeroed just before, while it is in the cache, so that its lanes past `m`
    /// are zeros; the others are not zeroed at all (zeroing all of `A` first — 67 MB for the
    /// weight gradient of a 64 → 256 1×1 convolution — cost as much as filling it, and zeroing
    /// each chunk was 13 % of the 3-channel stem's weight gradient).
    pub fn build(
        isa: Isa,
        m: usize,
        k: usize,
        chunk_rows: usize,
        fill: impl Fn(usize, usize, usize, &mut [MaybeUninit<f32>]) + Sync + Send,
    ) -> Self {
        let lanes = isa.lanes();
        let (lda, panel) = (m.div_ceil(lanes) * lanes, isa.panel());
        let mut data: Vec<MaybeUninit<f32>> = Vec::with_capacity(lda * k);
        // SAFETY: MaybeUninit needs no initialisation; every element is written below.
        unsafe { data.set_len(lda * k) };
        let mut chunks = Vec::new();
        let mut rest = data.as_mut_slice();
        for m0 in (0..lda).step_by(panel) {
            let width = panel.min(lda - m0);
            let (this, tail) = rest.split_at_mut(width * k);
            rest = tail;
            chunks.extend(
                this.chunks_mut(chunk_rows.max(1) * width)
                    .enumerate()
                    .map(|(c, chunk)| (m0, width, c * chunk_rows.max(1), chunk)),
            );
        }
        super::for_each_parallel(chunks, |(m0, width, k0, chunk)| {
            if m0 + width > m {
                chunk.fill(MaybeUninit::new(0.0));
            }
            fill(m0, width, k0, chunk);
        });
        let mut data = core::mem::ManuallyDrop::new(data);
        let (ptr, len, capacity) = (data.as_mut_ptr(), data.len(), data.capacity());
        // SAFETY: every chunk was written above, the lanes below `m` by `fill`, the lanes past
        // `m` zeroed; MaybeUninit<f32> has f32's layout, and the pointer, length and capacity are the vector's own.
        let data = unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, capacity) };
        PackedA {
            data,
            k,
            m,
            lda,
            panel,
        }
    }

    /// Row `kk` of the panel starting at `m0`.
    fn row(&self, m0: usize, kk: usize) -> *const f32 {
        let width = self.panel.min(self.lda - m0);
        self.data[m0 * self.k + kk * width..].as_ptr()
    }
}

/// The operands of one product.
pub(crate) struct Product<'a> {
    pub a: &'a PackedA,
    /// The broadcast operand, read at `cols[j] + offsets[k]`.
    pub src: &'a [f32],
    pub cols: &'a [usize],
    pub offsets: &'a [usize],
}

/// Where the product goes: `C[j][m]` to `dst[cols[j] + m · m_stride]`, each index once.
pub(crate) struct Scatter<'a> {
    pub cols: &'a [usize],
    pub m_stride: usize,
}

/// A convolution's result: written once, element by element, by the products' scatters (each
/// pass builds scatters that reach every element; see `forward`, `input_grad`,
/// `weight_grad`), so it is never zeroed first — for a 1×1 convolution with 64 input
/// channels, zeroing the output was as much memory traffic as computing it. A group's sums
/// are held in one too (`group_sums`).
pub(crate) struct Output(Vec<core::mem::MaybeUninit<f32>>);

impl Output {
    pub fn new(len: usize) -> Self {
        let mut data = Vec::with_capacity(len);
        // SAFETY: MaybeUninit needs no initialisation.
        unsafe { data.set_len(len) };
        Output(data)
    }

    fn as_mut_ptr(&mut self) -> *mut f32 {
        self.0.as_mut_ptr().cast::<f32>()
    }

    /// The result.
    ///
    /// # Safety
    /// Every element must have been written (by `compute`).
    pub unsafe fn assume_written(self) -> Vec<f32> {
        let mut data = core::mem::ManuallyDrop::new(self.0);
        let (ptr, len, capacity) = (data.as_mut_ptr(), data.len(), data.capacity());
        // SAFETY: MaybeUninit<f32> has f32's layout; initialised per the caller's contract.
        unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, capacity) }
    }
}

struct SharedDst(*mut f32);
// SAFETY: the groups write disjoint elements (the scatter is one-to-one, checked below).
unsafe impl Sync for SharedDst {}
unsafe impl Send for SharedDst {}

impl SharedDst {
    fn at(&self, index: usize) -> *mut f32 {
        self.0.wrapping_add(index)
    }
}

/// Computes the product into `dst`. Columns are split into groups of register tiles, the
/// groups run in parallel; every output is computed by one thread in the order above.
pub(crate) fn compute(isa: Isa, p: &Product, out: &Scatter, dst: &mut Output) {
    let (n, k, m) = (p.cols.len(), p.offsets.len(), p.a.m);
    if n == 0 || m == 0 {
        return;
    }
    assert_eq!(out.cols.len(), n, "conv_direct: one destination per column");
    assert!(
        p.a.k == k
            && p.a.lda % isa.lanes() == 0
            && p.a.panel == isa.panel()
            && p.a.data.len() == k * p.a.lda,
        "conv_direct: A is {} floats for k = {k} ({}), lda = {}",
        p.a.data.len(),
        p.a.k,
        p.a.lda,
    );
    let reach = |v: &[usize]| v.iter().copied().max().unwrap_or(0);
    assert!(
        k == 0 || reach(p.cols) + reach(p.offsets) < p.src.len(),
        "conv_direct: a broadcast reads past the source"
    );
    assert!(
        reach(out.cols) + (m - 1) * out.m_stride < dst.0.len(),
        "conv_direct: the scatter writes past the destination"
    );
    // Work items: a group of at most MAX_GROUP tiles (each pass over a group reads its slice
    // of A once) × a range of A's panels. As many groups per thread as the threads have work
    // for (171 tiles on 2 threads are 6 groups of 29, not 9 of 21: one thread doing 5 while
    // the other does 4); where there are few columns (a weight gradient of 27 or 64), the
    // panels are split too, so that both threads have work.
    let threads = rayon_threads();
    let tiles = n.div_ceil(NR);
    let per_thread = tiles.div_ceil(threads);
    let group = per_thread.div_ceil(per_thread.div_ceil(MAX_GROUP));
    let groups = tiles.div_ceil(group);
    let panels = p.a.lda.div_ceil(p.a.panel);
    let split = (1..=panels)
        .find(|s| panels % s == 0 && groups * s >= 4 * threads)
        .unwrap_or(panels);
    let panels_per_item = panels / split;
    let shared = SharedDst(dst.as_mut_ptr());
    let run = |item: usize| {
        let (g, part) = (item / split, item % split);
        let first = g * group * NR;
        let cols = &p.cols[first..n.min(first + group * NR)];
        let m0 = part * panels_per_item * p.a.panel;
        let m1 = p.a.lda.min(m0 + panels_per_item * p.a.panel);
        let sums = group_sums(isa, p, cols, m0..m1);
        // SAFETY: `compute` asserted that the scatter stays in `dst`; no other item writes
        // these elements (one destination per (column, m); items split the columns and m).
        unsafe {
            write_out(
                isa,
                &sums,
                m1 - m0,
                m0..m1.min(m),
                &out.cols[first..first + cols.len()],
                out.m_stride,
                &shared,
            )
        };
    };
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        (0..groups * split).into_par_iter().for_each(run);
    }
    #[cfg(not(feature = "rayon"))]
    (0..groups * split).for_each(run);
}

/// Writes a group's sums `[column][lds]` (rows `m_range`) to `dst[dst_cols[j] + m ·
/// m_stride]`. With `m_stride` 1 (a weight gradient by output channel) the sums are laid out
/// as `dst` is: one copy per column. Otherwise, columns whose destinations are evenly spaced
/// (output pixels of one row, or of one stride phase) are transposed by vector blocks into a
/// staging buffer of `lanes` rows, which go out one row of `dst` at a time, not `lanes` rows a
/// cache line each (rows 4 KiB apart in a 32×32 plane fall into one set of the L1 cache). The
/// rest, and the rows past whole vectors, channel by channel.
///
/// # Safety
/// Every destination index must be in bounds and written by no other thread.
unsafe fn write_out(
    isa: Isa,
    sums: &[f32],
    lds: usize,
    m_range: core::ops::Range<usize>,
    dst_cols: &[usize],
    m_stride: usize,
    dst: &SharedDst,
) {
    let rows = m_range.len();
    if m_stride == 1 {
        // `dst` is laid out as the sums are: a copy per column.
        for (j, &col) in dst_cols.iter().enumerate() {
            // SAFETY: `rows` consecutive destinations of column j, in bounds by the caller's
            // contract; `sums` holds `lds ≥ rows` floats per column.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    sums.as_ptr().add(j * lds),
                    dst.at(col + m_range.start),
                    rows,
                )
            };
        }
        return;
    }
    let lanes = isa.lanes();
    let whole = if lanes > 1 { rows / lanes * lanes } else { 0 };
    let mut staging = Vec::new();
    let mut j0 = 0;
    while j0 < dst_cols.len() {
        // The run of columns from j0 whose destinations are `step` apart.
        let step = dst_cols
            .get(j0 + 1)
            .map_or(1, |&next| next.wrapping_sub(dst_cols[j0]));
        let run = (1..dst_cols.len() - j0)
            .find(|&i| dst_cols[j0 + i] != dst_cols[j0].wrapping_add(i.wrapping_mul(step)))
            .unwrap_or(dst_cols.len() - j0);
        let vectors = if lanes > 1 { run / lanes * lanes } else { 0 };
        if vectors > 0 && whole > 0 {
            staging.resize(lanes * vectors, 0.0f32);
            for r0 in (0..whole).step_by(lanes) {
                for jb in (0..vectors).step_by(lanes) {
                    // SAFETY: `lanes` × `lanes` blocks inside `sums` (j0 + vectors ≤ columns,
                    // r0 + lanes ≤ lds) and inside `staging` (lanes rows of `vectors`).
                    unsafe {
                        kernel::transpose_block(
                            isa,
                            sums.as_ptr().add((j0 + jb) * lds + r0),
                            lds,
                            staging.as_mut_ptr().add(jb),
                            vectors,
                        )
                    };
                }
                for (r, row) in staging.chunks_exact(vectors).enumerate() {
                    let base = dst_cols[j0] + (m_range.start + r0 + r) * m_stride;
                    if step == 1 {
                        // SAFETY: `vectors` consecutive destinations of this row, in bounds by
                        // the caller's contract.
                        unsafe {
                            core::ptr::copy_nonoverlapping(row.as_ptr(), dst.at(base), vectors)
                        };
                    } else {
                        for (i, &value) in row.iter().enumerate() {
                            // SAFETY: the run's destinations, as above.
                            unsafe { *dst.at(base + i * step) = value };
                        }
                    }
                }
            }
        }
        for r in 0..rows {
            let columns = if r < whole {
                j0 + vectors..j0 + run
            } else {
                j0..j0 + run
            };
            for j in columns {
                // SAFETY: as above.
                unsafe {
                    *dst.at(dst_cols[j] + (m_range.start + r) * m_stride) = sums[j * lds + r]
                };
            }
        }
        j0 += run;
    }
}

pub(crate) fn rayon_threads() -> usize {
    #[cfg(feature = "rayon")]
    {
        rayon::current_num_threads()
    }
    #[cfg(not(feature = "rayon"))]
    {
        1
    }
}

/// `C[j][m0..m1]` for the given columns, `m1 − m0` floats per column (`m0`, `m1` on panel
/// boundaries, or `m1` the end of A).
fn group_sums(
    isa: Isa,
    p: &Product,
    cols: &[usize],
    rows_range: core::ops::Range<usize>,
) -> Vec<f32> {
    let k = p.offsets.len();
    let (first_row, lda) = (rows_range.start, rows_range.len());
    // Columns, rounded up to whole tiles.
    let padded_cols = cols.len().div_ceil(NR) * NR;
    if k == 0 {
        return vec![0.0f32; padded_cols * lda];
    }
    // Neither buffer is zeroed (that was as much memory traffic as a 64-channel forward pass's
    // output): every sum is stored by the first block before it is read, every parked sum is
    // parked before it is resumed.
    let mut sums = Output::new(padded_cols * lda);
    let panel = isa.panel();
    // The sums of the current panel between passes, per tile.
    let mut parked = Output::new(padded_cols * panel);
    // A short last tile repeats its last column; those sums are not read.
    let tiles: Vec<[usize; NR]> = cols
        .chunks(NR)
        .map(|c| core::array::from_fn(|j| c[j.min(c.len() - 1)]))
        .collect();
    for (block, (k0, kc)) in reduction_blocks(k).enumerate() {
        for m0 in (0..lda).step_by(panel) {
            let rows = panel.min(lda - m0);
            let a_row = |s0: usize| p.a.row(first_row + m0, s0);
            // Passes of PASS_BYTES of A each, so that they stay in L1 across the tiles.
            let pass = (PASS_BYTES / (rows * 4)).max(1);
            for s0 in (k0..k0 + kc).step_by(pass) {
                let steps = pass.min(k0 + kc - s0);
                let last = s0 + steps == k0 + kc;
                let mode = Mode {
                    resume: s0 > k0,
                    end: match (last, block) {
                        (false, _) => End::Park,
                        (true, 0) => End::Store,
                        (true, _) => End::Add,
                    },
                };
                for (t, tile) in tiles.iter().enumerate() {
                    let at = t * NR * lda + m0;
                    // SAFETY: `compute` checked the source reach and A's length; `sums` holds
                    // NR columns of `lda` floats per tile, `parked` of `panel`; `isa` came from
                    // `Isa::detect`.
                    unsafe {
                        kernel::tile(
                            isa,
                            rows,
                            steps,
                            a_row(s0),
                            rows,
                            p.src.as_ptr(),
                            tile,
                            p.offsets.as_ptr().add(s0),
                            sums.as_mut_ptr().add(at),
                            lda,
                            parked.as_mut_ptr().add(t * NR * panel),
                            panel,
                            mode,
                        );
                    }
                }
            }
        }
    }
    // SAFETY: the first block (k > 0) stored every tile's NR columns of every panel.
    unsafe { sums.assume_written() }
}
