//! `lossbench run`: expand an experiment into (loss, seed) runs and train the selected ones,
//! each in its own locked folder, one failure or divergence never stopping the others.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use lossbench_data::own::default_cache_dir;
use lossbench_data::{DataError, DataSource, Kind, Origin, Protocol, Splits, synth::SynthConfig};
use lossbench_experiment::{
    CopyOutcome, DataSetName, Experiment, RunDir, RunManifest, RunStatus, claim_experiment_copy,
    describe, differences,
};
use lossbench_train::{Backend, BackendChoice, Precision, Progress, RunSpec, mark_failed, run_one};

use crate::grid::{GridKind, GridRun, Selection, experiment_grid, grid_hash};
use crate::lock::{Busy, RunLock};

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
    /// (each epoch's backend is recorded in the metrics), or on a CPU whose kernels run at
    /// an x86-64 level that computes other numbers (`cpu_kernels` in run.json).
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
    /// `Running` only for a run another process holds (the summary calls it busy): this
    /// process left it alone.
    pub status: RunStatus,
    pub detail: String,
}

/// Input that no retry can fix — an unreadable or invalid experiment, an option that names
/// no run, a grid that changed since a job was exported, results of another recipe — refused
/// before anything is written. The CLI exits with code 2 on it (as on a usage error), so a
/// scheduler can tell it from a run that failed (code 1).
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct BadInput(pub anyhow::Error);

/// Exit code of [`BadInput`]: the same command can only fail again.
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code of a run stopped by SIGTERM / SIGUSR1 after checkpointing (EX_TEMPFAIL: try
/// again; `--resume` continues it).
pub const EXIT_INTERRUPTED: u8 = 75;

/// `result`, its error marked as [`BadInput`].
pub fn refuse<T, E: Into<anyhow::Error>>(result: Result<T, E>) -> Result<T> {
    result.map_err(|e| BadInput(e.into()).into())
}

/// Where the experiment's data is (`dir_override`: `--data-dir`, the folder of a CIFAR or
/// folder set, the CSV file of a csv set) and how a run splits it.
#[must_use]
pub fn data_source(experiment: &Experiment, dir_override: Option<&Path>) -> DataSource {
    let d = &experiment.data;
    let at = |configured: &Path| dir_override.unwrap_or(configured).to_path_buf();
    let origin = match d.set {
        DataSetName::Cifar10 | DataSetName::Cifar100 => Origin::Cifar {
            kind: if d.set == DataSetName::Cifar10 {
                Kind::Cifar10
            } else {
                Kind::Cifar100
            },
            dir: at(&d.dir),
            synthetic: d.synthetic.map(|s| SynthConfig {
                classes: s.classes,
                train_per_class: s.train_per_class,
                test_per_class: s.test_per_class,
                seed: s.seed,
            }),
        },
        DataSetName::Folder => Origin::Folder { dir: at(&d.dir) },
        DataSetName::Csv => Origin::Csv {
            file: at(d.location()),
        },
    };
    DataSource {
        origin,
        image_size: d.image_side(),
        skip_unreadable: d.skip_unreadable,
        cache_dir: d.cache.clone().unwrap_or_else(default_cache_dir),
        validation: d.validation,
        validation_classes: d.validation_classes,
        protocol: if d.is_open() {
            Protocol::Open {
                train_classes: d.open.map(|o| o.train_classes),
            }
        } else {
            Protocol::Closed
        },
    }
}

/// Load the experiment's data, generating the synthetic set first if it asks for one, and
/// downloading the official set first if `fetch` and it cannot be read.
pub fn load_data(
    experiment: &Experiment,
    dir_override: Option<&Path>,
    fetch: bool,
    progress: &Progress,
) -> Result<Splits> {
    data_source(experiment, dir_override)
        .load(fetch, &|line| progress.line(line))
        .map_err(|e| {
            // Only a failed download can succeed on a second try.
            let download = matches!(e.downcast_ref(), Some(DataError::Download { .. }));
            if download { e } else { BadInput(e).into() }
        })
}

/// The runs one command acts on, in grid order, and where they live.
#[derive(Debug)]
pub struct Planned {
    pub runs: Vec<GridRun>,
    /// `results/<experiment>` (or its sweep folder).
    pub root: PathBuf,
    /// The fingerprint of the whole grid (before any filter).
    pub grid_hash: String,
}

/// The grid of `options.kind`, checked against `--expect-grid`, filtered by `--loss` and
/// `--seed` (each must name something in the file), then narrowed to `options.selection`.
pub fn select(experiment: &Experiment, path: &Path, options: &RunOptions) -> Result<Planned> {
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
        experiment,
        path,
        options.epochs,
        &options.results,
        options.kind,
    )?;
    let hash = grid_hash(experiment, &full);
    if let Some(expected) = options.expect_grid.as_ref().filter(|e| **e != hash) {
        bail!(
            "{} no longer describes the grid this job was exported for (grid {hash}, job {expected}): export and submit again",
            path.display()
        );
    }
    let grid_len = full.len();
    let filtered: Vec<GridRun> = full
        .into_iter()
        .filter(|r| options.losses.is_empty() || options.losses.contains(&r.loss))
        .filter(|r| options.seeds.is_empty() || options.seeds.contains(&r.seed))
        .collect();
    Ok(Planned {
        runs: options.selection.choose(filtered, grid_len)?,
        root,
        grid_hash: hash,
    })
}

/// `create_dir_all(dir)`, returning the folders it made (the first is the outermost).
fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(missing.into_iter().rev().collect())
}

/// Remove the folders [`create_dirs`] made, innermost first, as long as they are empty.
fn remove_empty_dirs(created: &[PathBuf]) {
    for d in created.iter().rev() {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
    }
}

/// Run every selected (loss, seed) of the experiment in `path`.
pub fn run_experiment(
    path: &Path,
    options: &RunOptions,
    progress: &mut Progress,
) -> Result<Vec<RunReport>> {
    let experiment = refuse(Experiment::load(path))?;
    let planned = refuse(select(&experiment, path, options))?;
    // Fail on an unwritable results folder before any long work; the folders made here are
    // removed again if the data is refused, so bad data leaves nothing behind.
    let created = create_dirs(&planned.root)?;
    // Data before any device is opened: an offline fetch fails first.
    let data = load_data(
        &experiment,
        options.data_dir.as_deref(),
        options.fetch,
        progress,
    )
    .inspect_err(|_| remove_empty_dirs(&created))?;
    let precision: Precision = refuse(experiment.training.precision.parse())?;
    let backend = options.backend.resolve(options.device, precision)?;
    // Nothing is written before every existing run and the experiment copy agree.
    refuse(preflight(&experiment, &planned, &data, &backend, options))?;
    if refuse(claim_experiment_copy(&planned.root, &experiment))? == CopyOutcome::Extended {
        progress.line(&format!(
            "{}: this file extends the recorded experiment (losses, seeds, claims, description or data folder); its copy in {} now follows it",
            experiment.name,
            planned.root.display()
        ));
    }
    progress.line(&announcement(&experiment, &planned, &data, &backend));
    let mut reports = Vec::new();
    for p in &planned.runs {
        if options.stop.load(Ordering::Relaxed) {
            break;
        }
        let run_dir = RunDir::new(&planned.root, &p.dir, p.seed);
        let (status, detail) =
            lock_and_train(&experiment, p, &run_dir, &backend, &data, options, progress);
        reports.push(RunReport {
            loss: p.dir.clone(),
            seed: p.seed,
            status,
            detail,
        });
    }
    Ok(reports)
}

/// Train one run of the grid under its lock. A run another process holds is left alone
/// (`Running`); an error fails this run only, recorded in its `run.json`.
fn lock_and_train(
    experiment: &Experiment,
    p: &GridRun,
    run_dir: &RunDir,
    backend: &Backend,
    data: &Splits,
    options: &RunOptions,
    progress: &mut Progress,
) -> (RunStatus, String) {
    let label = format!("[{} seed {}]", p.dir, p.seed);
    let _lock = match RunLock::acquire(run_dir) {
        Ok(lock) => lock,
        Err(e) => {
            let message = format!("{e:#}");
            progress.line(&format!("{label} skipped: {message}"));
            let status = if e.downcast_ref::<Busy>().is_some() {
                RunStatus::Running
            } else {
                RunStatus::Failed
            };
            return (status, message);
        }
    };
    // The run's own head learning rate (a sweep point) replaces the experiment's.
    let effective = p.experiment(experiment);
    let spec = RunSpec {
        experiment: &effective,
        loss: &p.loss,
        params: &p.params,
        seed: p.seed,
        epochs: p.epochs,
        run_dir,
        device: backend.training_device(),
        backend,
        stop: &options.stop,
        label: label.clone(),
    };
    match run_one(&spec, data, options.resume, progress) {
        Ok(outcome) => (outcome.status, outcome.detail),
        Err(e) => {
            let message = format!("{e:#}");
            progress.line(&format!("{label} failed: {message}"));
            mark_failed(run_dir, &message);
            (RunStatus::Failed, message)
        }
    }
}

/// Check every selected run that already has files before anything is written: results are
/// only continued with `--resume`, by the same recipe (identity), and on the same backend
/// unless a switch is allowed. The first problem is a one-line error.
fn preflight(
    experiment: &Experiment,
    planned: &Planned,
    data: &Splits,
    backend: &Backend,
    options: &RunOptions,
) -> Result<()> {
    for p in &planned.runs {
        let run = RunDir::new(&planned.root, &p.dir, p.seed);
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
        let wanted = lossbench_train::identity(
            &p.experiment(experiment),
            &p.loss,
            &p.params,
            p.seed,
            p.epochs,
            data,
        );
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
        if will_train
            && recorded.backend == backend.name
            && !options.allow_backend_change
            && let (Some(was), Some(now)) = (recorded.cpu_kernels.as_deref(), backend.cpu_kernels())
            && !lossbench_train::cpu::same_numbers(was, now)
        {
            bail!(
                "{} was trained with {}'s {was} kernels ({}) and would continue with its {now} kernels on this CPU ({}), which add in another order, so its numbers would differ from a run without the break: pass --allow-backend-change to allow it, or resume on a CPU at {was}",
                run.path.display(),
                backend.name,
                recorded.cpu.as_deref().unwrap_or("CPU not recorded"),
                lossbench_train::cpu::model(),
            );
        }
    }
    Ok(())
}

/// The line printed before training: what runs where, on which data, and how long it takes.
fn announcement(
    experiment: &Experiment,
    planned: &Planned,
    data: &Splits,
    backend: &Backend,
) -> String {
    let images: f64 = planned
        .runs
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
    format!(
        "experiment {}: {} runs on {} ({}), data {} ({} train / {} test images{}); estimate: {estimate}",
        experiment.name,
        planned.runs.len(),
        backend.name,
        backend.device_name,
        experiment.data.set_name(),
        data.train.len(),
        data.test.len(),
        if data.train.synthetic {
            ", synthetic"
        } else {
            ""
        },
    )
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
