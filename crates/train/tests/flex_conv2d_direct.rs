//! flex's f32 convolutions (vendor/burn-flex/src/ops/conv_direct): the forward pass, the input
//! gradient and the weight gradient on every convolution shape of the CIFAR ResNet-18 and
//! ResNet-50, against their definitions summed in f64; and bit for bit against the order of
//! operations the kernels promise, written out in scalar f32 code: each output's products in
//! order, one fused multiply-add at a time, in `⌈k / 512⌉` equal blocks whose sums are added
//! in order (gemm's blocking, so the forward pass keeps the bits of the im2col + gemm path it
//! replaced — checked against gemm itself too). A reference with no vector width in it, met
//! by this CPU's kernels, is what makes the AVX2 and AVX-512 kernels agree; the last test runs
//! both on a CPU that has both.

// gemm's entry point is a raw-pointer function (the im2col + gemm reference below), on slices
// sized to the strides passed.
#![allow(unsafe_code)]

use burn::prelude::*;
use burn::tensor::module::{conv2d, conv2d_weight_backward};
use burn::tensor::ops::ConvOptions;
use lossbench_model::{Arch, ResNetConfig};
use support::child_bits;

mod support;

/// Deterministic values in [-1, 1], of several magnitudes so that the order of additions
/// shows in the last bits.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = lossbench_rng::Stream::new(seed, lossbench_rng::Purpose::Synthetic, 13);
    (0..n)
        .map(|i| ((2.0 * s.next_f64() - 1.0) * [1.0, 1e-3, 30.0][i % 3]) as f32)
        .collect()
}

#[derive(Clone, Copy, Debug)]
struct Conv {
    batch: usize,
    c_in: usize,
    c_out: usize,
    hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    /// Before each axis.
    padding: [usize; 2],
    /// After each axis (asymmetric padding where it differs).
    padding_end: [usize; 2],
}

impl Conv {
    fn square(
        batch: usize,
        c_in: usize,
        c_out: usize,
        hw: usize,
        kernel: usize,
        stride: usize,
    ) -> Self {
        Conv {
            batch,
            c_in,
            c_out,
            hw: [hw, hw],
            kernel: [kernel, kernel],
            stride: [stride, stride],
            dilation: [1, 1],
            padding: [kernel / 2, kernel / 2],
            padding_end: [kernel / 2, kernel / 2],
        }
    }

    fn out(&self) -> [usize; 2] {
        [0, 1].map(|i| {
            (self.hw[i] + self.padding[i] + self.padding_end[i]
                - self.dilation[i] * (self.kernel[i] - 1)
                - 1)
                / self.stride[i]
                + 1
        })
    }

    fn x_shape(&self) -> [usize; 4] {
        [self.batch, self.c_in, self.hw[0], self.hw[1]]
    }

    fn w_shape(&self) -> [usize; 4] {
        [self.c_out, self.c_in, self.kernel[0], self.kernel[1]]
    }

    fn g_shape(&self) -> [usize; 4] {
        let [oh, ow] = self.out();
        [self.batch, self.c_out, oh, ow]
    }

    fn options(&self) -> ConvOptions<2> {
        let padding = [0, 1].map(|i| (self.padding[i], self.padding_end[i]));
        ConvOptions::new_with_padding(self.stride, padding, self.dilation, 1)
    }

    /// The input pixel that output `(oy, ox)` reads through tap `(ky, kx)`, if inside.
    fn input_at(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let iy = (oy * self.stride[0] + ky * self.dilation[0]) as isize - self.padding[0] as isize;
        let ix = (ox * self.stride[1] + kx * self.dilation[1]) as isize - self.padding[1] as isize;
        (iy >= 0 && ix >= 0 && (iy as usize) < self.hw[0] && (ix as usize) < self.hw[1])
            .then_some((iy as usize, ix as usize))
    }
}

/// `Σ_k term(k)` in the kernels' order: `⌈k / 512⌉` equal blocks (the last shorter), each
/// summed from zero by fused multiply-adds in order, the block sums added in order.
fn ordered_sum(k: usize, term: impl Fn(usize) -> (f32, f32)) -> f32 {
    let kc = k.div_ceil(k.div_ceil(512).max(1)).max(1);
    let mut total = 0.0f32;
    for (i, start) in (0..k).step_by(kc).enumerate() {
        let mut block = 0.0f32;
        for kk in start..(start + kc).min(k) {
            let (a, b) = term(kk);
            block = a.mul_add(b, block);
        }
        total = if i == 0 { block } else { total + block };
    }
    total
}

struct Tensors {
    x: Vec<f32>,
    w: Vec<f32>,
    g: Vec<f32>,
}

impl Tensors {
    fn new(c: &Conv) -> Self {
        let n = |s: [usize; 4]| s.iter().product();
        Tensors {
            x: values(n(c.x_shape()), 1),
            w: values(n(c.w_shape()), 2),
            g: values(n(c.g_shape()), 3),
        }
    }

    fn x(&self, c: &Conv, b: usize, ch: usize, y: usize, x: usize) -> f32 {
        self.x[((b * c.c_in + ch) * c.hw[0] + y) * c.hw[1] + x]
    }

    fn w(&self, c: &Conv, o: usize, ch: usize, ky: usize, kx: usize) -> f32 {
        self.w[((o * c.c_in + ch) * c.kernel[0] + ky) * c.kernel[1] + kx]
    }

    fn g(&self, c: &Conv, b: usize, o: usize, y: usize, x: usize) -> f32 {
        let [oh, ow] = c.out();
        self.g[((b * c.c_out + o) * oh + y) * ow + x]
    }

    /// The forward pass in the kernels' order: over `(c, ky, kx)`, padding read as zeros.
    fn forward_in_order(&self, c: &Conv) -> Vec<f32> {
        let [oh, ow] = c.out();
        let [kh, kw] = c.kernel;
        let mut y = Vec::new();
        for b in 0..c.batch {
            for o in 0..c.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        y.push(ordered_sum(c.c_in * kh * kw, |k| {
                            let (ch, ky, kx) = (k / (kh * kw), (k / kw) % kh, k % kw);
                            let x = c
                                .input_at(oy, ox, ky, kx)
                                .map_or(0.0, |(iy, ix)| self.x(c, b, ch, iy, ix));
                            (self.w(c, o, ch, ky, kx), x)
                        }));
                    }
                }
            }
        }
        y
    }

    /// The input gradient in the kernels' order: input pixel `(iy, ix)` sums over `(o, ky,
    /// kx)` for the taps whose stride phase reaches it (`iy + p − ky·d ≡ 0 mod s`), output
    /// gradient pixels outside the image read as zeros.
    fn input_grad_in_order(&self, c: &Conv) -> Vec<f32> {
        let [oh, ow] = c.out();
        let reaching = |i: usize, axis: usize| -> Vec<(usize, isize)> {
            (0..c.kernel[axis])
                .filter_map(|t| {
                    let shift = (i + c.padding[axis]) as isize - (t * c.dilation[axis]) as isize;
                    let s = c.stride[axis] as isize;
                    (shift.rem_euclid(s) == 0).then(|| (t, shift.div_euclid(s)))
                })
                .collect()
        };
        let mut dx = Vec::new();
        for b in 0..c.batch {
            for ch in 0..c.c_in {
                for iy in 0..c.hw[0] {
                    for ix in 0..c.hw[1] {
                        let (ty, tx) = (reaching(iy, 0), reaching(ix, 1));
                        let taps = ty.len() * tx.len();
                        dx.push(ordered_sum(c.c_out * taps, |k| {
                            let (o, t) = (k / taps, k % taps);
                            let ((ky, gy), (kx, gx)) = (ty[t / tx.len()], tx[t % tx.len()]);
                            let inside =
                                gy >= 0 && gx >= 0 && (gy as usize) < oh && (gx as usize) < ow;
                            let g = if inside {
                                self.g(c, b, o, gy as usize, gx as usize)
                            } else {
                                0.0
                            };
                            (self.w(c, o, ch, ky, kx), g)
                        }));
                    }
                }
            }
        }
        dx
    }

    /// The weight gradient in the kernels' order: over the output pixels `(b, oy, ox)`.
    fn weight_grad_in_order(&self, c: &Conv) -> Vec<f32> {
        let [oh, ow] = c.out();
        let [kh, kw] = c.kernel;
        let mut dw = Vec::new();
        for o in 0..c.c_out {
            for ch in 0..c.c_in {
                for ky in 0..kh {
                    for kx in 0..kw {
                        dw.push(ordered_sum(c.batch * oh * ow, |k| {
                            let (b, oy, ox) = (k / (oh * ow), (k / ow) % oh, k % ow);
                            let x = c
                                .input_at(oy, ox, ky, kx)
                                .map_or(0.0, |(iy, ix)| self.x(c, b, ch, iy, ix));
                            (self.g(c, b, o, oy, ox), x)
                        }));
                    }
                }
            }
        }
        dw
    }

    /// The three passes in f64 by definition, with the sum of the terms' magnitudes beside
    /// each value (the scale of f32 rounding).
    fn references(&self, c: &Conv) -> [Vec<(f64, f64)>; 3] {
        let [oh, ow] = c.out();
        let mut y = vec![(0.0, 0.0); self.g.len()];
        let mut dx = vec![(0.0, 0.0); self.x.len()];
        let mut dw = vec![(0.0, 0.0); self.w.len()];
        let add = |acc: &mut (f64, f64), a: f32, b: f32| {
            let term = f64::from(a) * f64::from(b);
            acc.0 += term;
            acc.1 += term.abs();
        };
        for b in 0..c.batch {
            for o in 0..c.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let yi = ((b * c.c_out + o) * oh + oy) * ow + ox;
                        for ch in 0..c.c_in {
                            for ky in 0..c.kernel[0] {
                                for kx in 0..c.kernel[1] {
                                    let Some((iy, ix)) = c.input_at(oy, ox, ky, kx) else {
                                        continue;
                                    };
                                    let xi = ((b * c.c_in + ch) * c.hw[0] + iy) * c.hw[1] + ix;
                                    let wi =
                                        ((o * c.c_in + ch) * c.kernel[0] + ky) * c.kernel[1] + kx;
                                    add(&mut y[yi], self.w[wi], self.x[xi]);
                                    add(&mut dx[xi], self.w[wi], self.g[yi]);
                                    add(&mut dw[wi], self.g[yi], self.x[xi]);
                                }
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw]
    }
}

/// The three passes through burn on flex: forward and weight gradient directly, the input
/// gradient through autodiff (∂/∂x of Σ conv2d(x, w) ⊙ g).
fn flex_passes(c: &Conv, t: &Tensors) -> [Vec<f32>; 3] {
    let device = Device::flex();
    let tensor = |data: &[f32], shape: [usize; 4], device: &Device| {
        Tensor::<4>::from_data(TensorData::new(data.to_vec(), shape), device)
    };
    let y = conv2d(
        tensor(&t.x, c.x_shape(), &device),
        tensor(&t.w, c.w_shape(), &device),
        None,
        c.options(),
    );
    let dw = conv2d_weight_backward(
        tensor(&t.x, c.x_shape(), &device),
        tensor(&t.w, c.w_shape(), &device),
        tensor(&t.g, c.g_shape(), &device),
        c.options(),
    );
    let autodiff = device.autodiff();
    let x = tensor(&t.x, c.x_shape(), &autodiff).require_grad();
    let loss = (conv2d(
        x.clone(),
        tensor(&t.w, c.w_shape(), &autodiff),
        None,
        c.options(),
    ) * tensor(&t.g, c.g_shape(), &autodiff))
    .sum();
    let dx = x.grad(&loss.backward()).expect("input gradient");
    let vec = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().expect("f32 data");
    [vec(y), vec(dx), vec(dw)]
}

/// Every convolution shape of the CIFAR ResNet-18 and ResNet-50 (once each), batch 2.
fn resnet_convolutions() -> Vec<Conv> {
    let mut convs: Vec<Conv> = Vec::new();
    for arch in [Arch::ResNet18, Arch::ResNet50] {
        for s in ResNetConfig::new(arch).conv_shapes(32) {
            let conv = Conv::square(2, s.c_in, s.c_out, s.input_side, s.kernel, s.stride);
            if !convs.iter().any(|c| {
                c.w_shape() == conv.w_shape() && c.hw == conv.hw && c.stride == conv.stride
            }) {
                convs.push(conv);
            }
        }
    }
    convs
}

/// Small geometries beyond the ResNets': rectangular kernels and planes, mixed strides,
/// dilation, padding wider than the kernel reaches, channel counts that are not whole
/// vectors, a reduction of several 512-blocks, asymmetric padding, few columns.
fn odd_convolutions() -> Vec<Conv> {
    let conv = |batch, c_in, c_out, hw, kernel, stride, dilation, padding| Conv {
        batch,
        c_in,
        c_out,
        hw,
        kernel,
        stride,
        dilation,
        padding,
        padding_end: padding,
    };
    vec![
        Conv {
            padding_end: [0, 2],
            ..conv(2, 12, 20, [8, 9], [3, 3], [2, 1], [1, 1], [1, 0])
        },
        conv(3, 5, 7, [6, 6], [3, 3], [1, 1], [1, 1], [1, 1]),
        conv(2, 16, 20, [7, 7], [3, 3], [2, 2], [1, 1], [1, 1]),
        conv(2, 8, 33, [9, 9], [1, 1], [2, 2], [1, 1], [0, 0]),
        conv(2, 70, 17, [5, 5], [3, 3], [1, 1], [1, 1], [2, 2]),
        conv(2, 9, 18, [10, 10], [5, 5], [3, 3], [1, 1], [2, 2]),
        conv(2, 6, 10, [9, 11], [3, 2], [2, 1], [1, 2], [1, 2]),
        conv(1, 130, 24, [6, 6], [3, 3], [1, 1], [1, 1], [1, 1]),
        // few columns and several panels: the threads split the panels
        conv(2, 4, 200, [6, 6], [1, 1], [1, 1], [1, 1], [0, 0]),
        // pointwise (the gemm path: 1×1, stride 1, ≥ 256 pixels), several 512-blocks in the
        // forward and input gradient sums
        conv(1, 1100, 600, [16, 17], [1, 1], [1, 1], [1, 1], [0, 0]),
        // pointwise with planes of whole 512-blocks and ≥ 128 output channels: the weight
        // gradient's gemm per image
        conv(3, 20, 130, [16, 32], [1, 1], [1, 1], [1, 1], [0, 0]),
        // a strided 1×1 onto ≥ 256 output pixels: its input subsampled, then the 1×1 gemm path
        conv(2, 24, 40, [33, 32], [1, 1], [2, 2], [1, 1], [0, 0]),
        // …and with a different stride per axis, onto few pixels (the direct product)
        conv(2, 10, 20, [12, 9], [1, 1], [3, 1], [1, 1], [0, 0]),
        // …and with ≥ 512 output channels, whose weight gradient is subsampled too
        conv(1, 6, 520, [9, 10], [1, 1], [2, 3], [1, 1], [0, 0]),
        // a 1×1 weight gradient with more output than input channels (by output channel:
        // the input packed), input channels in two panels, not whole vectors, a short last
        // tile and two 512-blocks of (b, p)
        conv(4, 70, 151, [11, 13], [1, 1], [1, 1], [1, 1], [0, 0]),
        // short reductions (c_in · kh · kw ≤ 32) on ≥ 256 output pixels, the stem's path: the
        // column matrix per image, with stride, dilation and padding past the kernel's reach
        Conv {
            padding_end: [0, 2],
            ..conv(2, 2, 5, [40, 37], [3, 3], [2, 1], [1, 2], [1, 2])
        },
        // …and whole 512-pixel planes, the weight gradient's gemm per image; one input
        // channel: the input gradient by pixel vectors
        conv(2, 1, 9, [32, 16], [5, 5], [1, 1], [1, 1], [2, 2]),
        // a stride past the kernel's reach, with padding: input rows of phase 1 and columns of
        // phase 1 are reached by no tap (zeros in the input gradient, between the phases'
        // interleaved planes)
        conv(2, 6, 12, [10, 11], [2, 1], [3, 2], [1, 1], [1, 0]),
        // few input channels, stride 1: the input gradient by pixel vectors, rows that end
        // in a partial vector, dilation, two 512-blocks
        conv(2, 3, 70, [9, 37], [3, 3], [1, 1], [1, 2], [1, 2]),
    ]
}

/// |got − want| ≤ tolerance · (1 + Σ|terms|).
fn assert_close(what: &str, c: &Conv, got: &[f32], want: &[(f64, f64)]) {
    assert_eq!(got.len(), want.len(), "{what} {c:?}");
    for (i, (&a, &(e, magnitude))) in got.iter().zip(want).enumerate() {
        assert!(
            (f64::from(a) - e).abs() <= 1e-6 * (1.0 + magnitude),
            "{what} element {i}: {a} vs {e} (Σ|terms| {magnitude}), {c:?}"
        );
    }
}

fn assert_same_bits(what: &str, c: &Conv, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what} {c:?}");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what} element {i}: {} vs {} in the promised order, {c:?}",
            got[i], want[i]
        );
    }
}

#[test]
fn every_resnet_convolution_matches_the_definition_in_f64() {
    for c in resnet_convolutions() {
        let t = Tensors::new(&c);
        let [y, dx, dw] = flex_passes(&c, &t);
        let [ry, rdx, rdw] = t.references(&c);
        assert_close("forward", &c, &y, &ry);
        assert_close("input gradient", &c, &dx, &rdx);
        assert_close("weight gradient", &c, &dw, &rdw);
    }
}

#[test]
fn odd_geometries_match_the_definition_in_f64() {
    for c in odd_convolutions() {
        let t = Tensors::new(&c);
        let [y, dx, dw] = flex_passes(&c, &t);
        let [ry, rdx, rdw] = t.references(&c);
        assert_close("forward", &c, &y, &ry);
        assert_close("input gradient", &c, &dx, &rdx);
        assert_close("weight gradient", &c, &dw, &rdw);
    }
}

#[test]
fn every_pass_sums_in_the_promised_order() {
    // The ResNet shapes with the longest reductions of each pass, and the odd geometries.
    let resnet = resnet_convolutions();
    let longest = |key: fn(&Conv) -> usize| *resnet.iter().max_by_key(|c| key(c)).expect("shapes");
    let mut convs = odd_convolutions();
    convs.push(longest(|c| c.c_in * c.kernel[0] * c.kernel[1])); // forward: 4608
    convs.push(longest(|c| c.c_out * c.kernel[0] * c.kernel[1])); // input gradient
    convs.push(Conv {
        batch: 1,
        ..resnet[1]
    }); // weight gradient: 1024 pixels
    convs.push(resnet[0]); // the stem: the short path's column matrix per image
    for c in convs {
        let t = Tensors::new(&c);
        let [y, dx, dw] = flex_passes(&c, &t);
        assert_same_bits("forward", &c, &y, &t.forward_in_order(&c));
        assert_same_bits("input gradient", &c, &dx, &t.input_grad_in_order(&c));
        assert_same_bits("weight gradient", &c, &dw, &t.weight_grad_in_order(&c));
    }
}

/// im2col + gemm, as the forward pass computed it before the direct kernels (and still does
/// for f64): `Y[o, (b, p)] = W[o, (c, ky, kx)] · Cols[(c, ky, kx), (b, p)]`.
fn im2col_gemm_forward(c: &Conv, t: &Tensors) -> Vec<f32> {
    let [oh, ow] = c.out();
    let [kh, kw] = c.kernel;
    let (rows, n) = (c.c_in * kh * kw, c.batch * oh * ow);
    let mut cols = vec![0.0f32; rows * n];
    for r in 0..rows {
        let (ch, ky, kx) = (r / (kh * kw), (r / kw) % kh, r % kw);
        for b in 0..c.batch {
            for oy in 0..oh {
                for ox in 0..ow {
                    if let Some((iy, ix)) = c.input_at(oy, ox, ky, kx) {
                        cols[r * n + (b * oh + oy) * ow + ox] = t.x(c, b, ch, iy, ix);
                    }
                }
            }
        }
    }
    let mut y = vec![0.0f32; c.c_out * n];
    // SAFETY: dst c_out × n, lhs c_out × rows, rhs rows × n, all row-major and that long.
    unsafe {
        gemm::gemm(
            c.c_out,
            n,
            rows,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            t.w.as_ptr(),
            1,
            rows as isize,
            cols.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
    let spatial = oh * ow;
    (0..c.batch * c.c_out * spatial)
        .map(|i| {
            let (b, o, p) = (
                i / (c.c_out * spatial),
                (i / spatial) % c.c_out,
                i % spatial,
            );
            y[o * n + b * spatial + p]
        })
        .collect()
}

#[test]
fn forward_keeps_the_bits_of_im2col_and_gemm() {
    // Products wider than 64 × 64 (gemm blocks smaller ones unevenly), reductions ≥ 64 (the
    // smaller ones, the stem's, stay on burn-flex's own kernel).
    for c in resnet_convolutions()
        .into_iter()
        .filter(|c| c.c_in * c.kernel[0] * c.kernel[1] >= 64)
    {
        let t = Tensors::new(&c);
        let [y, _, _] = flex_passes(&c, &t);
        assert_same_bits(
            "forward vs im2col + gemm",
            &c,
            &y,
            &im2col_gemm_forward(&c, &t),
        );
    }
}

/// Set in the child processes of the test below: print the three passes' bits and exit.
const CHILD: &str = "LOSSBENCH_CONV_BITS_CHILD";

/// A hash of the three passes' bits over every ResNet shape and the odd geometries.
fn all_bits() -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    for c in resnet_convolutions().into_iter().chain(odd_convolutions()) {
        let t = Tensors::new(&c);
        for pass in flex_passes(&c, &t) {
            pass.iter().for_each(|v| v.to_bits().hash(&mut hasher));
        }
    }
    hasher.finish()
}

#[test]
fn avx512_and_avx2_kernels_give_the_same_bits() {
    const TEST: &str = "avx512_and_avx2_kernels_give_the_same_bits";
    if std::env::var_os(CHILD).is_some() {
        println!("\nbits {:016x}", all_bits());
        return;
    }
    let avx512 = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|i| i.contains(" avx512f"));
    if !avx512 {
        println!("skipped: this CPU has no AVX-512, so only its AVX2 kernels can run here");
        return;
    }
    let avx2 = child_bits(TEST, CHILD, &[("LOSSBENCH_CPU_KERNELS", "x86-64-v3")]);
    assert_eq!(
        child_bits(TEST, CHILD, &[]),
        avx2,
        "AVX-512 and AVX2 kernels differ"
    );
}

#[test]
fn one_and_three_threads_give_the_same_bits() {
    // Three threads split the columns and panels differently from one (and from two, the
    // CI machines' count); each output is still summed by one thread in one order.
    const TEST: &str = "one_and_three_threads_give_the_same_bits";
    if std::env::var_os(CHILD).is_some() {
        println!("\nbits {:016x}", all_bits());
        return;
    }
    let one = child_bits(TEST, CHILD, &[("RAYON_NUM_THREADS", "1")]);
    assert_eq!(
        child_bits(TEST, CHILD, &[("RAYON_NUM_THREADS", "3")]),
        one,
        "1 and 3 threads differ"
    );
}
