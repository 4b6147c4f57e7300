//! CosFace / large-margin cosine loss (Wang et al., 2018): `s·(cos θ_y − m)` for the target
//! class, `s·cos θ_j` for the others.

use burn::prelude::*;
use lossbench_head::angular::margin_cross_entropy;
use lossbench_head::{
    Allowed, CosineClassifier, HeadError, Labels, LossHead, LossSpec, ParamSpec, ResolvedParams,
    SCALE,
};

/// Additive cosine margin.
#[derive(Module, Debug)]
pub struct CosFaceHead {
    classifier: CosineClassifier,
    margin: f64,
}

impl LossHead for CosFaceHead {
    const SPEC: LossSpec = LossSpec {
        name: "cosface",
        formula: "target s·(cos θ_y − m), others s·cos θ_j",
        has_bias: false,
        params: &[
            SCALE,
            ParamSpec {
                name: "m",
                default: 0.35,
                allowed: Allowed::Closed(0.0, 2.0),
                help: "additive cosine margin",
            },
        ],
    };

    fn build(
        params: &ResolvedParams,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> Result<Self, HeadError> {
        Ok(Self {
            classifier: CosineClassifier::new(&Self::SPEC, weight, bias, params.get("s"))?,
            margin: params.get("m"),
        })
    }

    fn logits(&self, features: Tensor<2>) -> Tensor<2> {
        self.classifier.logits(features)
    }

    fn loss(&self, features: Tensor<2>, labels: &Labels, _iteration: u64) -> Tensor<1> {
        margin_cross_entropy(
            self.classifier.logits(features),
            labels,
            self.classifier.scale(),
            |c| c.sub_scalar(self.margin),
        )
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
    use lossbench_normface::NormFaceHead;

    #[test]
    fn conformance() {
        testkit::check_defaults_valid::<CosFaceHead>();
        testkit::conformance::<CosFaceHead>(&testkit::params::<CosFaceHead>("{}"));
        testkit::conformance::<CosFaceHead>(&testkit::params::<CosFaceHead>(
            r#"{"s": 8, "m": 0.2}"#,
        ));
    }

    #[test]
    fn zero_margin_equals_normface() {
        testkit::check_equivalent::<CosFaceHead, NormFaceHead>(
            r#"{"s": 30, "m": 0}"#,
            r#"{"s": 30}"#,
            1e-10,
        );
    }

    #[test]
    fn hand_checked_case() {
        // x ∥ class 0, ⟂ class 1; s = 2, m = 0.5: training logits [2·(1 − 0.5), 0] = [1, 0],
        // loss ln(1 + e^−1); prediction logits keep no margin: [2, 0].
        let case = Case {
            features: vec![vec![0.0, 4.0]],
            weights: vec![vec![0.0, 1.0], vec![-3.0, 0.0]],
            bias: None,
            labels: vec![0],
            iteration: 0,
        };
        let e = testkit::eval_ok::<CosFaceHead>(
            &testkit::params::<CosFaceHead>(r#"{"s": 2, "m": 0.5}"#),
            &case,
        );
        testkit::assert_close(
            "loss",
            &[e.loss],
            &[(1.0 + (-1.0f64).exp()).ln()],
            1e-12,
            1.0,
        );
        testkit::assert_close("logits", &e.logits[0], &[2.0, 0.0], 1e-12, 1.0);
    }
}
