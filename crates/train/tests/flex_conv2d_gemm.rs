//! The forward convolution and its weight gradient in the vendored burn-flex
//! (vendor/burn-flex/LOSSBENCH.md) — in f32 the direct kernels (their own tests:
//! flex_conv2d_direct.rs), in f64 and half precision im2col + gemm — and upstream's transposed
//! convolution, against their definitions summed in f64, directly and through autodiff
//! (whose f32 input gradient is the direct kernels' too).

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module::{conv_transpose2d, conv2d, conv2d_weight_backward};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};

/// Deterministic values in [-1, 1].
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = lossbench_rng::Stream::new(seed, lossbench_rng::Purpose::Synthetic, 11);
    (0..n).map(|_| 2.0 * s.next_f64() - 1.0).collect()
}

struct Case {
    batch: usize,
    c_in: usize,
    c_out: usize,
    hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    padding: [usize; 2],
    groups: usize,
}

impl Case {
    fn out(&self) -> [usize; 2] {
        [0, 1].map(|i| {
            (self.hw[i] + 2 * self.padding[i] - self.dilation[i] * (self.kernel[i] - 1) - 1)
                / self.stride[i]
                + 1
        })
    }

    fn options(&self) -> ConvOptions<2> {
        ConvOptions::new(self.stride, self.padding, self.dilation, self.groups)
    }

    fn x_shape(&self) -> [usize; 4] {
        [self.batch, self.c_in, self.hw[0], self.hw[1]]
    }

    fn g_shape(&self) -> [usize; 4] {
        let [oh, ow] = self.out();
        [self.batch, self.c_out, oh, ow]
    }

    fn w_shape(&self) -> [usize; 4] {
        [
            self.c_out,
            self.c_in / self.groups,
            self.kernel[0],
            self.kernel[1],
        ]
    }

    /// Every multiply of the convolution: `f(x index, weight index, output index)` for each
    /// (sample, output channel, output pixel, input channel of its group, kernel tap) whose
    /// input pixel is inside the image. Both references are sums over these.
    fn for_each_tap(&self, mut f: impl FnMut(usize, usize, usize)) {
        let [b, ci, h, w] = self.x_shape();
        let [_, co, oh, ow] = self.g_shape();
        let [_, cpg, kh, kw] = self.w_shape();
        let opg = co / self.groups;
        let (s, d, p) = (self.stride, self.dilation, self.padding);
        for bi in 0..b {
            for o in 0..co {
                for y in 0..oh {
                    for xo in 0..ow {
                        for c in 0..cpg {
                            let cx = (o / opg) * cpg + c;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (y * s[0] + ky * d[0]) as isize - p[0] as isize;
                                    let ix = (xo * s[1] + kx * d[1]) as isize - p[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    f(
                                        ((bi * ci + cx) * h + iy as usize) * w + ix as usize,
                                        ((o * cpg + c) * kh + ky) * kw + kx,
                                        ((bi * co + o) * oh + y) * ow + xo,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// y[b, o, y, x] = bias[o] + Σ_c,ky,kx w[o, c, ky, kx] · x[b, group(o)·cpg + c, y·s + ky·d − p, …],
    /// and beside each value the sum of the terms' magnitudes (the scale of rounding errors).
    fn forward_reference(&self, x: &[f64], w: &[f64], bias: &[f64]) -> Vec<(f64, f64)> {
        let [_, co, oh, ow] = self.g_shape();
        let mut y: Vec<(f64, f64)> = (0..self.batch * co * oh * ow)
            .map(|i| (bias[(i / (oh * ow)) % co], bias[(i / (oh * ow)) % co].abs()))
            .collect();
        self.for_each_tap(|xi, wi, yi| {
            let term = x[xi] * w[wi];
            y[yi].0 += term;
            y[yi].1 += term.abs();
        });
        y
    }

    /// The transposed convolution that is this convolution's input gradient: its output
    /// padding restores the input size the strided forward rounded away.
    fn transposed_options(&self) -> ConvTransposeOptions<2> {
        let out = self.out();
        let padding_out = [0, 1].map(|i| {
            self.hw[i] + 2 * self.padding[i]
                - ((out[i] - 1) * self.stride[i] + self.dilation[i] * (self.kernel[i] - 1) + 1)
        });
        ConvTransposeOptions::new(
            self.stride,
            self.padding,
            padding_out,
            self.dilation,
            self.groups,
        )
    }

    /// dx[b, c, iy, ix] = bias[c] + Σ g[b, o, y, x] · w[o, c − group(o)·cpg, ky, kx] over the
    /// taps that read (iy, ix), with the sum of the terms' magnitudes beside each value.
    fn input_reference(&self, w: &[f64], g: &[f64], bias: &[f64]) -> Vec<(f64, f64)> {
        let [_, ci, h, wd] = self.x_shape();
        let mut dx: Vec<(f64, f64)> = (0..self.batch * ci * h * wd)
            .map(|i| {
                let b = bias[(i / (h * wd)) % ci];
                (b, b.abs())
            })
            .collect();
        self.for_each_tap(|xi, wi, yi| {
            let term = w[wi] * g[yi];
            dx[xi].0 += term;
            dx[xi].1 += term.abs();
        });
        dx
    }

    /// dW[o, c, ky, kx] = Σ_b,y,x g[b, o, y, x] · x[b, group(o)·cpg + c, y·s + ky·d − p, …],
    /// with the sum of the terms' magnitudes beside each value.
    fn reference(&self, x: &[f64], g: &[f64]) -> Vec<(f64, f64)> {
        let mut dw = vec![(0.0, 0.0); self.w_shape().iter().product()];
        self.for_each_tap(|xi, wi, yi| {
            let term = x[xi] * g[yi];
            dw[wi].0 += term;
            dw[wi].1 += term.abs();
        });
        dw
    }
}

fn check_forward(case: &Case, dtype: DType, tolerance: f64, with_bias: bool) {
    let device = Device::flex();
    let x = values(case.x_shape().iter().product(), 1);
    let w = values(case.w_shape().iter().product(), 3);
    let bias = if with_bias {
        values(case.c_out, 4)
    } else {
        vec![0.0; case.c_out]
    };
    let want = case.forward_reference(&x, &w, &bias);
    let on = (&device, dtype);
    let xt = Tensor::<4>::from_data(TensorData::new(x, case.x_shape()), on);
    let wt = Tensor::<4>::from_data(TensorData::new(w, case.w_shape()), on);
    let bt = with_bias.then(|| Tensor::<1>::from_data(TensorData::new(bias, [case.c_out]), on));
    let got = conv2d(xt, wt, bt, case.options());
    assert_eq!(got.dims(), case.g_shape());
    let got: Vec<f64> = got.into_data().try_into_vec_as::<f64>().expect("f64 data");
    assert_close(&got, &want, tolerance, case);
}

fn check(case: &Case, dtype: DType, tolerance: f64) {
    let device = Device::flex();
    let x = values(case.x_shape().iter().product(), 1);
    let g = values(case.g_shape().iter().product(), 2);
    let want = case.reference(&x, &g);
    let on = (&device, dtype);
    let xt = Tensor::<4>::from_data(TensorData::new(x, case.x_shape()), on);
    let gt = Tensor::<4>::from_data(TensorData::new(g, case.g_shape()), on);
    let wt = Tensor::<4>::zeros(case.w_shape(), on);
    let got = conv2d_weight_backward(xt, wt, gt, case.options());
    assert_eq!(got.dims(), case.w_shape());
    let got: Vec<f64> = got.into_data().try_into_vec_as::<f64>().expect("f64 data");
    assert_close(&got, &want, tolerance, case);
}

/// The input gradient as burn computes it, a transposed convolution of the output gradient
/// with the forward's kernel (and, to cover the bias, a bias on its `c_in` outputs).
fn check_input_gradient(case: &Case, dtype: DType, tolerance: f64, with_bias: bool) {
    let device = Device::flex();
    let w = values(case.w_shape().iter().product(), 3);
    let g = values(case.g_shape().iter().product(), 2);
    let bias = if with_bias {
        values(case.c_in, 4)
    } else {
        vec![0.0; case.c_in]
    };
    let want = case.input_reference(&w, &g, &bias);
    let on = (&device, dtype);
    let gt = Tensor::<4>::from_data(TensorData::new(g, case.g_shape()), on);
    let wt = Tensor::<4>::from_data(TensorData::new(w, case.w_shape()), on);
    let bt = with_bias.then(|| Tensor::<1>::from_data(TensorData::new(bias, [case.c_in]), on));
    let got = conv_transpose2d(gt, wt, bt, case.transposed_options());
    assert_eq!(got.dims(), case.x_shape());
    let got: Vec<f64> = got.into_data().try_into_vec_as::<f64>().expect("f64 data");
    assert_close(&got, &want, tolerance, case);
}

/// |got − want| ≤ tolerance · (1 + Σ|terms|): summation order differs, so the error scales
/// with the magnitudes summed, not with the (possibly cancelled) result.
fn assert_close(got: &[f64], want: &[(f64, f64)], tolerance: f64, case: &Case) {
    assert_eq!(got.len(), want.len());
    for (i, (a, (e, magnitude))) in got.iter().zip(want).enumerate() {
        assert!(
            (a - e).abs() <= tolerance * (1.0 + magnitude),
            "element {i}: {a} vs {e} (batch {}, c_in {}, c_out {}, hw {:?}, kernel {:?}, stride {:?}, dilation {:?}, padding {:?}, groups {})",
            case.batch,
            case.c_in,
            case.c_out,
            case.hw,
            case.kernel,
            case.stride,
            case.dilation,
            case.padding,
            case.groups
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn case(
    batch: usize,
    c_in: usize,
    c_out: usize,
    hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    padding: [usize; 2],
    groups: usize,
) -> Case {
    Case {
        batch,
        c_in,
        c_out,
        hw,
        kernel,
        stride,
        dilation,
        padding,
        groups,
    }
}

fn geometries() -> Vec<Case> {
    vec![
        // the CIFAR ResNet 3×3 and its stride-2 down-sampling
        case(3, 4, 5, [7, 7], [3, 3], [1, 1], [1, 1], [1, 1], 1),
        case(2, 3, 6, [8, 8], [3, 3], [2, 2], [1, 1], [1, 1], 1),
        // 1×1 (bottlenecks) and its strided shortcut
        case(2, 5, 4, [6, 9], [1, 1], [1, 1], [1, 1], [0, 0], 1),
        case(2, 3, 2, [9, 9], [1, 1], [2, 2], [1, 1], [0, 0], 1),
        // rectangular kernel, mixed strides, dilation, one-sided padding
        case(1, 2, 3, [10, 7], [3, 2], [2, 1], [2, 1], [2, 0], 1),
        // kernel as large as the padded input
        case(2, 2, 2, [5, 5], [5, 5], [1, 1], [1, 1], [2, 2], 1),
        // (9 + 2 − 3) is odd: the last input row is never read with stride 2
        case(2, 3, 3, [9, 9], [3, 3], [2, 2], [1, 1], [1, 1], 1),
        // 16 input channels × 3×3: the smallest reduction the gemm forward takes (>= 64)
        case(2, 8, 3, [5, 5], [3, 3], [1, 1], [1, 1], [1, 1], 1),
        case(2, 16, 3, [5, 5], [1, 1], [1, 1], [1, 1], [0, 0], 1),
        case(2, 64, 5, [4, 4], [1, 1], [1, 1], [1, 1], [0, 0], 1),
        // groups, and depthwise
        case(2, 6, 4, [6, 6], [3, 3], [1, 1], [1, 1], [1, 1], 2),
        case(2, 4, 4, [5, 5], [3, 3], [1, 1], [1, 1], [1, 1], 4),
    ]
}

#[test]
fn weight_gradient_matches_the_definition_in_f32() {
    for c in geometries() {
        check(&c, DType::F32, 1e-6);
    }
}

#[test]
fn weight_gradient_matches_the_definition_in_f64() {
    for c in geometries() {
        check(&c, DType::F64, 1e-14);
    }
}

#[test]
fn weight_gradient_in_half_precision() {
    // Half precision keeps ~3 significant digits; the point is the dtype dispatch.
    for c in geometries().iter().take(3) {
        check(c, DType::F16, 1e-2);
        check(c, DType::BF16, 2e-2);
    }
}

#[test]
fn forward_matches_the_definition() {
    for c in geometries() {
        check_forward(&c, DType::F32, 1e-6, false);
        check_forward(&c, DType::F32, 1e-6, true);
        check_forward(&c, DType::F64, 1e-14, true);
    }
}

#[test]
fn forward_accumulates_over_sample_chunks() {
    check_forward(
        &case(5, 128, 3, [64, 64], [3, 3], [1, 1], [1, 1], [1, 1], 1),
        DType::F32,
        1e-6,
        true,
    );
}

#[test]
fn weight_gradient_accumulates_over_sample_chunks() {
    // 128 · 9 rows × 64² positions = 4.7 Mi elements a sample, over the 2 Mi-element column
    // buffer: one sample a chunk, five chunks.
    check(
        &case(5, 128, 2, [64, 64], [3, 3], [1, 1], [1, 1], [1, 1], 1),
        DType::F32,
        1e-6,
    );
}

#[test]
fn autodiff_uses_it_for_the_weight_gradient() {
    // loss = Σ conv2d(x, w) ⊙ g  ⇒  ∂loss/∂w = conv2d_weight_backward(x, g).
    let c = case(2, 3, 4, [6, 6], [3, 3], [2, 2], [1, 1], [1, 1], 1);
    let device = Device::flex().autodiff();
    let x = values(c.x_shape().iter().product(), 1);
    let g = values(c.g_shape().iter().product(), 2);
    let want = c.reference(&x, &g);
    let xt = Tensor::<4>::from_data(TensorData::new(x, c.x_shape()), &device);
    let gt = Tensor::<4>::from_data(TensorData::new(g, c.g_shape()), &device);
    let w = Tensor::<4>::from_data(
        TensorData::new(values(c.w_shape().iter().product(), 3), c.w_shape()),
        &device,
    )
    .require_grad();
    let loss = (conv2d(xt, w.clone(), None, c.options()) * gt).sum();
    let grads = loss.backward();
    let got: Vec<f64> = w
        .grad(&grads)
        .expect("weight gradient")
        .into_data()
        .try_into_vec_as::<f64>()
        .expect("f64 data");
    assert_close(&got, &want, 1e-6, &c);
}

/// Input-gradient geometries (upstream's transposed convolution, per sample gemm + col2im),
/// the ResNet shapes among them: strides, dilation, 1×1, groups, padding wider than the
/// kernel reaches.
fn input_gradient_geometries() -> Vec<Case> {
    vec![
        case(3, 4, 16, [7, 7], [3, 3], [1, 1], [1, 1], [1, 1], 1),
        case(2, 3, 16, [8, 8], [3, 3], [2, 2], [1, 1], [1, 1], 1),
        case(2, 5, 16, [6, 9], [1, 1], [1, 1], [1, 1], [0, 0], 1),
        case(2, 3, 17, [9, 9], [1, 1], [2, 2], [1, 1], [0, 0], 1),
        case(1, 2, 16, [10, 7], [3, 2], [2, 1], [2, 1], [2, 0], 1),
        case(2, 2, 16, [5, 5], [5, 5], [1, 1], [1, 1], [2, 2], 1),
        case(2, 3, 16, [9, 9], [3, 3], [2, 2], [1, 1], [1, 1], 1),
        case(2, 8, 64, [4, 4], [3, 3], [1, 1], [1, 1], [1, 1], 1),
        case(2, 6, 32, [6, 6], [3, 3], [1, 1], [1, 1], [1, 1], 2),
        // dilation, and padding wider than the kernel reaches
        case(2, 3, 16, [7, 7], [3, 3], [1, 1], [2, 2], [1, 1], 1),
        case(2, 3, 16, [5, 5], [1, 1], [1, 1], [1, 1], [1, 1], 1),
        // few channels
        case(2, 4, 5, [5, 5], [3, 3], [1, 1], [1, 1], [1, 1], 1),
    ]
}

#[test]
fn input_gradient_matches_the_definition() {
    for c in input_gradient_geometries() {
        check_input_gradient(&c, DType::F32, 1e-6, false);
        check_input_gradient(&c, DType::F32, 1e-6, true);
        check_input_gradient(&c, DType::F64, 1e-14, true);
    }
}

#[test]
fn input_gradient_accumulates_over_sample_chunks() {
    // A larger plane (40×40) and reduction (128 input channels × 3×3) than the cases above.
    check_input_gradient(
        &case(3, 128, 16, [40, 40], [3, 3], [1, 1], [1, 1], [1, 1], 1),
        DType::F32,
        1e-6,
        true,
    );
}

/// ∂/∂x of Σ conv2d(x, w) ⊙ g through autodiff, in `dtype`.
fn autodiff_input_gradient(c: &Case, options: ConvOptions<2>, dtype: DType) -> Vec<f64> {
    let device = Device::flex().autodiff();
    let on = (&device, dtype);
    let tensor = |data: Vec<f64>, shape: [usize; 4]| {
        Tensor::<4>::from_data(TensorData::new(data, shape), on)
    };
    let x = tensor(values(c.x_shape().iter().product(), 1), c.x_shape()).require_grad();
    let w = tensor(values(c.w_shape().iter().product(), 3), c.w_shape());
    let y = conv2d(x.clone(), w, None, options);
    let g = tensor(values(y.shape().num_elements(), 2), y.dims());
    let grads = (y * g).sum().backward();
    x.grad(&grads)
        .expect("input gradient")
        .into_data()
        .try_into_vec_as::<f64>()
        .expect("f64 data")
}

#[test]
fn input_gradient_outside_the_direct_kernels() {
    // f64 and grouped convolutions take burn's default input gradient (a transposed
    // convolution); asymmetric padding pads the input and crops the gradient back.
    for c in [
        case(2, 3, 16, [6, 6], [3, 3], [2, 2], [1, 1], [1, 1], 1),
        case(2, 6, 4, [6, 6], [3, 3], [1, 1], [1, 1], [1, 1], 2),
    ] {
        for dtype in [DType::F64, DType::F32] {
            let w = values(c.w_shape().iter().product(), 3);
            let g = values(c.g_shape().iter().product(), 2);
            let want = c.input_reference(&w, &g, &vec![0.0; c.c_in]);
            let tolerance = if dtype == DType::F64 { 1e-14 } else { 1e-6 };
            assert_close(
                &autodiff_input_gradient(&c, c.options(), dtype),
                &want,
                tolerance,
                &c,
            );
        }
    }
    // Asymmetric padding: the f64 default path against the f32 direct one (which has its own
    // f64 reference test), within f32 rounding.
    let c = case(2, 5, 7, [7, 8], [3, 3], [2, 1], [1, 1], [0, 0], 1);
    let options = ConvOptions::new_with_padding([2, 1], [(1, 0), (2, 1)], [1, 1], 1);
    let f64_default = autodiff_input_gradient(&c, options.clone(), DType::F64);
    let f32_direct = autodiff_input_gradient(&c, options, DType::F32);
    assert_eq!(f64_default.len(), c.x_shape().iter().product::<usize>());
    for (i, (a, b)) in f64_default.iter().zip(&f32_direct).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
            "element {i}: {a} vs {b}"
        );
    }
}

#[test]
fn autodiff_uses_it_for_the_input_gradient() {
    // loss = Σ conv2d(x, w) ⊙ g  ⇒  ∂loss/∂x is the transposed convolution of g with w.
    for c in [
        case(2, 3, 16, [6, 6], [3, 3], [2, 2], [1, 1], [1, 1], 1),
        case(2, 8, 32, [5, 5], [3, 3], [1, 1], [1, 1], [1, 1], 1),
    ] {
        let device = Device::flex().autodiff();
        let w = values(c.w_shape().iter().product(), 3);
        let g = values(c.g_shape().iter().product(), 2);
        let want = c.input_reference(&w, &g, &vec![0.0; c.c_in]);
        let x = Tensor::<4>::from_data(
            TensorData::new(values(c.x_shape().iter().product(), 1), c.x_shape()),
            &device,
        )
        .require_grad();
        let gt = Tensor::<4>::from_data(TensorData::new(g, c.g_shape()), &device);
        let wt = Tensor::<4>::from_data(TensorData::new(w, c.w_shape()), &device);
        let loss = (conv2d(x.clone(), wt, None, c.options()) * gt).sum();
        let grads = loss.backward();
        let got: Vec<f64> = x
            .grad(&grads)
            .expect("input gradient")
            .into_data()
            .try_into_vec_as::<f64>()
            .expect("f64 data");
        assert_close(&got, &want, 1e-6, &c);
    }
}
