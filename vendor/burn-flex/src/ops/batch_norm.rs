//! Batch normalisation in f32, fused (lossbench patch, see LOSSBENCH.md): burn's default
//! `batch_norm_train` and its backward are a dozen tensor operations, each a pass over the
//! activations, several of them permuted copies (`swap_dims` + `reshape` to reduce over all
//! but the channel axis). Here each is two passes per channel: the statistics, then the
//! element-wise result.
//!
//! The sums (mean, variance, and the two gradient sums) are accumulated in f64 over the
//! channel's `batch × spatial` values in index order, in [`PARTIALS`] interleaved partial sums
//! (element `i` of a sample's plane into partial `i mod PARTIALS`, samples in order) that are
//! then added in a fixed order. No vector width or thread count enters it (channels are split
//! between threads, a channel never), so the same inputs give the same bits on every x86-64
//! CPU and thread count, and more exact ones than f32 sums. The element-wise steps are a
//! subtraction and fused multiply-adds, each exactly rounded whatever the vector width.

use alloc::vec::Vec;
use core::mem::MaybeUninit;

use super::conv_direct::{Isa, overwritten};

/// Independent partial sums per channel: enough to keep the adds of one channel off a single
/// dependency chain.
const PARTIALS: usize = 8;

/// `Σ f(u_i, v_i)` over one channel's values, `i` in `0..batch·spatial` in sample-then-plane
/// order, in f64, in the fixed order described above. `planes(b)` is the channel's plane in
/// sample `b` of the two operands (the same plane twice for a sum over one of them).
fn channel_sum<'a>(
    batch: usize,
    planes: impl Fn(usize) -> (&'a [f32], &'a [f32]),
    f: impl Fn(f32, f32) -> f64,
) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn with_avx512<'a>(
            batch: usize,
            planes: impl Fn(usize) -> (&'a [f32], &'a [f32]),
            f: impl Fn(f32, f32) -> f64,
        ) -> f64 {
            sum_in_order(batch, planes, f)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn with_avx2<'a>(
            batch: usize,
            planes: impl Fn(usize) -> (&'a [f32], &'a [f32]),
            f: impl Fn(f32, f32) -> f64,
        ) -> f64 {
            sum_in_order(batch, planes, f)
        }
        match Isa::detect() {
            // SAFETY: the CPU has the instruction set (detected).
            Isa::Avx512 => return unsafe { with_avx512(batch, planes, f) },
            // SAFETY: as above.
            Isa::Avx2 => return unsafe { with_avx2(batch, planes, f) },
            Isa::Scalar => {}
        }
    }
    sum_in_order(batch, planes, f)
}

/// [`channel_sum`]'s loop, inlined into the caller so that it takes on its instruction set:
/// each vector lane is one partial, so the width changes no sum (four f64 lanes with AVX2
/// instead of SSE2's two took the batch norm sums from 6.4 % to 3.6 % of a ResNet-18 step
/// on the Xeon of BENCHMARKS.md, in perf profiles; AVX-512 holds all eight).
#[inline(always)]
fn sum_in_order<'a>(
    batch: usize,
    planes: impl Fn(usize) -> (&'a [f32], &'a [f32]),
    f: impl Fn(f32, f32) -> f64,
) -> f64 {
    let mut partial = [0.0f64; PARTIALS];
    for b in 0..batch {
        let (u, v) = planes(b);
        assert_eq!(u.len(), v.len(), "batch_norm: planes of different sizes");
        let (mut us, mut vs) = (u.chunks_exact(PARTIALS), v.chunks_exact(PARTIALS));
        // Element i of the plane into partial i mod PARTIALS.
        for (cu, cv) in (&mut us).zip(&mut vs) {
            for j in 0..PARTIALS {
                partial[j] += f(cu[j], cv[j]);
            }
        }
        for ((&x, &y), p) in us.remainder().iter().zip(vs.remainder()).zip(&mut partial) {
            *p += f(x, y);
        }
    }
    // Pairwise, in a fixed tree: ((0+1)+(2+3))+((4+5)+(6+7)).
    let [p0, p1, p2, p3, p4, p5, p6, p7] = partial;
    ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7))
}

/// `y = (x − mean) · scale + shift` over one plane (the element-wise pass of the forward
/// passes).
fn normalize(y: &mut [MaybeUninit<f32>], x: &[f32], [mean, scale, shift]: [f32; 3]) {
    #[inline(always)]
    fn plane(y: &mut [MaybeUninit<f32>], x: &[f32], [mean, scale, shift]: [f32; 3]) {
        for (y, &v) in y.iter_mut().zip(x) {
            y.write((v - mean).mul_add(scale, shift));
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn with_fma(y: &mut [MaybeUninit<f32>], x: &[f32], c: [f32; 3]) {
            plane(y, x, c)
        }
        if Isa::detect() != Isa::Scalar {
            // SAFETY: the CPU has AVX2 and FMA (detected).
            return unsafe { with_fma(y, x, [mean, scale, shift]) };
        }
    }
    plane(y, x, [mean, scale, shift])
}

/// `dx = scale · ((dy − mean_grad) − (x − mean) · slope)` over one plane (the element-wise
/// pass of the backward pass).
fn input_grad(
    dx: &mut [MaybeUninit<f32>],
    dy: &[f32],
    x: &[f32],
    [scale, mean_grad, slope, mean]: [f32; 4],
) {
    #[inline(always)]
    fn plane(dx: &mut [MaybeUninit<f32>], dy: &[f32], x: &[f32], c: [f32; 4]) {
        let [scale, mean_grad, slope, mean] = c;
        for ((out, &g), &v) in dx.iter_mut().zip(dy).zip(x) {
            out.write(scale * (-(v - mean)).mul_add(slope, g - mean_grad));
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn with_fma(dx: &mut [MaybeUninit<f32>], dy: &[f32], x: &[f32], c: [f32; 4]) {
            plane(dx, dy, x, c)
        }
        if Isa::detect() != Isa::Scalar {
            // SAFETY: the CPU has AVX2 and FMA (detected).
            return unsafe { with_fma(dx, dy, x, [scale, mean_grad, slope, mean]) };
        }
    }
    plane(dx, dy, x, [scale, mean_grad, slope, mean])
}

/// `[batch, channels, spatial]` data as planes.
#[derive(Clone, Copy)]
struct Planes<'a> {
    data: &'a [f32],
    channels: usize,
    spatial: usize,
}

impl<'a> Planes<'a> {
    fn plane(&self, b: usize, c: usize) -> &'a [f32] {
        &self.data[(b * self.channels + c) * self.spatial..][..self.spatial]
    }
}

/// The element-wise pass: `write(b, c, plane)` fills the output plane of sample `b`, channel
/// `c` (every element of it); in parallel over samples × channels. The output is never
/// zeroed first (zeroing it was a tenth of the pass).
fn per_plane(
    len: usize,
    spatial: usize,
    channels: usize,
    write: impl Fn(usize, usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    assert!(
        spatial == 0 || len.is_multiple_of(spatial),
        "batch_norm: {len} values are not whole planes of {spatial}"
    );
    if spatial == 0 {
        return Vec::new();
    }
    let fill = |i: usize, plane: &mut [MaybeUninit<f32>]| write(i / channels, i % channels, plane);
    // SAFETY: `len` is whole planes (asserted), and `write` fills every element of each.
    unsafe { overwritten(len, spatial, fill) }
}

/// `f(c)` for every channel, in parallel.
fn per_channel<T: Send>(channels: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        (0..channels).into_par_iter().map(f).collect()
    }
    #[cfg(not(feature = "rayon"))]
    (0..channels).map(f).collect()
}

/// The forward pass of training: `x` `[batch, channels, spatial]` (contiguous), `gamma`,
/// `beta` `[channels]`. Returns the output and the batch's mean and biased variance.
pub(crate) fn train_forward(
    x: &[f32],
    [batch, channels, spatial]: [usize; 3],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let planes = Planes {
        data: x,
        channels,
        spatial,
    };
    let n = (batch * spatial) as f64;
    // Mean, then the variance about it (two passes: no cancellation).
    let stats: Vec<(f64, f64)> = per_channel(channels, |c| {
        let plane = |b| (planes.plane(b, c), planes.plane(b, c));
        let mean = channel_sum(batch, plane, |v, _| f64::from(v)) / n;
        let variance = channel_sum(batch, plane, |v, _| {
            let d = f64::from(v) - mean;
            d * d
        }) / n;
        (mean, variance)
    });
    // y = (x − mean) · scale + β, scale = γ / √(var + ε): centred first, so a mean much
    // larger than the spread costs no digits.
    let affine: Vec<[f32; 3]> = stats
        .iter()
        .zip(gamma.iter().zip(beta))
        .map(|(&(mean, variance), (&g, &b))| {
            [
                mean as f32,
                (f64::from(g) / (variance + epsilon).sqrt()) as f32,
                b,
            ]
        })
        .collect();
    let out = per_plane(x.len(), spatial, channels, |b, c, dst| {
        normalize(dst, planes.plane(b, c), affine[c]);
    });
    let mean = stats.iter().map(|s| s.0 as f32).collect();
    let variance = stats.iter().map(|s| s.1 as f32).collect();
    (out, mean, variance)
}

/// The backward pass: `x`, `output_grad` `[batch, channels, spatial]` (contiguous), `gamma`,
/// and the `mean`, `variance` the forward pass returned. Returns the gradients of `x`, `gamma`
/// and `beta`:
/// `x̂ = (x − mean) / √(var + ε)`, `dβ = Σ dy`, `dγ = Σ dy · x̂`,
/// `dx = γ / √(var + ε) · (dy − dβ / n − x̂ · dγ / n)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_backward(
    x: &[f32],
    output_grad: &[f32],
    [batch, channels, spatial]: [usize; 3],
    gamma: &[f32],
    mean: &[f32],
    variance: &[f32],
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let xs = Planes {
        data: x,
        channels,
        spatial,
    };
    let gs = Planes {
        data: output_grad,
        channels,
        spatial,
    };
    let n = (batch * spatial) as f64;
    let inv_std: Vec<f64> = variance
        .iter()
        .map(|&v| 1.0 / (f64::from(v) + epsilon).sqrt())
        .collect();
    let sums: Vec<(f64, f64)> = per_channel(channels, |c| {
        let (m, s) = (f64::from(mean[c]), inv_std[c]);
        let beta_grad = channel_sum(
            batch,
            |b| (gs.plane(b, c), gs.plane(b, c)),
            |g, _| f64::from(g),
        );
        let gamma_grad = channel_sum(
            batch,
            |b| (gs.plane(b, c), xs.plane(b, c)),
            |g, v| f64::from(g) * ((f64::from(v) - m) * s),
        );
        (beta_grad, gamma_grad)
    });
    // dx = γ·s · ((dy − dβ/n) − (x − mean) · s·dγ/n): the terms that cancel (for a channel
    // of nearly equal values) are subtracted at their own scale, then multiplied by γ·s,
    // which can be large (s = 1/√(var + ε)).
    let coefficients: Vec<[f32; 4]> = (0..channels)
        .map(|c| {
            let (g, s) = (f64::from(gamma[c]), inv_std[c]);
            let (beta_grad, gamma_grad) = sums[c];
            [
                (g * s) as f32,
                (beta_grad / n) as f32,
                (s * gamma_grad / n) as f32,
                mean[c],
            ]
        })
        .collect();
    let x_grad = per_plane(x.len(), spatial, channels, |b, c, dst| {
        input_grad(dst, gs.plane(b, c), xs.plane(b, c), coefficients[c]);
    });
    let gamma_grad = sums.iter().map(|s| s.1 as f32).collect();
    let beta_grad = sums.iter().map(|s| s.0 as f32).collect();
    (x_grad, gamma_grad, beta_grad)
}

/// Inference (evaluation): `y = (x − mean) · γ / √(var + ε) + β` with the running statistics.
pub(crate) fn inference(
    x: &[f32],
    [_, channels, spatial]: [usize; 3],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    variance: &[f32],
    epsilon: f64,
) -> Vec<f32> {
    let planes = Planes {
        data: x,
        channels,
        spatial,
    };
    let scale: Vec<f32> = gamma
        .iter()
        .zip(variance)
        .map(|(&g, &v)| (f64::from(g) / (f64::from(v) + epsilon).sqrt()) as f32)
        .collect();
    per_plane(x.len(), spatial, channels, |b, c, dst| {
        normalize(dst, planes.plane(b, c), [mean[c], scale[c], beta[c]]);
    })
}
