//! CurricularFace (Huang et al., 2020): ArcFace's margin on the target, and non-target
//! cosines that exceed `cos(θ_y + m)` (hard negatives) re-weighted to `c_j·(t + c_j)`, where
//! `t` is a running mean of the target cosine (`t ← 0.01·mean(cos θ_y) + 0.99·t`, from 0).
//! Easy samples dominate early (t ≈ 0 shrinks hard negatives), hard ones later.
//!
//! `t` is part of the run's state (a running value, checkpointed with the model). A batch
//! is scored with the `t` of the batches before it and then updates it; the authors update
//! first. This keeps the loss a function of its inputs (for the gradient checks) at the cost
//! of one batch of lag.

use burn::module::RunningState;
use burn::prelude::*;
use lossbench_arcface::margin_target;
use lossbench_head::angular::{margin_cross_entropy, shift_target, target_column};
use lossbench_head::{
    CosineClassifier, HeadError, Labels, LossHead, LossSpec, ResolvedParams, SCALE, angular_margin,
};

/// Weight of the newest batch in the running mean `t`.
const T_MOMENTUM: f64 = 0.01;

/// Adaptive curriculum: ArcFace margin plus re-weighted hard negatives.
#[derive(Module, Debug)]
pub struct CurricularFaceHead {
    classifier: CosineClassifier,
    margin: f64,
    t: RunningState<Tensor<1>>, // [1]
}

impl CurricularFaceHead {
    /// The current `t`.
    #[must_use]
    pub fn t(&self) -> f64 {
        self.t.value_sync().into_scalar::<f64>()
    }
}

impl LossHead for CurricularFaceHead {
    const SPEC: LossSpec = LossSpec {
        name: "curricularface",
        formula: "target s·cos(θ_y + m) (ArcFace); hard negatives c_j > cos(θ_y + m) become s·c_j·(t + c_j); t = EMA of cos θ_y",
        has_bias: false,
        params: &[SCALE, angular_margin(0.5)],
    };

    fn build(
        params: &ResolvedParams,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> Result<Self, HeadError> {
        let t = Tensor::<1>::zeros([1], (&weight.device(), weight.dtype()));
        Ok(Self {
            classifier: CosineClassifier::new(&Self::SPEC, weight, bias, params.get("s"))?,
            margin: params.get("m"),
            t: RunningState::new(t),
        })
    }

    fn logits(&self, features: Tensor<2>) -> Tensor<2> {
        self.classifier.logits(features)
    }

    fn loss(&self, features: Tensor<2>, labels: &Labels, _iteration: u64) -> Tensor<1> {
        let t = self.t();
        let s = self.classifier.scale();
        let z = self.classifier.logits(features); // s·cos θ, [batch, classes]
        let [batch, classes] = z.dims();
        let c = target_column(z.clone(), labels).div_scalar(s); // cos θ_y, [batch, 1]
        // cos(θ_y + m) itself (no fallback) decides which negatives are hard, as in the paper.
        let sin = (c.clone() * c.clone())
            .neg()
            .add_scalar(1.0)
            .clamp_min(1e-12)
            .sqrt();
        let shifted =
            (c.clone().mul_scalar(self.margin.cos()) - sin.mul_scalar(self.margin.sin())).detach();
        // The target entry is replaced below, so it never counts as hard: pushed under −s
        // here (a detached copy), it stays a plain pass-through and the loss takes the same
        // path as ArcFace's when no negative is hard.
        let below_all = Tensor::<2>::full([batch, 1], -2.0 * s - 1.0, (&z.device(), z.dtype()));
        let hard = shift_target(z.clone().detach(), labels, below_all)
            .greater(shifted.mul_scalar(s).expand([batch, classes]));
        // s·c_j·(t + c_j) = z_j·(t + z_j/s)
        let reweighted = z
            .clone()
            .mask_where(hard, z.clone() * z.div_scalar(s).add_scalar(t));
        let loss = margin_cross_entropy(reweighted, labels, s, |c| margin_target(c, self.margin));
        let mean_target: f64 = c.detach().mean().into_scalar::<f64>();
        let next = T_MOMENTUM * mean_target + (1.0 - T_MOMENTUM) * t;
        let w = self.classifier.weight();
        self.t.update(
            Tensor::from_data(TensorData::new(vec![next], [1]), (&w.device(), w.dtype())).detach(),
        );
        loss
    }

    fn weight(&self) -> Tensor<2> {
        self.classifier.weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lossbench_arcface::ArcFaceHead;
    use lossbench_head::eval::Case;
    use lossbench_head::testkit;

    fn case(other_deg: f64) -> Case {
        // Feature on the x axis; class 0 at 30°, class 1 at `other_deg`.
        let d = |deg: f64| vec![deg.to_radians().cos(), deg.to_radians().sin()];
        Case {
            features: vec![d(0.0)],
            weights: vec![d(30.0), d(other_deg)],
            bias: None,
            labels: vec![0],
            iteration: 0,
        }
    }

    #[test]
    fn conformance() {
        testkit::conformance::<CurricularFaceHead>(&testkit::params::<CurricularFaceHead>("{}"));
        testkit::conformance::<CurricularFaceHead>(&testkit::params::<CurricularFaceHead>(
            r#"{"s": 8, "m": 0.2}"#,
        ));
    }

    #[test]
    fn without_hard_negatives_it_is_arcface() {
        // cos(30° + 0.5 rad) = cos 58.6° = 0.521 > cos 80° = 0.174: no hard negative.
        let p = r#"{"s": 3, "m": 0.5}"#;
        let a = testkit::eval_ok::<CurricularFaceHead>(
            &testkit::params::<CurricularFaceHead>(p),
            &case(80.0),
        );
        let b = testkit::eval_ok::<ArcFaceHead>(&testkit::params::<ArcFaceHead>(p), &case(80.0));
        testkit::assert_evaluations_close("curricularface(easy) vs arcface", &a, &b, 1e-12);
    }

    #[test]
    fn hard_negative_is_reweighted_with_t() {
        // Class 1 at 40°: cos 40° = 0.766 > cos(58.6°) = 0.521, hard. With t = 0 (the first
        // batch) its logit is s·c² ; target s·cos(30° + 0.5 rad).
        let e = testkit::eval_ok::<CurricularFaceHead>(
            &testkit::params::<CurricularFaceHead>(r#"{"s": 3, "m": 0.5}"#),
            &case(40.0),
        );
        let c1 = 40f64.to_radians().cos();
        let target = 3.0 * (30f64.to_radians() + 0.5).cos();
        let other = 3.0 * c1 * c1;
        testkit::assert_close(
            "loss",
            &[e.loss],
            &[(1.0 + (other - target).exp()).ln()],
            1e-10,
            1.0,
        );
    }

    #[test]
    fn t_follows_the_mean_target_cosine() {
        let device = testkit::device();
        let f64_on = (&device, burn::tensor::DType::F64);
        let w =
            Tensor::<2>::from_data(TensorData::new(vec![1.0f64, 0.0, 0.0, 1.0], [2, 2]), f64_on);
        let head = CurricularFaceHead::build(&testkit::params::<CurricularFaceHead>("{}"), w, None)
            .expect("head");
        let x =
            Tensor::<2>::from_data(TensorData::new(vec![1.0f64, 0.0, 0.6, 0.8], [2, 2]), f64_on);
        let labels = Labels::new(&[0, 0], 2, &device).expect("labels");
        let _ = head.loss(x.clone(), &labels, 0);
        assert!((head.t() - 0.01 * 0.8).abs() < 1e-12, "{}", head.t()); // mean(1, 0.6) = 0.8
        let _ = head.loss(x, &labels, 1);
        assert!(
            (head.t() - (0.01 * 0.8 + 0.99 * 0.008)).abs() < 1e-12,
            "{}",
            head.t()
        );
    }
}
