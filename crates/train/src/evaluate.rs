//! Evaluation of a network on one split: loss and top-1/top-5 of the un-margined logits, the
//! feature geometry (angles to the class weights) and, on the test split, retrieval.

use anyhow::Result;
use burn::prelude::*;
use lossbench_data::{Batch, Batcher, ChannelStats, DataSet};
use lossbench_head::Labels;

use crate::net::Net;
use crate::retrieval::{Retrieval, l2_normalise, retrieval};

/// A batch's images on the device: `[batch, 3, side, side]`.
pub(crate) fn upload_images(batch: &Batch, device: &Device) -> Tensor<4> {
    Tensor::<4>::from_data(
        TensorData::new(
            batch.images.clone(),
            [batch.len(), 3, batch.side, batch.side],
        ),
        device,
    )
}

/// A batch on the device: images `[batch, 3, side, side]` and checked labels.
pub(crate) fn upload(
    batch: &Batch,
    num_classes: usize,
    device: &Device,
) -> Result<(Tensor<4>, Labels)> {
    let labels = Labels::new(&batch.labels, num_classes, device)?;
    Ok((upload_images(batch, device), labels))
}

/// Correct top-1 and top-k predictions of `logits` (row-major, `classes` per row), as
/// `argmax`/`topk` users expect: a target logit that is not finite is never a hit, and a
/// class tied with the target ranks before it when its index is lower.
fn correct_topk(logits: &[f32], classes: usize, labels: &[i64], k: usize) -> (usize, usize) {
    let (mut top1, mut topk) = (0, 0);
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let y = label as usize;
        let target = row[y];
        if !target.is_finite() {
            continue;
        }
        // A NaN elsewhere ranks above the target (as in torch.topk).
        let rank = row
            .iter()
            .enumerate()
            .filter(|&(j, &v)| v > target || v.is_nan() || (v == target && j < y))
            .count();
        top1 += usize::from(rank == 0);
        topk += usize::from(rank < k);
    }
    (top1, topk)
}

/// Correct top-1 predictions of a batch, counted on the device by the rule of
/// [`correct_topk`] (ties to the lower index, a non-finite target never a hit, a NaN elsewhere
/// outranks the target): `[1]`.
pub(crate) fn correct_top1(logits: Tensor<2>, labels: &Labels) -> Tensor<1, Int> {
    let [batch, classes] = logits.dims();
    let target = logits.clone().gather(1, labels.column()); // [batch, 1]
    let wide = target.clone().expand([batch, classes]);
    let columns = Tensor::<1, Int>::arange(0..classes as i64, &logits.device())
        .reshape([1, classes])
        .expand([batch, classes]);
    let below_target = columns.lower(labels.column().expand([batch, classes]));
    let outranks = logits
        .clone()
        .greater(wide.clone())
        .bool_or(logits.clone().is_nan())
        .bool_or(logits.equal(wide).bool_and(below_target));
    let first = outranks.int().sum_dim(1).equal_elem(0); // [batch, 1]
    first.bool_and(target.is_finite()).int().sum()
}

/// Sums of the angle to the own class weight and to the nearest other one, in degrees.
fn angle_sums(cosines: &[f32], classes: usize, labels: &[i64]) -> (f64, f64) {
    let (mut target, mut other) = (0.0, 0.0);
    for (row, &label) in cosines.chunks_exact(classes).zip(labels) {
        let y = label as usize;
        let nearest = row
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != y)
            .map(|(_, &c)| c)
            .fold(f32::NEG_INFINITY, f32::max);
        target += f64::from(row[y]).clamp(-1.0, 1.0).acos().to_degrees();
        if nearest.is_finite() {
            other += f64::from(nearest).clamp(-1.0, 1.0).acos().to_degrees();
        }
    }
    (target, other)
}

/// Metrics of the un-margined logits on a split whose classes are the head's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadMetrics {
    pub(crate) loss: f64,
    pub(crate) top1: f64,
    pub(crate) top5: f64,
    pub(crate) target_angle: f64,
    pub(crate) nearest_angle: f64,
}

/// What one split is evaluated for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measure {
    /// Loss, top-k and angles: only where the split's classes are the head's (closed set).
    pub(crate) head: bool,
    /// Recall@K and MAP@R of the features.
    pub(crate) retrieval: bool,
}

/// Metrics on one split: those of the head and/or retrieval, as asked.
pub(crate) struct Evaluation {
    pub(crate) head: Option<HeadMetrics>,
    pub(crate) retrieval: Option<Retrieval>,
}

pub(crate) fn evaluate(
    net: &Net,
    set: &DataSet,
    stats: ChannelStats,
    batch_size: usize,
    iteration: u64,
    device: &Device,
    measure: Measure,
) -> Result<Evaluation> {
    let batcher = Batcher::eval(set, stats, batch_size);
    let classes = set.num_classes;
    let k = classes.min(5);
    let (mut loss_sum, mut top1, mut topk, mut target, mut nearest, mut n) =
        (0.0, 0, 0, 0.0, 0.0, 0usize);
    let mut embeddings = Vec::new();
    let mut labels = Vec::new();
    for batch in batcher.iter() {
        let features = net.features(upload_images(&batch, device)); // [batch, dim]
        if measure.retrieval {
            embeddings.push(l2_normalise(features.clone())); // [batch, dim], stays on the device
            labels.extend_from_slice(&batch.labels);
        }
        n += batch.len();
        if !measure.head {
            continue;
        }
        let batch_labels = Labels::new(&batch.labels, classes, device)?;
        // One transfer per batch: the loss, the logits and the class cosines together.
        let read = burn::tensor::Transaction::default()
            .register(net.head.loss(features.clone(), &batch_labels, iteration))
            .register(net.head.logits(features.clone()))
            .register(net.head.class_cosines(features))
            .execute();
        let [loss, logits, cosines]: [Vec<f32>; 3] = read
            .into_iter()
            .map(|d| {
                d.try_into_vec_as::<f32>()
                    .expect("float tensor data converts to f32")
            })
            .collect::<Vec<_>>()
            .try_into()
            .expect("three tensors registered");
        let loss = f64::from(loss[0]);
        let (c1, ck) = correct_topk(&logits, classes, &batch.labels, k);
        let (t, o) = angle_sums(&cosines, classes, &batch.labels);
        loss_sum += loss * batch.len() as f64;
        top1 += c1;
        topk += ck;
        target += t;
        nearest += o;
    }
    let retrieval = if embeddings.is_empty() {
        None
    } else {
        retrieval(&Tensor::cat(embeddings, 0), &labels)
    };
    let n = n.max(1) as f64;
    Ok(Evaluation {
        head: measure.head.then(|| HeadMetrics {
            loss: loss_sum / n,
            top1: top1 as f64 / n,
            top5: topk as f64 / n,
            target_angle: target / n,
            nearest_angle: nearest / n,
        }),
        retrieval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_breaks_ties_by_index_and_never_counts_a_non_finite_target() {
        let logits = [0.1, 0.9, 0.0, 0.5, 0.5, 0.2];
        // Row 1: classes 0 and 1 tie at 0.5; argmax is class 0.
        assert_eq!(correct_topk(&logits, 3, &[1, 0], 1), (2, 2));
        assert_eq!(correct_topk(&logits, 3, &[1, 1], 1), (1, 1));
        assert_eq!(correct_topk(&logits[3..], 3, &[1], 1), (0, 0));
        assert_eq!(correct_topk(&logits[3..], 3, &[1], 2), (0, 1));
        assert_eq!(correct_topk(&logits, 3, &[0, 2], 2), (0, 1));
        // All-zero logits (a zero feature under a cosine head): only class 0 is "predicted".
        assert_eq!(correct_topk(&[0.0; 4], 4, &[0], 1), (1, 1));
        assert_eq!(correct_topk(&[0.0; 4], 4, &[3], 1), (0, 0));
        assert_eq!(correct_topk(&[0.0; 4], 4, &[3], 3), (0, 0));
        // A NaN or infinite target is no hit; a NaN elsewhere outranks the target.
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(correct_topk(&[bad, 0.0, -1.0], 3, &[0], 3), (0, 0), "{bad}");
        }
        assert_eq!(correct_topk(&[1.0, f32::NAN, 0.0], 3, &[0], 1), (0, 0));
        assert_eq!(correct_topk(&[1.0, f32::NAN, 0.0], 3, &[0], 2), (0, 1));
    }

    #[test]
    fn top1_on_the_device_counts_as_the_host_rule() {
        let device = Device::flex();
        let rows: [[f32; 3]; 8] = [
            [0.1, 0.9, 0.0],
            [0.5, 0.5, 0.2],
            [0.5, 0.5, 0.2],
            [f32::NAN, 0.0, -1.0],
            [1.0, f32::NAN, 0.0],
            [f32::INFINITY, 0.0, 0.0],
            [0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],
        ];
        let labels = [1, 0, 1, 0, 0, 0, 0, 2];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let want = correct_topk(&flat, 3, &labels, 1).0;
        let logits = Tensor::<2>::from_data(TensorData::new(flat, [8, 3]), &device);
        let got = correct_top1(logits, &Labels::new(&labels, 3, &device).expect("labels"));
        assert_eq!(values_i64(got), [want as i64]);
        assert_eq!(want, 3);
    }

    fn values_i64(t: Tensor<1, Int>) -> Vec<i64> {
        t.into_data().try_into_vec_as::<i64>().expect("i64")
    }

    #[test]
    fn angles_of_aligned_and_orthogonal_features() {
        let (t, o) = angle_sums(&[1.0, 0.0, -1.0], 3, &[0]);
        assert!((t - 0.0).abs() < 1e-9 && (o - 90.0).abs() < 1e-9);
    }
}
