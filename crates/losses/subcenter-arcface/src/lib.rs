//! Sub-center ArcFace (Deng et al., 2020): `K` centres per class; a sample's cosine to a
//! class is the largest over that class's centres, then ArcFace's margin on the target.
//! Weight rows are class-major: row `class·K + k`.

use burn::prelude::*;
use lossbench_arcface::margin_target;
use lossbench_head::angular::margin_cross_entropy;
use lossbench_head::{
    Allowed, CosineClassifier, HeadError, Labels, LossHead, LossSpec, ParamSpec, ResolvedParams,
    SCALE, angular_margin,
};

/// ArcFace over the best of `K` sub-centres per class.
#[derive(Module, Debug)]
pub struct SubCenterArcFaceHead {
    classifier: CosineClassifier,
    margin: f64,
    centres: usize,
}

impl LossHead for SubCenterArcFaceHead {
    const SPEC: LossSpec = LossSpec {
        name: "subcenter-arcface",
        formula: "c_j = max over K sub-centres of cos; then ArcFace: target s·cos(θ_y + m), others s·c_j",
        has_bias: false,
        params: &[
            SCALE,
            angular_margin(0.5),
            ParamSpec {
                name: "k",
                default: 3.0,
                allowed: Allowed::Integer(1, 16),
                help: "sub-centres per class",
            },
        ],
    };

    fn build(
        params: &ResolvedParams,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
    ) -> Result<Self, HeadError> {
        let centres = params.get("k") as usize;
        if !weight.dims()[0].is_multiple_of(centres) {
            return Err(HeadError::Shape(format!(
                "{} weight rows are not a multiple of k = {centres}",
                weight.dims()[0]
            )));
        }
        Ok(Self {
            classifier: CosineClassifier::new(&Self::SPEC, weight, bias, params.get("s"))?,
            margin: params.get("m"),
            centres,
        })
    }

    fn weight_rows(params: &ResolvedParams, num_classes: usize) -> usize {
        num_classes * params.get("k") as usize
    }

    fn class_cosines(&self, features: Tensor<2>) -> Tensor<2> {
        self.best_centre(self.classifier.cosines(features))
    }

    fn logits(&self, features: Tensor<2>) -> Tensor<2> {
        // max_k s·cos = s·max_k cos for s > 0.
        self.best_centre(self.classifier.logits(features))
    }

    fn loss(&self, features: Tensor<2>, labels: &Labels, _iteration: u64) -> Tensor<1> {
        margin_cross_entropy(
            self.logits(features),
            labels,
            self.classifier.scale(),
            |c| margin_target(c, self.margin),
        )
    }

    fn weight(&self) -> Tensor<2> {
        self.classifier.weight()
    }
}

impl SubCenterArcFaceHead {
    /// Each class's largest value over its `K` centres: `[batch, classes·K]` → `[batch, classes]`.
    fn best_centre(&self, per_centre: Tensor<2>) -> Tensor<2> {
        let [batch, rows] = per_centre.dims();
        let classes = rows / self.centres;
        per_centre
            .reshape([batch, classes, self.centres])
            .max_dim(2) // [batch, classes, 1]
            .reshape([batch, classes])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lossbench_arcface::ArcFaceHead;
    use lossbench_head::eval::Case;
    use lossbench_head::testkit;

    #[test]
    fn conformance() {
        testkit::check_defaults_valid::<SubCenterArcFaceHead>();
        testkit::conformance::<SubCenterArcFaceHead>(&testkit::params::<SubCenterArcFaceHead>(
            "{}",
        ));
        testkit::conformance::<SubCenterArcFaceHead>(&testkit::params::<SubCenterArcFaceHead>(
            r#"{"s": 8, "k": 2}"#,
        ));
    }

    #[test]
    fn one_centre_equals_arcface() {
        testkit::check_equivalent::<SubCenterArcFaceHead, ArcFaceHead>(
            r#"{"s": 30, "m": 0.5, "k": 1}"#,
            r#"{"s": 30, "m": 0.5}"#,
            1e-12,
        );
    }

    #[test]
    fn the_nearest_sub_centre_counts() {
        // Class 0 has centres at 90° and 20° from x, class 1 at 70° and 160°; k = 2, s = 1,
        // m = 0.3: target cos(20° + 0.3 rad), other cos 70°.
        let d = |deg: f64| vec![deg.to_radians().cos(), deg.to_radians().sin()];
        let case = Case {
            features: vec![d(0.0)],
            weights: vec![d(90.0), d(20.0), d(70.0), d(160.0)],
            bias: None,
            labels: vec![0],
            iteration: 0,
        };
        let e = testkit::eval_ok::<SubCenterArcFaceHead>(
            &testkit::params::<SubCenterArcFaceHead>(r#"{"s": 1, "m": 0.3, "k": 2}"#),
            &case,
        );
        let (t, o) = ((20f64.to_radians() + 0.3).cos(), 70f64.to_radians().cos());
        testkit::assert_close("loss", &[e.loss], &[(1.0 + (o - t).exp()).ln()], 1e-10, 1.0);
        testkit::assert_close(
            "logits",
            &e.logits[0],
            &[20f64.to_radians().cos(), o],
            1e-10,
            1.0,
        );
    }

    #[test]
    fn rows_must_be_whole_classes() {
        let mut case = testkit::generic_case::<SubCenterArcFaceHead>(
            &testkit::params::<SubCenterArcFaceHead>("{}"),
            1,
        );
        case.weights.pop();
        let err = lossbench_head::eval::evaluate::<SubCenterArcFaceHead>(
            &testkit::params::<SubCenterArcFaceHead>("{}"),
            &case,
            &testkit::device(),
        )
        .expect_err("17 rows for k = 3");
        assert!(err.to_string().contains("17 weight rows"), "{err}");
    }
}
