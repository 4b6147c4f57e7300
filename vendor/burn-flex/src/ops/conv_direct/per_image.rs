//! Passes computed as one gemm product per image, with vectors along the pixels: the output
//! (or the input gradient) is written plane by plane where it lies, and the planes of the
//! input are read contiguously. Two kinds of convolution take them:
//!
//! - **pointwise** (1×1, stride 1, no padding, planes of at least [`POINTWISE_PLANE`]
//!   pixels): the image's planes are the product's operand as they lie;
//! - **short** (a reduction `c_in · kh · kw` of at most [`SHORT_REDUCTION`] steps on planes of
//!   at least [`POINTWISE_PLANE`] pixels: the 3-channel stem): the operand is the image's
//!   column matrix `[(c, ky, kx)][pixel]`, 27 × 1,024 floats (110 KB, in the L2 cache) for
//!   the CIFAR stem. The direct product runs its vectors along the output channels, so its
//!   sums are transposed into the planes afterwards; with 27 steps per output that transpose
//!   and the copy behind it cost more than the sums (perf on the stem's forward pass: 26 % in
//!   the micro-kernel, 32 % in the transpose and copies).
//!
//! gemm sums each output over `k` in its order — `⌈k / 512⌉` equal blocks, one fused
//! multiply-add after the other (vendor/gemm-common/LOSSBENCH.md) — which is the order the
//! direct product follows: the same bits (tested).

use alloc::vec;
use alloc::vec::Vec;

use core::mem::MaybeUninit;

use super::{Geometry, built, overwritten, product};

/// The smallest plane these paths take: a product per image is `plane` columns wide, and
/// gemm on 16 (4×4) or 64 (8×8) columns was up to 4.9× slower than the direct product
/// (ResNet-50's last stages), on 256 (16×16) and 1024 (32×32) up to 2.2× faster.
pub(super) const POINTWISE_PLANE: usize = 256;

/// The longest reduction of a short convolution (27 for a 3-channel 3×3 stem).
pub(super) const SHORT_REDUCTION: usize = 32;

/// Where image `b`'s `[k][plane]` operand of a per-image product comes from.
pub(super) enum Images<'a> {
    /// The image's planes as they lie (`k` = channels): pointwise convolutions.
    Planes(&'a [f32]),
    /// The image's column matrix, built per image (`k` = `(c, ky, kx)`): short convolutions.
    Columns(&'a [f32], &'a Geometry),
}

impl Images<'_> {
    /// Image `b`'s operand, `k` rows of `plane` floats, and the floats from one row to the
    /// next (built in `scratch` where needed).
    fn image<'s>(
        &'s self,
        b: usize,
        k: usize,
        plane: usize,
        scratch: &'s mut Vec<f32>,
    ) -> (&'s [f32], usize) {
        match self {
            Images::Planes(data) => (&data[b * k * plane..][..k * plane], plane),
            Images::Columns(x, g) => {
                let image = g.c_in * g.input[0] * g.input[1];
                // Rows an odd number of cache lines apart: 1,024-pixel rows (4 KiB) put the
                // rows gemm reads side by side into one set of the L1 cache.
                let row = super::skewed(plane);
                scratch.resize(k * row, 0.0);
                columns(&x[b * image..][..image], g, scratch, row);
                (scratch, row)
            }
        }
    }
}

/// The column matrix of one image: row `(c, ky, kx)` holds, for every output pixel, the
/// input value its tap reads (zero in the padding).
fn columns(x: &[f32], g: &Geometry, cols: &mut [f32], row_stride: usize) {
    let ([h, w], [oh, ow]) = (g.input, g.output);
    let ([kh, kw], [sh, sw], [dh, dw], [ph, pw]) = (g.kernel, g.stride, g.dilation, g.padding);
    let taps = (0..g.c_in).flat_map(|c| (0..kh).flat_map(move |ky| (0..kw).map(move |kx| (c, ky, kx))));
    for ((c, ky, kx), row) in taps.zip(cols.chunks_mut(row_stride.max(1))) {
        let row = &mut row[..oh * ow];
        let plane = &x[c * h * w..][..h * w];
        // The output columns `first..end` read inside the image: input column
        // `ox·sw + kx·dw − pw` in `0..w`.
        let first = pw.saturating_sub(kx * dw).div_ceil(sw).min(ow);
        let end = (w + pw).saturating_sub(kx * dw).div_ceil(sw).clamp(first, ow);
        for (oy, out) in row.chunks_exact_mut(ow.max(1)).enumerate() {
            let iy = (oy * sh + ky * dh).checked_sub(ph).filter(|&iy| iy < h);
            let Some(iy) = iy else {
                out.fill(0.0);
                continue;
            };
            out[..first].fill(0.0);
            out[end..].fill(0.0);
            if first == end {
                continue;
            }
            let start = (first * sw + kx * dw - pw) + iy * w;
            if sw == 1 {
                out[first..end].copy_from_slice(&plane[start..start + end - first]);
            } else {
                let line = plane[start..].iter().step_by(sw);
                for (value, &input) in out[first..end].iter_mut().zip(line) {
                    *value = input;
                }
            }
        }
    }
}

/// Per image, `dst[m][p] = Σ_k A[m][k] · src[k][p]` over `plane` pixels: `A` the `[c_out, k]`
/// weights (`transposed`: `A[m][k] = weight[k][m]`, the pointwise input gradient), `src` the
/// image's operand. One image per thread, gemm itself single-threaded.
pub(super) fn product(
    images: &Images,
    weight: &[f32],
    batch: usize,
    m: usize,
    k: usize,
    transposed: bool,
    plane: usize,
) -> Vec<f32> {
    let (a_row, a_col) = if transposed { (1, m) } else { (k, 1) };
    let fill = |b: usize, dst: &mut [MaybeUninit<f32>]| {
        if dst.is_empty() || k == 0 {
            dst.fill(MaybeUninit::new(0.0));
            return;
        }
        let mut scratch = Vec::new();
        let (src, ld) = images.image(b, k, plane, &mut scratch);
        // SAFETY: dst is m × plane, A m × k (strides a_row, a_col within `weight`), src k ×
        // plane (rows `ld` apart), all within their slices; gemm writes every element of dst
        // without reading it (no accumulation).
        unsafe {
            crate::ops::matmul::gemm_call(
                m,
                plane,
                k,
                dst.as_mut_ptr().cast::<f32>(),
                1,
                plane as isize,
                weight.as_ptr(),
                a_col as isize,
                a_row as isize,
                src.as_ptr(),
                1,
                ld as isize,
                gemm::Parallelism::None,
            );
        }
    };
    // SAFETY: `fill` writes every element of its image's output, by gemm or as zeros.
    unsafe { overwritten(batch * m * plane, m * plane, fill) }
}

/// The weight gradient on planes of whole 512-blocks of the reduction (32×32 and larger):
/// `dw[o][k] = Σ_b Σ_p dy[b][o][p] · src_b[k][p]` as one gemm product per image, each added
/// to the sum of the images before it. The reduction over all `(b, p)` is then cut at the
/// same 512-pixel blocks as the direct product's (each image holds whole blocks), and gemm
/// adds each block to what `dw` holds in order: the same bits. The threads split the output
/// channels; each runs through the images in order.
pub(super) fn weight_grad(
    images: &Images,
    output_grad: &[f32],
    batch: usize,
    c_out: usize,
    k: usize,
    plane: usize,
) -> Vec<f32> {
    let rows = c_out.div_ceil(product::rayon_threads()).max(1);
    built(c_out * k, rows * k, |part, dst| {
        let (o0, m) = (part * rows, dst.len() / k.max(1));
        if m == 0 || k == 0 {
            return;
        }
        let mut scratch = vec![];
        for b in 0..batch {
            let dy = &output_grad[(b * c_out + o0) * plane..][..m * plane];
            let (src, ld) = images.image(b, k, plane, &mut scratch);
            // SAFETY: dst is m × k (row-major), lhs the m × plane rows of dy, rhs src read as
            // plane × k (row stride 1, column stride ld); all within their slices.
            unsafe {
                gemm::gemm(
                    m,
                    k,
                    plane,
                    dst.as_mut_ptr(),
                    1,
                    k as isize,
                    b > 0,
                    dy.as_ptr(),
                    1,
                    plane as isize,
                    src.as_ptr(),
                    ld as isize,
                    1,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
    })
}
