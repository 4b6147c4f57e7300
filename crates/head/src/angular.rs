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

/// `x` with every row scaled to unit L2 norm; `[rows, cols]`.
#[must_use]
pub fn normalize_rows(x: Tensor<2>) -> Tensor<2> {
    let norms = row_norms(x.clone());
    x / norms
}

/// Cosines between every feature and every class weight, clamped to `[-1, 1]` so rounding
/// never hands `acos`-like maths a value outside its domain.
/// `features`: `[batch, dim]`, `weight`: `[classes, dim]` → `[batch, classes]`.
#[must_use]
pub fn cosine(features: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    normalize_rows(features)
        .matmul(normalize_rows(weight).transpose())
        .clamp(-1.0, 1.0)
}

/// The target entry of every row: `[batch, classes]` → `[batch, 1]`.
#[must_use]
pub fn target_column(values: Tensor<2>, labels: &Labels) -> Tensor<2> {
    values.gather(1, labels.column())
}

/// `logits` with each row's target entry replaced by `target` (`[batch, 1]`).
///
/// Implemented as `logits + onehot · (target − logits_y)` via `scatter`, so memory stays
/// `O(batch × classes)` with no dense one-hot mask, and the gradient flows into both the
/// margin expression and the untouched non-target logits.
#[must_use]
pub fn replace_target(logits: Tensor<2>, labels: &Labels, target: Tensor<2>) -> Tensor<2> {
    let delta = target - target_column(logits.clone(), labels);
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
