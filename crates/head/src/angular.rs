//! Shared maths of the angular-margin losses: safe normalisation, cosine logits, the
//! target-logit replacement and cross-entropy.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::Labels;

/// Added under the square root of a squared norm, so the norm and its gradient stay finite
/// for an all-zero row (the gradient of `sqrt` at 0 is infinite). It shifts the norm of a
/// unit vector by 5e-13: far below f32 resolution.
pub const NORM_EPS: f64 = 1e-24;

/// Row-wise L2 norms of `x`, `[rows, cols]` → `[rows, 1]`.
#[must_use]
pub fn row_norms(x: Tensor<2>) -> Tensor<2> {
    (x.clone() * x).sum_dim(1).add_scalar(NORM_EPS).sqrt()
}

/// Cosines between every feature and every class weight, clamped to `[-1, 1]` so rounding
/// never hands `acos`-like maths a value outside its domain.
/// `features`: `[batch, dim]`, `weight`: `[classes, dim]` → `[batch, classes]`.
///
/// Computed as `(x·Wᵀ) / (‖x‖·‖W_j‖)`: the norms scale the `[batch, classes]` product instead
/// of normalising the `[classes, dim]` weight matrix, which saves several passes over the
/// largest tensor (and its gradient) when there are many classes.
#[must_use]
pub fn cosine(features: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    let inv_x = row_norms(features.clone()).recip(); // [batch, 1]
    let inv_w = row_norms(weight.clone()).recip().transpose(); // [1, classes]
    (features.matmul(weight.transpose()) * inv_x * inv_w).clamp(-1.0, 1.0)
}

/// `s·cos θ` between every feature and every class weight, for logits: `s/‖x‖` scales the
/// `[batch, dim]` features before the product and `1/‖W_j‖` the product, so the
/// `[batch, classes]` tensor sees one multiply (and its gradient two passes) where
/// `s·`[`cosine`] costs three (and six). Not clamped: a value may pass ±s by a rounding
/// error, harmless in a softmax; margin maths that need `|cos θ| ≤ 1` clamp where they use it
/// (a clamp here would also zero the gradient of an exactly aligned target).
#[must_use]
pub fn scaled_cosine(features: Tensor<2>, weight: Tensor<2>, s: f64) -> Tensor<2> {
    let scale_x = row_norms(features.clone()).recip().mul_scalar(s); // [batch, 1]
    let inv_w = row_norms(weight.clone()).recip().transpose(); // [1, classes]
    (features * scale_x).matmul(weight.transpose()) * inv_w
}

/// Mean cross-entropy of the logits `scaled` (`s·cos θ`, `[batch, classes]`) with each row's
/// target logit replaced by `s·margin(cos θ_y)`; `margin` receives `cos θ_y` (`[batch, 1]`),
/// which may pass ±1 by a rounding error. The margin maths run on `[batch, 1]`; the
/// `[batch, classes]` logits are only touched by the replacement and the cross-entropy.
#[must_use]
pub fn margin_cross_entropy(
    scaled: Tensor<2>,
    labels: &Labels,
    s: f64,
    margin: impl FnOnce(Tensor<2>) -> Tensor<2>,
) -> Tensor<1> {
    let c = target_column(scaled.clone(), labels).div_scalar(s);
    // s·(margin(c) − c), not s·margin(c) − s·c: exactly 0, with exactly 0 gradient, when the
    // margin is the identity (m = 0), whatever the rounding of s·c / s.
    let delta = (margin(c.clone()) - c).mul_scalar(s);
    cross_entropy(shift_target(scaled, labels, delta), labels)
}

/// Projections of every feature on every unit class direction, `x·W_j/‖W_j‖ = ‖x‖·cos θ_j`:
/// `[batch, dim]`, `[classes, dim]` → `[batch, classes]` (SphereFace's logits).
#[must_use]
pub fn projections(features: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    let inv_w = row_norms(weight.clone()).recip().transpose(); // [1, classes]
    features.matmul(weight.transpose()) * inv_w
}

/// The target entry of every row: `[batch, classes]` → `[batch, 1]`.
#[must_use]
pub fn target_column(values: Tensor<2>, labels: &Labels) -> Tensor<2> {
    values.gather(1, labels.column())
}

/// `logits` with each row's target entry replaced by `target` (`[batch, 1]`).
///
/// Implemented as `logits + onehot · (target − logits_y)` ([`shift_target`]), so memory stays
/// `O(batch × classes)` with no dense one-hot mask, and the gradient flows into both the
/// margin expression and the untouched non-target logits.
#[must_use]
pub fn replace_target(logits: Tensor<2>, labels: &Labels, target: Tensor<2>) -> Tensor<2> {
    let delta = target - target_column(logits.clone(), labels);
    shift_target(logits, labels, delta)
}

/// `logits` with `delta` (`[batch, 1]`) added to each row's target entry, via `scatter`.
#[must_use]
pub fn shift_target(logits: Tensor<2>, labels: &Labels, delta: Tensor<2>) -> Tensor<2> {
    logits.scatter(
        1,
        labels.column(),
        delta,
        burn::tensor::IndexingUpdateOp::Add,
    )
}

/// Mean cross-entropy of `logits` (`[batch, classes]`) against `labels`; shape `[1]`.
#[must_use]
pub fn cross_entropy(logits: Tensor<2>, labels: &Labels) -> Tensor<1> {
    let log_p = log_softmax(logits, 1);
    target_column(log_p, labels).mean().neg()
}
