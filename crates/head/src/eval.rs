//! Evaluate one head on explicit numbers: loss, logits and the gradients of the mean loss.
//! This is what `lossbench probe` prints and what the conformance kit checks.

use burn::prelude::*;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use crate::{HeadError, Labels, LossHead, ResolvedParams};

/// Explicit inputs: `features` `[batch][dim]`, `weights` `[classes][dim]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub features: Vec<Vec<f64>>,
    pub weights: Vec<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<Vec<f64>>,
    pub labels: Vec<i64>,
    #[serde(default)]
    pub iteration: u64,
}

/// Loss, logits and gradients of the mean loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub loss: f64,
    pub grad_features: Vec<Vec<f64>>,
    pub grad_weights: Vec<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_bias: Option<Vec<f64>>,
    pub logits: Vec<Vec<f64>>,
}

fn matrix(name: &str, rows: &[Vec<f64>]) -> Result<(Vec<f64>, [usize; 2]), HeadError> {
    let cols = rows.first().map_or(0, Vec::len);
    if rows.is_empty() || cols == 0 {
        return Err(HeadError::Shape(format!(
            "`{name}` must be a non-empty matrix"
        )));
    }
    if let Some(i) = rows.iter().position(|r| r.len() != cols) {
        return Err(HeadError::Shape(format!(
            "`{name}` is ragged: row 0 has {cols} values, row {i} has {}",
            rows[i].len()
        )));
    }
    if let Some(v) = rows.iter().flatten().find(|v| !v.is_finite()) {
        return Err(HeadError::Shape(format!(
            "`{name}` holds a non-finite value {v}"
        )));
    }
    // Norms are squared on the way: a row whose squared norm overflows float64 would come
    // out as zeros or NaN instead of an answer.
    if let Some(i) = rows
        .iter()
        .position(|r| !r.iter().map(|v| v * v).sum::<f64>().is_finite())
    {
        return Err(HeadError::Shape(format!(
            "`{name}` row {i} has a norm too large for float64 (its square overflows); scale the input down"
        )));
    }
    Ok((rows.iter().flatten().copied().collect(), [rows.len(), cols]))
}

fn to_rows(t: Tensor<2>) -> Vec<Vec<f64>> {
    let [_, cols] = t.dims();
    let flat: Vec<f64> = t
        .into_data()
        .try_into_vec_as::<f64>()
        .expect("float tensor data converts to f64");
    flat.chunks(cols).map(<[f64]>::to_vec).collect()
}

/// Check `case` and evaluate head `H` on it in float64 on `device` (which must support
/// f64: flex does).
pub fn evaluate<H: LossHead>(
    params: &ResolvedParams,
    case: &Case,
    device: &Device,
) -> Result<Evaluation, HeadError> {
    evaluate_as::<H>(params, case, device, DType::F64)
}

/// [`evaluate`] in the float type `dtype` (`lossbench selfcheck` compares a backend's f32
/// against float64 on flex).
pub fn evaluate_as<H: LossHead>(
    params: &ResolvedParams,
    case: &Case,
    device: &Device,
    dtype: DType,
) -> Result<Evaluation, HeadError> {
    let device = device.clone().autodiff();
    let (x, x_shape) = matrix("features", &case.features)?;
    let (w, w_shape) = matrix("weights", &case.weights)?;
    if x_shape[1] != w_shape[1] {
        return Err(HeadError::Shape(format!(
            "features have {} columns but weights have {}: both are [rows, feature_dim]",
            x_shape[1], w_shape[1]
        )));
    }
    if case.labels.len() != x_shape[0] {
        return Err(HeadError::Shape(format!(
            "{} labels for {} feature rows",
            case.labels.len(),
            x_shape[0]
        )));
    }
    let per_class = H::weight_rows(params, 1);
    if !w_shape[0].is_multiple_of(per_class) {
        return Err(HeadError::Shape(format!(
            "{} weight rows are not a whole number of classes of {per_class} rows each",
            w_shape[0]
        )));
    }
    let num_classes = w_shape[0] / per_class;
    let labels = Labels::new(&case.labels, num_classes, &device)?;
    let on = (&device, dtype);
    let features = Tensor::<2>::from_data(TensorData::new(x, x_shape), on).require_grad();
    let weight = Tensor::<2>::from_data(TensorData::new(w, w_shape), on).require_grad();
    let bias = match (&case.bias, H::SPEC.has_bias) {
        (Some(_), false) => {
            return Err(HeadError::Shape(format!(
                "loss `{}` has no bias",
                H::SPEC.name
            )));
        }
        (Some(b), true) => {
            if b.len() != num_classes {
                return Err(HeadError::Shape(format!(
                    "bias has {} entries but weights have {} classes",
                    b.len(),
                    num_classes
                )));
            }
            Some(Tensor::<1>::from_data(
                TensorData::new(b.clone(), [b.len()]),
                on,
            ))
        }
        (None, true) => Some(Tensor::<1>::zeros([num_classes], on)),
        (None, false) => None,
    }
    .map(Tensor::require_grad);

    let head = H::build(params, weight.clone(), bias.clone())?;
    // Logits first: a head with state (AdaCos's scale) reports them at the given state.
    let logits = head.logits(features.clone().detach());
    let loss = head.loss(features.clone(), &labels, case.iteration);
    let grads = loss.backward();
    let loss_value: f64 = loss.into_scalar::<f64>();
    let grad_of = |t: &Tensor<2>| {
        t.grad(&grads)
            .map_or_else(|| vec![vec![0.0; t.dims()[1]]; t.dims()[0]], to_rows)
    };
    let evaluation = Evaluation {
        loss: loss_value,
        grad_features: grad_of(&features),
        grad_weights: grad_of(&weight),
        grad_bias: bias.map(|b| {
            b.grad(&grads).map_or_else(
                || vec![0.0; num_classes],
                |g| {
                    g.into_data()
                        .try_into_vec_as::<f64>()
                        .expect("float tensor data converts to f64")
                },
            )
        }),
        logits: to_rows(logits.inner()),
    };
    let finite = |rows: &[Vec<f64>]| rows.iter().flatten().all(|v| v.is_finite());
    if !(evaluation.loss.is_finite()
        && finite(&evaluation.logits)
        && finite(&evaluation.grad_features)
        && finite(&evaluation.grad_weights))
    {
        let name = match dtype {
            DType::F64 => "float64".to_string(),
            DType::F32 => "float32".to_string(),
            other => format!("{other:?}"),
        };
        return Err(HeadError::Shape(format!(
            "the result is not finite in {name} (loss, logits or gradients overflow): scale the input down"
        )));
    }
    Ok(evaluation)
}
