//! 2-D convolution forward and weight gradient as im2col + one gemm per chunk of samples
//! (lossbench patch, see LOSSBENCH.md). Both share the column matrix
//! `Cols[(c, ky, kx), (b, oh, ow)] = x[b, c, oh·s + ky·d − p, ow·s + kx·d − p]` (0 in the
//! padding), each row a shifted copy of one input plane, built in chunks of samples so the
//! gemm's inner or outer dimension is long whatever the spatial size.
//!
//! Forward: `Y[o, (b, oh, ow)] = W[o, (c, ky, kx)] · Cols` (both row-major: 149–196 GFLOP/s
//! measured on the CIFAR ResNet shapes, where upstream's per-sample, per-512-pixel tiles
//! reach 94–178 including their NHWC copy).
//!
//! Weight gradient:
//! `dW[o, (c, ky, kx)] = Σ_(b, oh, ow) g[b, o, oh, ow] · x[b, c, oh·s + ky·d − p, ow·s + kx·d − p]`,
//! i.e. `dWᵀ = Cols · Gᵀ` with `Cols = [c_in·kh·kw, n]` (each row a shifted copy of one input
//! plane) and `Gᵀ = [n, c_out]` (the output gradient channels-last), over
//! `n = batch · out_h · out_w`. The columns are built in chunks of samples and accumulated,
//! so the gemm has a long inner dimension and wide output tiles whatever the kernel size.
//! Both operands row-major is the layout gemm packs fastest (measured: 204 GFLOP/s against
//! 32 with `G` row-major on the left, for the 3×3, 64-channel, 32×32 case).

use alloc::vec;
use alloc::vec::Vec;

use burn_backend::DType;
use burn_backend::ops::ConvOptions;
use burn_backend::ops::conv::calculate_conv_output_size;
use burn_std::{Bytes, Shape, f16};
use bytemuck::Pod;
use num_traits::{One, Zero};

use super::conv_common::{convert_bf16_to_f32, convert_f32_to_bf16};
use crate::{FlexTensor, Layout};

/// Upper bound on the column buffer of one chunk, in elements: 8 MiB of f32, which stays in
/// the last-level cache between im2col and gemm (a 64 MiB buffer measured 1.5× slower: page
/// faults on every call and a round trip through memory).
const MAX_COLS: usize = 2 << 20;

/// Whether [`conv2d_forward`] should replace upstream's forward convolution: one group (the
/// grouped and depthwise cases have their own upstream kernels) and enough of a reduction
/// (`c_in·kh·kw`) to fill a gemm (the 3-channel stem keeps upstream's small-channel kernel).
pub fn handles_forward(x_shape: &Shape, w_shape: &Shape, options: &ConvOptions<2>) -> bool {
    options.groups == 1 && w_shape[1] * w_shape[2] * w_shape[3] >= 64 && x_shape[0] > 0
}

/// Forward 2-D convolution, `groups == 1`, symmetric padding: `x` `[batch, c_in, in_h,
/// in_w]`, `weight` `[c_out, c_in, kernel_h, kernel_w]`. f32 and f64 (others: upstream).
pub fn conv2d_forward(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    match x.dtype() {
        DType::F32 => forward_typed::<f32>(x, weight, bias, options, DType::F32),
        DType::F64 => forward_typed::<f64>(x, weight, bias, options, DType::F64),
        dtype => panic!("conv2d_forward: unsupported dtype {dtype:?}"),
    }
}

fn forward_typed<T: burn_backend::Element + Pod + Zero + One + Send + Sync + 'static>(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
    dtype: DType,
) -> FlexTensor {
    assert_eq!(options.groups, 1, "conv2d_forward: groups must be 1");
    let x = x.to_contiguous();
    let weight = weight.to_contiguous();
    let [batch, c_in, in_h, in_w]: [usize; 4] = x.layout().shape().dims();
    let [c_out, w_in, kernel_h, kernel_w]: [usize; 4] = weight.layout().shape().dims();
    assert_eq!(w_in, c_in, "conv2d_forward: weight has {w_in} input channels, x {c_in}");
    let size = |i: usize, input: usize, kernel: usize| {
        calculate_conv_output_size(
            kernel,
            options.stride[i],
            options.padding[i].0,
            options.dilation[i],
            input,
        )
    };
    let (out_h, out_w) = (size(0, in_h, kernel_h), size(1, in_w, kernel_w));
    let x: &[T] = x.storage();
    let w: &[T] = weight.storage();

    let rows = c_in * kernel_h * kernel_w;
    let spatial = out_h * out_w;
    let mut out = vec![T::zero(); batch * c_out * spatial];
    if spatial > 0 && rows > 0 {
        let chunk = chunk_samples(rows, spatial, batch);
        let geometry = Geometry::new([in_h, in_w], [out_h, out_w], [kernel_h, kernel_w], options);
        let mut cols = vec![T::zero(); rows * chunk * spatial];
        let mut y = vec![T::zero(); c_out * chunk * spatial];
        for b0 in (0..batch).step_by(chunk) {
            let nb = chunk.min(batch - b0);
            let n = nb * spatial;
            let cols = &mut cols[..rows * n];
            let y = &mut y[..c_out * n];
            im2col_rows(cols, x, b0, nb, c_in, &geometry);
            // SAFETY: dst is y (c_out × n), lhs w (c_out × rows), rhs cols (rows × n), all
            // row-major and exactly that long.
            unsafe {
                gemm::gemm(
                    c_out,
                    n,
                    rows,
                    y.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    w.as_ptr(),
                    1,
                    rows as isize,
                    cols.as_ptr(),
                    1,
                    n as isize,
                    T::one(),
                    T::one(),
                    false,
                    false,
                    false,
                    parallelism(),
                );
            }
            // Y[o, (b, p)] -> out[b0 + b, o, p]: contiguous spans of one plane.
            for (o, row) in y.chunks_exact(n).enumerate() {
                for (bl, plane) in row.chunks_exact(spatial).enumerate() {
                    let dst = ((b0 + bl) * c_out + o) * spatial;
                    out[dst..dst + spatial].copy_from_slice(plane);
                }
            }
        }
    }
    if let Some(bias) = bias.filter(|_| spatial > 0) {
        let bias = bias.to_contiguous();
        let bias: &[T] = bias.storage();
        for planes in out.chunks_exact_mut(c_out * spatial) {
            for (plane, &b) in planes.chunks_exact_mut(spatial).zip(bias) {
                for v in plane {
                    *v = *v + b;
                }
            }
        }
    }
    FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(Shape::from(vec![batch, c_out, out_h, out_w])),
        dtype,
    )
}

/// Weight gradient of a 2-D convolution: `x` `[batch, c_in, in_h, in_w]`, `output_grad`
/// `[batch, c_out, out_h, out_w]`; returns `[c_out, c_in / groups, kernel_h, kernel_w]`.
/// f32, f64 and f16 run natively, bf16 through f32. Padding at the end does not enter:
/// the output size is read from `output_grad`.
pub fn conv2d_weight_backward(
    x: FlexTensor,
    output_grad: FlexTensor,
    weight_shape: &Shape,
    options: &ConvOptions<2>,
) -> FlexTensor {
    match x.dtype() {
        DType::F32 => typed::<f32>(x, output_grad, weight_shape, options, DType::F32),
        DType::F64 => typed::<f64>(x, output_grad, weight_shape, options, DType::F64),
        DType::F16 => typed::<f16>(x, output_grad, weight_shape, options, DType::F16),
        DType::BF16 => {
            let x = convert_bf16_to_f32(&x);
            let g = convert_bf16_to_f32(&output_grad);
            convert_f32_to_bf16(&typed::<f32>(x, g, weight_shape, options, DType::F32))
        }
        dtype => panic!("conv2d_weight_backward: unsupported dtype {dtype:?}"),
    }
}

fn typed<T: burn_backend::Element + Pod + Zero + One + Send + Sync + 'static>(
    x: FlexTensor,
    output_grad: FlexTensor,
    weight_shape: &Shape,
    options: &ConvOptions<2>,
    dtype: DType,
) -> FlexTensor {
    let x = x.to_contiguous();
    // Channels-last output gradient: Gᵀ[(b, oh, ow), c_out].
    let g_t = output_grad.permute(&[0, 2, 3, 1]).to_contiguous();
    let [batch, c_in, in_h, in_w]: [usize; 4] = x.layout().shape().dims();
    let [g_batch, out_h, out_w, c_out]: [usize; 4] = g_t.layout().shape().dims();
    let [w_out, w_in, kernel_h, kernel_w]: [usize; 4] = weight_shape.dims();
    let groups = options.groups;
    assert!(
        groups >= 1
            && g_batch == batch
            && w_out == c_out
            && w_in * groups == c_in
            && c_out % groups == 0,
        "conv2d_weight_backward: x {:?}, output_grad {:?}, weight {:?} and {groups} groups disagree",
        x.layout().shape(),
        output_grad.layout().shape(),
        weight_shape
    );
    let x: &[T] = x.storage();
    let g_t: &[T] = g_t.storage();

    let rows = c_in * kernel_h * kernel_w;
    let group_rows = rows / groups;
    let group_out = c_out / groups;
    let spatial = out_h * out_w;
    // dWᵀ[(c, ky, kx), o], transposed into dW at the end.
    let mut dw_t = vec![T::zero(); rows * c_out];
    let mut dw = vec![T::zero(); c_out * group_rows];
    if batch == 0 || spatial == 0 || rows == 0 {
        return weight_tensor(dw, weight_shape, dtype);
    }
    let chunk = chunk_samples(rows, spatial, batch);
    let geometry = Geometry::new([in_h, in_w], [out_h, out_w], [kernel_h, kernel_w], options);

    let mut cols = vec![T::zero(); rows * chunk * spatial];
    let mut first = true;
    for b0 in (0..batch).step_by(chunk) {
        let nb = chunk.min(batch - b0);
        let n = nb * spatial;
        let cols = &mut cols[..rows * n];
        im2col_rows(cols, x, b0, nb, c_in, &geometry);
        let g_chunk = &g_t[b0 * spatial * c_out..][..n * c_out];
        // Per group, dWᵀ_g (+)= Cols_g · Gᵀ_g: m = rows / groups, n = c_out / groups, k = n.
        for gi in 0..groups {
            let cols_g = &cols[gi * group_rows * n..][..group_rows * n];
            // SAFETY: dst addresses the group's block of dw_t (rows gi·group_rows.., columns
            // gi·group_out.., row stride c_out), lhs the row-major cols_g (group_rows × n),
            // rhs the group's columns of g_chunk (n rows, row stride c_out); all in bounds.
            unsafe {
                gemm::gemm(
                    group_rows,
                    group_out,
                    n,
                    dw_t.as_mut_ptr().add(gi * group_rows * c_out + gi * group_out),
                    1,
                    c_out as isize,
                    !first,
                    cols_g.as_ptr(),
                    1,
                    n as isize,
                    g_chunk.as_ptr().add(gi * group_out),
                    1,
                    c_out as isize,
                    T::one(),
                    T::one(),
                    false,
                    false,
                    false,
                    parallelism(),
                );
            }
        }
        first = false;
    }
    // dW[o, r] = dWᵀ[group(o)·group_rows + r, o].
    for (o, row) in dw.chunks_exact_mut(group_rows).enumerate() {
        let base = (o / group_out) * group_rows;
        for (r, value) in row.iter_mut().enumerate() {
            *value = dw_t[(base + r) * c_out + o];
        }
    }
    weight_tensor(dw, weight_shape, dtype)
}

fn weight_tensor<T: Pod + Send + Sync>(dw: Vec<T>, weight_shape: &Shape, dtype: DType) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(dw),
        Layout::contiguous(weight_shape.clone()),
        dtype,
    )
}

fn parallelism() -> gemm::Parallelism {
    #[cfg(feature = "rayon")]
    {
        gemm::Parallelism::Rayon(0)
    }
    #[cfg(not(feature = "rayon"))]
    {
        gemm::Parallelism::None
    }
}

struct Geometry {
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    kernel_h: usize,
    kernel_w: usize,
    stride: [usize; 2],
    dilation: [usize; 2],
    padding: [usize; 2],
}

/// Samples per chunk: as many as keep the column buffer within [`MAX_COLS`], at least one.
fn chunk_samples(rows: usize, spatial: usize, batch: usize) -> usize {
    (MAX_COLS / (rows * spatial)).clamp(1, batch)
}

impl Geometry {
    /// Input and output `[h, w]`, kernel `[kh, kw]`; padding from the start of each axis.
    fn new(
        [in_h, in_w]: [usize; 2],
        [out_h, out_w]: [usize; 2],
        [kernel_h, kernel_w]: [usize; 2],
        options: &ConvOptions<2>,
    ) -> Self {
        Self {
            in_h,
            in_w,
            out_h,
            out_w,
            kernel_h,
            kernel_w,
            stride: options.stride,
            dilation: options.dilation,
            padding: options.padding_begin(),
        }
    }

    /// The output positions `o` in `0..out` whose input `o·s + k·d − p` lies in `0..input`.
    fn valid(out: usize, input: usize, k: usize, s: usize, d: usize, p: usize) -> (usize, usize) {
        let offset = (k * d) as isize - p as isize;
        // o·s + offset >= 0  <=>  o >= ceil(-offset / s)
        let lo = if offset >= 0 {
            0
        } else {
            ((-offset) as usize).div_ceil(s)
        };
        // o·s + offset <= input − 1  <=>  o <= (input − 1 − offset) / s
        let last = input as isize - 1 - offset;
        let hi = if last < 0 { 0 } else { last as usize / s + 1 };
        (lo.min(out), hi.min(out).max(lo.min(out)))
    }
}

/// Fill `cols[(c, ky, kx), (b, oh, ow)]` for samples `b0..b0 + nb` (zeros where the kernel
/// reads padding). Rows are independent, so they are built in parallel.
fn im2col_rows<T: Pod + Zero + Send + Sync>(cols: &mut [T], x: &[T], b0: usize, nb: usize, c_in: usize, geo: &Geometry) {
    let spatial = geo.out_h * geo.out_w;
    let n = nb * spatial;
    let plane = geo.in_h * geo.in_w;
    let per_channel = geo.kernel_h * geo.kernel_w;
    let fill = |r: usize, row: &mut [T]| {
        let c = r / per_channel;
        let ky = (r % per_channel) / geo.kernel_w;
        let kx = r % geo.kernel_w;
        let [sh, sw] = geo.stride;
        let [dh, dw] = geo.dilation;
        let [ph, pw] = geo.padding;
        let (oh_lo, oh_hi) = Geometry::valid(geo.out_h, geo.in_h, ky, sh, dh, ph);
        let (ow_lo, ow_hi) = Geometry::valid(geo.out_w, geo.in_w, kx, sw, dw, pw);
        for (bl, dst) in row.chunks_exact_mut(spatial).enumerate() {
            let src = &x[((b0 + bl) * c_in + c) * plane..][..plane];
            for oh in 0..geo.out_h {
                let out_row = &mut dst[oh * geo.out_w..(oh + 1) * geo.out_w];
                if oh < oh_lo || oh >= oh_hi {
                    out_row.fill(T::zero());
                    continue;
                }
                let ih = oh * sh + ky * dh - ph;
                let in_row = &src[ih * geo.in_w..(ih + 1) * geo.in_w];
                out_row[..ow_lo].fill(T::zero());
                out_row[ow_hi..].fill(T::zero());
                if sw == 1 {
                    let iw0 = ow_lo + kx * dw - pw;
                    out_row[ow_lo..ow_hi].copy_from_slice(&in_row[iw0..iw0 + (ow_hi - ow_lo)]);
                } else {
                    for ow in ow_lo..ow_hi {
                        out_row[ow] = in_row[ow * sw + kx * dw - pw];
                    }
                }
            }
        }
    };
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        cols.par_chunks_exact_mut(n)
            .enumerate()
            .for_each(|(r, row)| fill(r, row));
    }
    #[cfg(not(feature = "rayon"))]
    for (r, row) in cols.chunks_exact_mut(n).enumerate() {
        fill(r, row);
    }
}
