//! NormFace (Wang et al., 2017): cosine logits at a fixed scale, `s·cos θ_j`.

use burn::prelude::*;
use lossbench_head::angular::cross_entropy;
use lossbench_head::{
    CosineClassifier, HeadError, Labels, LossHead, LossSpec, ResolvedParams, SCALE,
};

/// Cosine classifier: features and class weights L2-normalised, logits `s·cos θ`.
#[derive(Module, Debug)]
pub struct NormFaceHead {
    classifier: CosineClassifier,
}

impl LossHead for NormFaceHead {
    const SPEC: LossSpec = LossSpec {
        name: "normface",
        formula: "logit_j = s·cos θ_j",
        has_bias: false,
        params: &[SCALE],
    };

    fn build(
        params: &ResolvedParams,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> Result<Self, HeadError> {
        Ok(Self {
            classifier: CosineClassifier::new(&Self::SPEC, weight, bias, params.get("s"))?,
        })
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
    use lossbench_head::eval::Case;
    use lossbench_head::testkit;

    #[test]
    fn conformance() {
        testkit::check_defaults_valid::<NormFaceHead>();
        testkit::conformance::<NormFaceHead>(&testkit::params::<NormFaceHead>("{}"));
        testkit::conformance::<NormFaceHead>(&testkit::params::<NormFaceHead>(r#"{"s": 2.5}"#));
    }

    #[test]
    fn hand_checked_case() {
        // x = [3, 0] is aligned with class 0 and orthogonal to class 1: logits [s, 0],
        // loss = ln(1 + e^−s). Scaling the weights must not matter.
        let case = Case {
            features: vec![vec![3.0, 0.0]],
            weights: vec![vec![2.0, 0.0], vec![0.0, 0.5]],
            bias: None,
            labels: vec![0],
            iteration: 0,
        };
        let e = testkit::eval_ok::<NormFaceHead>(
            &testkit::params::<NormFaceHead>(r#"{"s": 2}"#),
            &case,
        );
        testkit::assert_close(
            "loss",
            &[e.loss],
            &[(1.0 + (-2.0f64).exp()).ln()],
            1e-12,
            1.0,
        );
        testkit::assert_close("logits", &e.logits[0], &[2.0, 0.0], 1e-12, 1.0);
    }

    #[test]
    fn invalid_scale_is_rejected_with_its_name() {
        let given = serde_json::json!({"s": 0.0});
        let err = ResolvedParams::resolve(
            "normface",
            NormFaceHead::SPEC.params,
            given.as_object().expect("object"),
        )
        .expect_err("s = 0 accepted");
        assert!(
            err.to_string().contains("`s`") && err.to_string().contains("> 0"),
            "{err}"
        );
    }
}
