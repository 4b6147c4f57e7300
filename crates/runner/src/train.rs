//! Training and evaluating one (loss, seed) run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::prelude::*;
use lossbench_data::{AugmentSpec, Batch, Batcher, ChannelStats, DataSet};
use lossbench_experiment::{EpochRecord, Experiment, RunDir, read_metrics, write_metrics};
use lossbench_head::{DEFAULT_INIT_STD, HeadDims, Labels, ResolvedParams};
use lossbench_model::{Arch, Neck, ResNet, ResNetConfig};
use lossbench_registry::{AnyHead, init_head_std};

use crate::checkpoint::{self, PartialEpoch};
use crate::progress::Progress;
use crate::retrieval::{Retrieval, l2_normalise, retrieval};
use crate::schedule::LrSchedule;
use crate::sgd::{SgdConfig, SgdState};

/// Backbone, optional embedding neck and loss head, trained together.
#[derive(Module, Debug)]
pub struct Net {
    pub backbone: ResNet,
    /// `[model] embedding`: BN → linear → BN between the pooled features and the head.
    pub neck: Option<Neck>,
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
        let neck = experiment
            .model
            .embedding
            .map(|e| Neck::init(config.feature_dim(), e.dim, seed, device));
        let dims = HeadDims {
            num_classes,
            feature_dim: experiment
                .model
                .embedding
                .map_or(config.feature_dim(), |e| e.dim),
        };
        let std = experiment
            .model
            .head_init
            .map_or(DEFAULT_INIT_STD, |h| h.std);
        let head = init_head_std(loss, params, dims, seed, std, device)?;
        Ok(Self {
            backbone,
            neck,
            head,
        })
    }

    /// One SGD step; the head's parameters at `lr × head_lr_scale`.
    #[must_use]
    pub fn sgd_step(
        self,
        sgd: &mut SgdState,
        grads: &burn::tensor::Gradients,
        lr: f64,
        head_lr_scale: f64,
        config: SgdConfig,
    ) -> Self {
        // The fields in declaration order, as `Module::map` visits them.
        let mut next = 0;
        let backbone = sgd.step_part(self.backbone, grads, lr, config, &mut next);
        let neck = self
            .neck
            .map(|n| sgd.step_part(n, grads, lr, config, &mut next));
        let head = sgd.step_part(self.head, grads, lr * head_lr_scale, config, &mut next);
        Self {
            backbone,
            neck,
            head,
        }
    }

    /// The embedding the head sees: `[batch, dim]`.
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        let pooled = self.backbone.forward_features(images);
        match &self.neck {
            Some(neck) => neck.forward(pooled),
            None => pooled,
        }
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
    /// Read the training loss and accuracy back from the device every this many steps (1 on
    /// a CPU backend, where reading costs nothing; more on a GPU, where each read drains
    /// the queue).
    pub sync_every: usize,
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
fn correct_top1(logits: Tensor<2>, labels: &Labels) -> Tensor<1, Int> {
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

/// Per-step training losses and hits not yet read back from the device.
#[derive(Default)]
struct Pending {
    losses: Vec<Tensor<1>>,
    hits: Vec<Tensor<1, Int>>,
    sizes: Vec<usize>,
    first_step: u64,
}

impl Pending {
    fn len(&self) -> usize {
        self.sizes.len()
    }

    fn push(&mut self, loss: Tensor<1>, hits: Tensor<1, Int>, size: usize, step: u64) {
        if self.sizes.is_empty() {
            self.first_step = step;
        }
        self.losses.push(loss);
        self.hits.push(hits);
        self.sizes.push(size);
    }

    /// Read every pending step back in one transfer and add it to the epoch's sums, in step
    /// order (the same float64 sums as reading each step at once). The first step whose loss
    /// is not finite is an error: `(step, loss)`.
    fn read_back(
        &mut self,
        loss_sum: &mut f64,
        correct: &mut usize,
        seen: &mut usize,
    ) -> Result<(), (u64, f32)> {
        if self.sizes.is_empty() {
            return Ok(());
        }
        let data = burn::tensor::Transaction::default()
            .register(Tensor::cat(std::mem::take(&mut self.losses), 0))
            .register(Tensor::cat(std::mem::take(&mut self.hits), 0))
            .execute();
        let [losses, hits]: [TensorData; 2] = data.try_into().expect("two tensors registered");
        let losses = losses
            .try_into_vec_as::<f32>()
            .expect("float tensor data converts to f32");
        let hits = hits
            .try_into_vec_as::<i64>()
            .expect("int tensor data converts to i64");
        let sizes = std::mem::take(&mut self.sizes);
        for (i, ((&value, &hit), &size)) in losses.iter().zip(&hits).zip(&sizes).enumerate() {
            if !value.is_finite() {
                return Err((self.first_step + i as u64, value));
            }
            *loss_sum += f64::from(value) * size as f64;
            *correct += hit as usize;
            *seen += size;
        }
        Ok(())
    }
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
        let features = net.features(images); // [batch, dim]
        // One transfer per batch: the loss, the logits and the class cosines together.
        let read = burn::tensor::Transaction::default()
            .register(net.head.loss(features.clone(), &batch_labels, iteration))
            .register(net.head.logits(features.clone()))
            .register(net.head.class_cosines(features.clone()))
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
        let a = spec.experiment.data.augment;
        let batcher = Batcher::train(
            &data.train,
            data.stats,
            t.batch_size,
            spec.seed,
            u64::from(epoch),
        )
        .with_augment(AugmentSpec {
            crop: a.crop,
            flip: a.flip,
            rotation_deg: a.rotation,
        });
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
        // Losses and hits stay on the device until `pending` is read back: every
        // `spec.sync_every` steps, before a checkpoint and at the end of the epoch.
        let mut pending = Pending::default();
        for b in first_batch..batcher.len() {
            let batch = next.take().context("batch prefetch")?;
            // Build the next batch on another thread while this step runs. The step itself
            // stays on this thread: burn keeps batch-norm running statistics per thread.
            let (step, prefetched) = std::thread::scope(|scope| {
                let prefetch =
                    scope.spawn(|| (b + 1 < batcher.len()).then(|| batcher.batch(b + 1)));
                let step = (|| -> Result<Net> {
                    let (images, labels) = upload(&batch, classes, device)?;
                    let features = net.features(images); // [batch, dim]
                    let loss = net.head.loss(features.clone(), &labels, iteration);
                    let hits = correct_top1(net.head.logits(features.detach()), &labels);
                    pending.push(loss.clone().detach(), hits, batch.len(), iteration);
                    let grads = loss.backward();
                    lr = schedule.at(iteration);
                    Ok(net
                        .clone()
                        .sgd_step(&mut sgd, &grads, lr, t.head_lr_scale, sgd_config))
                })();
                (step, prefetch.join())
            });
            let prefetched =
                prefetched.map_err(|_| anyhow::anyhow!("the batch-preparation thread panicked"))?;
            net = step?;
            next = prefetched;
            iteration += 1;
            let stop = spec.stop.load(Ordering::Relaxed);
            if stop || pending.len() >= spec.sync_every.max(1) || b + 1 == batcher.len() {
                // A non-finite loss is found here, at its exact step; the steps queued after
                // it only changed a network that is now discarded.
                if let Err((step, value)) =
                    pending.read_back(&mut loss_sum, &mut correct, &mut seen)
                {
                    progress.line(&format!(
                        "{}: loss is {value} at step {step}: diverged, stopping this run",
                        spec.label
                    ));
                    return Ok(Ending::Diverged { step });
                }
                progress.batch(
                    loss_sum / seen.max(1) as f64,
                    correct as f64 / seen.max(1) as f64,
                    seen as f64 / started.elapsed().as_secs_f64(),
                    b + 1,
                );
            }
            if stop {
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

    fn experiment(model: &str) -> Experiment {
        let text = format!(
            r#"name = "x"
seeds = [0]
[data]
set = "cifar100"
dir = "d"
[model]
arch = "resnet18"
width = 0.0625
{model}
[training]
epochs = 1
batch_size = 4
lr = 0.1
schedule = {{ kind = "constant" }}
[[losses]]
name = "normface"
"#
        );
        Experiment::parse(&text, std::path::Path::new("x.toml")).expect("valid")
    }

    fn net(model: &str, device: &Device) -> Net {
        let e = experiment(model);
        let params =
            lossbench_registry::resolve_params("normface", &serde_json::Map::new()).expect("ok");
        Net::init(&e, "normface", &params, 5, 3, device).expect("net")
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().expect("f32")
    }

    fn std_of(v: &[f32]) -> f64 {
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        (v.iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n)
            .sqrt()
    }

    fn images(device: &Device) -> Tensor<4> {
        let v: Vec<f32> = (0..6 * 3 * 32 * 32)
            .map(|i| ((i * 7919 % 255) as f32 / 127.0) - 1.0)
            .collect();
        Tensor::from_data(TensorData::new(v, [6, 3, 32, 32]), device)
    }

    #[test]
    fn head_init_sets_the_scale_of_the_class_weights() {
        let device = Device::flex();
        // 5 classes × 32 features: the sample std is within ~15 % of the true one.
        let default = std_of(&values(net("", &device).head.weight()));
        assert!((default / 0.01 - 1.0).abs() < 0.15, "{default}");
        let wide = std_of(&values(
            net("head_init = { std = 1.0 }", &device).head.weight(),
        ));
        assert!((wide - 1.0).abs() < 0.15, "{wide}");
        // The same draws scaled: the backbone and the direction of each class are unchanged.
        let a = values(net("", &device).head.weight());
        let b = values(net("head_init = { std = 1.0 }", &device).head.weight());
        for (x, y) in a.iter().zip(&b) {
            assert!((x * 100.0 - y).abs() <= 1e-5 * y.abs().max(1.0), "{x} {y}");
        }
    }

    #[test]
    fn the_neck_gives_the_head_a_centred_linear_embedding() {
        let device = Device::flex().autodiff();
        let plain = net("", &device);
        let pooled = values(plain.features(images(&device)));
        assert!(
            pooled.iter().all(|&v| v >= 0.0),
            "pooled features are post-ReLU"
        );
        let necked = net("embedding = { dim = 16 }", &device);
        assert_eq!(necked.head.weight().dims(), [5, 16]);
        let embedding = necked.features(images(&device));
        assert_eq!(embedding.dims(), [6, 16]);
        // Training-mode batch norm: every column has mean 0 over the batch.
        let means = values(embedding.clone().mean_dim(0));
        assert!(means.iter().all(|m| m.abs() < 1e-4), "{means:?}");
        assert!(values(embedding).iter().any(|&v| v < 0.0));
    }

    #[test]
    fn the_head_learns_at_its_own_rate() {
        let device = Device::flex().autodiff();
        let config = SgdConfig {
            momentum: 0.0,
            weight_decay: 0.0,
            nesterov: false,
        };
        let step = |scale: f64| {
            let net = net("embedding = { dim = 8 }", &device);
            let labels = Labels::new(&[0, 1, 2, 3, 4, 0], 5, &device).expect("labels");
            let loss = net.head.loss(net.features(images(&device)), &labels, 0);
            let grads = loss.backward();
            let before = (values(net.head.weight()), first_backbone_weight(&net));
            let after = net.sgd_step(&mut SgdState::default(), &grads, 0.1, scale, config);
            let head: Vec<f32> = values(after.head.weight())
                .iter()
                .zip(&before.0)
                .map(|(a, b)| a - b)
                .collect();
            let body: Vec<f32> = first_backbone_weight(&after)
                .iter()
                .zip(&before.1)
                .map(|(a, b)| a - b)
                .collect();
            (head, body)
        };
        let (head1, body1) = step(1.0);
        let (head10, body10) = step(10.0);
        assert_eq!(
            body1, body10,
            "the backbone's step does not depend on the head's rate"
        );
        assert!(head1.iter().any(|d| d.abs() > 1e-6));
        for (a, b) in head1.iter().zip(&head10) {
            assert!((a * 10.0 - b).abs() <= 1e-4 * b.abs().max(1e-3), "{a} {b}");
        }
    }

    fn first_backbone_weight(net: &Net) -> Vec<f32> {
        use burn::module::{ModuleVisitor, Param};
        struct First(Option<Vec<f32>>);
        impl ModuleVisitor for First {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                if self.0.is_none() {
                    self.0 = Some(values(p.val().inner()));
                }
            }
        }
        let mut first = First(None);
        net.backbone.visit(&mut first);
        first.0.expect("a parameter")
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
