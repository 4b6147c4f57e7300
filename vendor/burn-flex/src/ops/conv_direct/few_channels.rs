//! The input gradient of a stride-1 convolution onto few input channels (the 3-channel stem),
//! with vectors along the pixels.
//!
//! The direct product runs its vectors along the input channels: 3 of 16 lanes for an RGB
//! stem, 24 GFLOP/s (1.4× PyTorch's time). Here a register tile is [`SEGMENTS`] runs of
//! consecutive pixels of one input row (a vector each) × every input channel, and each step
//! `k = (o, ky, kx)` loads the output gradient the run reads at that tap (contiguous, from a
//! zero-padded copy of the image's planes) and broadcasts the weight of each channel. Each
//! output still adds its products one fused multiply-add after the other in `k` order, in the
//! blocks of [`product::reduction_blocks`], the block sums added in order: the order the
//! direct product promises, so the same bits (the order tests include the stem and two
//! geometries of this path). Pixels past the last whole vector of a row are summed one at a
//! time in the same order.

use alloc::vec::Vec;
use core::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

use super::{Geometry, Isa, gradient_padding, input_phases, overwritten, pad, product, tap_offsets};

/// The most input channels this path takes (a tile keeps `channels × SEGMENTS` sums in
/// registers).
pub(super) const MAX_CHANNELS: usize = 4;

/// Runs of pixels per register tile.
const SEGMENTS: usize = 6;

/// The widest vector, in f32 lanes (AVX-512): the size of a spare run's sums per channel.
const MAX_LANES: usize = 16;

/// Whether the input gradient of `g` runs here on `isa`: stride 1, at most [`MAX_CHANNELS`]
/// input channels, at least one row, rows at least one vector long, and a vector ISA.
pub(super) fn takes(isa: Isa, g: &Geometry) -> bool {
    isa != Isa::Scalar
        && g.stride == [1, 1]
        && (1..=MAX_CHANNELS).contains(&g.c_in)
        && g.input[0] > 0
        && g.input[1] >= isa.lanes()
}

/// `output_grad` `[batch, c_out, oh, ow]`, `weight` `[c_out, c_in, kh, kw]`; returns
/// `[batch, c_in, h, w]`. The caller checked [`takes`].
pub(super) fn input_grad(isa: Isa, output_grad: &[f32], weight: &[f32], g: &Geometry) -> Vec<f32> {
    let ([h, w], [oh, ow], [kh, kw]) = (g.input, g.output, g.kernel);
    // Stride 1: one phase, every tap reaches it; input pixel i takes output gradient i + e.
    let (rows, columns) = (input_phases(g, 0), input_phases(g, 1));
    let (taps_y, taps_x) = (&rows[0].0, &columns[0].0);
    // Zeros around the output gradient so that every tap of every pixel reads inside it.
    let (pad_h, pad_w) = (gradient_padding(&rows, oh), gradient_padding(&columns, ow));
    let (c_in, c_out) = (g.c_in, g.c_out);
    let k = c_out * taps_y.len() * taps_x.len();
    // A[(o, ty, tx)][c] = weight[o, c, ky, kx], `c_in` floats a step.
    let a: Vec<f32> = (0..c_out)
        .flat_map(|o| {
            taps_y.iter().flat_map(move |&(ky, _)| {
                taps_x.iter().flat_map(move |&(kx, _)| {
                    (0..c_in).map(move |c| weight[((o * c_in + c) * kh + ky) * kw + kx])
                })
            })
        })
        .collect();
    let lanes = isa.lanes();
    let whole = w / lanes * lanes;
    // (y, x0): the runs of whole vectors, row by row.
    let runs: Vec<(usize, usize)> = (0..h)
        .flat_map(|y| (0..whole).step_by(lanes).map(move |x0| (y, x0)))
        .collect();
    let image = c_out * oh * ow;
    let fill = |b: usize, dst: &mut [MaybeUninit<f32>]| {
        // This image's output gradient, padded (in the L2 cache: 296 KB for the stem).
        let gp = pad(&output_grad[b * image..][..image], 1, c_out, [oh, ow], pad_h, pad_w);
        // Step (o, ty, tx) of pixel (y, x) reads gp at (y, x) + offsets[k].
        let offsets = tap_offsets(c_out, taps_y, taps_x, [pad_h[0], pad_w[0]], &gp);
        for tile in runs.chunks(SEGMENTS) {
            let run: [(usize, usize); SEGMENTS] =
                core::array::from_fn(|s| tile[s.min(tile.len() - 1)]);
            let src = run.map(|(y, x0)| y * gp.row + x0);
            let mut out = run.map(|(y, x0)| y * w + x0);
            // A short tile repeats its last run; its sums go to a scratch tile instead.
            let mut spare = [MaybeUninit::new(0.0f32); MAX_CHANNELS * MAX_LANES];
            let spare_at = dst.len();
            for s in tile.len()..SEGMENTS {
                out[s] = spare_at;
            }
            for (block, (k0, kc)) in product::reduction_blocks(k).enumerate() {
                // SAFETY: `compute` reads `src[s] + offsets[k] + lanes` inside gp (its padding
                // covers every tap of every pixel), `a[k · c_in + c]` for k < k0 + kc, and
                // writes `out[s] + c · h · w + lanes` inside `dst` (or `spare`); `isa` is a
                // vector ISA of this CPU (`takes`).
                unsafe {
                    tile_sums(
                        isa,
                        c_in,
                        kc,
                        a.as_ptr().add(k0 * c_in),
                        gp.data.as_ptr(),
                        &src,
                        offsets.as_ptr().add(k0),
                        dst.as_mut_ptr().cast::<f32>(),
                        spare.as_mut_ptr().cast::<f32>(),
                        spare_at,
                        &out,
                        h * w,
                        block > 0,
                    )
                };
            }
        }
        // The pixels past the last whole vector, one at a time in the same order.
        for c in 0..c_in {
            for y in 0..h {
                for x in whole..w {
                    let mut total = 0.0f32;
                    for (block, (k0, kc)) in product::reduction_blocks(k).enumerate() {
                        let mut acc = 0.0f32;
                        for kk in k0..k0 + kc {
                            let v = gp.data[y * gp.row + x + offsets[kk]];
                            acc = a[kk * c_in + c].mul_add(v, acc);
                        }
                        total = if block == 0 { acc } else { total + acc };
                    }
                    dst[(c * h + y) * w + x] = MaybeUninit::new(total);
                }
            }
        }
    };
    // SAFETY: per image, the runs of whole vectors and the pixels past them cover every pixel
    // of every row, for every channel.
    unsafe { overwritten(g.batch * c_in * h * w, c_in * h * w, fill) }
}

/// One tile's block of `kc` steps: for run `s` and channel `c`, the sum of `a[k·channels + c]
/// · src[src_at[s] + offsets[k] ..][..lanes]` in `k` order from zero, stored to (or, with
/// `add`, added to) `dst[out[s] + c · plane ..][..lanes]`, where an `out[s]` equal to
/// `spare_at` means `spare[c · MAX_LANES ..]` instead.
///
/// # Safety
/// Every read and write above must be in bounds and `isa` a vector ISA of this CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_sums(
    isa: Isa,
    channels: usize,
    kc: usize,
    a: *const f32,
    src: *const f32,
    src_at: &[usize; SEGMENTS],
    offsets: *const usize,
    dst: *mut f32,
    spare: *mut f32,
    spare_at: usize,
    out: &[usize; SEGMENTS],
    plane: usize,
    add: bool,
) {
    let b = src_at.map(|at| src.wrapping_add(at));
    let d: [[*mut f32; MAX_CHANNELS]; SEGMENTS] = core::array::from_fn(|s| {
        core::array::from_fn(|c| {
            if out[s] == spare_at {
                spare.wrapping_add(c * MAX_LANES)
            } else {
                dst.wrapping_add(out[s] + c * plane)
            }
        })
    });
    macro_rules! run {
        ($kernel:ident) => {
            match channels {
                1 => $kernel::<1>(kc, a, &b, offsets, &d, add),
                2 => $kernel::<2>(kc, a, &b, offsets, &d, add),
                3 => $kernel::<3>(kc, a, &b, offsets, &d, add),
                _ => $kernel::<4>(kc, a, &b, offsets, &d, add),
            }
        };
    }
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => run!(avx512),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => run!(avx2),
            _ => unreachable!("few_channels: no vector kernel on {isa:?}"),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512<const C: usize>(
    kc: usize,
    a: *const f32,
    b: &[*const f32; SEGMENTS],
    offsets: *const usize,
    d: &[[*mut f32; MAX_CHANNELS]; SEGMENTS],
    add: bool,
) {
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); C]; SEGMENTS];
        for kk in 0..kc {
            let offset = *offsets.add(kk);
            let ak = a.add(kk * C);
            let av: [__m512; C] = core::array::from_fn(|c| _mm512_set1_ps(*ak.add(c)));
            for s in 0..SEGMENTS {
                let v = _mm512_loadu_ps(b[s].add(offset));
                for c in 0..C {
                    acc[s][c] = _mm512_fmadd_ps(av[c], v, acc[s][c]);
                }
            }
        }
        for s in 0..SEGMENTS {
            for c in 0..C {
                let p = d[s][c];
                let sum = if add {
                    _mm512_add_ps(_mm512_loadu_ps(p), acc[s][c])
                } else {
                    acc[s][c]
                };
                _mm512_storeu_ps(p, sum);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<const C: usize>(
    kc: usize,
    a: *const f32,
    b: &[*const f32; SEGMENTS],
    offsets: *const usize,
    d: &[[*mut f32; MAX_CHANNELS]; SEGMENTS],
    add: bool,
) {
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); C]; SEGMENTS];
        for kk in 0..kc {
            let offset = *offsets.add(kk);
            let ak = a.add(kk * C);
            let av: [__m256; C] = core::array::from_fn(|c| _mm256_set1_ps(*ak.add(c)));
            for s in 0..SEGMENTS {
                let v = _mm256_loadu_ps(b[s].add(offset));
                for c in 0..C {
                    acc[s][c] = _mm256_fmadd_ps(av[c], v, acc[s][c]);
                }
            }
        }
        for s in 0..SEGMENTS {
            for c in 0..C {
                let p = d[s][c];
                let sum = if add {
                    _mm256_add_ps(_mm256_loadu_ps(p), acc[s][c])
                } else {
                    acc[s][c]
                };
                _mm256_storeu_ps(p, sum);
            }
        }
    }
}
