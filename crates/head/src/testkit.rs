//! The conformance suite every loss crate runs in its own tests:
//!
//! ```ignore
//! #[test]
//! fn conformance() { lossbench_head::testkit::conformance::<MyHead>(&MyHead::SPEC.default_params()); }
//! ```
//!
//! It checks output shapes, gradients against float64 central differences, finiteness
//! when a feature is exactly aligned with or opposite to its class weight (and at the zero
//! vector), label validation and determinism.

use burn::prelude::*;

use crate::eval::{Case, Evaluation, evaluate};
use crate::{HeadDims, HeadError, Labels, LossHead, ResolvedParams, init_weight};

/// The device the kit runs on: flex, the reference CPU backend (it supports float64).
#[must_use]
pub fn device() -> Device {
    Device::flex()
}

/// `rows × cols` pseudo-random values in `[-scale, scale]` from a fixed stream.
#[must_use]
pub fn random_matrix(rows: usize, cols: usize, scale: f64, seed: u64) -> Vec<Vec<f64>> {
    let mut s = lossbench_rng::Stream::new(seed, lossbench_rng::Purpose::Synthetic, 99);
    (0..rows)
        .map(|_| {
            (0..cols)
                .map(|_| (2.0 * s.next_f64() - 1.0) * scale)
                .collect()
        })
        .collect()
}

/// A small generic case: 4 samples, 5 dimensions, 6 classes.
#[must_use]
pub fn generic_case<H: LossHead>(params: &ResolvedParams, seed: u64) -> Case {
    Case {
        features: random_matrix(4, 5, 2.0, seed),
        weights: random_matrix(H::weight_rows(params, 6), 5, 1.0, seed + 1),
        bias: H::SPEC
            .has_bias
            .then(|| random_matrix(1, 6, 0.5, seed + 2).remove(0)),
        labels: vec![0, 3, 5, 3],
        iteration: 7,
    }
}

/// Evaluate and fail the test with the error if the head rejects a valid case.
pub fn eval_ok<H: LossHead>(params: &ResolvedParams, case: &Case) -> Evaluation {
    evaluate::<H>(params, case, &device())
        .unwrap_or_else(|e| panic!("{}: evaluation failed: {e}", H::SPEC.name))
}

fn all_finite(e: &Evaluation) -> bool {
    e.loss.is_finite()
        && e.grad_features.iter().flatten().all(|v| v.is_finite())
        && e.grad_weights.iter().flatten().all(|v| v.is_finite())
        && e.grad_bias.iter().flatten().all(|v| v.is_finite())
        && e.logits.iter().flatten().all(|v| v.is_finite())
}

/// `|a - b| <= rel · max(|b|, floor)` for every pair, with a message naming the first miss.
pub fn assert_close(what: &str, a: &[f64], b: &[f64], rel: f64, floor: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let tol = rel * y.abs().max(floor);
        assert!(
            (x - y).abs() <= tol,
            "{what}[{i}]: {x} vs {y} (tolerance {tol:e})"
        );
    }
}

/// Compare two evaluations entry by entry (loss, logits and every gradient).
pub fn assert_evaluations_close(what: &str, a: &Evaluation, b: &Evaluation, rel: f64) {
    let flat = |m: &[Vec<f64>]| m.iter().flatten().copied().collect::<Vec<_>>();
    let floor = |v: &[f64]| v.iter().fold(1e-12_f64, |m, x| m.max(x.abs()));
    assert_close(&format!("{what}: loss"), &[a.loss], &[b.loss], rel, 1e-12);
    for (name, x, y) in [
        ("logits", flat(&a.logits), flat(&b.logits)),
        (
            "grad_features",
            flat(&a.grad_features),
            flat(&b.grad_features),
        ),
        ("grad_weights", flat(&a.grad_weights), flat(&b.grad_weights)),
    ] {
        assert_close(&format!("{what}: {name}"), &x, &y, rel, floor(&y));
    }
}

/// Head `A` with `a_params` and head `B` with `b_params` agree — loss, logits and every
/// gradient, to `rel` — on three generic cases: the identities between losses (CosFace with
/// m = 0 is NormFace, ...).
pub fn check_equivalent<A: LossHead, B: LossHead>(a_params: &str, b_params: &str, rel: f64) {
    let (pa, pb) = (params::<A>(a_params), params::<B>(b_params));
    let what = format!(
        "{}({a_params}) vs {}({b_params})",
        A::SPEC.name,
        B::SPEC.name
    );
    for seed in [1, 2, 3] {
        let case = generic_case::<A>(&pa, seed);
        assert_evaluations_close(
            &what,
            &eval_ok::<A>(&pa, &case),
            &eval_ok::<B>(&pb, &case),
            rel,
        );
    }
}

/// Central differences of the loss with respect to every feature and weight entry.
fn finite_difference<H: LossHead>(
    params: &ResolvedParams,
    case: &Case,
    h: f64,
) -> (Vec<f64>, Vec<f64>) {
    let loss_at = |c: &Case| eval_ok::<H>(params, c).loss;
    let mut grad_x = Vec::new();
    for i in 0..case.features.len() {
        for j in 0..case.features[i].len() {
            let (mut plus, mut minus) = (case.clone(), case.clone());
            plus.features[i][j] += h;
            minus.features[i][j] -= h;
            grad_x.push((loss_at(&plus) - loss_at(&minus)) / (2.0 * h));
        }
    }
    let mut grad_w = Vec::new();
    for i in 0..case.weights.len() {
        for j in 0..case.weights[i].len() {
            let (mut plus, mut minus) = (case.clone(), case.clone());
            plus.weights[i][j] += h;
            minus.weights[i][j] -= h;
            grad_w.push((loss_at(&plus) - loss_at(&minus)) / (2.0 * h));
        }
    }
    (grad_x, grad_w)
}

/// Shapes of logits and loss for a head built the way training builds it (f32 weights from
/// [`init_weight`]).
pub fn check_shapes<H: LossHead>(params: &ResolvedParams) {
    let device = device().autodiff();
    let dims = HeadDims {
        num_classes: 7,
        feature_dim: 16,
    };
    let bias = H::SPEC.has_bias.then(|| Tensor::<1>::zeros([7], &device));
    let rows = H::weight_rows(params, dims.num_classes);
    let head = H::build(
        params,
        init_weight(rows, dims.feature_dim, 1, &device),
        bias,
    )
    .expect("valid head");
    let x = Tensor::<2>::from_data(
        TensorData::new(
            random_matrix(3, 16, 1.0, 5)
                .concat()
                .iter()
                .map(|v| *v as f32)
                .collect::<Vec<_>>(),
            [3, 16],
        ),
        &device,
    );
    let labels = Labels::new(&[0, 6, 2], 7, &device).expect("valid labels");
    assert_eq!(
        head.logits(x.clone()).dims(),
        [3, 7],
        "{}: logits shape",
        H::SPEC.name
    );
    assert_eq!(
        head.weight().dims(),
        [rows, 16],
        "{}: weight shape",
        H::SPEC.name
    );
    assert_eq!(
        head.class_cosines(x.clone()).dims(),
        [3, 7],
        "{}: class cosines shape",
        H::SPEC.name
    );
    let loss = head.loss(x, &labels, 0);
    assert_eq!(loss.dims(), [1], "{}: loss shape", H::SPEC.name);
    let value: f32 = loss.into_scalar();
    assert!(
        value.is_finite() && value > 0.0,
        "{}: loss {value} must be finite and > 0",
        H::SPEC.name
    );
}

/// Analytic gradients (burn autodiff, float64) against central differences.
pub fn check_gradients<H: LossHead>(params: &ResolvedParams) {
    for seed in [11, 23] {
        let case = generic_case::<H>(params, seed);
        let analytic = eval_ok::<H>(params, &case);
        let (fd_x, fd_w) = finite_difference::<H>(params, &case, 1e-6);
        let flat = |m: &[Vec<f64>]| m.iter().flatten().copied().collect::<Vec<_>>();
        let scale = fd_x
            .iter()
            .chain(&fd_w)
            .fold(1e-9_f64, |m, v| m.max(v.abs()));
        let name = H::SPEC.name;
        assert_close(
            &format!("{name}: d loss/d features"),
            &flat(&analytic.grad_features),
            &fd_x,
            1e-5,
            scale,
        );
        assert_close(
            &format!("{name}: d loss/d weights"),
            &flat(&analytic.grad_weights),
            &fd_w,
            1e-5,
            scale,
        );
    }
}

/// No NaN or infinity when a feature is exactly aligned with, or opposite to, its class
/// weight, or is the zero vector.
pub fn check_extremes<H: LossHead>(params: &ResolvedParams) {
    let mut case = generic_case::<H>(params, 3);
    let per_class = H::weight_rows(params, 1);
    case.features[0] = case.weights[0].iter().map(|v| 2.0 * v).collect(); // aligned, cos = 1
    case.features[1] = case.weights[3 * per_class]
        .iter()
        .map(|v| -3.0 * v)
        .collect(); // opposite, cos = -1
    case.features[2] = vec![0.0; case.features[2].len()];
    case.labels = vec![0, 3, 5, 1];
    let e = eval_ok::<H>(params, &case);
    assert!(
        all_finite(&e),
        "{}: non-finite output at cos = ±1 or at 0: {e:?}",
        H::SPEC.name
    );
    // The same holds in f32, the precision training uses.
    let device = device().autodiff();
    let to_f32 = |m: &[Vec<f64>]| {
        let cols = m[0].len();
        Tensor::<2>::from_data(
            TensorData::new(
                m.iter().flatten().map(|v| *v as f32).collect::<Vec<_>>(),
                [m.len(), cols],
            ),
            &device,
        )
    };
    let x = to_f32(&case.features).require_grad();
    let w = to_f32(&case.weights).require_grad();
    let classes = case.weights.len() / per_class;
    let bias = H::SPEC
        .has_bias
        .then(|| Tensor::<1>::zeros([classes], &device));
    let head = H::build(params, w.clone(), bias).expect("valid head");
    let labels = Labels::new(&case.labels, classes, &device).expect("valid labels");
    let loss = head.loss(x.clone(), &labels, 0);
    let grads = loss.backward();
    for (name, g) in [("features", x.grad(&grads)), ("weights", w.grad(&grads))] {
        let g: Vec<f32> = g
            .expect("gradient exists")
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 data");
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{}: f32 gradient of {name} not finite",
            H::SPEC.name
        );
    }
}

/// Labels outside `[0, classes)` are rejected with an error, never evaluated.
pub fn check_label_validation<H: LossHead>(params: &ResolvedParams) {
    for bad in [6, -1] {
        let mut case = generic_case::<H>(params, 5);
        case.labels[2] = bad;
        let err = evaluate::<H>(params, &case, &device()).expect_err("label out of range accepted");
        assert_eq!(
            err,
            HeadError::LabelOutOfRange {
                index: 2,
                label: bad,
                num_classes: 6
            }
        );
    }
}

/// The same inputs give bit-identical outputs.
pub fn check_determinism<H: LossHead>(params: &ResolvedParams) {
    let case = generic_case::<H>(params, 9);
    assert_eq!(
        eval_ok::<H>(params, &case),
        eval_ok::<H>(params, &case),
        "{}: not deterministic",
        H::SPEC.name
    );
}

/// Every check above, for `params`.
pub fn conformance<H: LossHead>(params: &ResolvedParams) {
    check_shapes::<H>(params);
    check_gradients::<H>(params);
    check_extremes::<H>(params);
    check_label_validation::<H>(params);
    check_determinism::<H>(params);
}

/// Parameters from JSON, failing the test on invalid ones.
#[must_use]
pub fn params<H: LossHead>(json: &str) -> ResolvedParams {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(json).expect("test JSON");
    ResolvedParams::resolve(H::SPEC.name, H::SPEC.params, &map).expect("valid test parameters")
}

/// The published defaults must themselves be valid.
pub fn check_defaults_valid<H: LossHead>() {
    for p in H::SPEC.params {
        assert!(
            p.allowed.contains(p.default),
            "{}: default {} = {} outside {}",
            H::SPEC.name,
            p.name,
            p.default,
            p.allowed
        );
    }
}
