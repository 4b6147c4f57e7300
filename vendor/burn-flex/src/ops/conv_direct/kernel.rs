//! The micro-kernels: one register tile of `C[j][m] = Σ_k A[k][m] · src[col_j + row_k]`,
//! vectors along `m` (output channels, or input channels for the input gradient), one
//! broadcast per column `j` and step `k`.
//!
//! Every output has its own accumulator and adds its products one fused multiply-add after
//! the other in `k` order, starting from zero; the number of lanes only decides how many
//! outputs run side by side. So the AVX-512, AVX2 and scalar kernels give the same bits
//! (tested), which is what keeps flex's numbers independent of the CPU.

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

/// Columns per register tile: six broadcasts per step against 1–4 vectors of `A`.
pub(crate) const NR: usize = 6;

/// The instruction set a product runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// 16 f32 lanes, up to 4 vectors along `m` (24 accumulators).
    Avx512,
    /// 8 f32 lanes, up to 2 vectors along `m` (12 accumulators).
    Avx2,
    /// One output at a time with `f32::mul_add`: the reference the others are tested
    /// against, and the path of x86-64 CPUs without AVX2 + FMA.
    Scalar,
}

impl Isa {
    /// The widest instruction set this CPU has, within what `LOSSBENCH_CPU_KERNELS` allows
    /// (`x86-64-v3` keeps an AVX-512 CPU on AVX2, as gemm's kernels do: the tests' switch).
    pub(crate) fn detect() -> Isa {
        static DETECTED: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let v3_only =
                std::env::var_os("LOSSBENCH_CPU_KERNELS").is_some_and(|level| level == "x86-64-v3");
            #[cfg(target_arch = "x86_64")]
            {
                if !v3_only && std::is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    return Isa::Avx2;
                }
            }
            let _ = v3_only;
            Isa::Scalar
        })
    }

    /// f32 lanes of one vector.
    pub(crate) fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
            Isa::Scalar => 1,
        }
    }

    /// Rows of `m` one register tile covers at most.
    pub(crate) fn panel(self) -> usize {
        match self {
            Isa::Avx512 => 64,
            Isa::Avx2 => 16,
            Isa::Scalar => 16,
        }
    }
}

/// One register tile over `kc` steps.
///
/// - `a`: `A[k][m0..m0 + rows]`, `lda` floats from one `k` to the next (`rows` a multiple of
///   the ISA's lanes, at most its panel);
/// - `src`, `cols`, `offsets`: the broadcast operand of column `j` at step `k` is
///   `src[cols[j] + offsets[k]]`;
/// - `out`: `C[j][m0..]`, `ldo` floats from one column to the next; `partial`, `ldp` floats
///   per column, holds sums parked between passes (see [`Mode`]).
///
/// # Safety
/// Every `src` index above, `a[k·lda + rows − 1]` for `k < kc`, `out[(NR − 1)·ldo + rows −
/// 1]` and `partial[(NR − 1)·ldp + rows − 1]` must be in bounds, and `isa` must be supported by this CPU.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn tile(
    isa: Isa,
    rows: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    src: *const f32,
    cols: &[usize; NR],
    offsets: *const usize,
    out: *mut f32,
    ldo: usize,
    partial: *mut f32,
    ldp: usize,
    mode: Mode,
) {
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => match rows / 16 {
                4 => avx512::<4>(kc, a, lda, src, cols, offsets, out, ldo, partial, ldp, mode),
                3 => avx512::<3>(kc, a, lda, src, cols, offsets, out, ldo, partial, ldp, mode),
                2 => avx512::<2>(kc, a, lda, src, cols, offsets, out, ldo, partial, ldp, mode),
                _ => avx512::<1>(kc, a, lda, src, cols, offsets, out, ldo, partial, ldp, mode),
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => match rows / 8 {
                2 => avx2::<2>(kc, a, lda, src, cols, offsets, out, ldo, partial, ldp, mode),
                _ => avx2::<1>(kc, a, lda, src, cols, offsets, out, ldo, partial, ldp, mode),
            },
            _ => scalar(
                rows, kc, a, lda, src, cols, offsets, out, ldo, partial, ldp, mode,
            ),
        }
    }
}

/// Where a tile's accumulators start and where they go. A block of the reduction may be
/// run in several passes (so that its slice of `A` stays in the L1 cache across tiles): the
/// accumulators are then parked in `partial` and taken up again, which changes nothing in
/// the order of the operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mode {
    /// Start from the sums parked in `partial` (else from zero).
    pub resume: bool,
    pub end: End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The block goes on in a later pass: park the sums in `partial`.
    Park,
    /// The first block of the reduction is complete: `C = Σ`.
    Store,
    /// A later block is complete: `C = C + Σ`, the block sums added in order (as gemm does).
    Add,
}

#[allow(clippy::too_many_arguments)]
unsafe fn scalar(
    rows: usize,
    kc: usize,
    a: *const f32,
    lda: usize,
    src: *const f32,
    cols: &[usize; NR],
    offsets: *const usize,
    out: *mut f32,
    ldo: usize,
    partial: *mut f32,
    ldp: usize,
    mode: Mode,
) {
    unsafe {
        for (j, &col) in cols.iter().enumerate() {
            for m in 0..rows {
                let parked = partial.add(j * ldp + m);
                let mut acc = if mode.resume { *parked } else { 0.0 };
                for k in 0..kc {
                    let b = *src.add(col + *offsets.add(k));
                    acc = (*a.add(k * lda + m)).mul_add(b, acc);
                }
                let c = out.add(j * ldo + m);
                match mode.end {
                    End::Park => *parked = acc,
                    End::Store => *c = acc,
                    End::Add => *c += acc,
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx512<const MV: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    src: *const f32,
    cols: &[usize; NR],
    offsets: *const usize,
    out: *mut f32,
    ldo: usize,
    partial: *mut f32,
    ldp: usize,
    mode: Mode,
) {
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); MV]; NR];
        if mode.resume {
            for (j, acc) in acc.iter_mut().enumerate() {
                for (v, sum) in acc.iter_mut().enumerate() {
                    *sum = _mm512_loadu_ps(partial.add(j * ldp + 16 * v));
                }
            }
        }
        let b = cols.map(|c| src.add(c));
        for k in 0..kc {
            let offset = *offsets.add(k);
            let ak = a.add(k * lda);
            let av: [__m512; MV] = core::array::from_fn(|v| _mm512_loadu_ps(ak.add(16 * v)));
            for j in 0..NR {
                let bj = _mm512_set1_ps(*b[j].add(offset));
                for v in 0..MV {
                    acc[j][v] = _mm512_fmadd_ps(av[v], bj, acc[j][v]);
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            for (v, &sum) in acc.iter().enumerate() {
                let c = out.add(j * ldo + 16 * v);
                match mode.end {
                    End::Park => _mm512_storeu_ps(partial.add(j * ldp + 16 * v), sum),
                    End::Store => _mm512_storeu_ps(c, sum),
                    End::Add => _mm512_storeu_ps(c, _mm512_add_ps(_mm512_loadu_ps(c), sum)),
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn avx2<const MV: usize>(
    kc: usize,
    a: *const f32,
    lda: usize,
    src: *const f32,
    cols: &[usize; NR],
    offsets: *const usize,
    out: *mut f32,
    ldo: usize,
    partial: *mut f32,
    ldp: usize,
    mode: Mode,
) {
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); MV]; NR];
        if mode.resume {
            for (j, acc) in acc.iter_mut().enumerate() {
                for (v, sum) in acc.iter_mut().enumerate() {
                    *sum = _mm256_loadu_ps(partial.add(j * ldp + 8 * v));
                }
            }
        }
        let b = cols.map(|c| src.add(c));
        for k in 0..kc {
            let offset = *offsets.add(k);
            let ak = a.add(k * lda);
            let av: [__m256; MV] = core::array::from_fn(|v| _mm256_loadu_ps(ak.add(8 * v)));
            for j in 0..NR {
                let bj = _mm256_set1_ps(*b[j].add(offset));
                for v in 0..MV {
                    acc[j][v] = _mm256_fmadd_ps(av[v], bj, acc[j][v]);
                }
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            for (v, &sum) in acc.iter().enumerate() {
                let c = out.add(j * ldo + 8 * v);
                match mode.end {
                    End::Park => _mm256_storeu_ps(partial.add(j * ldp + 8 * v), sum),
                    End::Store => _mm256_storeu_ps(c, sum),
                    End::Add => _mm256_storeu_ps(c, _mm256_add_ps(_mm256_loadu_ps(c), sum)),
                }
            }
        }
    }
}

/// Transposes one `lanes × lanes` block (`isa.lanes()`, 16 or 8):
/// `dst[r·ldd + i] = src[i·lds + r]`. The sums of a group are `[column][m]`; a convolution's
/// output is `[m][column]`, so this is how they are written out.
///
/// # Safety
/// Both blocks must be in bounds, and `isa` must be AVX-512 or AVX2 and supported.
pub(crate) unsafe fn transpose_block(
    isa: Isa,
    src: *const f32,
    lds: usize,
    dst: *mut f32,
    ldd: usize,
) {
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => transpose16(src, lds, dst, ldd),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => transpose8(src, lds, dst, ldd),
            _ => unreachable!("transpose_block: no vector block on {isa:?}"),
        }
    }
}

/// 16 × 16: lane-wise unpacks of rows, then of pairs, leave every 128-bit lane holding a
/// 4 × 4 corner of the result; two rounds of 128-bit shuffles put the corners in place.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    unsafe {
        let r: [__m512; 16] = core::array::from_fn(|i| _mm512_loadu_ps(src.add(i * lds)));
        let t: [__m512; 16] = core::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        // u[4q + c], lane L: column 4L + c of rows 4q..4q + 4.
        let u: [__m512; 16] = core::array::from_fn(|i| {
            let (q, c) = (i / 4, i % 4);
            let a = _mm512_castps_pd(t[4 * q + c / 2]);
            let b = _mm512_castps_pd(t[4 * q + 2 + c / 2]);
            _mm512_castpd_ps(if c % 2 == 0 {
                _mm512_unpacklo_pd(a, b)
            } else {
                _mm512_unpackhi_pd(a, b)
            })
        });
        for c in 0..4 {
            let x0 = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
            let x1 = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
            let y0 = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
            let y1 = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
            _mm512_storeu_ps(dst.add(c * ldd), _mm512_shuffle_f32x4::<0x88>(x0, y0));
            _mm512_storeu_ps(dst.add((4 + c) * ldd), _mm512_shuffle_f32x4::<0xDD>(x0, y0));
            _mm512_storeu_ps(dst.add((8 + c) * ldd), _mm512_shuffle_f32x4::<0x88>(x1, y1));
            _mm512_storeu_ps(
                dst.add((12 + c) * ldd),
                _mm512_shuffle_f32x4::<0xDD>(x1, y1),
            );
        }
    }
}

/// 8 × 8: the same unpacks, then one 128-bit permute.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    unsafe {
        let r: [__m256; 8] = core::array::from_fn(|i| _mm256_loadu_ps(src.add(i * lds)));
        let t: [__m256; 8] = core::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        let u: [__m256; 8] = core::array::from_fn(|i| {
            let (q, c) = (i / 4, i % 4);
            let a = _mm256_castps_pd(t[4 * q + c / 2]);
            let b = _mm256_castps_pd(t[4 * q + 2 + c / 2]);
            _mm256_castpd_ps(if c % 2 == 0 {
                _mm256_unpacklo_pd(a, b)
            } else {
                _mm256_unpackhi_pd(a, b)
            })
        });
        for c in 0..4 {
            _mm256_storeu_ps(
                dst.add(c * ldd),
                _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]),
            );
            _mm256_storeu_ps(
                dst.add((4 + c) * ldd),
                _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]),
            );
        }
    }
}
