//! Training one (loss, seed) run: an epoch loop of a training pass, an evaluation, a record
//! and a checkpoint, resumable from any epoch or mid-epoch checkpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::prelude::*;
use lossbench_data::{AugmentSpec, Batch, Batcher, Splits};
use lossbench_experiment::{EpochRecord, Experiment, RunDir, read_metrics, write_metrics};
use lossbench_head::ResolvedParams;

use crate::backend::Backend;
use crate::checkpoint::{self, PartialEpoch};
use crate::evaluate::{Evaluation, Measure, correct_top1, evaluate, upload};
use crate::net::Net;
use crate::progress::Progress;
use crate::schedule::LrSchedule;
use crate::sgd::{SgdConfig, SgdState};

/// What one run is.
#[derive(Debug)]
pub struct RunSpec<'a> {
    pub experiment: &'a Experiment,
    pub loss: &'a str,
    pub params: &'a ResolvedParams,
    pub seed: u64,
    pub epochs: u32,
    pub run_dir: &'a RunDir,
    /// The autodiff-enabled device ([`Backend::training_device`]).
    pub device: Device,
    /// Where the run trains (its name is recorded with every epoch; its kind sets how often
    /// the training loss is read back).
    pub backend: &'a Backend,
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
pub fn start(
    spec: &RunSpec<'_>,
    data: &Splits,
    resume: bool,
    progress: &Progress,
) -> Result<Start> {
    let net = Net::init(
        spec.experiment,
        spec.loss,
        spec.params,
        data.train.num_classes,
        spec.seed,
        &spec.device,
    )?;
    if resume {
        let dir = spec.run_dir.checkpoints();
        if let Some(r) = checkpoint::load_latest(&dir, net.clone(), &spec.device, |w| {
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
    fn read_back(&mut self, sums: &mut EpochSums) -> Result<(), (u64, f32)> {
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
            sums.loss_sum += f64::from(value) * size as f64;
            sums.correct += hit as usize;
            sums.seen += size;
        }
        Ok(())
    }
}

/// The epoch's running sums of the training loss and hits.
#[derive(Debug, Clone, Copy, Default)]
struct EpochSums {
    loss_sum: f64,
    correct: usize,
    seen: usize,
}

impl EpochSums {
    /// The sums a mid-epoch checkpoint recorded.
    fn of(partial: &PartialEpoch) -> Self {
        Self {
            loss_sum: partial.loss_sum,
            correct: partial.correct,
            seen: partial.seen,
        }
    }

    fn mean_loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    fn top1(&self) -> f64 {
        self.correct as f64 / self.seen.max(1) as f64
    }
}

/// What changes from step to step.
struct State {
    net: Net,
    sgd: SgdState,
    /// Steps taken so far (the next step's 0-based index).
    iteration: u64,
}

/// The fixed parts of the recipe, derived once per run.
struct Recipe {
    schedule: LrSchedule,
    sgd: SgdConfig,
}

impl Recipe {
    fn new(spec: &RunSpec<'_>, data: &Splits) -> Self {
        let t = &spec.experiment.training;
        let steps_per_epoch = data.train.len().div_ceil(t.batch_size) as u64;
        Self {
            schedule: LrSchedule::new(t, spec.epochs, steps_per_epoch),
            sgd: SgdConfig {
                momentum: t.momentum,
                weight_decay: t.weight_decay,
                nesterov: t.nesterov,
            },
        }
    }
}

/// What a finished training pass measured.
#[derive(Debug, Clone, Copy)]
struct Trained {
    sums: EpochSums,
    /// The learning rate of the epoch's last step.
    lr: f64,
    /// Seconds of training in this epoch, including those before a mid-epoch resume.
    train_seconds: f64,
}

/// How a training pass over one epoch ended.
enum Pass {
    Finished(Trained),
    /// Stopped early; the run ends this way.
    Stopped(Ending),
}

/// Train from `start` to `spec.epochs`, writing metrics and a checkpoint after every epoch.
/// `on_epoch` is called after each epoch's files are on disk.
pub fn train(
    spec: &RunSpec<'_>,
    data: &Splits,
    start: Start,
    progress: &mut Progress,
    mut on_epoch: impl FnMut(&EpochRecord) -> Result<()>,
) -> Result<Ending> {
    let recipe = Recipe::new(spec, data);
    let Start {
        net,
        sgd,
        epoch: first,
        iteration,
        mut records,
        mut partial,
    } = start;
    let mut state = State {
        net,
        sgd,
        iteration,
    };
    for epoch in first..spec.epochs {
        let resumed = partial.take();
        let trained = match train_pass(spec, data, &recipe, &mut state, epoch, resumed, progress)? {
            Pass::Finished(trained) => trained,
            Pass::Stopped(ending) => return Ok(ending),
        };
        let evaluation_started = Instant::now();
        // Snapshots without autodiff, batch-norm statistics synced. Evaluation gets its own, so
        // a head with state (an adaptive scale) cannot carry test batches into the checkpoint.
        let snapshot = state.net.valid();
        let (validation, test) = evaluate_epoch(spec, data, &state)?;
        let epoch_seconds = trained.train_seconds + evaluation_started.elapsed().as_secs_f64();
        let record = epoch_record(
            spec,
            epoch + 1,
            state.iteration,
            &trained,
            validation.as_ref(),
            &test,
            epoch_seconds,
        );
        records.push(record.clone());
        save_epoch(spec, &mut records, epoch + 1, &state, &snapshot)?;
        progress.end_epoch(&spec.label, spec.epochs, &record);
        on_epoch(&record)?;
    }
    Ok(Ending::Completed)
}

/// One pass over the epoch's batches (from the first not yet trained, after a mid-epoch
/// resume), reading the loss back every few steps; stops at a non-finite loss or when asked.
fn train_pass(
    spec: &RunSpec<'_>,
    data: &Splits,
    recipe: &Recipe,
    state: &mut State,
    epoch: u32,
    resumed: Option<PartialEpoch>,
    progress: &mut Progress,
) -> Result<Pass> {
    let started = Instant::now();
    let batcher = epoch_batcher(spec, data, epoch);
    progress.start_epoch(&spec.label, epoch + 1, spec.epochs, batcher.len());
    // A run stopped mid-epoch continues with the next batch and the epoch's sums so far.
    let first_batch = resumed.map_or(0, |p| p.batches_done);
    let earlier_seconds = resumed.map_or(0.0, |p| p.train_seconds);
    let (mut sums, mut lr) =
        resumed.map_or((EpochSums::default(), 0.0), |p| (EpochSums::of(&p), p.lr));
    let mut next = (first_batch < batcher.len()).then(|| batcher.batch(first_batch));
    // Losses and hits stay on the device until `pending` is read back: every
    // `read_back_every` steps, before a checkpoint and at the end of the epoch.
    let mut pending = Pending::default();
    for b in first_batch..batcher.len() {
        let batch = next.take().context("batch prefetch")?;
        // Build the next batch on another thread while this step runs. The step itself
        // stays on this thread: burn keeps batch-norm running statistics per thread.
        let (step, prefetched) = std::thread::scope(|scope| {
            let prefetch = scope.spawn(|| (b + 1 < batcher.len()).then(|| batcher.batch(b + 1)));
            let step = training_step(spec, data, recipe, state, &batch, &mut pending);
            (step, prefetch.join())
        });
        let prefetched =
            prefetched.map_err(|_| anyhow::anyhow!("the batch-preparation thread panicked"))?;
        (state.net, lr) = step?;
        next = prefetched;
        state.iteration += 1;
        let stop = spec.stop.load(Ordering::Relaxed);
        if (stop || pending.len() >= spec.backend.read_back_every() || b + 1 == batcher.len())
            && let Some(diverged) = settle(spec, &mut pending, &mut sums, started, b + 1, progress)
        {
            return Ok(Pass::Stopped(diverged));
        }
        if stop {
            let at = PartialEpoch {
                batches_done: b + 1,
                loss_sum: sums.loss_sum,
                correct: sums.correct,
                seen: sums.seen,
                lr,
                train_seconds: earlier_seconds + started.elapsed().as_secs_f64(),
            };
            return checkpoint_mid_epoch(spec, state, epoch, at, batcher.len(), progress);
        }
    }
    Ok(Pass::Finished(Trained {
        sums,
        lr,
        train_seconds: earlier_seconds + started.elapsed().as_secs_f64(),
    }))
}

/// Read the pending steps back into the epoch's sums and show the progress. A non-finite
/// loss is found here, at its exact step (the steps queued after it only changed a network
/// that is now discarded): the run has diverged.
fn settle(
    spec: &RunSpec<'_>,
    pending: &mut Pending,
    sums: &mut EpochSums,
    started: Instant,
    batches_done: usize,
    progress: &mut Progress,
) -> Option<Ending> {
    if let Err((step, value)) = pending.read_back(sums) {
        progress.line(&format!(
            "{}: loss is {value} at step {step}: diverged, stopping this run",
            spec.label
        ));
        return Some(Ending::Diverged { step });
    }
    progress.batch(
        sums.mean_loss(),
        sums.top1(),
        sums.seen as f64 / started.elapsed().as_secs_f64(),
        batches_done,
    );
    None
}

/// The epoch's batches: its own permutation of the training split and augmentation draws.
fn epoch_batcher<'d>(spec: &RunSpec<'_>, data: &'d Splits, epoch: u32) -> Batcher<'d> {
    let t = &spec.experiment.training;
    let a = spec.experiment.data.augment;
    Batcher::train(
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
    })
}

/// Forward, loss, backward and an SGD step on one batch; the loss and hits are queued in
/// `pending` without reading them back. Returns the new network and the step's learning rate.
fn training_step(
    spec: &RunSpec<'_>,
    data: &Splits,
    recipe: &Recipe,
    state: &mut State,
    batch: &Batch,
    pending: &mut Pending,
) -> Result<(Net, f64)> {
    let (images, labels) = upload(batch, data.train.num_classes, &spec.device)?;
    let features = state.net.features(images); // [batch, dim]
    let loss = state
        .net
        .head
        .loss(features.clone(), &labels, state.iteration);
    let hits = correct_top1(state.net.head.logits(features.detach()), &labels);
    pending.push(loss.clone().detach(), hits, batch.len(), state.iteration);
    let grads = loss.backward();
    let lr = recipe.schedule.at(state.iteration);
    let head_lr_scale = spec.experiment.training.head_lr_scale;
    let net = state
        .net
        .clone()
        .sgd_step(&mut state.sgd, &grads, lr, head_lr_scale, recipe.sgd);
    Ok((net, lr))
}

/// Checkpoint the exact point a stop was asked at (mid-epoch), from which `--resume`
/// continues as if nothing had happened.
fn checkpoint_mid_epoch(
    spec: &RunSpec<'_>,
    state: &State,
    epoch: u32,
    at: PartialEpoch,
    batches: usize,
    progress: &Progress,
) -> Result<Pass> {
    let done = at.batches_done;
    checkpoint::save(
        &spec.run_dir.checkpoints(),
        epoch,
        state.iteration,
        &state.net.valid(),
        &state.sgd,
        Some(at),
    )?;
    progress.line(&format!(
        "{}: stop requested; checkpointed after step {} ({done} of {batches} batches of epoch {})",
        spec.label,
        state.iteration,
        epoch + 1
    ));
    Ok(Pass::Stopped(Ending::Interrupted {
        step: state.iteration,
    }))
}

/// The validation split (if any) and the test split, each on its own snapshot of the network.
fn evaluate_epoch(
    spec: &RunSpec<'_>,
    data: &Splits,
    state: &State,
) -> Result<(Option<Evaluation>, Evaluation)> {
    let t = &spec.experiment.training;
    let eval_device = spec.device.clone().inner();
    let on = |set, measure| {
        evaluate(
            &state.net.valid(),
            set,
            data.stats,
            t.eval_batch_size,
            state.iteration,
            &eval_device,
            measure,
        )
    };
    // The open protocol's validation and test classes are not the head's: retrieval only.
    let closed = !data.protocol.is_open();
    let validation = data
        .validation
        .as_ref()
        .map(|set| {
            on(
                set,
                Measure {
                    head: closed,
                    retrieval: !closed,
                },
            )
        })
        .transpose()?;
    let test = on(
        &data.test,
        Measure {
            head: closed,
            retrieval: true,
        },
    )?;
    Ok((validation, test))
}

/// The epoch's row of metrics.
fn epoch_record(
    spec: &RunSpec<'_>,
    epoch: u32,
    iteration: u64,
    trained: &Trained,
    validation: Option<&Evaluation>,
    test: &Evaluation,
    epoch_seconds: f64,
) -> EpochRecord {
    let val_head = validation.and_then(|v| v.head);
    let val_retrieval = validation.and_then(|v| v.retrieval);
    // Recall@2/4/8 are columns where retrieval is the headline (the open protocol), so that
    // closed-set runs keep the columns they had.
    let open_recall = |i: usize| {
        spec.experiment
            .data
            .is_open()
            .then_some(test.retrieval)
            .flatten()
            .map(|r| r.recall[i])
    };
    EpochRecord {
        experiment: spec.experiment.name.clone(),
        loss: spec.loss.to_string(),
        seed: spec.seed,
        epoch,
        iteration,
        lr: trained.lr,
        train_loss: trained.sums.mean_loss(),
        train_top1: trained.sums.top1(),
        val_loss: val_head.map(|h| h.loss),
        val_top1: val_head.map(|h| h.top1),
        val_recall_at_1: val_retrieval.map(|r| r.recall_at_1()),
        val_map_at_r: val_retrieval.map(|r| r.map_at_r),
        test_loss: test.head.map(|h| h.loss),
        test_top1: test.head.map(|h| h.top1),
        test_top5: test.head.map(|h| h.top5),
        test_recall_at_1: test.retrieval.map(|r| r.recall_at_1()),
        test_recall_at_2: open_recall(1),
        test_recall_at_4: open_recall(2),
        test_recall_at_8: open_recall(3),
        test_map_at_r: test.retrieval.map(|r| r.map_at_r),
        target_angle_deg: test.head.map(|h| h.target_angle),
        nearest_other_angle_deg: test.head.map(|h| h.nearest_angle),
        epoch_seconds,
        images_per_second: trained.sums.seen as f64 / trained.train_seconds.max(1e-9),
        backend: spec.backend.name.to_string(),
    }
}

/// The epoch's files: metrics first, then the checkpoint. A crash between the two leaves
/// metrics one epoch ahead of the newest checkpoint, which [`start`] trims and recomputes
/// identically.
fn save_epoch(
    spec: &RunSpec<'_>,
    records: &mut Vec<EpochRecord>,
    epochs_done: u32,
    state: &State,
    snapshot: &Net,
) -> Result<()> {
    write_metrics(spec.run_dir, records)?;
    if let Err(e) = checkpoint::save(
        &spec.run_dir.checkpoints(),
        epochs_done,
        state.iteration,
        snapshot,
        &state.sgd,
        None,
    ) {
        // A full disk or an I/O error: take this epoch's row back so the files on disk
        // stay one consistent epoch (if that fails too, resume trims the row anyway).
        records.pop();
        let _ = write_metrics(spec.run_dir, records);
        return Err(e);
    }
    Ok(())
}
