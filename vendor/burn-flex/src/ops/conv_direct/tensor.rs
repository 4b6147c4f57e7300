//! Flex tensors in and out of the direct convolution: which calls it takes, and their
//! shapes. f32, one group, an x86-64 CPU with AVX2 + FMA; the rest stays on the other paths.

use alloc::vec::Vec;

use burn_backend::DType;
use burn_backend::ops::ConvOptions;
use burn_std::{Bytes, Shape};

use super::{Geometry, Isa};
use crate::{FlexTensor, Layout};

/// The ISA the direct convolution runs on for these operands, or `None` for the other paths
/// (other dtypes, groups, and CPUs without AVX2 + FMA, where the scalar kernel would be slower
/// than gemm).
pub(crate) fn usable(x: &FlexTensor, options: &ConvOptions<2>) -> Option<Isa> {
    let isa = Isa::detect();
    (x.dtype() == DType::F32 && options.groups == 1 && isa != Isa::Scalar).then_some(isa)
}

fn geometry(
    x_shape: &Shape,
    w_shape: &Shape,
    output: [usize; 2],
    options: &ConvOptions<2>,
) -> Geometry {
    let [batch, c_in, h, w]: [usize; 4] = x_shape.dims();
    let [c_out, w_in, kh, kw]: [usize; 4] = w_shape.dims();
    assert_eq!(
        w_in, c_in,
        "conv2d: weight has {w_in} input channels, x {c_in}"
    );
    Geometry {
        batch,
        c_in,
        c_out,
        input: [h, w],
        output,
        kernel: [kh, kw],
        stride: options.stride,
        dilation: options.dilation,
        padding: options.padding_begin(),
    }
}

fn tensor(data: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(data),
        Layout::contiguous(Shape::from(shape.to_vec())),
        DType::F32,
    )
}

/// Forward: `[batch, c_out, oh, ow]`, bias added after the sum (as the gemm path does).
pub(crate) fn conv2d(
    isa: Isa,
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let x_shape = x.layout().shape().clone();
    let [_, _, h, w]: [usize; 4] = x_shape.dims();
    let [_, _, kh, kw]: [usize; 4] = weight.layout().shape().dims();
    let size = |i: usize, input: usize, kernel: usize| {
        let span = options.dilation[i] * (kernel - 1) + 1;
        let padded = input + options.padding[i].0 + options.padding[i].1;
        if padded < span {
            0
        } else {
            (padded - span) / options.stride[i] + 1
        }
    };
    let output = [size(0, h, kh), size(1, w, kw)];
    let g = geometry(&x_shape, weight.layout().shape(), output, options);
    let mut out = super::forward(isa, x.storage(), weight.storage(), &g);
    let spatial = output[0] * output[1];
    if let Some(bias) = bias.filter(|_| spatial > 0) {
        let bias = bias.to_contiguous();
        let bias: &[f32] = bias.storage();
        for planes in out.chunks_exact_mut(g.c_out * spatial) {
            for (plane, &b) in planes.chunks_exact_mut(spatial).zip(bias) {
                for v in plane {
                    *v += b;
                }
            }
        }
    }
    tensor(out, [g.batch, g.c_out, output[0], output[1]])
}

/// Input gradient: the shape of `x`.
pub(crate) fn conv2d_x_backward(
    isa: Isa,
    x: &FlexTensor,
    weight: FlexTensor,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (weight, output_grad) = (weight.to_contiguous(), output_grad.to_contiguous());
    let [_, _, oh, ow]: [usize; 4] = output_grad.layout().shape().dims();
    let g = geometry(
        x.layout().shape(),
        weight.layout().shape(),
        [oh, ow],
        options,
    );
    let dx = super::input_grad(isa, output_grad.storage(), weight.storage(), &g);
    tensor(dx, [g.batch, g.c_in, g.input[0], g.input[1]])
}

/// Weight gradient: `[c_out, c_in, kh, kw]`.
pub(crate) fn conv2d_weight_backward(
    isa: Isa,
    x: FlexTensor,
    weight_shape: &Shape,
    output_grad: FlexTensor,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let (x, output_grad) = (x.to_contiguous(), output_grad.to_contiguous());
    let [_, _, oh, ow]: [usize; 4] = output_grad.layout().shape().dims();
    let g = geometry(x.layout().shape(), weight_shape, [oh, ow], options);
    let dw = super::weight_grad(isa, x.storage(), output_grad.storage(), &g);
    tensor(dw, [g.c_out, g.c_in, g.kernel[0], g.kernel[1]])
}
