//! Plain softmax cross-entropy: `logits = x·Wᵀ + b`. The baseline every margin loss is
//! compared against; no normalisation, no margin.

use burn::module::Param;
use burn::prelude::*;
use lossbench_head::angular::cross_entropy;
use lossbench_head::{HeadError, Labels, LossHead, LossSpec, ResolvedParams, check_shapes};

/// Linear classifier with bias, trained with cross-entropy.
#[derive(Module, Debug)]
pub struct SoftmaxHead {
    weight: Param<Tensor<2>>, // [classes, dim]
    bias: Param<Tensor<1>>,   // [classes]
}

impl LossHead for SoftmaxHead {
    const SPEC: LossSpec = LossSpec {
        name: "softmax",
        formula: "logits = x·Wᵀ + b (no normalisation), cross-entropy",
        has_bias: true,
        params: &[],
    };

    fn build(
        _: &ResolvedParams,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> Result<Self, HeadError> {
        check_shapes(&Self::SPEC, &weight, bias.as_ref())?;
        let [classes, _] = weight.dims();
        let bias =
            bias.unwrap_or_else(|| Tensor::zeros([classes], (&weight.device(), weight.dtype())));
        Ok(Self {
            weight: Param::from_tensor(weight),
            bias: Param::from_tensor(bias),
        })
    }

    fn logits(&self, features: Tensor<2>) -> Tensor<2> {
        // [batch, dim] · [dim, classes] + [1, classes]
        features.matmul(self.weight.val().transpose()) + self.bias.val().unsqueeze_dim(0)
    }

    fn loss(&self, features: Tensor<2>, labels: &Labels, _iteration: u64) -> Tensor<1> {
        cross_entropy(self.logits(features), labels)
    }

    fn weight(&self) -> Tensor<2> {
        self.weight.val()
    }

    fn bias(&self) -> Option<Tensor<1>> {
        Some(self.bias.val())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lossbench_head::eval::Case;
    use lossbench_head::testkit;

    #[test]
    fn conformance() {
        testkit::check_defaults_valid::<SoftmaxHead>();
        testkit::conformance::<SoftmaxHead>(&testkit::params::<SoftmaxHead>("{}"));
    }

    #[test]
    fn hand_checked_case() {
        // logits = [1·1 + 0.5, 2·1 − 0.5] = [1.5, 1.5]: a tie, so the loss is ln 2 and
        // d loss / d logits = p − onehot = [0.5, −0.5].
        let case = Case {
            features: vec![vec![1.0, 2.0]],
            weights: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
            bias: Some(vec![0.5, -0.5]),
            labels: vec![1],
            iteration: 0,
        };
        let e = testkit::eval_ok::<SoftmaxHead>(&testkit::params::<SoftmaxHead>("{}"), &case);
        testkit::assert_close("loss", &[e.loss], &[std::f64::consts::LN_2], 1e-12, 1.0);
        testkit::assert_close("logits", &e.logits[0], &[1.5, 1.5], 1e-12, 1.0);
        // d/dx = Wᵀ (p − y) = [0.5, −0.5]; d/dW = (p − y) xᵀ; d/db = p − y.
        testkit::assert_close("grad x", &e.grad_features[0], &[0.5, -0.5], 1e-12, 1.0);
        testkit::assert_close(
            "grad W",
            &e.grad_weights.concat(),
            &[0.5, 1.0, -0.5, -1.0],
            1e-12,
            1.0,
        );
        testkit::assert_close(
            "grad b",
            &e.grad_bias.expect("bias"),
            &[0.5, -0.5],
            1e-12,
            1.0,
        );
    }
}
