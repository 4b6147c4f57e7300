//! ArcFace / additive angular margin (Deng et al., 2019): `s·cos(θ_y + m)` for the target
//! class while `θ_y + m ≤ π`, else `s·(cos θ_y − m·sin m)`, which keeps the target logit
//! monotonic in θ_y (the InsightFace "easy margin off" fallback).

use burn::prelude::*;
use lossbench_head::angular::margin_cross_entropy;
use lossbench_head::{
    CosineClassifier, HeadError, Labels, LossHead, LossSpec, ResolvedParams, SCALE, angular_margin,
};

/// `1 − cos²θ` is clamped to at least this before the square root: `sin θ` then has a
/// finite gradient at θ = 0, where the exact derivative of `cos(θ + m)` in `cos θ` is
/// infinite. It changes `sin θ` only for |θ| < 1e-6 rad.
const SIN2_EPS: f64 = 1e-12;

/// `cos(θ + m)` from `c = cos θ` (`[batch, 1]`) while `θ + m ≤ π`, else `c − m·sin m`.
/// Shared by the heads that use ArcFace's margin (sub-centre ArcFace, CurricularFace).
#[must_use]
pub fn margin_target(c: Tensor<2>, m: f64) -> Tensor<2> {
    let sin = (c.clone() * c.clone())
        .neg()
        .add_scalar(1.0)
        .clamp_min(SIN2_EPS)
        .sqrt();
    // cos(θ + m) = cos θ·cos m − sin θ·sin m
    let shifted = c.clone().mul_scalar(m.cos()) - sin.mul_scalar(m.sin());
    // θ + m > π  ⇔  cos θ < cos(π − m)
    let past_pi = c.clone().lower_elem((std::f64::consts::PI - m).cos());
    shifted.mask_where(past_pi, c.sub_scalar(m * m.sin()))
}

/// Additive angular margin.
#[derive(Module, Debug)]
pub struct ArcFaceHead {
    classifier: CosineClassifier,
    margin: f64,
}

impl LossHead for ArcFaceHead {
    const SPEC: LossSpec = LossSpec {
        name: "arcface",
        formula: "target s·cos(θ_y + m) if θ_y + m ≤ π else s·(cos θ_y − m·sin m), others s·cos θ_j",
        has_bias: false,
        params: &[SCALE, angular_margin(0.5)],
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
            |c| margin_target(c, self.margin),
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

    fn two_class_case(theta: f64) -> Case {
        // Feature at angle θ from class 0 (on the x axis); class 1 on the y axis.
        Case {
            features: vec![vec![2.0 * theta.cos(), 2.0 * theta.sin()]],
            weights: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
            bias: None,
            labels: vec![0],
            iteration: 0,
        }
    }

    #[test]
    fn conformance() {
        testkit::check_defaults_valid::<ArcFaceHead>();
        testkit::conformance::<ArcFaceHead>(&testkit::params::<ArcFaceHead>("{}"));
        testkit::conformance::<ArcFaceHead>(&testkit::params::<ArcFaceHead>(
            r#"{"s": 4, "m": 2.5}"#,
        ));
    }

    #[test]
    fn zero_margin_equals_normface() {
        testkit::check_equivalent::<ArcFaceHead, NormFaceHead>(
            r#"{"s": 30, "m": 0}"#,
            r#"{"s": 30}"#,
            1e-9,
        );
    }

    #[test]
    fn hand_checked_margin_and_fallback() {
        let p = testkit::params::<ArcFaceHead>(r#"{"s": 2, "m": 0.5}"#);
        // θ = π/4: target logit 2·cos(π/4 + 0.5), the other class 2·cos(π/4).
        let theta = std::f64::consts::FRAC_PI_4;
        let e = testkit::eval_ok::<ArcFaceHead>(&p, &two_class_case(theta));
        let (t, o) = (2.0 * (theta + 0.5).cos(), 2.0 * theta.sin());
        testkit::assert_close(
            "loss at π/4",
            &[e.loss],
            &[(1.0 + (o - t).exp()).ln()],
            1e-12,
            1.0,
        );
        // θ = 3π/4 + 0.4 = 2.76 > π − 0.5 = 2.64: θ + m > π, so the target is
        // 2·(cos θ − 0.5·sin 0.5).
        let theta = 3.0 * std::f64::consts::FRAC_PI_4 + 0.4;
        let e = testkit::eval_ok::<ArcFaceHead>(&p, &two_class_case(theta));
        let (t, o) = (2.0 * (theta.cos() - 0.5 * 0.5f64.sin()), 2.0 * theta.sin());
        testkit::assert_close(
            "loss past π",
            &[e.loss],
            &[(1.0 + (o - t).exp()).ln()],
            1e-12,
            1.0,
        );
    }

    #[test]
    fn target_logit_decreases_monotonically_in_theta() {
        // The loss of a lone target must rise as θ grows, across the θ + m = π switch.
        let p = testkit::params::<ArcFaceHead>(r#"{"s": 1, "m": 0.5}"#);
        let mut last = f64::NEG_INFINITY;
        for i in 1..=60 {
            let theta = std::f64::consts::PI * f64::from(i) / 61.0;
            let mut case = two_class_case(theta);
            case.weights[1] = vec![-1.0, 0.0]; // opposite class: its logit is −cos θ
            let loss = testkit::eval_ok::<ArcFaceHead>(&p, &case).loss;
            assert!(
                loss > last,
                "loss fell from {last} to {loss} at θ = {theta}"
            );
            last = loss;
        }
    }
}
