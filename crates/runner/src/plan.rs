//! `lossbench run`: expand an experiment into (loss, seed) runs and execute them, each in its
//! own locked folder, one failure or divergence never stopping the others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use lossbench_data::{ChannelStats, Kind, Split, fetch, load, split_validation, synth};
use lossbench_experiment::{
    CopyOutcome, DataSetName, Experiment, RunDir, RunIdentity, RunManifest, RunStatus,
    claim_experiment_copy, describe, differences, now_rfc3339, read_metrics, sha256_hex,
};

use crate::backend::{Backend, BackendChoice, Precision};
use crate::grid::{GridKind, GridRun, Selection, experiment_grid, grid_hash};
use crate::lock::RunLock;
use crate::progress::Progress;
use crate::train::{Data, Ending, RunSpec, start, train};

/// Training steps between two read-backs of the loss and accuracy on a GPU: each read
/// drains the device's queue, so reading every step would keep the GPU waiting for the host.
const GPU_SYNC_EVERY: usize = 25;

/// The burn version every crate is built against (checked against `Cargo.toml` in tests).
pub const BURN_VERSION: &str = "0.22.1";

/// Options of `lossbench run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Only these losses (all when empty).
    pub losses: Vec<String>,
    /// Only these seeds (all when empty).
    pub seeds: Vec<u64>,
    pub backend: BackendChoice,
    /// Which device of the backend (`--device`).
    pub device: usize,
    /// Overrides every loss's epoch count.
    pub epochs: Option<u32>,
    /// Overrides `data.dir`.
    pub data_dir: Option<PathBuf>,
    /// Root of the results tree.
    pub results: PathBuf,
    /// Continue interrupted runs and skip finished ones.
    pub resume: bool,
    /// Download the (non-synthetic) data set first if it is missing.
    pub fetch: bool,
    /// Let `--resume` continue a run on another backend than the one it was trained on
    /// (each epoch's backend is recorded in the metrics).
    pub allow_backend_change: bool,
    /// All runs, one index of the grid, or a shard of it (cluster jobs).
    pub selection: Selection,
    /// The grid fingerprint an exported job was written for: refuse if the grid changed.
    pub expect_grid: Option<String>,
    /// Set by SIGTERM / SIGUSR1: the current run stops after its step, no further run starts.
    pub stop: Arc<AtomicBool>,
    /// The experiment's runs, or its sweep runs.
    pub kind: GridKind,
}

/// The end state of each run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub loss: String,
    pub seed: u64,
    pub status: RunStatus,
    pub detail: String,
}

fn kind(name: DataSetName) -> Kind {
    match name {
        DataSetName::Cifar10 => Kind::Cifar10,
        DataSetName::Cifar100 => Kind::Cifar100,
    }
}

/// Load the experiment's data, generating the synthetic set first if it asks for one, and
/// downloading the official set first if `fetch` and it cannot be read.
pub fn load_data(
    experiment: &Experiment,
    dir_override: Option<&Path>,
    fetch: bool,
    progress: &Progress,
) -> Result<Data> {
    let dir = dir_override.unwrap_or(&experiment.data.dir);
    let kind = kind(experiment.data.set);
    if let Some(s) = experiment.data.synthetic {
        let wanted = synth::SynthConfig {
            classes: s.classes,
            train_per_class: s.train_per_class,
            test_per_class: s.test_per_class,
            seed: s.seed,
        };
        let present = synth::SynthManifest::read(dir)?;
        if present.as_ref().is_none_or(|m| {
            (m.classes, m.train_per_class, m.test_per_class, m.seed)
                != (s.classes, s.train_per_class, s.test_per_class, s.seed)
        }) {
            progress.line(&format!(
                "generating the synthetic data set in {}",
                dir.display()
            ));
            synth::write(dir, wanted)?;
        }
    }
    let load_both = || {
        Ok::<_, lossbench_data::DataError>((
            load(dir, kind, Split::Train)?,
            load(dir, kind, Split::Test)?,
        ))
    };
    let (train, test) = match load_both() {
        // Read once when the data is there; fetch (official sets only) and read again when not.
        Err(_) if fetch && experiment.data.synthetic.is_none() => {
            progress.line(&format!(
                "{} holds no usable {} data: fetching it",
                dir.display(),
                kind.name()
            ));
            fetch_into(dir, kind)?;
            load_both()?
        }
        loaded => loaded?,
    };
    let fingerprint = sha256_hex(&[&train.images, &train.labels, &test.images, &test.labels]);
    let (train, validation) = match experiment.data.validation {
        0 => (train, None),
        n => {
            let (train, validation) = split_validation(&train, n)?;
            (train, Some(validation))
        }
    };
    let stats = ChannelStats::of(&train);
    Ok(Data {
        train,
        validation,
        test,
        stats,
        fingerprint,
    })
}

/// Download the official data set into the parent of `dir`, which must be the folder the
/// archive extracts to.
fn fetch_into(dir: &Path, kind: Kind) -> Result<()> {
    if dir.file_name().and_then(|n| n.to_str()) != Some(kind.folder()) {
        bail!(
            "cannot fetch into {}: the official archive extracts to a folder named {}; point data.dir there",
            dir.display(),
            kind.folder()
        );
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fetch::fetch(parent, kind, &fetch::Source::official(kind), true)?;
    Ok(())
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
    if !out.status.success() || commit.is_empty() {
        return None;
    }
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

/// Training throughput on flex for the up-front estimate, from BENCHMARKS.md (2-core
/// machine): seconds per image ≈ overhead + cost·width². ResNet-18 (37 img/s at width 1,
/// ~500 img/s at 1/8) and ResNet-50 (12.5 img/s) are measured; ResNet-34 and -101 are scaled
/// from them by FLOPs. Other backends have no estimate until their first epoch.
fn known_throughput(backend: &str, arch: &str, width: f64) -> Option<f64> {
    const OVERHEAD: f64 = 0.0016;
    let cost = match (backend, arch) {
        ("flex", "resnet18") => 0.027,
        ("flex", "resnet34") => 0.054,
        ("flex", "resnet50") => 0.08,
        ("flex", "resnet101") => 0.15,
        _ => return None,
    };
    Some(1.0 / (OVERHEAD + cost * width * width))
}

/// Human-readable duration.
#[must_use]
pub fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s.div_ceil(60)),
        _ => format!("{:.1} h", s as f64 / 3600.0),
    }
}

fn identity(run: &GridRun, experiment: &Experiment, data: &Data) -> RunIdentity {
    let params: BTreeMap<String, f64> =
        run.params.iter().map(|(k, v)| (k.to_string(), v)).collect();
    RunIdentity::new(
        experiment,
        &run.loss,
        &params,
        run.seed,
        run.epochs,
        &data.fingerprint,
    )
}

/// Check every selected run that already has files before anything is written: results are
/// only continued with `--resume`, by the same recipe (identity), and on the same backend
/// unless a switch is allowed. The first problem is a one-line error.
fn preflight(
    experiment: &Experiment,
    planned: &[GridRun],
    root: &Path,
    data: &Data,
    backend: &Backend,
    options: &RunOptions,
) -> Result<()> {
    for p in planned {
        let run = RunDir::new(root, &p.dir, p.seed);
        if !run.manifest().exists() {
            continue;
        }
        let recorded = RunManifest::read(&run.manifest()).with_context(|| {
            format!(
                "{} cannot be continued; move it away to start that run over",
                run.path.display()
            )
        })?;
        if !options.resume {
            bail!(
                "{} already holds results (status {}); pass --resume to continue it, or delete the folder to start over",
                run.path.display(),
                format!("{:?}", recorded.status).to_lowercase()
            );
        }
        let Some(recorded_identity) = &recorded.identity else {
            bail!(
                "{} was written by an older lossbench that did not record the run's identity: it cannot be continued safely; move it away or use another --results",
                run.path.display()
            );
        };
        let wanted = identity(p, &p.experiment(experiment), data);
        if recorded_identity.hash != wanted.hash {
            let diffs = differences(&recorded_identity.values, &wanted.values);
            bail!(
                "{} was trained with another setup ({}); nothing was changed: to train this setup use another experiment name or --results (more epochs are a new run, since the schedule depends on them)",
                run.path.display(),
                describe(&diffs)
            );
        }
        let will_train = !matches!(recorded.status, RunStatus::Completed | RunStatus::Diverged);
        if will_train && recorded.backend != backend.name && !options.allow_backend_change {
            bail!(
                "{} was trained on {} and would continue on {}: pass --allow-backend-change to allow it (each epoch's backend is recorded), or --backend {}",
                run.path.display(),
                recorded.backend,
                backend.name,
                recorded.backend
            );
        }
    }
    Ok(())
}

/// Run every selected (loss, seed) of the experiment in `path`.
pub fn run_experiment(
    path: &Path,
    options: &RunOptions,
    progress: &mut Progress,
) -> Result<Vec<RunReport>> {
    let experiment = Experiment::load(path)?;
    for wanted in &options.losses {
        if !experiment.losses.iter().any(|l| &l.name == wanted) {
            let names: Vec<_> = experiment.losses.iter().map(|l| l.name.as_str()).collect();
            bail!(
                "--loss {wanted}: not in {} (it has {})",
                path.display(),
                names.join(", ")
            );
        }
    }
    for wanted in &options.seeds {
        if !experiment.seeds.contains(wanted) {
            bail!(
                "--seed {wanted}: not in {} (it has seeds {:?}); add it to `seeds` to train it",
                path.display(),
                experiment.seeds
            );
        }
    }
    let (full, root) = experiment_grid(
        &experiment,
        path,
        options.epochs,
        &options.results,
        options.kind,
    )?;
    if let Some(expected) = &options.expect_grid {
        let now = grid_hash(&experiment, &full);
        if &now != expected {
            bail!(
                "{} no longer describes the grid this job was exported for (grid {now}, job {expected}): export and submit again",
                path.display()
            );
        }
    }
    let grid_len = full.len();
    let filtered: Vec<GridRun> = full
        .into_iter()
        .filter(|r| options.losses.is_empty() || options.losses.contains(&r.loss))
        .filter(|r| options.seeds.is_empty() || options.seeds.contains(&r.seed))
        .collect();
    let planned = options.selection.choose(filtered, grid_len)?;
    // Fail on an unwritable results folder before any long work (an empty folder is all
    // this writes before the checks below).
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    // Data first: an offline fetch should fail before any device is opened.
    let data = load_data(
        &experiment,
        options.data_dir.as_deref(),
        options.fetch,
        progress,
    )?;
    let precision: Precision = experiment.training.precision.parse()?;
    let backend = options.backend.resolve(options.device, precision)?;
    // Nothing is written before every existing run and the experiment copy agree.
    preflight(&experiment, &planned, &root, &data, &backend, options)?;
    if claim_experiment_copy(&root, &experiment)? == CopyOutcome::Extended {
        progress.line(&format!(
            "{}: this file extends the recorded experiment (losses, seeds, claims, description or data folder); its copy in {} now follows it",
            experiment.name,
            root.display()
        ));
    }

    let images: f64 = planned
        .iter()
        .map(|p| f64::from(p.epochs) * data.train.len() as f64)
        .sum();
    let estimate = known_throughput(backend.name, &experiment.model.arch, experiment.model.width)
        .map_or_else(
            || "unknown until the first epoch ends".to_string(),
            |ips| {
                format!(
                    "about {} of training (at most; finished runs are skipped)",
                    format_duration(images / ips)
                )
            },
        );
    progress.line(&format!(
        "experiment {}: {} runs on {} ({}), data {} ({} train / {} test images{}); estimate: {estimate}",
        experiment.name,
        planned.len(),
        backend.name,
        backend.device_name,
        experiment.data.set_name(),
        data.train.len(),
        data.test.len(),
        if data.train.synthetic { ", synthetic" } else { "" },
    ));

    let mut reports = Vec::new();
    for p in &planned {
        if options.stop.load(Ordering::Relaxed) {
            break;
        }
        let run = RunDir::new(&root, &p.dir, p.seed);
        let label = format!("[{} seed {}]", p.dir, p.seed);
        let (status, detail) = match RunLock::acquire(&run) {
            // Another process owns this run: report it and leave its files alone.
            Err(e) => {
                let message = format!("{e:#}");
                progress.line(&format!("{label} skipped: {message}"));
                (RunStatus::Failed, message)
            }
            Ok(_lock) => match execute(
                &experiment,
                p,
                &run,
                &backend,
                &data,
                options,
                &label,
                progress,
            ) {
                Ok(report) => report,
                Err(e) => {
                    let message = format!("{e:#}");
                    progress.line(&format!("{label} failed: {message}"));
                    mark_failed(&run, &message);
                    (RunStatus::Failed, message)
                }
            },
        };
        reports.push(RunReport {
            loss: p.dir.clone(),
            seed: p.seed,
            status,
            detail,
        });
    }
    Ok(reports)
}

fn mark_failed(run: &RunDir, message: &str) {
    if let Ok(mut m) = RunManifest::read(&run.manifest()) {
        m.status = RunStatus::Failed;
        m.error = Some(message.to_string());
        m.updated_at = now_rfc3339();
        m.finished_at = Some(now_rfc3339());
        let _ = m.write(&run.manifest());
    }
}

#[allow(clippy::too_many_arguments)]
fn execute(
    experiment: &Experiment,
    p: &GridRun,
    run: &RunDir,
    backend: &Backend,
    data: &Data,
    options: &RunOptions,
    label: &str,
    progress: &mut Progress,
) -> Result<(RunStatus, String)> {
    let previous = RunManifest::read(&run.manifest()).ok();
    if let Some(prev) = &previous {
        let done = read_metrics(run).map(|r| r.len() as u32).unwrap_or(0);
        match prev.status {
            RunStatus::Completed if done >= p.epochs => {
                progress.line(&format!(
                    "{label} already completed ({done} epochs), skipped"
                ));
                return Ok((RunStatus::Completed, "already completed".into()));
            }
            RunStatus::Diverged => {
                progress.line(&format!(
                    "{label} diverged earlier (step {:?}), skipped",
                    prev.diverged_at_step
                ));
                return Ok((
                    RunStatus::Diverged,
                    format!("diverged at step {}", prev.diverged_at_step.unwrap_or(0)),
                ));
            }
            _ => {}
        }
    }
    // The run's own head learning rate (a sweep point) replaces the experiment's.
    let effective = p.experiment(experiment);
    let experiment = &*effective;
    let device = backend.device.clone().autodiff();
    let spec = RunSpec {
        experiment,
        loss: &p.loss,
        params: &p.params,
        seed: p.seed,
        epochs: p.epochs,
        run_dir: run,
        device: &device,
        backend: backend.name,
        stop: &options.stop,
        sync_every: if backend.deterministic {
            1
        } else {
            GPU_SYNC_EVERY
        },
        label: label.to_string(),
    };
    let begin = start(&spec, data, options.resume, progress)?;
    let mut manifest = RunManifest {
        experiment: experiment.name.clone(),
        loss: p.loss.clone(),
        seed: p.seed,
        params: p.params.iter().map(|(k, v)| (k.to_string(), v)).collect(),
        epochs: p.epochs,
        epochs_completed: begin.epoch,
        status: RunStatus::Running,
        diverged_at_step: None,
        error: None,
        backend: backend.name.to_string(),
        device: backend.device_name.clone(),
        versions: BTreeMap::from([
            (
                "lossbench".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
            ("burn".to_string(), BURN_VERSION.to_string()),
        ]),
        git_commit: git_commit(),
        synthetic_data: data.train.synthetic,
        started_at: previous
            .as_ref()
            .filter(|_| begin.epoch > 0)
            .map_or_else(now_rfc3339, |m| m.started_at.clone()),
        updated_at: now_rfc3339(),
        finished_at: None,
        config: serde_json::to_value(experiment)?,
        identity: Some(identity(p, experiment, data)),
    };
    manifest.write(&run.manifest())?;
    let ending = train(&spec, data, begin, progress, |record| {
        manifest.epochs_completed = record.epoch;
        manifest.updated_at = now_rfc3339();
        manifest.write(&run.manifest())
    })?;
    manifest.updated_at = now_rfc3339();
    manifest.finished_at = Some(now_rfc3339());
    let result = match ending {
        Ending::Completed => {
            manifest.status = RunStatus::Completed;
            (RunStatus::Completed, format!("{} epochs", p.epochs))
        }
        Ending::Diverged { step } => {
            manifest.status = RunStatus::Diverged;
            manifest.diverged_at_step = Some(step);
            (RunStatus::Diverged, format!("diverged at step {step}"))
        }
        Ending::Interrupted { step } => {
            manifest.status = RunStatus::Interrupted;
            manifest.finished_at = None;
            (
                RunStatus::Interrupted,
                format!("interrupted after step {step}; --resume continues it"),
            )
        }
    };
    manifest.write(&run.manifest())?;
    Ok(result)
}
