//! SphereFace / A-Softmax (Liu et al., 2017), as in the authors' Caffe `margin_inner_product`
//! layer: class weights normalised, features not. Target logit
//! `f_y = (λ‖x‖cos θ_y + ‖x‖ψ(θ_y)) / (1 + λ)` with `ψ(θ) = (−1)^k cos(mθ) − 2k`,
//! `k = ⌊mθ/π⌋`; other logits `‖x‖cos θ_j`. λ anneals with the iteration:
//! `λ = max(λ_min, base·(1 + γ·iter)^−power)`.
//!
//! `cos(mθ)` is the Chebyshev polynomial `T_m(cos θ)` and `k` counts the thresholds
//! `cos(jπ/m)` that `cos θ` lies at or below, so no `acos` is taken: the gradient is finite
//! at θ = 0 and θ = π, where `d acos(c)/dc` is infinite.

use burn::module::Param;
use burn::prelude::*;
use lossbench_head::angular::{
    cross_entropy, projections, replace_target, row_norms, target_column,
};
use lossbench_head::{
    Allowed, HeadError, Labels, LossHead, LossSpec, ParamSpec, ResolvedParams, check_shapes,
};

/// The largest multiplicative margin accepted; the paper uses m ≤ 4 and T_m grows as 2^(m−1).
pub const MAX_MARGIN: i64 = 10;

/// λ annealing schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LambdaSchedule {
    pub base: f64,
    pub gamma: f64,
    pub power: f64,
    pub min: f64,
}

impl LambdaSchedule {
    /// `λ = max(λ_min, base·(1 + γ·iter)^−power)`.
    #[must_use]
    pub fn at(&self, iteration: u64) -> f64 {
        (self.base * (1.0 + self.gamma * iteration as f64).powf(-self.power)).max(self.min)
    }
}

/// Multiplicative angular margin with λ annealing.
#[derive(Module, Debug)]
pub struct SphereFaceHead {
    weight: Param<Tensor<2>>, // [classes, dim]
    margin: usize,
    lambda_base: f64,
    lambda_gamma: f64,
    lambda_power: f64,
    lambda_min: f64,
}

impl SphereFaceHead {
    /// The λ schedule of this head.
    #[must_use]
    pub fn schedule(&self) -> LambdaSchedule {
        LambdaSchedule {
            base: self.lambda_base,
            gamma: self.lambda_gamma,
            power: self.lambda_power,
            min: self.lambda_min,
        }
    }

    /// `ψ(θ)` from `c = cos θ` (`[batch, 1]`).
    fn psi(&self, c: Tensor<2>) -> Tensor<2> {
        let m = self.margin;
        // T_m(c) by the recurrence T_{n+1} = 2c·T_n − T_{n−1}.
        let (mut prev, mut cur) = (c.ones_like(), c.clone());
        for _ in 1..m {
            let next = c.clone().mul(cur.clone()).mul_scalar(2.0) - prev;
            prev = cur;
            cur = next;
        }
        // k = #{ j in 1..=m : c ≤ cos(jπ/m) }, a step function with zero gradient.
        let mut k = c.zeros_like();
        for j in 1..=m {
            let threshold = (j as f64 * std::f64::consts::PI / m as f64).cos();
            k = k.clone()
                + k.zeros_like()
                    .mask_fill(c.clone().detach().lower_equal_elem(threshold), 1.0);
        }
        // (−1)^k = 1 − 2·(k mod 2)
        let sign = k
            .clone()
            .remainder_scalar(2.0)
            .mul_scalar(-2.0)
            .add_scalar(1.0);
        sign * cur - k.mul_scalar(2.0)
    }
}

impl LossHead for SphereFaceHead {
    const SPEC: LossSpec = LossSpec {
        name: "sphereface",
        formula: "target (λ‖x‖cos θ_y + ‖x‖ψ(θ_y))/(1+λ), ψ(θ) = (−1)^k cos(mθ) − 2k, k = ⌊mθ/π⌋; others ‖x‖cos θ_j",
        has_bias: false,
        params: &[
            ParamSpec {
                name: "m",
                default: 4.0,
                allowed: Allowed::Integer(1, MAX_MARGIN),
                help: "multiplicative angular margin",
            },
            ParamSpec {
                name: "lambda_base",
                default: 1000.0,
                allowed: Allowed::NonNegative,
                help: "λ at iteration 0",
            },
            ParamSpec {
                name: "lambda_gamma",
                default: 0.12,
                allowed: Allowed::NonNegative,
                help: "λ decay rate γ",
            },
            ParamSpec {
                name: "lambda_power",
                default: 1.0,
                allowed: Allowed::NonNegative,
                help: "λ decay power",
            },
            ParamSpec {
                name: "lambda_min",
                default: 5.0,
                allowed: Allowed::NonNegative,
                help: "floor of λ",
            },
        ],
    };

    fn build(
        params: &ResolvedParams,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> Result<Self, HeadError> {
        check_shapes(&Self::SPEC, &weight, bias.as_ref())?;
        Ok(Self {
            weight: Param::from_tensor(weight),
            // An integer in [1, MAX_MARGIN] by validation.
            margin: params.get("m") as usize,
            lambda_base: params.get("lambda_base"),
            lambda_gamma: params.get("lambda_gamma"),
            lambda_power: params.get("lambda_power"),
            lambda_min: params.get("lambda_min"),
        })
    }

    fn logits(&self, features: Tensor<2>) -> Tensor<2> {
        projections(features, self.weight.val()) // ‖x‖·cos θ_j: [batch, classes]
    }

    fn loss(&self, features: Tensor<2>, labels: &Labels, iteration: u64) -> Tensor<1> {
        let norms = row_norms(features.clone()); // [batch, 1]
        let logits = self.logits(features); // ‖x‖ cos θ
        let c = (target_column(logits.clone(), labels) / norms.clone()).clamp(-1.0, 1.0); // [batch, 1]
        let lambda = self.schedule().at(iteration);
        let target = (c.clone().mul_scalar(lambda) + self.psi(c))
            .mul(norms)
            .div_scalar(1.0 + lambda);
        cross_entropy(replace_target(logits, labels, target), labels)
    }

    fn weight(&self) -> Tensor<2> {
        self.weight.val()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lossbench_head::eval::Case;
    use lossbench_head::testkit;

    const NO_LAMBDA: &str = r#"{"lambda_base": 0, "lambda_min": 0}"#;

    fn psi_reference(theta: f64, m: f64) -> f64 {
        let k = (m * theta / std::f64::consts::PI).floor();
        (-1f64).powf(k) * (m * theta).cos() - 2.0 * k
    }

    #[test]
    fn conformance() {
        testkit::check_defaults_valid::<SphereFaceHead>();
        testkit::conformance::<SphereFaceHead>(&testkit::params::<SphereFaceHead>("{}"));
        testkit::conformance::<SphereFaceHead>(&testkit::params::<SphereFaceHead>(NO_LAMBDA));
        testkit::conformance::<SphereFaceHead>(&testkit::params::<SphereFaceHead>(
            r#"{"m": 3, "lambda_base": 2, "lambda_min": 0}"#,
        ));
    }

    #[test]
    fn lambda_schedule_matches_formula() {
        let s = LambdaSchedule {
            base: 1000.0,
            gamma: 0.12,
            power: 1.0,
            min: 5.0,
        };
        assert_eq!(s.at(0), 1000.0);
        assert!((s.at(100) - 1000.0 / 13.0).abs() < 1e-9);
        assert_eq!(s.at(100_000), 5.0);
    }

    #[test]
    fn psi_matches_acos_formula_over_the_whole_range() {
        // Hand-checked against the definition with θ = acos(c), away from c = ±1.
        for m in 1..=5 {
            for i in 1..200 {
                let theta = std::f64::consts::PI * f64::from(i) / 200.0 + 1e-4;
                let case = Case {
                    features: vec![vec![theta.cos(), theta.sin()]],
                    weights: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
                    bias: None,
                    labels: vec![0],
                    iteration: 0,
                };
                let p = testkit::params::<SphereFaceHead>(&format!(
                    r#"{{"m": {m}, "lambda_base": 0, "lambda_min": 0}}"#
                ));
                let e = testkit::eval_ok::<SphereFaceHead>(&p, &case);
                // ‖x‖ = 1: logits [ψ(θ), sin θ]; loss = ln(1 + e^(sin θ − ψ(θ))).
                let want = (1.0 + (theta.sin() - psi_reference(theta, f64::from(m))).exp()).ln();
                testkit::assert_close(&format!("m={m} θ={theta}"), &[e.loss], &[want], 1e-9, 1.0);
            }
        }
    }

    #[test]
    fn hand_checked_case_with_lambda() {
        // ‖x‖ = 2, θ = 0.3 from class 0, class 1 ⟂ class 0; m = 4, λ = 1 (base 1, γ 0):
        // k = ⌊1.2/π⌋ = 0, ψ = cos 1.2; f_y = (2 cos 0.3 + 2 cos 1.2) / 2; other 2 sin 0.3.
        let case = Case {
            features: vec![vec![2.0 * 0.3f64.cos(), 2.0 * 0.3f64.sin()]],
            weights: vec![vec![5.0, 0.0], vec![0.0, 0.1]],
            bias: None,
            labels: vec![0],
            iteration: 3,
        };
        let p = testkit::params::<SphereFaceHead>(
            r#"{"lambda_base": 1, "lambda_gamma": 0, "lambda_min": 0}"#,
        );
        let e = testkit::eval_ok::<SphereFaceHead>(&p, &case);
        let target = 0.3f64.cos() + 1.2f64.cos();
        let other = 2.0 * 0.3f64.sin();
        testkit::assert_close(
            "loss",
            &[e.loss],
            &[(1.0 + (other - target).exp()).ln()],
            1e-12,
            1.0,
        );
        testkit::assert_close(
            "logits",
            &e.logits[0],
            &[2.0 * 0.3f64.cos(), other],
            1e-12,
            1.0,
        );
    }

    #[test]
    fn margin_one_without_lambda_equals_norm_times_cos_logits() {
        let p = testkit::params::<SphereFaceHead>(r#"{"m": 1, "lambda_base": 0, "lambda_min": 0}"#);
        for seed in [1, 2, 3] {
            let case = testkit::generic_case::<SphereFaceHead>(&p, seed);
            let e = testkit::eval_ok::<SphereFaceHead>(&p, &case);
            // Independent f64: logits_ij = x_i · w_j / ‖w_j‖, mean cross-entropy.
            let mut total = 0.0;
            for (x, &y) in case.features.iter().zip(&case.labels) {
                let logits: Vec<f64> = case
                    .weights
                    .iter()
                    .map(|w| {
                        let n = w.iter().map(|v| v * v).sum::<f64>().sqrt();
                        x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() / n
                    })
                    .collect();
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
                total += lse - logits[y as usize];
            }
            let want = total / case.labels.len() as f64;
            testkit::assert_close("loss", &[e.loss], &[want], 1e-10, 1.0);
        }
    }

    #[test]
    fn non_integer_margin_is_rejected() {
        let given = serde_json::json!({"m": 2.5});
        let err = ResolvedParams::resolve(
            "sphereface",
            SphereFaceHead::SPEC.params,
            given.as_object().expect("object"),
        )
        .expect_err("m = 2.5 accepted");
        assert!(
            err.to_string().contains("`m` = 2.5") && err.to_string().contains("integer"),
            "{err}"
        );
    }
}
