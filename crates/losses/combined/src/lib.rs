//! InsightFace's combined margin: `s·(cos(m1·θ_y + m2) − m3)` for the target class,
//! `s·cos θ_j` for the others. ArcFace is `(1, m, 0)`, CosFace `(1, 0, m)`, and `(m, 0, 0)` is
//! the SphereFace-like multiplicative corner (without SphereFace's ψ and λ).
//! Past `m1·θ + m2 > π` the target is `cos θ − m3 − m2·sin m2`, ArcFace's monotonic fallback.

use burn::prelude::*;
use lossbench_head::angular::margin_cross_entropy;
use lossbench_head::{
    Allowed, CosineClassifier, HeadError, Labels, LossHead, LossSpec, ParamSpec, ResolvedParams,
    SCALE,
};

/// `cos θ` is kept in `[−1 + ε, 1 − ε]` before `acos`, whose derivative is infinite at ±1.
/// It moves θ only within 4.5e-4 rad of 0 and π.
const ACOS_EPS: f64 = 1e-7;

/// Combined multiplicative, additive-angular and additive-cosine margin.
#[derive(Module, Debug)]
pub struct CombinedHead {
    classifier: CosineClassifier,
    m1: f64,
    m2: f64,
    m3: f64,
}

impl LossHead for CombinedHead {
    const SPEC: LossSpec = LossSpec {
        name: "combined",
        formula: "target s·(cos(m1·θ_y + m2) − m3) (past π: s·(cos θ_y − m3 − m2·sin m2)), others s·cos θ_j",
        has_bias: false,
        params: &[
            SCALE,
            ParamSpec {
                name: "m1",
                default: 1.0,
                allowed: Allowed::Closed(0.1, 10.0),
                help: "multiplicative angular margin",
            },
            ParamSpec {
                name: "m2",
                default: 0.3,
                allowed: Allowed::HalfOpen(0.0, std::f64::consts::PI),
                help: "additive angular margin (radians)",
            },
            ParamSpec {
                name: "m3",
                default: 0.2,
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
            m1: params.get("m1"),
            m2: params.get("m2"),
            m3: params.get("m3"),
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
            |c| {
                let theta = c
                    .clone()
                    .clamp(-1.0 + ACOS_EPS, 1.0 - ACOS_EPS)
                    .acos()
                    .mul_scalar(self.m1)
                    .add_scalar(self.m2);
                let past_pi = theta.clone().greater_elem(std::f64::consts::PI);
                let fallback = c.sub_scalar(self.m3 + self.m2 * self.m2.sin());
                theta
                    .cos()
                    .sub_scalar(self.m3)
                    .mask_where(past_pi, fallback)
            },
        )
    }

    fn weight(&self) -> Tensor<2> {
        self.classifier.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lossbench_arcface::ArcFaceHead;
    use lossbench_cosface::CosFaceHead;
    use lossbench_head::eval::Case;
    use lossbench_head::testkit;

    #[test]
    fn conformance() {
        testkit::check_defaults_valid::<CombinedHead>();
        testkit::conformance::<CombinedHead>(&testkit::params::<CombinedHead>("{}"));
        testkit::conformance::<CombinedHead>(&testkit::params::<CombinedHead>(
            r#"{"s": 8, "m1": 2, "m2": 0.1, "m3": 0.1}"#,
        ));
    }

    #[test]
    fn arcface_and_cosface_corners() {
        testkit::check_equivalent::<CombinedHead, ArcFaceHead>(
            r#"{"s": 30, "m1": 1, "m2": 0.5, "m3": 0}"#,
            r#"{"s": 30, "m": 0.5}"#,
            1e-8,
        );
        testkit::check_equivalent::<CombinedHead, CosFaceHead>(
            r#"{"s": 30, "m1": 1, "m2": 0, "m3": 0.35}"#,
            r#"{"s": 30, "m": 0.35}"#,
            1e-8,
        );
    }

    #[test]
    fn multiplicative_corner_is_cos_of_m_theta() {
        // θ = 0.4 from class 0; class 1 orthogonal. (2, 0, 0), s = 1: target cos 0.8.
        let case = Case {
            features: vec![vec![3.0 * 0.4f64.cos(), 3.0 * 0.4f64.sin()]],
            weights: vec![vec![1.0, 0.0], vec![0.0, 2.0]],
            bias: None,
            labels: vec![0],
            iteration: 0,
        };
        let e = testkit::eval_ok::<CombinedHead>(
            &testkit::params::<CombinedHead>(r#"{"s": 1, "m1": 2, "m2": 0, "m3": 0}"#),
            &case,
        );
        let want = (1.0 + (0.4f64.sin() - 0.8f64.cos()).exp()).ln();
        testkit::assert_close("loss", &[e.loss], &[want], 1e-10, 1.0);
    }

    #[test]
    fn hand_checked_combined_margin() {
        // θ = 1.0, (m1, m2, m3) = (1.5, 0.2, 0.1), s = 2: target 2·(cos 1.7 − 0.1), other 2·sin 1.0.
        let case = Case {
            features: vec![vec![1.0f64.cos(), 1.0f64.sin()]],
            weights: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
            bias: None,
            labels: vec![0],
            iteration: 0,
        };
        let e = testkit::eval_ok::<CombinedHead>(
            &testkit::params::<CombinedHead>(r#"{"s": 2, "m1": 1.5, "m2": 0.2, "m3": 0.1}"#),
            &case,
        );
        let (t, o) = (2.0 * (1.7f64.cos() - 0.1), 2.0 * 1.0f64.sin());
        testkit::assert_close("loss", &[e.loss], &[(1.0 + (o - t).exp()).ln()], 1e-10, 1.0);
    }
}
