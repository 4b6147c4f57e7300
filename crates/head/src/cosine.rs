//! The shared part of the normalised heads: class weights compared by angle at a fixed scale.

use burn::module::Param;
use burn::prelude::*;

use crate::angular::{cosine, scaled_cosine};
use crate::{HeadError, LossSpec, check_shapes};

/// Class weights (`[rows, dim]`) and the scale `s` of the cosine logits.
#[derive(Module, Debug)]
pub struct CosineClassifier {
    weight: Param<Tensor<2>>, // [rows, dim]
    scale: f64,
}

impl CosineClassifier {
    /// Check `weight` (and that there is no bias) against `spec` and wrap it.
    pub fn new(
        spec: &LossSpec,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        scale: f64,
    ) -> Result<Self, HeadError> {
        check_shapes(spec, &weight, bias.as_ref())?;
        Ok(Self {
            weight: Param::from_tensor(weight),
            scale,
        })
    }

    /// The scale `s`.
    #[must_use]
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The weight matrix `[rows, dim]`.
    #[must_use]
    pub fn weight(&self) -> Tensor<2> {
        self.weight.val()
    }

    /// `cos θ` between every feature and every weight row: `[batch, dim]` → `[batch, rows]`.
    #[must_use]
    pub fn cosines(&self, features: Tensor<2>) -> Tensor<2> {
        cosine(features, self.weight.val())
    }

    /// `s·cos θ`, the logits without margin ([`scaled_cosine`]: cheaper than
    /// `s·`[`Self::cosines`], not clamped).
    #[must_use]
    pub fn logits(&self, features: Tensor<2>) -> Tensor<2> {
        scaled_cosine(features, self.weight.val(), self.scale)
    }
}
