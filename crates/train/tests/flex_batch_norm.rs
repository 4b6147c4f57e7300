//! flex's fused f32 batch normalisation (vendor/burn-flex/src/ops/batch_norm.rs): the
//! training forward pass (output, batch mean, biased variance) and its gradients against the
//! definitions in f64, through burn's `batch_norm_train` and autodiff; inference with running
//! statistics; the same bits on one and three threads; and f64 tensors still on burn's
//! default.

use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::module::{batch_norm, batch_norm_train};
use support::child_bits;

mod support;

/// Deterministic values with a per-channel offset larger than their spread (the case where
/// centring first matters).
fn values(n: usize, seed: u64, offset: f64) -> Vec<f64> {
    let mut s = lossbench_rng::Stream::new(seed, lossbench_rng::Purpose::Synthetic, 14);
    (0..n).map(|_| offset + 2.0 * s.next_f64() - 1.0).collect()
}

struct Case {
    shape: Vec<usize>,
}

impl Case {
    fn channels(&self) -> usize {
        self.shape[1]
    }
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
    fn spatial(&self) -> usize {
        self.shape[2..].iter().product()
    }
    fn channel_of(&self, i: usize) -> usize {
        (i / self.spatial()) % self.channels()
    }
}

const EPSILON: f64 = 1e-5;

/// The batch's mean and biased variance per channel, in f64.
fn statistics(c: &Case, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let ch = c.channels();
    let n = (c.len() / ch) as f64;
    let mut mean = vec![0.0; ch];
    for (i, v) in x.iter().enumerate() {
        mean[c.channel_of(i)] += v / n;
    }
    let mut variance = vec![0.0; ch];
    for (i, v) in x.iter().enumerate() {
        variance[c.channel_of(i)] += (v - mean[c.channel_of(i)]).powi(2) / n;
    }
    (mean, variance)
}

/// The statistics as the forward pass returns them (f32): what the backward pass is given.
fn as_f32(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&s| f64::from(s as f32)).collect()
}

/// `(output, mean, variance, x_grad, gamma_grad, beta_grad)` by definition in f64, the
/// gradients given the statistics in `dtype` (as the forward pass returns them).
fn reference(
    c: &Case,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    g: &[f64],
    dtype: DType,
) -> [Vec<f64>; 6] {
    let ch = c.channels();
    let n = (c.len() / ch) as f64;
    let (mean, variance) = statistics(c, x);
    let normalized = |mean: &[f64], variance: &[f64]| -> (Vec<f64>, Vec<f64>) {
        let inv_std: Vec<f64> = variance
            .iter()
            .map(|v| 1.0 / (v + EPSILON).sqrt())
            .collect();
        let h = x
            .iter()
            .enumerate()
            .map(|(i, v)| (v - mean[c.channel_of(i)]) * inv_std[c.channel_of(i)])
            .collect();
        (h, inv_std)
    };
    let (h, _) = normalized(&mean, &variance);
    let output = h
        .iter()
        .enumerate()
        .map(|(i, h)| h * gamma[c.channel_of(i)] + beta[c.channel_of(i)])
        .collect();
    let (h, inv_std) = if dtype == DType::F32 {
        normalized(&as_f32(&mean), &as_f32(&variance))
    } else {
        normalized(&mean, &variance)
    };
    let (mut beta_grad, mut gamma_grad) = (vec![0.0; ch], vec![0.0; ch]);
    for (i, (dy, h)) in g.iter().zip(&h).enumerate() {
        beta_grad[c.channel_of(i)] += dy;
        gamma_grad[c.channel_of(i)] += dy * h;
    }
    let x_grad = g
        .iter()
        .zip(&h)
        .enumerate()
        .map(|(i, (dy, h))| {
            let k = c.channel_of(i);
            gamma[k] * inv_std[k] * (dy - beta_grad[k] / n - h * gamma_grad[k] / n)
        })
        .collect();
    [output, mean, variance, x_grad, gamma_grad, beta_grad]
}

/// The scale of each x-gradient element's rounding: `|γ·s| · (|dy| + |dβ|/n + |x̂·dγ|/n)`,
/// the magnitudes of the terms that cancel (a channel of nearly equal values makes `s`
/// large and the gradient small).
fn x_grad_magnitudes(c: &Case, x: &[f64], gamma: &[f64], g: &[f64]) -> Vec<f64> {
    let ch = c.channels();
    let n = (c.len() / ch) as f64;
    let (mean, variance) = statistics(c, x);
    let (mean, variance) = (as_f32(&mean), as_f32(&variance));
    let s: Vec<f64> = variance
        .iter()
        .map(|v| 1.0 / (v + EPSILON).sqrt())
        .collect();
    let (mut db, mut dg) = (vec![0.0; ch], vec![0.0; ch]);
    for (i, dy) in g.iter().enumerate() {
        let k = c.channel_of(i);
        db[k] += dy.abs();
        dg[k] += (dy * (x[i] - mean[k]) * s[k]).abs();
    }
    g.iter()
        .enumerate()
        .map(|(i, dy)| {
            let k = c.channel_of(i);
            let h = ((x[i] - mean[k]) * s[k]).abs();
            (gamma[k] * s[k]).abs() * (dy.abs() + db[k] / n + h * dg[k] / n)
        })
        .collect()
}

/// The six results through burn on flex, in `dtype`.
fn flex(
    c: &Case,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    g: &[f64],
    dtype: DType,
) -> [Vec<f64>; 6] {
    let device = Device::flex().autodiff();
    let on = (&device, dtype);
    let x4 = |d: &[f64]| Tensor::<4>::from_data(TensorData::new(d.to_vec(), c.shape.clone()), on);
    let v1 = |d: &[f64]| Tensor::<1>::from_data(TensorData::new(d.to_vec(), [d.len()]), on);
    let (xt, gt, bt) = (
        x4(x).require_grad(),
        v1(gamma).require_grad(),
        v1(beta).require_grad(),
    );
    let out = batch_norm_train(xt.clone(), gt.clone(), bt.clone(), EPSILON);
    let grads = (out.output.clone() * x4(g)).sum().backward();
    let vec = |t: Tensor<4>| t.into_data().try_into_vec_as::<f64>().expect("data");
    let vec1 = |t: Tensor<1>| t.into_data().try_into_vec_as::<f64>().expect("data");
    [
        vec(out.output),
        vec1(out.mean),
        vec1(out.variance),
        vec(xt.grad(&grads).expect("x grad")),
        vec1(gt.grad(&grads).expect("gamma grad")),
        vec1(bt.grad(&grads).expect("beta grad")),
    ]
}

fn cases() -> Vec<Case> {
    [
        vec![4, 64, 8, 8],
        vec![3, 5, 7, 3],
        vec![2, 16, 1, 1],
        vec![64, 4, 4, 4],
        vec![1, 3, 5, 5],
    ]
    .into_iter()
    .map(|shape| Case { shape })
    .collect()
}

/// `x`, `gamma`, `beta` and the output gradient, rounded to f32 (what the f32 tensors hold,
/// so that the reference sees the same inputs: batch norm of two samples is ill-conditioned
/// enough for the inputs' own rounding to show).
fn inputs(c: &Case) -> [Vec<f64>; 4] {
    let ch = c.channels();
    [
        values(c.len(), 1, 3.0),
        values(ch, 2, 1.0),
        values(ch, 3, 0.0),
        values(c.len(), 4, 0.0),
    ]
    .map(|v| v.into_iter().map(|x| f64::from(x as f32)).collect())
}

#[test]
fn f32_batch_norm_matches_the_definition_in_f64() {
    const NAMES: [&str; 6] = [
        "output",
        "mean",
        "variance",
        "x grad",
        "gamma grad",
        "beta grad",
    ];
    for c in cases() {
        let [x, gamma, beta, g] = inputs(&c);
        let want = reference(&c, &x, &gamma, &beta, &g, DType::F32);
        let got = flex(&c, &x, &gamma, &beta, &g, DType::F32);
        let magnitudes = x_grad_magnitudes(&c, &x, &gamma, &g);
        for (k, (name, (got, want))) in NAMES.iter().zip(got.iter().zip(&want)).enumerate() {
            // Relative to the result's scale (the input gradient: to each element's terms);
            // the sums are f64, the element-wise steps f32.
            let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                let bound = if k == 3 {
                    1e-6 * (1.0 + magnitudes[i])
                } else {
                    2e-6 * scale
                };
                assert!(
                    (a - b).abs() <= bound,
                    "{name} {:?} [{i}]: {a} vs {b}",
                    c.shape
                );
            }
        }
    }
}

#[test]
fn f64_batch_norm_keeps_burn_s_default() {
    for c in cases().into_iter().take(2) {
        let [x, gamma, beta, g] = inputs(&c);
        let want = reference(&c, &x, &gamma, &beta, &g, DType::F64);
        let got = flex(&c, &x, &gamma, &beta, &g, DType::F64);
        for (got, want) in got.iter().zip(&want) {
            for (a, b) in got.iter().zip(want) {
                assert!((a - b).abs() <= 1e-10 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }
}

#[test]
fn inference_matches_the_definition_in_f64() {
    for dtype in [DType::F32, DType::F64] {
        for c in cases() {
            let [x, gamma, beta, _] = inputs(&c);
            let ch = c.channels();
            let (mean, variance) = (values(ch, 5, 3.0), values(ch, 6, 1.5));
            let on = (&Device::flex(), dtype);
            let v1 = |d: &[f64]| Tensor::<1>::from_data(TensorData::new(d.to_vec(), [d.len()]), on);
            let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), c.shape.clone()), on);
            let got = batch_norm(xt, v1(&gamma), v1(&beta), v1(&mean), v1(&variance), EPSILON)
                .into_data()
                .try_into_vec_as::<f64>()
                .expect("data");
            let tolerance = if dtype == DType::F32 { 1e-6 } else { 1e-12 };
            for (i, (a, v)) in got.iter().zip(&x).enumerate() {
                let k = c.channel_of(i);
                // The statistics are held in the tensor's dtype.
                let (m, var) = if dtype == DType::F32 {
                    (f64::from(mean[k] as f32), f64::from(variance[k] as f32))
                } else {
                    (mean[k], variance[k])
                };
                let want = (v - m) / (var + EPSILON).sqrt() * gamma[k] + beta[k];
                let scale = ((v - m) / (var + EPSILON).sqrt() * gamma[k]).abs() + beta[k].abs();
                assert!(
                    (a - want).abs() <= tolerance * (1.0 + scale),
                    "{dtype:?} [{i}]: {a} vs {want}"
                );
            }
        }
    }
}

const CHILD: &str = "LOSSBENCH_BATCH_NORM_BITS_CHILD";

#[test]
fn one_and_three_threads_give_the_same_bits() {
    const TEST: &str = "one_and_three_threads_give_the_same_bits";
    if std::env::var_os(CHILD).is_some() {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        for c in cases() {
            let [x, gamma, beta, g] = inputs(&c);
            for v in flex(&c, &x, &gamma, &beta, &g, DType::F32).iter().flatten() {
                v.to_bits().hash(&mut hasher);
            }
        }
        println!("\nbits {:016x}", hasher.finish());
        return;
    }
    let bits = |threads: &str| child_bits(TEST, CHILD, &[("RAYON_NUM_THREADS", threads)]);
    assert_eq!(bits("1"), bits("3"));
}

/// `Σ f(i)` over channel `ch`'s elements in the order batch_norm.rs documents: element `i`
/// of a sample's plane into partial `i mod 8`, samples in order, the partials then added as
/// ((0+1)+(2+3))+((4+5)+(6+7)); all in f64.
fn documented_sum(c: &Case, ch: usize, f: impl Fn(usize) -> f64) -> f64 {
    let (spatial, channels) = (c.spatial(), c.channels());
    let mut p = [0.0f64; 8];
    for b in 0..c.shape[0] {
        for i in 0..spatial {
            p[i % 8] += f((b * channels + ch) * spatial + i);
        }
    }
    ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]))
}

/// The four per-channel sums run in f64 whatever vector width they run at (SSE2 or AVX2 lanes
/// of the same partials): their f32 results are those of an f64 sum in the documented order,
/// bit for bit. (This fails when a sum drops to f32; a different f64 order would rarely
/// change an f32 result, which is the point of summing in f64.)
#[test]
fn the_sums_are_f64_sums_rounded_once_bit_for_bit() {
    for c in cases() {
        let [x, gamma, beta, g] = inputs(&c);
        let [_, mean, variance, _, gamma_grad, beta_grad] =
            flex(&c, &x, &gamma, &beta, &g, DType::F32);
        let n = (c.len() / c.channels()) as f64;
        let same = |what: &str, ch: usize, got: f64, want: f64| {
            assert_eq!(
                (got as f32).to_bits(),
                (want as f32).to_bits(),
                "{what} of channel {ch} {:?}: {got} vs {want} in the documented order",
                c.shape
            );
        };
        for ch in 0..c.channels() {
            let m = documented_sum(&c, ch, |i| x[i]) / n;
            let v = documented_sum(&c, ch, |i| (x[i] - m) * (x[i] - m)) / n;
            same("mean", ch, mean[ch], m);
            same("variance", ch, variance[ch], v);
            // The backward pass works from the statistics as f32, as the forward returned them.
            let (m, s) = (
                f64::from(m as f32),
                1.0 / (f64::from(v as f32) + EPSILON).sqrt(),
            );
            same(
                "beta grad",
                ch,
                beta_grad[ch],
                documented_sum(&c, ch, |i| g[i]),
            );
            let dg = documented_sum(&c, ch, |i| g[i] * ((x[i] - m) * s));
            same("gamma grad", ch, gamma_grad[ch], dg);
        }
    }
}
