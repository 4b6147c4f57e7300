//! `lossbench run` and `lossbench sweep`: one set of options, the experiment's grid or its
//! sweep grid, in this process or spread over several devices.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use lossbench_experiment::{Experiment, RunStatus};
use lossbench_grid::sweep::{self, SweepRecord};
use lossbench_grid::{GridKind, RunOptions, RunReport, Selection, refuse, run_experiment, select};
use lossbench_train::{BACKEND_NAMES, BackendChoice, Progress};

use crate::{INTERRUPTED, emit, multi_device};

/// Options of `run` and `sweep`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Experiment file (experiments/*.toml).
    pub experiment: PathBuf,
    /// Only this loss (repeatable).
    #[arg(long = "loss", value_name = "NAME")]
    pub losses: Vec<String>,
    /// Only this seed (repeatable).
    #[arg(long = "seed", value_name = "N")]
    pub seeds: Vec<u64>,
    /// auto: CUDA if the driver has a device, else a real GPU through wgpu, else flex.
    #[arg(long, default_value = "auto", value_parser = BACKEND_NAMES)]
    pub backend: String,
    /// Which device of the backend (see `lossbench devices`).
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Run the grid on these devices, one run per device at a time, in grid order
    /// (each run its own process). Implies --resume.
    #[arg(long, value_name = "0,1,…", conflicts_with_all = ["index", "shard", "device"])]
    pub devices: Option<String>,
    /// Override the number of epochs of every loss.
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Override the data folder of the experiment.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Root folder of the results.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Continue interrupted runs from their last checkpoint and skip finished ones.
    #[arg(long)]
    pub resume: bool,
    /// Download the data set first if it is missing (official CIFAR only).
    #[arg(long)]
    pub fetch: bool,
    /// With --resume, continue runs trained on another backend (recorded per epoch;
    /// only flex → flex is bit-exact), or on a CPU whose kernels compute other numbers
    /// (one without AVX2 + FMA after one with them, or the reverse; `cpu_kernels` in run.json).
    #[arg(long)]
    pub allow_backend_change: bool,
    /// Run only this index of the grid (see `lossbench plan`); `auto` reads
    /// SLURM_ARRAY_TASK_ID, then JOB_COMPLETION_INDEX. Implies --resume.
    #[arg(long, value_name = "N|auto", conflicts_with = "shard")]
    pub index: Option<String>,
    /// Run the runs whose index ≡ K (mod N), one after another. Implies --resume.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Refuse unless the experiment still has this grid (written by `lossbench export`).
    #[arg(long, value_name = "HASH")]
    pub expect_grid: Option<String>,
}

fn install_stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install the signal handler")?;
    }
    Ok(stop)
}

/// The options of `run` and `sweep` as the grid crate takes them.
fn run_options(a: &RunArgs, kind: GridKind, stop: &Arc<AtomicBool>) -> Result<RunOptions> {
    let selection = match (&a.index, &a.shard) {
        (Some(i), _) => Selection::index(i, |k| std::env::var(k).ok())?,
        (None, Some(s)) => Selection::shard(s)?,
        (None, None) => Selection::All,
    };
    Ok(RunOptions {
        losses: a.losses.clone(),
        seeds: a.seeds.clone(),
        backend: a.backend.parse::<BackendChoice>()?,
        device: a.device,
        epochs: a.epochs,
        data_dir: a.data_dir.clone(),
        results: a.results.clone(),
        // A cluster task reruns the same command after a requeue, and a sweep is rerun until
        // it is complete: both continue.
        resume: a.resume || selection != Selection::All || kind == GridKind::Sweep,
        fetch: a.fetch,
        allow_backend_change: a.allow_backend_change,
        selection,
        expect_grid: a.expect_grid.clone(),
        stop: Arc::clone(stop),
        kind,
    })
}

/// `lossbench run` (`kind` = main) or the training part of `lossbench sweep`.
pub fn run(a: RunArgs, kind: GridKind) -> Result<u8> {
    let stop = install_stop_flag()?;
    let options = refuse(run_options(&a, kind, &stop))?;
    if let Some(devices) = &a.devices {
        return on_devices(&a, devices, &options, &stop);
    }
    let mut progress = Progress::auto();
    let reports = run_experiment(&a.experiment, &options, &mut progress)?;
    emit(&summary_table(&reports))?;
    // A signal between two runs interrupts no run but still leaves the rest undone.
    if stop.load(Ordering::Relaxed) || reports.iter().any(|r| r.status == RunStatus::Interrupted) {
        eprintln!("interrupted by a signal: rerun the same command with --resume to continue");
        return Ok(INTERRUPTED);
    }
    if reports.iter().any(|r| r.status == RunStatus::Failed) {
        eprintln!(
            "error: some runs failed (see above); finished runs are kept, rerun with --resume"
        );
        return Ok(1);
    }
    if reports.iter().any(|r| r.status == RunStatus::Running) {
        eprintln!(
            "error: some runs are in use by another lossbench process (see above); rerun with --resume once it has finished"
        );
        return Ok(1);
    }
    Ok(0)
}

/// One line per run: loss, seed, how it ended (`busy`: another process holds it).
fn summary_table(reports: &[RunReport]) -> String {
    let width = reports
        .iter()
        .map(|r| r.loss.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut table = format!(
        "{:<width$} {:>6}  {:<10} detail\n",
        "loss", "seed", "status"
    );
    for r in reports {
        let status = match r.status {
            RunStatus::Running => "busy".to_string(),
            other => format!("{other:?}").to_lowercase(),
        };
        table.push_str(&format!(
            "{:<width$} {:>6}  {status:<10} {}\n",
            r.loss, r.seed, r.detail
        ));
    }
    table
}

/// `--devices 0,1,…`: one child process per run, at most one per device.
fn on_devices(a: &RunArgs, devices: &str, options: &RunOptions, stop: &AtomicBool) -> Result<u8> {
    let devices = refuse(multi_device::parse_devices(devices))?;
    let exp = refuse(Experiment::load(&a.experiment))?;
    let planned = refuse(select(&exp, &a.experiment, options))?;
    let jobs: Vec<_> = planned
        .runs
        .iter()
        .map(|r| multi_device::Job {
            index: r.index,
            label: format!("{} seed {}", r.dir, r.seed),
        })
        .collect();
    let kind = options.kind;
    // Fetch or generate the data once, before the runs read it side by side.
    lossbench_grid::load_data(&exp, a.data_dir.as_deref(), a.fetch, &Progress::auto())?;
    let mut args: Vec<OsString> = vec![
        match kind {
            GridKind::Main => "run",
            GridKind::Sweep => "sweep",
        }
        .into(),
        a.experiment.clone().into(),
        "--backend".into(),
        a.backend.clone().into(),
        "--results".into(),
        a.results.clone().into(),
        "--expect-grid".into(),
        planned.grid_hash.clone().into(),
    ];
    if let Some(e) = a.epochs {
        args.extend(["--epochs".into(), e.to_string().into()]);
    }
    if let Some(d) = &a.data_dir {
        args.extend(["--data-dir".into(), d.clone().into()]);
    }
    if a.allow_backend_change {
        args.push("--allow-backend-change".into());
    }
    let code = multi_device::run_on_devices(&args, jobs, &devices, stop)?;
    if kind == GridKind::Sweep && code == 0 {
        return choose(&a.experiment, &a.results);
    }
    Ok(code)
}

/// `lossbench sweep`: train what is missing (unless `choose_only`), then record the choice
/// once every sweep run has ended. A cluster task (`--index`, `--shard`) only trains.
pub fn sweep(a: RunArgs, choose_only: bool) -> Result<u8> {
    let (experiment, results) = (a.experiment.clone(), a.results.clone());
    if !choose_only {
        let partial = a.index.is_some() || a.shard.is_some();
        let devices = a.devices.is_some();
        let code = run(a, GridKind::Sweep)?;
        if code != 0 || partial || devices {
            return Ok(code);
        }
    }
    choose(&experiment, &results)
}

fn choose(path: &Path, results: &Path) -> Result<u8> {
    let experiment = Experiment::load(path)?;
    let record = sweep::choose(&experiment, results)?;
    let written = record.write(results, &experiment)?;
    emit(&format!("{}\n", describe(&record)))?;
    emit(&format!("chosen points written to {}\n", written.display()))?;
    Ok(0)
}

/// The sweep's outcome as a table: every point per loss, the chosen one marked.
fn describe(record: &SweepRecord) -> String {
    let mut out = format!(
        "sweep: {} at epoch {} (mean over seeds {:?})\n",
        record.metric, record.epochs, record.seeds
    );
    for l in &record.losses {
        for p in &l.points {
            let label = sweep::point_label(&l.loss, &p.point);
            let value = match p.value {
                Some(v) => format!("{v:.4}"),
                None => format!("{}/{} diverged", p.diverged, p.seeds),
            };
            let mark = if p.point == l.chosen {
                "  ← chosen"
            } else {
                ""
            };
            out.push_str(&format!("  {label:<40} {value}{mark}\n"));
        }
    }
    if let Some(budget) = record.unequal_budget() {
        out.push_str(&format!(
            "note: the losses had unequal numbers of sweep points ({budget})\n"
        ));
    }
    out
}
