//! Loss name → head: the one place a loss is registered.
//!
//! Adding a loss is one new crate under `crates/losses/` plus one line in the
//! [`register_losses!`] call below (and the crate in this crate's `Cargo.toml`).

use burn::prelude::*;
use lossbench_head::eval::{Case, Evaluation, evaluate};
use lossbench_head::{
    DEFAULT_INIT_STD, HeadDims, HeadError, Labels, LossHead, LossSpec, ResolvedParams,
    init_weight_std,
};

/// Generates [`AnyHead`] (a burn module enum over every registered head) and the lookup
/// functions from one list of `Variant => HeadType`.
macro_rules! register_losses {
    ($($variant:ident => $head:ty),+ $(,)?) => {
        /// Any registered loss head, as one burn module a run can train.
        #[derive(Module, Debug)]
        pub enum AnyHead {
            $($variant($head),)+
        }

        /// Every registered loss, in registry order.
        pub const LOSSES: &[LossSpec] = &[$(<$head as LossHead>::SPEC,)+];

        impl AnyHead {
            fn weight_rows_named(name: &str, params: &ResolvedParams, num_classes: usize) -> Result<usize, HeadError> {
                $(if name == <$head as LossHead>::SPEC.name {
                    return Ok(<$head as LossHead>::weight_rows(params, num_classes));
                })+
                Err(unknown(name))
            }

            fn build_named(
                name: &str,
                params: &ResolvedParams,
                weight: Tensor<2>,
                bias: Option<Tensor<1>>,
            ) -> Result<Self, HeadError> {
                $(if name == <$head as LossHead>::SPEC.name {
                    return Ok(Self::$variant(<$head as LossHead>::build(params, weight, bias)?));
                })+
                Err(unknown(name))
            }

            /// Registry name of this head.
            #[must_use]
            pub fn name(&self) -> &'static str {
                match self { $(Self::$variant(_) => <$head as LossHead>::SPEC.name,)+ }
            }

            /// Prediction logits without margin: `[batch, dim]` → `[batch, classes]`.
            #[must_use]
            pub fn logits(&self, features: Tensor<2>) -> Tensor<2> {
                match self { $(Self::$variant(h) => h.logits(features),)+ }
            }

            /// Mean training loss, shape `[1]`.
            #[must_use]
            pub fn loss(&self, features: Tensor<2>, labels: &Labels, iteration: u64) -> Tensor<1> {
                match self { $(Self::$variant(h) => h.loss(features, labels, iteration),)+ }
            }

            /// The weight matrix `[rows, dim]`.
            #[must_use]
            pub fn weight(&self) -> Tensor<2> {
                match self { $(Self::$variant(h) => h.weight(),)+ }
            }

            /// Cosines between features and classes, `[batch, classes]`.
            #[must_use]
            pub fn class_cosines(&self, features: Tensor<2>) -> Tensor<2> {
                match self { $(Self::$variant(h) => h.class_cosines(features),)+ }
            }
        }

        /// [`evaluate_named`] in the float type `dtype`.
        pub fn evaluate_named_as(
            name: &str,
            params: &ResolvedParams,
            case: &Case,
            device: &Device,
            dtype: burn::tensor::DType,
        ) -> Result<Evaluation, HeadError> {
            $(if name == <$head as LossHead>::SPEC.name {
                return lossbench_head::eval::evaluate_as::<$head>(params, case, device, dtype);
            })+
            Err(unknown(name))
        }

        /// Evaluate the named loss on explicit numbers (what `lossbench probe` does).
        pub fn evaluate_named(
            name: &str,
            params: &ResolvedParams,
            case: &Case,
            device: &Device,
        ) -> Result<Evaluation, HeadError> {
            $(if name == <$head as LossHead>::SPEC.name {
                return evaluate::<$head>(params, case, device);
            })+
            Err(unknown(name))
        }
    };
}

register_losses! {
    Softmax => lossbench_softmax::SoftmaxHead,
    NormFace => lossbench_normface::NormFaceHead,
    SphereFace => lossbench_sphereface::SphereFaceHead,
    CosFace => lossbench_cosface::CosFaceHead,
    ArcFace => lossbench_arcface::ArcFaceHead,
    Combined => lossbench_combined::CombinedHead,
    AdaCos => lossbench_adacos::AdaCosHead,
    CurricularFace => lossbench_curricularface::CurricularFaceHead,
    SubCenterArcFace => lossbench_subcenter_arcface::SubCenterArcFaceHead,
    // new losses go above this line
}

fn unknown(name: &str) -> HeadError {
    HeadError::UnknownLoss {
        name: name.to_string(),
        known: LOSSES.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
    }
}

/// Weight rows per class of the named loss (its sub-centres; 1 for most losses).
pub fn weight_rows(name: &str, params: &ResolvedParams) -> Result<usize, HeadError> {
    AnyHead::weight_rows_named(name, params, 1)
}

/// The spec of a registered loss.
pub fn spec(name: &str) -> Result<&'static LossSpec, HeadError> {
    LOSSES
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| unknown(name))
}

/// Validate `params` (a JSON object; TOML tables convert to it) for the named loss.
pub fn resolve_params(
    name: &str,
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<ResolvedParams, HeadError> {
    let spec = spec(name)?;
    ResolvedParams::resolve(spec.name, spec.params, params)
}

/// A freshly initialised head, its weights drawn from `seed` alone (the same on every
/// backend), the bias zero.
pub fn init_head(
    name: &str,
    params: &ResolvedParams,
    dims: HeadDims,
    seed: u64,
    device: &Device,
) -> Result<AnyHead, HeadError> {
    init_head_std(name, params, dims, seed, DEFAULT_INIT_STD, device)
}

/// [`init_head`] with class weights drawn from N(0, std²).
pub fn init_head_std(
    name: &str,
    params: &ResolvedParams,
    dims: HeadDims,
    seed: u64,
    std: f64,
    device: &Device,
) -> Result<AnyHead, HeadError> {
    let spec = spec(name)?;
    let bias = spec
        .has_bias
        .then(|| Tensor::<1>::zeros([dims.num_classes], device));
    let rows = AnyHead::weight_rows_named(name, params, dims.num_classes)?;
    AnyHead::build_named(
        name,
        params,
        init_weight_std(rows, dims.feature_dim, seed, std, device),
        bias,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_lowercase() {
        let mut names: Vec<_> = LOSSES.iter().map(|s| s.name).collect();
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), LOSSES.len());
        for expected in ["softmax", "normface", "sphereface", "cosface", "arcface"] {
            assert!(names.contains(&expected), "{expected} is not registered");
        }
    }

    #[test]
    fn unknown_loss_is_an_error_listing_the_known_ones() {
        let err = spec("arcfase").expect_err("unknown accepted");
        assert!(
            err.to_string().starts_with("unknown loss `arcfase` (registered: softmax, normface, sphereface, cosface, arcface"),
            "{err}"
        );
    }

    #[test]
    fn every_loss_builds_with_defaults_and_gives_a_finite_loss() {
        let device = Device::flex().autodiff();
        let dims = HeadDims {
            num_classes: 5,
            feature_dim: 8,
        };
        let x = Tensor::<2>::from_data(
            TensorData::new(
                (0..24).map(|v| v as f32 / 10.0 - 1.0).collect::<Vec<_>>(),
                [3, 8],
            ),
            &device,
        );
        let labels = Labels::new(&[0, 4, 2], 5, &device).expect("labels");
        for spec in LOSSES {
            let params = resolve_params(spec.name, &serde_json::Map::new()).expect("defaults");
            let head = init_head(spec.name, &params, dims, 3, &device).expect("head");
            assert_eq!(head.name(), spec.name);
            let loss: f32 = head.loss(x.clone(), &labels, 0).into_scalar();
            assert!(loss.is_finite(), "{}: {loss}", spec.name);
        }
    }

    mod fuzz {
        use super::*;
        use lossbench_head::eval::Case;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            prop_oneof![
                any::<f64>().prop_map(|v| serde_json::json!(v)),
                any::<i64>().prop_map(|v| serde_json::json!(v)),
                Just(serde_json::json!(null)),
                Just(serde_json::json!("4")),
                Just(serde_json::json!([1.0])),
                (0.0..5.0f64).prop_map(|v| serde_json::json!(v)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Random losses, parameters and shapes: an answer or an error, never a panic.
            #[test]
            fn probe_inputs_never_panic(
                loss in 0usize..10,
                keys in proptest::collection::vec(prop_oneof![Just("s"), Just("m"), Just("k"), Just("m1"), Just("lambda_min"), Just("x")], 0..3),
                values in proptest::collection::vec(json_value(), 3),
                rows in 0usize..4,
                cols in 0usize..4,
                classes in 0usize..7,
                ragged in any::<bool>(),
                labels in proptest::collection::vec(-2i64..8, 0..5),
                scale in prop_oneof![Just(1.0), Just(0.0), Just(1e30)],
            ) {
                let name = LOSSES.get(loss).map_or("nope", |s| s.name);
                let params: serde_json::Map<String, serde_json::Value> =
                    keys.iter().zip(&values).map(|(k, v)| (k.to_string(), v.clone())).collect();
                let mut features = vec![vec![scale; cols]; rows];
                if ragged && rows > 1 {
                    features[1].push(1.0);
                }
                let case = Case { features, weights: vec![vec![0.5; cols]; classes], bias: None, labels, iteration: 3 };
                if let Ok(p) = resolve_params(name, &params) {
                    let _ = evaluate_named(name, &p, &case, &Device::flex());
                }
            }
        }
    }
}
