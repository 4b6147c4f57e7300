//! The __NAME__ loss head (scaffolded by `just new-loss`: NormFace maths to start from).

use burn::module::Param;
use burn::prelude::*;
use lossbench_head::angular::{cosine, cross_entropy};
use lossbench_head::{HeadError, Labels, LossHead, LossSpec, ResolvedParams, SCALE, check_shapes};

/// Cosine classifier: features and class weights L2-normalised, logits `s·cos θ`.
#[derive(Module, Debug)]
pub struct __HEAD__ {
    weight: Param<Tensor<2>>, // [classes, dim]
    scale: f64,
}

impl LossHead for __HEAD__ {
    const SPEC: LossSpec = LossSpec {
        name: "__NAME__",
        formula: "logit_j = s·cos θ_j",
        has_bias: false,
        params: &[SCALE],
    };

    fn build(params: &ResolvedParams, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Result<Self, HeadError> {
        check_shapes(&Self::SPEC, &weight, bias.as_ref())?;
        Ok(Self { weight: Param::from_tensor(weight), scale: params.get("s") })
    }

    fn logits(&self, features: Tensor<2>) -> Tensor<2> {
        cosine(features, self.weight.val()).mul_scalar(self.scale) // [batch, classes]
    }

    fn loss(&self, features: Tensor<2>, labels: &Labels, _iteration: u64) -> Tensor<1> {
        cross_entropy(self.logits(features), labels)
    }

    fn weight(&self) -> Tensor<2> {
        self.weight.val()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lossbench_head::testkit;

    #[test]
    fn conformance() {
        testkit::check_defaults_valid::<__HEAD__>();
        testkit::conformance::<__HEAD__>(&testkit::params::<__HEAD__>("{}"));
    }
}
