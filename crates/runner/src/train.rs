//! Training and evaluating one (loss, seed) run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::prelude::*;
use lossbench_data::{Batch, Batcher, ChannelStats, DataSet};
use lossbench_experiment::{EpochRecord, Experiment, RunDir, read_metrics, write_metrics};
use lossbench_head::{HeadDims, Labels, ResolvedParams};
use lossbench_model::{Arch, ResNet, ResNetConfig};
use lossbench_registry::{AnyHead, init_head};

use crate::checkpoint::{self, PartialEpoch};
use crate::progress::Progress;
use crate::retrieval::{Retrieval, l2_normalise, retrieval};
use crate::schedule::LrSchedule;
use crate::sgd::{SgdConfig, SgdState};

/// Backbone and loss head, trained together.
#[derive(Module, Debug)]
pub struct Net {
    pub backbone: ResNet,
    pub head: AnyHead,
}

/// The backbone configuration of an experiment.
pub fn backbone_config(experiment: &Experiment) -> Result<ResNetConfig> {
    let arch = match experiment.model.arch.as_str() {
        "resnet18" => Arch::ResNet18,
        "resnet34" => Arch::ResNet34,
        "resnet50" => Arch::ResNet50,
        "resnet101" => Arch::ResNet101,
        other => anyhow::bail!("model.arch = {other:?} is invalid"),
    };
    let config = ResNetConfig::new(arch).with_width(experiment.model.width);
    config.validate()?;
    Ok(config)
}

impl Net {
    /// The initial network of a run: the backbone from the seed alone (identical for every
    /// loss), the head from the seed and its own parameters.
    pub fn init(
        experiment: &Experiment,
        loss: &str,
        params: &ResolvedParams,
        num_classes: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let config = backbone_config(experiment)?;
        let backbone = config.init(seed, device)?;
        let dims = HeadDims {
            num_classes,
            feature_dim: config.feature_dim(),
        };
        let head = init_head(loss, params, dims, seed, device)?;
        Ok(Self { backbone, head })
    }
}

/// Training, validation and test splits with the normalisation statistics of the training
/// split, and a fingerprint of the data's content (part of every run's identity).
#[derive(Debug)]
pub struct Data {
    pub train: DataSet,
    /// Held out of the training images when the experiment asks for it.
    pub validation: Option<DataSet>,
    pub test: DataSet,
    pub stats: ChannelStats,
    /// SHA-256 of every image and label of the official training and test files.
    pub fingerprint: String,
}

/// What one run is.
#[derive(Debug)]
pub struct RunSpec<'a> {
    pub experiment: &'a Experiment,
    pub loss: &'a str,
    pub params: &'a ResolvedParams,
    pub seed: u64,
    pub epochs: u32,
    pub run_dir: &'a RunDir,
    /// The autodiff-enabled device.
    pub device: &'a Device,
    /// The backend's name, recorded with every epoch.
    pub backend: &'a str,
    /// Set by a signal handler (pre-emption): stop after the current step.
    pub stop: &'a AtomicBool,
    pub label: String,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Completed,
    /// The loss of this 0-based step was NaN or infinite.
    Diverged {
        step: u64,
    },
    /// Asked to stop (SIGTERM / SIGUSR1) after this many steps; a checkpoint of that exact
    /// point (mid-epoch) is on disk, from which `--resume` continues exactly.
    Interrupted {
        step: u64,
    },
}

/// Where a run starts: fresh, or from a checkpoint.
#[derive(Debug)]
pub struct Start {
    pub net: Net,
    pub sgd: SgdState,
    pub epoch: u32,
    pub iteration: u64,
    pub records: Vec<EpochRecord>,
    /// Progress into epoch `epoch + 1` when resuming from a mid-epoch checkpoint.
    pub partial: Option<PartialEpoch>,
}

/// The initial state of a run, resumed from its newest usable checkpoint if `resume`.
pub fn start(spec: &RunSpec<'_>, data: &Data, resume: bool, progress: &Progress) -> Result<Start> {
    let net = Net::init(
        spec.experiment,
        spec.loss,
        spec.params,
        data.train.num_classes,
        spec.seed,
        spec.device,
    )?;
    if resume {
        let dir = spec.run_dir.checkpoints();
        if let Some(r) = checkpoint::load_latest(&dir, net.clone(), spec.device, |w| {
            progress.line(&format!("warning: {w}"))
        })? {
            let mut records = read_metrics(spec.run_dir)?;
            records.truncate(r.epoch as usize);
            anyhow::ensure!(
                records.len() == r.epoch as usize,
                "{}: the metrics hold {} epochs but the checkpoint is after epoch {}",
                spec.run_dir.path.display(),
                records.len(),
                r.epoch
            );
            checkpoint::remove_after(&dir, r.epoch, r.partial.is_some())?;
            let within = r.partial.map_or_else(String::new, |p| {
                format!(" and {} batches of the next", p.batches_done)
            });
            progress.line(&format!(
                "{}: resuming after epoch {}{within} from {}",
                spec.label,
                r.epoch,
                r.path.display()
            ));
            return Ok(Start {
                net: r.model,
                sgd: r.sgd,
                epoch: r.epoch,
                iteration: r.iteration,
                records,
                partial: r.partial,
            });
        }
    }
    Ok(Start {
        net,
        sgd: SgdState::default(),
        epoch: 0,
        iteration: 0,
        records: Vec::new(),
        partial: None,
    })
}

fn upload(batch: &Batch, num_classes: usize, device: &Device) -> Result<(Tensor<4>, Labels)> {
    let images = Tensor::<4>::from_data(
        TensorData::new(batch.images.clone(), [batch.len(), 3, 32, 32]),
        device,
    );
    let labels = Labels::new(&batch.labels, num_classes, device)?;
    Ok((images, labels))
}

fn host_matrix(t: Tensor<2>) -> (Vec<f32>, usize) {
    let [_, cols] = t.dims();
    (
        t.into_data()
            .try_into_vec_as::<f32>()
            .expect("float tensor data converts to f32"),
        cols,
    )
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

/// Metrics of the un-margined logits on one split, plus feature geometry and retrieval
/// (computed only where asked: the test split).
struct Evaluation {
    loss: f64,
    top1: f64,
    top5: f64,
    target_angle: f64,
    nearest_angle: f64,
    retrieval: Option<Retrieval>,
}

fn evaluate(
    net: &Net,
    set: &DataSet,
    stats: ChannelStats,
    batch_size: usize,
    iteration: u64,
    device: &Device,
    with_retrieval: bool,
) -> Result<Evaluation> {
    let batcher = Batcher::eval(set, stats, batch_size);
    let classes = set.num_classes;
    let k = classes.min(5);
    let (mut loss_sum, mut top1, mut topk, mut target, mut nearest, mut n) =
        (0.0, 0, 0, 0.0, 0.0, 0usize);
    let mut embeddings = Vec::new();
    let mut labels = Vec::new();
    for batch in batcher.iter() {
        let (images, batch_labels) = upload(&batch, classes, device)?;
        let features = net.backbone.forward_features(images); // [batch, dim]
        let loss: f64 = net
            .head
            .loss(features.clone(), &batch_labels, iteration)
            .into_scalar::<f32>()
            .into();
        let (logits, _) = host_matrix(net.head.logits(features.clone()));
        let (cosines, _) = host_matrix(net.head.class_cosines(features.clone()));
        if with_retrieval {
            embeddings.push(l2_normalise(features)); // [batch, dim], stays on the device
            labels.extend_from_slice(&batch.labels);
        }
        let (c1, ck) = correct_topk(&logits, classes, &batch.labels, k);
        let (t, o) = angle_sums(&cosines, classes, &batch.labels);
        loss_sum += loss * batch.len() as f64;
        top1 += c1;
        topk += ck;
        target += t;
        nearest += o;
        n += batch.len();
    }
    let retrieval = if embeddings.is_empty() {
        None
    } else {
        retrieval(&Tensor::cat(embeddings, 0), &labels)
    };
    let n = n.max(1) as f64;
    Ok(Evaluation {
        loss: loss_sum / n,
        top1: top1 as f64 / n,
        top5: topk as f64 / n,
        target_angle: target / n,
        nearest_angle: nearest / n,
        retrieval,
    })
}

/// Train from `start` to `spec.epochs`, writing metrics and a checkpoint after every epoch.
/// `on_epoch` is called after each epoch's files are on disk.
pub fn train(
    spec: &RunSpec<'_>,
    data: &Data,
    start: Start,
    progress: &mut Progress,
    mut on_epoch: impl FnMut(&EpochRecord) -> Result<()>,
) -> Result<Ending> {
    let t = &spec.experiment.training;
    let device = spec.device;
    let classes = data.train.num_classes;
    let steps_per_epoch = data.train.len().div_ceil(t.batch_size) as u64;
    let schedule = LrSchedule::new(t, spec.epochs, steps_per_epoch);
    let sgd_config = SgdConfig {
        momentum: t.momentum,
        weight_decay: t.weight_decay,
        nesterov: t.nesterov,
    };
    let Start {
        mut net,
        mut sgd,
        epoch: first,
        mut iteration,
        mut records,
        mut partial,
    } = start;

    for epoch in first..spec.epochs {
        let started = Instant::now();
        let batcher = Batcher::train(
            &data.train,
            data.stats,
            t.batch_size,
            spec.seed,
            u64::from(epoch),
        );
        progress.start_epoch(&spec.label, epoch + 1, spec.epochs, batcher.len());
        // A run stopped mid-epoch continues with the next batch and the epoch's sums so far.
        let resumed = partial.take();
        let first_batch = resumed.map_or(0, |p| p.batches_done);
        let earlier_seconds = resumed.map_or(0.0, |p| p.train_seconds);
        let (mut loss_sum, mut correct, mut seen, mut lr) = resumed
            .map_or((0.0, 0usize, 0usize, 0.0), |p| {
                (p.loss_sum, p.correct, p.seen, p.lr)
            });
        let mut next = (first_batch < batcher.len()).then(|| batcher.batch(first_batch));
        for b in first_batch..batcher.len() {
            let batch = next.take().context("batch prefetch")?;
            // Build the next batch on another thread while this step runs. The step itself
            // stays on this thread: burn keeps batch-norm running statistics per thread.
            let (step, prefetched) = std::thread::scope(|scope| {
                let prefetch =
                    scope.spawn(|| (b + 1 < batcher.len()).then(|| batcher.batch(b + 1)));
                let step = (|| -> Result<(Net, f64, usize, Option<u64>)> {
                    let (images, labels) = upload(&batch, classes, device)?;
                    let features = net.backbone.forward_features(images); // [batch, dim]
                    let loss = net.head.loss(features.clone(), &labels, iteration);
                    let value: f32 = loss.clone().into_scalar();
                    if !value.is_finite() {
                        return Ok((net.clone(), f64::from(value), 0, Some(iteration)));
                    }
                    let (logits, _) = host_matrix(net.head.logits(features.detach()));
                    let (c1, _) = correct_topk(&logits, classes, &batch.labels, 1);
                    let grads = loss.backward();
                    lr = schedule.at(iteration);
                    let updated = sgd.step(net.clone(), &grads, lr, sgd_config);
                    Ok((updated, f64::from(value), c1, None))
                })();
                (step, prefetch.join())
            });
            let prefetched =
                prefetched.map_err(|_| anyhow::anyhow!("the batch-preparation thread panicked"))?;
            let (updated, value, c1, diverged) = step?;
            if let Some(step) = diverged {
                progress.line(&format!(
                    "{}: loss is {value} at step {step}: diverged, stopping this run",
                    spec.label
                ));
                return Ok(Ending::Diverged { step });
            }
            net = updated;
            next = prefetched;
            iteration += 1;
            loss_sum += value * batch.len() as f64;
            correct += c1;
            seen += batch.len();
            progress.batch(
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                seen as f64 / started.elapsed().as_secs_f64(),
            );
            if spec.stop.load(Ordering::Relaxed) {
                let at = PartialEpoch {
                    batches_done: b + 1,
                    loss_sum,
                    correct,
                    seen,
                    lr,
                    train_seconds: earlier_seconds + started.elapsed().as_secs_f64(),
                };
                checkpoint::save(
                    &spec.run_dir.checkpoints(),
                    epoch,
                    iteration,
                    &net.valid(),
                    &sgd,
                    Some(at),
                )?;
                progress.line(&format!(
                    "{}: stop requested; checkpointed after step {iteration} ({} of {} batches of epoch {})",
                    spec.label,
                    b + 1,
                    batcher.len(),
                    epoch + 1
                ));
                return Ok(Ending::Interrupted { step: iteration });
            }
        }
        let train_seconds = earlier_seconds + started.elapsed().as_secs_f64();
        // Snapshots without autodiff, batch-norm statistics synced. Evaluation gets its own, so
        // a head with state (an adaptive scale) cannot carry test batches into the checkpoint.
        let snapshot = net.valid();
        let eval_device = device.clone().inner();
        let validation = data
            .validation
            .as_ref()
            .map(|set| {
                evaluate(
                    &net.valid(),
                    set,
                    data.stats,
                    t.eval_batch_size,
                    iteration,
                    &eval_device,
                    false,
                )
            })
            .transpose()?;
        let eval = evaluate(
            &net.valid(),
            &data.test,
            data.stats,
            t.eval_batch_size,
            iteration,
            &eval_device,
            true,
        )?;
        let record = EpochRecord {
            experiment: spec.experiment.name.clone(),
            loss: spec.loss.to_string(),
            seed: spec.seed,
            epoch: epoch + 1,
            iteration,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_top1: correct as f64 / seen.max(1) as f64,
            val_loss: validation.as_ref().map(|v| v.loss),
            val_top1: validation.as_ref().map(|v| v.top1),
            test_loss: eval.loss,
            test_top1: eval.top1,
            test_top5: eval.top5,
            test_recall_at_1: eval.retrieval.map(|r| r.recall_at_1),
            test_map_at_r: eval.retrieval.map(|r| r.map_at_r),
            target_angle_deg: eval.target_angle,
            nearest_other_angle_deg: eval.nearest_angle,
            epoch_seconds: earlier_seconds + started.elapsed().as_secs_f64(),
            images_per_second: seen as f64 / train_seconds.max(1e-9),
            backend: spec.backend.to_string(),
        };
        records.push(record.clone());
        // Metrics first, then the checkpoint: a crash between the two leaves metrics one epoch
        // ahead of the newest checkpoint, which `start` trims and recomputes identically.
        write_metrics(spec.run_dir, &records)?;
        if let Err(e) = checkpoint::save(
            &spec.run_dir.checkpoints(),
            epoch + 1,
            iteration,
            &snapshot,
            &sgd,
            None,
        ) {
            // A full disk or an I/O error: take this epoch's row back so the files on disk
            // stay one consistent epoch (if that fails too, resume trims the row anyway).
            records.pop();
            let _ = write_metrics(spec.run_dir, &records);
            return Err(e);
        }
        progress.end_epoch(&spec.label, spec.epochs, &record);
        on_epoch(&record)?;
    }
    Ok(Ending::Completed)
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
    fn angles_of_aligned_and_orthogonal_features() {
        let (t, o) = angle_sums(&[1.0, 0.0, -1.0], 3, &[0]);
        assert!((t - 0.0).abs() < 1e-9 && (o - 90.0).abs() < 1e-9);
    }
}
