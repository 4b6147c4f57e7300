//! The loss-head plug-in interface of lossbench.
//!
//! A loss head is a burn [`Module`] that owns its class weights (`[classes, dim]`, plus a
//! bias where the loss has one) and turns backbone features into
//! - un-margined logits for prediction ([`LossHead::logits`]), and
//! - the mean training loss of a batch at a training iteration ([`LossHead::loss`]).
//!
//! Margin losses change only the target logit (see [`angular::replace_target`]). Each loss
//! lives in its own crate under `crates/losses/` and runs the shared conformance suite in
//! [`testkit`] from its tests.

pub mod angular;
mod cosine;
mod error;
pub mod eval;
mod labels;
mod params;
pub mod testkit;

use burn::prelude::*;

pub use cosine::CosineClassifier;
pub use error::HeadError;
pub use labels::Labels;
pub use params::{Allowed, ParamSpec, ResolvedParams, SCALE, angular_margin};

/// What a loss is, for the registry, `lossbench losses` and reports.
#[derive(Debug, Clone, Copy)]
pub struct LossSpec {
    /// Registry name, as used in experiment files and `probe` input.
    pub name: &'static str,
    /// One line: the formula of the training logits.
    pub formula: &'static str,
    /// Whether the head has a per-class bias.
    pub has_bias: bool,
    /// Hyper-parameters with their published defaults.
    pub params: &'static [ParamSpec],
}

/// Size of a head: `num_classes × feature_dim` class weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadDims {
    pub num_classes: usize,
    pub feature_dim: usize,
}

/// The trait every loss implements.
pub trait LossHead: Module + Sized {
    /// Name, formula and parameters.
    const SPEC: LossSpec;

    /// Build the head from validated parameters and its initial weights: `weight`
    /// `[classes, dim]`, and `bias` `[classes]` exactly when [`LossSpec::has_bias`].
    fn build(
        params: &ResolvedParams,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> Result<Self, HeadError>;

    /// Prediction logits without any margin: `[batch, dim]` → `[batch, classes]`.
    fn logits(&self, features: Tensor<2>) -> Tensor<2>;

    /// Mean training loss over the batch, shape `[1]`, at training `iteration` (0-based,
    /// counted in optimiser steps; only losses with a schedule such as SphereFace's λ use it).
    fn loss(&self, features: Tensor<2>, labels: &Labels, iteration: u64) -> Tensor<1>;

    /// The weight matrix, `[weight_rows, dim]` (one row per class unless the loss keeps
    /// several centres per class).
    fn weight(&self) -> Tensor<2>;

    /// Rows of the weight matrix for `num_classes` classes.
    fn weight_rows(_params: &ResolvedParams, num_classes: usize) -> usize {
        num_classes
    }

    /// Cosine between every feature and every class, `[batch, classes]` (feature geometry).
    fn class_cosines(&self, features: Tensor<2>) -> Tensor<2> {
        angular::cosine(features, self.weight())
    }

    /// The per-class bias, `[classes]`, for heads that have one.
    fn bias(&self) -> Option<Tensor<1>> {
        None
    }
}

/// Standard deviation of the initial class weights by default: InsightFace's 0.01.
pub const DEFAULT_INIT_STD: f64 = 0.01;

/// Initial weights, `rows × feature_dim`: N(0, 0.01²) as in the InsightFace heads, drawn
/// from the backend-independent stream of `seed`, so every backend starts from the same
/// numbers.
#[must_use]
pub fn init_weight(rows: usize, feature_dim: usize, seed: u64, device: &Device) -> Tensor<2> {
    init_weight_std(rows, feature_dim, seed, DEFAULT_INIT_STD, device)
}

/// [`init_weight`] with another standard deviation (`[model] head_init`). Under a cosine
/// head a class weight's effective learning rate grows like 1/‖w‖², and ‖w‖ ≈ std·√dim.
#[must_use]
pub fn init_weight_std(
    rows: usize,
    feature_dim: usize,
    seed: u64,
    std: f64,
    device: &Device,
) -> Tensor<2> {
    let mut stream = lossbench_rng::Stream::new(seed, lossbench_rng::Purpose::HeadInit, 0);
    let values = stream.normal_vec(rows * feature_dim, std);
    Tensor::from_data(TensorData::new(values, [rows, feature_dim]), device)
}

/// Check that `weight` (and `bias`) have consistent shapes for a loss.
pub fn check_shapes(
    spec: &LossSpec,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Result<(), HeadError> {
    let [classes, dim] = weight.dims();
    if classes == 0 || dim == 0 {
        return Err(HeadError::Shape(format!(
            "weights are {classes} × {dim}; both must be > 0"
        )));
    }
    match (spec.has_bias, bias) {
        (true, Some(b)) if b.dims()[0] != classes => Err(HeadError::Shape(format!(
            "bias has {} entries but there are {classes} classes",
            b.dims()[0]
        ))),
        (false, Some(_)) => Err(HeadError::Shape(format!(
            "loss `{}` has no bias",
            spec.name
        ))),
        _ => Ok(()),
    }
}
