//! The __NAME__ loss head (scaffolded by `just new-loss`: NormFace maths to start from).

use burn::prelude::*;
use lossbench_head::angular::cross_entropy;
use lossbench_head::{CosineClassifier, HeadError, Labels, LossHead, LossSpec, ResolvedParams, SCALE};

/// Cosine classifier: features and class weights L2-normalised, logits `s·cos θ`.
#[derive(Module, Debug)]
pub struct __HEAD__ {
    classifier: CosineClassifier,
}

impl LossHead for __HEAD__ {
    const SPEC: LossSpec = LossSpec {
        name: "__NAME__",
        formula: "logit_j = s·cos θ_j",
        has_bias: false,
        params: &[SCALE],
    };

    fn build(params: &ResolvedParams, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Result<Self, HeadError> {
        Ok(Self { classifier: CosineClassifier::new(&Self::SPEC, weight, bias, params.get("s"))? })
    }

    fn logits(&self, features: Tensor<2>) -> Tensor<2> {
        self.classifier.logits(features) // [batch, classes]
    }

    fn loss(&self, features: Tensor<2>, labels: &Labels, _iteration: u64) -> Tensor<1> {
        cross_entropy(self.logits(features), labels)
    }

    fn weight(&self) -> Tensor<2> {
        self.classifier.weight()
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
