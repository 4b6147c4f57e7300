//! AdaCos (Zhang et al., 2019): cosine logits with an adaptive scale and no margin. The scale
//! starts at `s₀ = √2·ln(C − 1)` and after each batch becomes
//! `s = ln(B_avg) / cos(min(π/4, θ_med))`, with `B_avg` the batch mean of `Σ_{j≠y} e^{s·cos θ_j}`
//! and `θ_med` the median target angle.
//!
//! The scale is part of the run's state (a running value, so it is checkpointed with the
//! model). A batch is scored with the scale learned from the batches before it and then
//! updates it; the paper updates first. This keeps the loss a function of its inputs, which
//! is what the gradient checks need, and differs by one batch of lag.

use burn::module::{Param, RunningState};
use burn::prelude::*;
use lossbench_head::angular::{cross_entropy, scaled_cosine, target_column};
use lossbench_head::{HeadError, Labels, LossHead, LossSpec, ResolvedParams, check_shapes};

/// Cosine classifier with an adaptive scale.
#[derive(Module, Debug)]
pub struct AdaCosHead {
    weight: Param<Tensor<2>>,       // [classes, dim]
    scale: RunningState<Tensor<1>>, // [1]
}

impl AdaCosHead {
    /// The current scale.
    #[must_use]
    pub fn scale(&self) -> f64 {
        self.scale.value_sync().into_scalar::<f64>()
    }
}

/// The AdaCos scale after a batch: `ln(B_avg) / cos(min(π/4, θ_med))`, kept if not finite
/// and positive (it can only fail on degenerate batches).
#[must_use]
pub fn next_scale(previous: f64, b_avg: f64, target_cosines: &mut [f64]) -> f64 {
    if target_cosines.is_empty() {
        return previous;
    }
    target_cosines.sort_by(f64::total_cmp);
    let n = target_cosines.len();
    let median_cos = if n % 2 == 1 {
        target_cosines[n / 2]
    } else {
        0.5 * (target_cosines[n / 2 - 1] + target_cosines[n / 2])
    };
    let theta_med = median_cos.clamp(-1.0, 1.0).acos();
    let s = b_avg.ln() / theta_med.min(std::f64::consts::FRAC_PI_4).cos();
    if s.is_finite() && s > 0.0 {
        s
    } else {
        previous
    }
}

impl LossHead for AdaCosHead {
    const SPEC: LossSpec = LossSpec {
        name: "adacos",
        formula: "logit_j = s·cos θ_j, s₀ = √2·ln(C − 1), then s = ln(B_avg)/cos(min(π/4, θ_med)) per batch",
        has_bias: false,
        params: &[],
    };

    fn build(
        _: &ResolvedParams,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> Result<Self, HeadError> {
        check_shapes(&Self::SPEC, &weight, bias.as_ref())?;
        let classes = weight.dims()[0];
        if classes < 3 {
            return Err(HeadError::Shape(format!(
                "adacos needs at least 3 classes (s₀ = √2·ln(C − 1)), got {classes}"
            )));
        }
        let s0 = std::f64::consts::SQRT_2 * ((classes - 1) as f64).ln();
        let scale = Tensor::<1>::from_data(
            TensorData::new(vec![s0], [1]),
            (&weight.device(), weight.dtype()),
        );
        Ok(Self {
            weight: Param::from_tensor(weight),
            scale: RunningState::new(scale),
        })
    }

    fn logits(&self, features: Tensor<2>) -> Tensor<2> {
        scaled_cosine(features, self.weight.val(), self.scale())
    }

    fn loss(&self, features: Tensor<2>, labels: &Labels, _iteration: u64) -> Tensor<1> {
        let s = self.scale();
        let logits = scaled_cosine(features, self.weight.val(), s); // s·cos, [batch, classes]
        let loss = cross_entropy(logits.clone(), labels);
        // The update sees no gradient: only values leave the device.
        let logits = logits.detach();
        let target_logit = target_column(logits.clone(), labels); // [batch, 1]
        let others = logits.exp().sum_dim(1) - target_logit.clone().exp(); // [batch, 1]
        let target = target_logit.div_scalar(s); // cos θ_y
        let b_avg: f64 = others.mean().into_scalar::<f64>();
        let mut targets: Vec<f64> = target
            .into_data()
            .try_into_vec_as::<f64>()
            .expect("float tensor data converts to f64");
        let next = next_scale(s, b_avg, &mut targets);
        let device = self.weight.val().device();
        self.scale.update(
            Tensor::from_data(
                TensorData::new(vec![next], [1]),
                (&device, self.weight.val().dtype()),
            )
            .detach(),
        );
        loss
    }

    fn weight(&self) -> Tensor<2> {
        self.weight.val()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lossbench_head::testkit;
    use lossbench_normface::NormFaceHead;

    #[test]
    fn conformance() {
        testkit::conformance::<AdaCosHead>(&testkit::params::<AdaCosHead>("{}"));
    }

    #[test]
    fn first_batch_is_normface_at_the_initial_scale() {
        // Every evaluation starts a fresh head: the first batch uses s₀ = √2·ln(6 − 1).
        let s0 = std::f64::consts::SQRT_2 * 5f64.ln();
        testkit::check_equivalent::<AdaCosHead, NormFaceHead>(
            "{}",
            &format!(r#"{{"s": {s0}}}"#),
            1e-10,
        );
    }

    #[test]
    fn scale_update_matches_hand_computation() {
        // Class weights e0, e1, e2; s = 2. Sample 0 = e0 (target 0): cos [1, 0, 0];
        // sample 1 = (0, 0.6, 0.8) (target 2): cos [0, 0.6, 0.8].
        // B_avg = ((e⁰ + e⁰) + (e⁰ + e^{1.2}))/2 = (3 + e^{1.2})/2; θ_med = acos(0.9) < π/4,
        // so s = ln(B_avg)/0.9.
        let b_avg = (3.0 + 1.2f64.exp()) / 2.0;
        let want = b_avg.ln() / 0.9;
        assert!((next_scale(2.0, b_avg, &mut [1.0, 0.8]) - want).abs() < 1e-12);
        let device = testkit::device();
        let f64_on = (&device, burn::tensor::DType::F64);
        let identity = vec![1.0f64, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        let head = AdaCosHead::build(
            &testkit::params::<AdaCosHead>("{}"),
            Tensor::from_data(TensorData::new(identity, [3, 3]), f64_on),
            None,
        )
        .expect("head");
        head.scale.update(Tensor::from_data(
            TensorData::new(vec![2.0f64], [1]),
            f64_on,
        ));
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f64, 0.0, 0.0, 0.0, 0.6, 0.8], [2, 3]),
            f64_on,
        );
        let labels = Labels::new(&[0, 2], 3, &device).expect("labels");
        let _ = head.loss(x, &labels, 0);
        assert!(
            (head.scale() - want).abs() < 1e-9,
            "{} vs {want}",
            head.scale()
        );
        // A degenerate batch keeps the previous scale.
        assert_eq!(next_scale(2.0, 0.5, &mut [0.3]), 2.0);
    }

    #[test]
    fn too_few_classes_is_an_error() {
        let w = Tensor::<2>::zeros([2, 4], &testkit::device());
        let err = AdaCosHead::build(&testkit::params::<AdaCosHead>("{}"), w, None)
            .expect_err("2 classes");
        assert!(err.to_string().contains("at least 3 classes"), "{err}");
    }
}
