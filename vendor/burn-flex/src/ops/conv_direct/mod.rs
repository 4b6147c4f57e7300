//! Direct 2-D convolution in f32 (lossbench patch, see LOSSBENCH.md): forward, input
//! gradient and weight gradient as one product each, with no column matrix.
//!
//! Each pass is `C[j][m] = Σ_k A[k][m] · src[cols[j] + offsets[k]]` (`product.rs`) with a
//! zero-padded copy of the input (or output gradient) as `src`:
//!
//! | pass | `m` (vector lanes) | `j` (broadcasts) | `k` (reduction, in order) | `A` |
//! |---|---|---|---|---|
//! | forward | output channel | output pixel `(b, oh, ow)` | `(c, ky, kx)` | weights, transposed |
//! | input gradient, per phase | input channel | input pixel `(b, r, q)` of the phase | `(o, ky, kx)`, the taps that reach the phase | weights of those taps |
//! | weight gradient | output channel | `(c, ky, kx)` | output pixel `(b, oh, ow)` | output gradient, channels last |
//!
//! Two passes turn the table around where its vectors would be mostly empty or its packed
//! operand the larger one: a 1×1 weight gradient with few input channels runs by output
//! channel (`m` = input channel, `j` = output channel, `A` = the input, channels last), and the
//! input gradient onto at most 4 input channels runs with vectors along the pixels
//! (`few_channels.rs`). Each output's order of sums is the same either way.
//!
//! A strided convolution's input gradient is split by phase (`ih mod s`, `iw mod s`): the
//! pixels of one phase are reached by a fixed subset of the kernel taps, each from the
//! output gradient pixel `(r + e_ky, q + e_kx)`, so each phase is a stride-1 product over
//! only the taps that contribute (no multiplications by inserted zeros). Each phase's product
//! writes compact planes of its own, which are interleaved into the gradient at the end.
//!
//! The forward pass reduces over `(c, ky, kx)` in the order and blocks of the im2col + gemm
//! path it replaces, so its results are those bits; the gradients' orders are new, and fixed
//! (not chosen per CPU or thread count).

mod few_channels;
mod kernel;
mod per_image;
mod product;
mod tensor;

use alloc::vec::Vec;
use core::mem::MaybeUninit;

pub(crate) use kernel::Isa;
use per_image::{Images, POINTWISE_PLANE, SHORT_REDUCTION};
use product::{Output, PackedA, Product, Scatter};
pub(crate) use tensor::{conv2d, conv2d_weight_backward, conv2d_x_backward, usable};

/// The shape of one convolution (one group), padding given at the start of each axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub batch: usize,
    pub c_in: usize,
    pub c_out: usize,
    /// Input `[h, w]`.
    pub input: [usize; 2],
    /// Output `[h, w]`.
    pub output: [usize; 2],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    pub padding: [usize; 2],
}

impl Geometry {
    fn input_len(&self) -> usize {
        self.batch * self.c_in * self.input[0] * self.input[1]
    }

    fn output_len(&self) -> usize {
        self.batch * self.c_out * self.output[0] * self.output[1]
    }

    fn weight_len(&self) -> usize {
        self.c_out * self.c_in * self.kernel[0] * self.kernel[1]
    }

    /// A 1×1 convolution with stride 1, no padding and planes of at least [`POINTWISE_PLANE`]
    /// pixels: per image, one matrix product of the weights and the planes as they lie.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1]
            && self.stride == [1, 1]
            && self.padding == [0, 0]
            && self.output == self.input
            && self.input[0] * self.input[1] >= POINTWISE_PLANE
    }

    /// A reduction `c_in · kh · kw` of at most [`SHORT_REDUCTION`] steps (the 3-channel stem)
    /// onto planes of at least [`POINTWISE_PLANE`] pixels: per image, the column matrix and
    /// one matrix product.
    fn is_short(&self) -> bool {
        self.c_in * self.kernel[0] * self.kernel[1] <= SHORT_REDUCTION
            && self.output[0] * self.output[1] >= POINTWISE_PLANE
    }

    /// The zero padding that makes every forward read land inside the padded input:
    /// `[before, after]` per axis.
    fn forward_padding(&self, axis: usize) -> [usize; 2] {
        let before = self.padding[axis];
        let last_read = (self.output[axis].max(1) - 1) * self.stride[axis]
            + (self.kernel[axis] - 1) * self.dilation[axis];
        let after = (last_read + 1).saturating_sub(self.input[axis] + before);
        [before, after]
    }
}

/// A zero-padded copy of `[batch, channels, h, w]` data (or the data itself where no
/// padding is needed).
struct Padded<'a> {
    data: alloc::borrow::Cow<'a, [f32]>,
    /// Floats from one row, channel, sample to the next.
    row: usize,
    plane: usize,
    sample: usize,
}

/// A stride of at least `floats` that is an odd number of 64-byte lines, so that the same
/// pixel of consecutive samples (or channels) falls in different sets of the L1 cache: with
/// a multiple of 4 KiB (a 512-channel 4×4 sample padded to 6×6 is 18 × 4 KiB) they all
/// compete for the same 12 ways.
pub(super) fn skewed(floats: usize) -> usize {
    let lines = floats.div_ceil(16);
    (lines | 1) * 16
}

/// `[batch, channels, h, w]` with `[before, after]` zeros around each axis.
fn pad<'a>(
    src: &'a [f32],
    batch: usize,
    channels: usize,
    [h, w]: [usize; 2],
    pad_h: [usize; 2],
    pad_w: [usize; 2],
) -> Padded<'a> {
    let (hp, wp) = (h + pad_h[0] + pad_h[1], w + pad_w[0] + pad_w[1]);
    if pad_h == [0, 0] && pad_w == [0, 0] {
        // Nothing to pad (1×1 convolutions): read the input where it is. Copying it to skew
        // its planes cost more than the cache conflicts it avoids (measured on the ResNet-50
        // 1×1 layers: 64 → 256 on 32×32, forward 17 → 15 ms).
        return Padded {
            data: alloc::borrow::Cow::Borrowed(src),
            row: w,
            plane: h * w,
            sample: channels * h * w,
        };
    }
    // Planes of several lines are skewed too: a 1×1 convolution steps from one channel's
    // plane to the next, and 16×16 planes (16 lines) put 64 channels in 4 of the 64 sets.
    let plane = if hp * wp > 16 {
        skewed(hp * wp)
    } else {
        hp * wp
    };
    let sample = skewed(channels * plane);
    // A plane at a time: zeroed, then its rows copied in while it is in the L1 cache (zeroing
    // the whole copy first wrote it twice through memory; zeroing each row's borders apart
    // was two calls to memset for two floats, row after row).
    let fill = |b: usize, dst: &mut [MaybeUninit<f32>]| {
        let src = &src[b * channels * h * w..][..channels * h * w];
        let (planes, gap) = dst.split_at_mut(channels * plane);
        gap.fill(MaybeUninit::new(0.0));
        for (c, dst) in planes.chunks_exact_mut(plane.max(1)).enumerate() {
            dst.fill(MaybeUninit::new(0.0));
            let rows = dst[pad_h[0] * wp..].chunks_exact_mut(wp.max(1));
            for (y, row) in rows.take(h).enumerate() {
                for (d, &v) in row[pad_w[0]..][..w].iter_mut().zip(&src[(c * h + y) * w..][..w]) {
                    *d = MaybeUninit::new(v);
                }
            }
        }
    };
    // SAFETY: each sample's chunk is its planes (top rows, rows of left zeros, input, right
    // zeros, bottom rows, the skew after the plane) and the skew after them: all written.
    let data = unsafe { overwritten(batch * sample, sample, fill) };
    Padded {
        data: alloc::borrow::Cow::Owned(data),
        row: wp,
        plane,
        sample,
    }
}

/// `dst[kk · ldd + i] = src[i · lds + kk]` for `i < rows`, `kk < cols`: vector blocks where
/// the ISA has them, element by element at the edges.
fn transpose_strided(
    isa: Isa,
    src: &[f32],
    rows: usize,
    cols: usize,
    lds: usize,
    dst: &mut [MaybeUninit<f32>],
    ldd: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        (rows - 1) * lds + cols <= src.len() && (cols - 1) * ldd + rows <= dst.len(),
        "conv_direct: transpose of {rows} × {cols} out of bounds"
    );
    // Whole vector blocks (none on the scalar path), then the edges element by element.
    let lanes = isa.lanes();
    let (whole_rows, whole_cols) = if lanes > 1 {
        (rows / lanes * lanes, cols / lanes * lanes)
    } else {
        (0, 0)
    };
    {
        for i0 in (0..whole_rows).step_by(lanes) {
            for k0 in (0..whole_cols).step_by(lanes) {
                // SAFETY: a lanes × lanes block inside both (asserted above); `isa` is a
                // vector ISA of this CPU.
                unsafe {
                    kernel::transpose_block(
                        isa,
                        src.as_ptr().add(i0 * lds + k0),
                        lds,
                        dst.as_mut_ptr().add(k0 * ldd + i0).cast::<f32>(),
                        ldd,
                    )
                };
            }
        }
    }
    for i in 0..rows {
        let first = if i < whole_rows { whole_cols } else { 0 };
        for kk in first..cols {
            dst[kk * ldd + i] = MaybeUninit::new(src[i * lds + kk]);
        }
    }
}

/// `len` floats, built by the threads in chunks of `chunk`: each chunk is zeroed, then
/// `fill(index, chunk)` writes into it while it is in the cache (a single-threaded
/// `vec![0.0; len]` of a padded copy, tens of MB, took longer than the copying).
pub(super) fn built(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let zeroed_then_filled = |i: usize, part: &mut [MaybeUninit<f32>]| {
        part.fill(MaybeUninit::new(0.0));
        // SAFETY: every element was just initialised; MaybeUninit<f32> has f32's layout.
        let part = unsafe { &mut *(core::ptr::from_mut::<[MaybeUninit<f32>]>(part) as *mut [f32]) };
        fill(i, part);
    };
    // SAFETY: every chunk is zeroed in full.
    unsafe { overwritten(len, chunk, zeroed_then_filled) }
}

/// `len` floats, written by the threads in chunks of `chunk` by `fill(index, chunk)`, never
/// zeroed first (for a 3-channel stem's output, zeroing it took a fifth of the pass). Batch
/// norm's element-wise passes use it too.
///
/// # Safety
/// `fill` must write every element of its chunk.
pub(crate) unsafe fn overwritten(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut data: Vec<f32> = Vec::with_capacity(len);
    let spare = &mut data.spare_capacity_mut()[..len];
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        spare
            .par_chunks_mut(chunk.max(1))
            .enumerate()
            .for_each(|(i, part)| fill(i, part));
    }
    #[cfg(not(feature = "rayon"))]
    spare
        .chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, part)| fill(i, part));
    // SAFETY: every one of the `len` elements was written above (the caller's contract).
    unsafe { data.set_len(len) };
    data
}

/// Runs `f` on every item, in parallel where rayon is on.
fn for_each_parallel<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync + Send) {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        items.into_par_iter().for_each(f);
    }
    #[cfg(not(feature = "rayon"))]
    items.into_iter().for_each(f);
}

/// A strided 1×1 convolution as the same convolution with stride 1 on its input subsampled to
/// the output's grid (`x[b, c, y·sh, x·sw]`): the same products in the same order, read from
/// a compact copy (the strided reads used half of every cache line and left the 1×1 gemm
/// path out; 256 → 512 on 32×32, stride 2: forward 28 → 18 ms).
fn subsampled(x: &[f32], g: &Geometry) -> Option<(Vec<f32>, Geometry)> {
    let compact = subsampled_geometry(g)?;
    let ([h, w], [oh, ow], [sh, sw]) = (g.input, g.output, g.stride);
    let sample = g.c_in * oh * ow;
    let fill = |b: usize, dst: &mut [MaybeUninit<f32>]| {
        let src = &x[b * g.c_in * h * w..][..g.c_in * h * w];
        for (plane_src, plane) in src.chunks_exact(h * w).zip(dst.chunks_exact_mut(oh * ow)) {
            for (y, row) in plane.chunks_exact_mut(ow).enumerate() {
                let row_src = &plane_src[y * sh * w..];
                for (x, v) in row.iter_mut().enumerate() {
                    *v = MaybeUninit::new(row_src[x * sw]);
                }
            }
        }
    };
    // SAFETY: each sample's chunk is `c_in` planes of `oh` rows of `ow`, all written.
    let data = unsafe { overwritten(g.batch * sample, sample, fill) };
    Some((data, compact))
}

/// The stride-1 geometry on the output's grid of a strided 1×1 convolution without padding
/// (see [`subsampled`], [`upsampled`]); `None` for any other convolution.
fn subsampled_geometry(g: &Geometry) -> Option<Geometry> {
    if g.kernel != [1, 1] || g.padding != [0, 0] || g.stride == [1, 1] || g.output.contains(&0) {
        return None;
    }
    Some(Geometry {
        input: g.output,
        stride: [1, 1],
        ..*g
    })
}

/// The input gradient of a strided 1×1 convolution from the input gradient of its stride-1
/// form on the output's grid (`compact`, `[batch, c_in, oh, ow]`): pixel `(y·sh, x·sw)` takes
/// `compact[.., y, x]`, every other pixel is reached by no tap and is zero. The product is the
/// strided pass's one reached phase `(0, 0)`, summed in the same order (so the same bits), but it
/// takes the pointwise gemm path (64 → 128 on 32×32, stride 2: 1.72× PyTorch's time on an AMD
/// EPYC before).
fn upsampled(compact: Vec<f32>, g: &Geometry) -> Vec<f32> {
    let phase = PhaseGrad {
        first: [0, 0],
        size: g.output,
        grad: Some(compact),
    };
    interleaved(&[phase], g)
}

/// The input gradient of one stride phase (`ih ≡ first[0]`, `iw ≡ first[1]` mod the stride),
/// compact: `[batch, c_in, size[0], size[1]]`; `None` where no tap reaches the phase.
struct PhaseGrad {
    first: [usize; 2],
    size: [usize; 2],
    grad: Option<Vec<f32>>,
}

/// `[batch, c_in, h, w]` from its stride phases' compact gradients: phase pixel `(r, q)` goes
/// to `(first[0] + sh·r, first[1] + sw·q)`, a plane at a time while it is in the cache; pixels
/// of no phase, or of a phase no tap reaches, are zero.
fn interleaved(phases: &[PhaseGrad], g: &Geometry) -> Vec<f32> {
    let ([h, w], [sh, sw]) = (g.input, g.stride);
    built(g.input_len(), h * w, |plane, dst| {
        for phase in phases {
            let Some(grad) = &phase.grad else { continue };
            let ([ph, pw], [n_r, n_q]) = (phase.first, phase.size);
            let src = &grad[plane * n_r * n_q..][..n_r * n_q];
            for (r, row) in src.chunks_exact(n_q.max(1)).enumerate() {
                let dst_row = &mut dst[(ph + sh * r) * w + pw..];
                for (q, &v) in row.iter().enumerate() {
                    dst_row[q * sw] = v;
                }
            }
        }
    })
}

/// Forward convolution: `x` `[batch, c_in, h, w]`, `weight` `[c_out, c_in, kh, kw]`;
/// returns `[batch, c_out, oh, ow]` (no bias).
pub(crate) fn forward(isa: Isa, x: &[f32], weight: &[f32], g: &Geometry) -> Vec<f32> {
    assert!(
        x.len() == g.input_len() && weight.len() == g.weight_len(),
        "conv_direct::forward: {g:?}"
    );
    if let Some((xs, compact)) = subsampled(x, g) {
        return forward(isa, &xs, weight, &compact);
    }
    let plane = g.output[0] * g.output[1];
    if g.is_pointwise() {
        return per_image::product(&Images::Planes(x), weight, g.batch, g.c_out, g.c_in, false, plane);
    }
    if g.is_short() {
        let k = g.weight_len() / g.c_out.max(1);
        return per_image::product(&Images::Columns(x, g), weight, g.batch, g.c_out, k, false, plane);
    }
    let [kh, kw] = g.kernel;
    let [oh, ow] = g.output;
    let mut out = Output::new(g.output_len());
    let xp = pad(
        x,
        g.batch,
        g.c_in,
        g.input,
        g.forward_padding(0),
        g.forward_padding(1),
    );
    let (plane, wp) = (xp.plane, xp.row);
    let k = g.c_in * kh * kw;
    // A[(c, ky, kx)][o] = weight[o, c, ky, kx], a panel at a time.
    let a = PackedA::build(isa, g.c_out, k, k, |m0, width, _, rows| {
        let real = width.min(g.c_out - m0);
        transpose_strided(isa, &weight[m0 * k..], real, k, k, rows, width);
    });
    let [dh, dw] = g.dilation;
    let offsets: Vec<usize> = (0..g.c_in)
        .flat_map(|c| {
            (0..kh).flat_map(move |ky| (0..kw).map(move |kx| c * plane + ky * dh * wp + kx * dw))
        })
        .collect();
    let [sh, sw] = g.stride;
    let pixels = |b: usize| (0..oh).flat_map(move |y| (0..ow).map(move |x| (b, y, x)));
    let cols: Vec<usize> = (0..g.batch)
        .flat_map(pixels)
        .map(|(b, y, x)| b * xp.sample + y * sh * wp + x * sw)
        .collect();
    let dst_cols: Vec<usize> = (0..g.batch)
        .flat_map(pixels)
        .map(|(b, y, x)| b * g.c_out * oh * ow + y * ow + x)
        .collect();
    let product = Product {
        a: &a,
        src: &xp.data,
        cols: &cols,
        offsets: &offsets,
    };
    product::compute(
        isa,
        &product,
        &Scatter {
            cols: &dst_cols,
            m_stride: oh * ow,
        },
        &mut out,
    );
    // SAFETY: the scatter reached (b, o, oy, ox) for every output pixel and channel.
    unsafe { out.assume_written() }
}

/// The taps of one kernel axis that reach input phase `phase` (`i ≡ phase mod stride`), each
/// as `(tap, e)`: input `phase + stride·r` takes output gradient `r + e`.
fn phase_taps(
    phase: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    kernel: usize,
) -> Vec<(usize, isize)> {
    (0..kernel)
        .filter_map(|t| {
            let shift = (phase + padding) as isize - (t * dilation) as isize;
            (shift.rem_euclid(stride as isize) == 0).then(|| (t, shift.div_euclid(stride as isize)))
        })
        .collect()
}

/// The stride phases of one input axis (`ih mod s`): per phase, the taps that reach it
/// ([`phase_taps`]) and its pixel count.
fn input_phases(g: &Geometry, axis: usize) -> Vec<(Vec<(usize, isize)>, usize)> {
    let (s, size) = (g.stride[axis], g.input[axis]);
    (0..s.min(size))
        .map(|ph| {
            let taps = phase_taps(ph, s, g.padding[axis], g.dilation[axis], g.kernel[axis]);
            (taps, (size - ph).div_ceil(s))
        })
        .collect()
}

/// The `[before, after]` zeros around an output gradient axis of `out` pixels that cover every
/// read of every phase: pixel `r` of a phase reads `r + e` for each of its taps' `e`.
fn gradient_padding(phases: &[(Vec<(usize, isize)>, usize)], out: usize) -> [usize; 2] {
    let mut pad = [0usize; 2];
    for (taps, n) in phases {
        for &(_, e) in taps {
            pad[0] = pad[0].max((-e).max(0) as usize);
            let last = *n as isize - 1 + e;
            pad[1] = pad[1].max((last - (out as isize - 1)).max(0) as usize);
        }
    }
    pad
}

/// Where step `(o, ty, tx)` of an input-gradient product reads, from the padded output
/// gradient pixel a phase pixel starts at: channel `o`'s plane, moved by the tap's `(e_y, e_x)`
/// and the padding before.
fn tap_offsets(
    c_out: usize,
    taps_y: &[(usize, isize)],
    taps_x: &[(usize, isize)],
    [pad_h, pad_w]: [usize; 2],
    padded: &Padded,
) -> Vec<usize> {
    (0..c_out)
        .flat_map(|o| {
            taps_y.iter().flat_map(move |&(_, ey)| {
                taps_x.iter().map(move |&(_, ex)| {
                    let y = (ey + pad_h as isize) as usize;
                    let x = (ex + pad_w as isize) as usize;
                    o * padded.plane + y * padded.row + x
                })
            })
        })
        .collect()
}

/// Input gradient: `output_grad` `[batch, c_out, oh, ow]`, `weight` `[c_out, c_in, kh, kw]`;
/// returns `[batch, c_in, h, w]`.
pub(crate) fn input_grad(isa: Isa, output_grad: &[f32], weight: &[f32], g: &Geometry) -> Vec<f32> {
    assert!(
        output_grad.len() == g.output_len() && weight.len() == g.weight_len(),
        "conv_direct::input_grad: {g:?}"
    );
    if let Some(compact) = subsampled_geometry(g) {
        return upsampled(input_grad(isa, output_grad, weight, &compact), g);
    }
    if g.is_pointwise() {
        let (images, plane) = (Images::Planes(output_grad), g.input[0] * g.input[1]);
        return per_image::product(&images, weight, g.batch, g.c_in, g.c_out, true, plane);
    }
    if few_channels::takes(isa, g) {
        return few_channels::input_grad(isa, output_grad, weight, g);
    }
    let [oh, ow] = g.output;
    let (rows, columns) = (input_phases(g, 0), input_phases(g, 1));
    let (pad_h, pad_w) = (gradient_padding(&rows, oh), gradient_padding(&columns, ow));
    let gp = pad(output_grad, g.batch, g.c_out, g.output, pad_h, pad_w);
    // Each phase's product goes to compact planes of its own, with whole rows of contiguous
    // destinations (written straight into the gradient's planes, a strided phase's sums went
    // out one float at a time, `stride` apart: 64 → 128 on 32×32, stride 2, was 1.96×
    // PyTorch's time on an AMD EPYC); the phases are interleaved into the planes at the end.
    // With stride 1 the one phase is the gradient itself.
    let mut phases = Vec::new();
    for (ph, (taps_y, n_r)) in rows.iter().enumerate() {
        for (pw, (taps_x, n_q)) in columns.iter().enumerate() {
            let grad = phase_input_grad(
                isa,
                weight,
                g,
                &gp,
                [pad_h[0], pad_w[0]],
                taps_y,
                taps_x,
                [*n_r, *n_q],
            );
            phases.push(PhaseGrad {
                first: [ph, pw],
                size: [*n_r, *n_q],
                grad,
            });
        }
    }
    match phases.as_mut_slice() {
        [only] if only.size == g.input => {
            only.grad.take().unwrap_or_else(|| vec![0.0; g.input_len()])
        }
        _ => interleaved(&phases, g),
    }
}

/// The input gradient of one stride phase of `size` pixels, compact (`[batch, c_in, size]`),
/// from the padded output gradient `gp` (`before`: its zeros before each axis): the product
/// over the taps that reach the phase, `None` where none does.
#[allow(clippy::too_many_arguments)]
fn phase_input_grad(
    isa: Isa,
    weight: &[f32],
    g: &Geometry,
    gp: &Padded,
    before: [usize; 2],
    taps_y: &[(usize, isize)],
    taps_x: &[(usize, isize)],
    [n_r, n_q]: [usize; 2],
) -> Option<Vec<f32>> {
    let [kh, kw] = g.kernel;
    let taps = taps_y.len() * taps_x.len();
    let k = g.c_out * taps;
    if k == 0 {
        return None;
    }
    // A[(o, ty, tx)][c] = weight[o, c, ky, kx]: `taps` rows per o, chunks of whole o's
    // (a few thousand floats, so that there are not thousands of tiny tasks).
    let per_chunk = 4096usize.div_ceil(taps * isa.panel()).max(1);
    // Step t of a channel o reads kernel element `kernel_taps[t]`.
    let kernel_taps: Vec<usize> = taps_y
        .iter()
        .flat_map(|&(ky, _)| taps_x.iter().map(move |&(kx, _)| ky * kw + kx))
        .collect();
    let a = PackedA::build(isa, g.c_in, k, taps * per_chunk, |m0, width, k0, chunk| {
        let real = width.min(g.c_in - m0);
        for (i, block) in chunk.chunks_mut(taps * width).enumerate() {
            let o = k0 / taps + i;
            let kernels = &weight[(o * g.c_in + m0) * kh * kw..][..real * kh * kw];
            // One row of A per tap, written in order (the kernels read a tap apart).
            for (row, &at) in block.chunks_mut(width).zip(&kernel_taps) {
                for (dst, kernel) in row.iter_mut().zip(kernels.chunks_exact(kh * kw)) {
                    *dst = MaybeUninit::new(kernel[at]);
                }
            }
        }
    });
    // Step (o, ty, tx) moves to gradient pixel (r + e_y, q + e_x) of channel o.
    let offsets = tap_offsets(g.c_out, taps_y, taps_x, before, gp);
    let pixels = |b: usize| (0..n_r).flat_map(move |r| (0..n_q).map(move |q| (b, r, q)));
    let cols: Vec<usize> = (0..g.batch)
        .flat_map(pixels)
        .map(|(b, r, q)| b * gp.sample + r * gp.row + q)
        .collect();
    let plane = n_r * n_q;
    let dst_cols: Vec<usize> = (0..g.batch)
        .flat_map(|b| (0..plane).map(move |p| b * g.c_in * plane + p))
        .collect();
    let mut grad = Output::new(g.batch * g.c_in * plane);
    let product = Product {
        a: &a,
        src: &gp.data,
        cols: &cols,
        offsets: &offsets,
    };
    product::compute(
        isa,
        &product,
        &Scatter {
            cols: &dst_cols,
            m_stride: plane,
        },
        &mut grad,
    );
    // SAFETY: the scatter reached (b, c, r, q) for every pixel of the phase and channel.
    Some(unsafe { grad.assume_written() })
}

/// Weight gradient: `x` `[batch, c_in, h, w]`, `output_grad` `[batch, c_out, oh, ow]`;
/// returns `[c_out, c_in, kh, kw]`.
pub(crate) fn weight_grad(isa: Isa, x: &[f32], output_grad: &[f32], g: &Geometry) -> Vec<f32> {
    assert!(
        x.len() == g.input_len() && output_grad.len() == g.output_len(),
        "conv_direct::weight_grad: {g:?}"
    );
    // Only for wide products: the copy costs what a narrower one saves (64 → 128 on 32×32,
    // stride 2: 2.4 ms strided, 2.1 + 0.7 ms for the copy; 256 → 512: 33 → 24 ms).
    if g.c_out >= 512
        && let Some((xs, compact)) = subsampled(x, g)
    {
        return weight_grad(isa, &xs, output_grad, &compact);
    }
    let spatial = g.output[0] * g.output[1];
    // With 64 output channels (32 rows a thread) gemm was 1.3–1.9× slower than the direct
    // product; with 128 and 256, 1.1–1.8× faster (BENCHMARKS.md).
    if g.is_pointwise() && spatial.is_multiple_of(512) && g.c_out >= 128 {
        let images = Images::Planes(x);
        return per_image::weight_grad(&images, output_grad, g.batch, g.c_out, g.c_in, spatial);
    }
    if g.is_short() && spatial.is_multiple_of(512) {
        let (images, k) = (Images::Columns(x, g), g.weight_len() / g.c_out.max(1));
        return per_image::weight_grad(&images, output_grad, g.batch, g.c_out, k, spatial);
    }
    // Packing the output gradient costs about 1/c_in of the product: with few input
    // channels, pack the (smaller) input instead. 128 → 512 on 16×16: 13.4–15.9 → 9.8–10.4
    // ms, 256 → 1024 on 8×8: 10.0 → 8.7; with 1024 input channels it was slower (1024 →
    // 2048 on 8×8, stride 2: 18.3–18.9 → 21.5 ms).
    if g.kernel == [1, 1]
        && g.stride == [1, 1]
        && g.padding == [0, 0]
        && g.c_out > g.c_in
        && g.c_in <= 256
    {
        return pointwise_weight_grad_by_output_channel(isa, x, output_grad, g);
    }
    let mut dw = Output::new(g.weight_len());
    let [kh, kw] = g.kernel;
    let [oh, ow] = g.output;
    let xp = pad(
        x,
        g.batch,
        g.c_in,
        g.input,
        g.forward_padding(0),
        g.forward_padding(1),
    );
    let (plane, wp) = (xp.plane, xp.row);
    // A[(b, oh, ow)][o] = output_grad[b, o, oh, ow].
    let a = channels_last(isa, output_grad, g.batch, g.c_out, spatial);
    let [sh, sw] = g.stride;
    let offsets: Vec<usize> = (0..g.batch)
        .flat_map(|b| (0..oh).flat_map(move |y| (0..ow).map(move |x| (b, y, x))))
        .map(|(b, y, x)| b * xp.sample + y * sh * wp + x * sw)
        .collect();
    let [dh, dwl] = g.dilation;
    let cols: Vec<usize> = (0..g.c_in)
        .flat_map(|c| {
            (0..kh).flat_map(move |ky| (0..kw).map(move |kx| c * plane + ky * dh * wp + kx * dwl))
        })
        .collect();
    let dst_cols: Vec<usize> = (0..cols.len()).collect();
    let product = Product {
        a: &a,
        src: &xp.data,
        cols: &cols,
        offsets: &offsets,
    };
    product::compute(
        isa,
        &product,
        &Scatter {
            cols: &dst_cols,
            m_stride: g.c_in * kh * kw,
        },
        &mut dw,
    );
    // SAFETY: the scatter reached (o, c, ky, kx) for every column (c, ky, kx) and o.
    unsafe { dw.assume_written() }
}

/// The weight gradient of a 1×1 convolution with stride 1 and more output than input
/// channels, with the roles of the operands swapped: vectors along the input channels
/// (`A[(b, p)][c] = x[b, c, p]`, packed), broadcasts from the output gradient where it lies
/// (column `j` = output channel `o`), `C[o][c]` written to `dw[o, c]` as it is laid out.
/// Each output sums `x · dy` over the same `(b, p)` in the same blocks as the other
/// orientation (a product's bits do not depend on which factor is broadcast), so the bits
/// are the same; what changes is what is packed (the input, not the larger output gradient)
/// and that the product's result needs no transpose.
fn pointwise_weight_grad_by_output_channel(
    isa: Isa,
    x: &[f32],
    output_grad: &[f32],
    g: &Geometry,
) -> Vec<f32> {
    let spatial = g.output[0] * g.output[1];
    let mut dw = Output::new(g.weight_len());
    // A[(b, p)][c] = x[b, c, p].
    let a = channels_last(isa, x, g.batch, g.c_in, spatial);
    let offsets: Vec<usize> = (0..g.batch)
        .flat_map(|b| (0..spatial).map(move |p| b * g.c_out * spatial + p))
        .collect();
    let cols: Vec<usize> = (0..g.c_out).map(|o| o * spatial).collect();
    let dst_cols: Vec<usize> = (0..g.c_out).map(|o| o * g.c_in).collect();
    let product = Product {
        a: &a,
        src: output_grad,
        cols: &cols,
        offsets: &offsets,
    };
    product::compute(
        isa,
        &product,
        &Scatter {
            cols: &dst_cols,
            m_stride: 1,
        },
        &mut dw,
    );
    // SAFETY: the scatter reached (o, c) for every column o and row c.
    unsafe { dw.assume_written() }
}

/// `[batch, channels, spatial]` data as `A[(b, p)][c]`, packed: each sample's `[channels,
/// spatial]` transposed, a sample per chunk of the panels.
fn channels_last(isa: Isa, data: &[f32], batch: usize, channels: usize, spatial: usize) -> PackedA {
    PackedA::build(isa, channels, batch * spatial, spatial, |m0, width, k0, block| {
        let (b, real) = (k0 / spatial.max(1), width.min(channels - m0));
        let src = &data[(b * channels + m0) * spatial..];
        transpose_strided(isa, src, real, spatial, spatial, block, width);
    })
}
