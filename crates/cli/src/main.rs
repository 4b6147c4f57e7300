//! `lossbench`: train identical CIFAR ResNets under different classification losses and
//! compare them honestly. Run `lossbench --help` for the commands.

mod multi_device;
mod probe;
mod train_commands;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lossbench_data::{Kind, fetch, synth};
use lossbench_grid::export::{self, ExportOptions, K8sOptions, SlurmOptions};
use lossbench_grid::{BadInput, GridKind, experiment_grid, grid_hash, plan_rows, plan_table};
use lossbench_train::{BACKEND_NAMES, BackendChoice, Unavailable};
use train_commands::RunArgs;

/// Tensors of hundreds of MiB are allocated and freed many times a step. glibc hands every
/// block over 32 MiB (its largest mmap threshold) back to the kernel, so each new one costs
/// page faults and zeroing; mimalloc keeps and reuses them ([`keep_freed_memory`]).
/// Measured: BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (`mi_option_purge_delay` in mimalloc.h; the Rust bindings
/// do not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed memory to the OS. mimalloc's default returns it after 1 s, shorter
/// than a CPU training step (5–10 s for ResNet-50), which then pays the page faults again:
/// ResNet-50 8.2 → 12.9 images/s measured. The process keeps its peak footprint, which a
/// training step reaches every step anyway.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: mi_option_set stores one integer option; -1 is a documented value
    // ("no purging at all"), and the option is read only when mimalloc purges.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Without a desktop session (no usable `XDG_RUNTIME_DIR`), Mesa's Vulkan device-selection
/// layer asks Wayland for the default GPU on every Vulkan instance wgpu creates, and
/// libwayland prints `error: XDG_RUNTIME_DIR is invalid or not set in the environment.` each
/// time (six lines for `lossbench devices`). With no session there is no default display GPU
/// to select, so the layer is turned off (`NODEVICE_SELECT=1`, its own switch) unless the user
/// asked it for a device (`MESA_VK_DEVICE_SELECT`) or set the switch.
#[allow(unsafe_code)]
fn quiet_vulkan_device_selection() {
    let runtime_dir_usable = std::env::var_os("XDG_RUNTIME_DIR")
        .is_some_and(|d| !d.is_empty() && Path::new(&d).is_dir());
    let user_chose = ["MESA_VK_DEVICE_SELECT", "NODEVICE_SELECT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if !runtime_dir_usable && !user_chose {
        // SAFETY: called first in `main`, before any other thread exists, so nothing reads
        // the environment while it changes.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

/// Exit code of a run stopped by SIGTERM / SIGUSR1 (EX_TEMPFAIL: try again).
pub(crate) const INTERRUPTED: u8 = lossbench_grid::EXIT_INTERRUPTED;

/// `lossbench --version`: the version and which of burn's GPU kernel features the binary was
/// built with (README, "Which burn features each binary has"); the GPU check records it.
macro_rules! version {
    ($features:literal) => {
        concat!(env!("CARGO_PKG_VERSION"), " (burn ", $features, ")")
    };
}
#[cfg(all(feature = "autotune", feature = "fusion"))]
const VERSION: &str = version!("autotune on, fusion on");
#[cfg(all(feature = "autotune", not(feature = "fusion")))]
const VERSION: &str = version!("autotune on, fusion off");
#[cfg(all(not(feature = "autotune"), feature = "fusion"))]
const VERSION: &str = version!("autotune off, fusion on");
#[cfg(all(not(feature = "autotune"), not(feature = "fusion")))]
const VERSION: &str = version!("autotune off, fusion off");

/// Does this loss really beat softmax? Reproduce loss-comparison tables on CIFAR.
#[derive(Debug, Parser)]
#[command(name = "lossbench", version = VERSION, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the registered losses with their formulas, parameters and defaults.
    Losses,
    /// Evaluate one loss on given numbers and print loss, logits and gradients as JSON.
    Probe {
        /// JSON input file (`-` for standard input); see the README for the format.
        #[arg(long)]
        input: PathBuf,
    },
    /// Download, generate or check data sets.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Train every (loss, seed) of an experiment.
    Run(RunArgs),
    /// Train every point of every loss's sweep on the validation split, then record each
    /// loss's best point in results/<experiment>/sweep.json (what `run` trains at).
    Sweep {
        #[command(flatten)]
        args: RunArgs,
        /// Only record the choice from the finished sweep runs; train nothing.
        #[arg(long)]
        choose: bool,
    },
    /// List the devices of every backend (CUDA, wgpu, CPU), and why a backend has none.
    Devices,
    /// Check a backend's numbers before training on it: every loss head against float64,
    /// a ResNet training step and two epochs of every loss against flex. Exit code 1 on drift.
    Selfcheck {
        #[arg(long, default_value = "auto", value_parser = BACKEND_NAMES)]
        backend: String,
        /// Which device of the backend (see `lossbench devices`).
        #[arg(long, default_value_t = 0)]
        device: usize,
        /// Skip the two-epoch training of every loss (the slowest check).
        #[arg(long)]
        quick: bool,
    },
    /// Print every run of an experiment's grid in its fixed order, with its status on disk.
    Plan {
        /// Experiment file (experiments/*.toml).
        experiment: PathBuf,
        /// Root folder of the results.
        #[arg(long, default_value = "results")]
        results: PathBuf,
        /// Override the number of epochs of every loss (as `run --epochs`).
        #[arg(long)]
        epochs: Option<u32>,
        /// Print JSON (one object per run) instead of a table.
        #[arg(long)]
        json: bool,
        /// The sweep runs (`lossbench sweep`) instead of the experiment's.
        #[arg(long)]
        sweep: bool,
    },
    /// Write the grid as a cluster job: a Slurm array or a Kubernetes Indexed Job.
    Export {
        #[command(subcommand)]
        target: ExportTarget,
    },
    /// Measure loss heads, training steps and the data path; print a Markdown table.
    Bench {
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench/results.json")]
        out: PathBuf,
        /// Backends for the training-step benchmark, comma-separated (wgpu on lavapipe takes
        /// many minutes per ResNet-50 step on a CPU).
        #[arg(long, value_delimiter = ',', default_value = "flex")]
        backends: Vec<String>,
        /// Fewer shapes and repeats: a smoke run.
        #[arg(long)]
        quick: bool,
        /// Python with torch: also run bench/pytorch/bench.py and report the ratios.
        #[arg(long)]
        pytorch: Option<PathBuf>,
        /// Where PyTorch's training steps run (cuda: eager fp32 on GPU 0).
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
        pytorch_device: String,
        /// Only these groups, comma-separated: data, head, train_step (default: all).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Build the HTML report of an experiment from the results on disk.
    Report {
        /// An experiment file, or a results folder `results/<experiment>`.
        source: PathBuf,
        /// Output folder (default: reports/<experiment>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Root folder of the results, used when SOURCE is an experiment file.
        #[arg(long, default_value = "results")]
        results: PathBuf,
    },
    /// Check every run's files in a results folder (run.json, both metrics files, checkpoint
    /// CRCs) and print what is wrong; exit code 1 if anything is.
    VerifyResults {
        /// A results folder `results/<experiment>`.
        dir: PathBuf,
    },
}

/// Options shared by every exporter.
#[derive(Debug, clap::Args)]
struct ExportArgs {
    /// Experiment file; the jobs read it from this path (absolute; on shared storage).
    experiment: PathBuf,
    /// Root folder of the results as the jobs see it.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Where to write the job files (default: jobs/<experiment>-<target>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the report job writes the report (default: reports/<experiment>, absolute).
    #[arg(long)]
    report_out: Option<PathBuf>,
    /// Runs at the same time (0: all).
    #[arg(long, default_value_t = 0)]
    parallel: usize,
    /// GPUs per run (0 for a CPU job).
    #[arg(long, default_value_t = 1)]
    gpus_per_run: u32,
    /// Backend of every run.
    #[arg(long, default_value = "auto", value_parser = BACKEND_NAMES)]
    backend: String,
    /// Override the number of epochs of every loss in every run.
    #[arg(long)]
    epochs: Option<u32>,
    /// Export the sweep runs (`lossbench sweep --index auto`) and a job recording the choice,
    /// instead of the experiment's runs and its report.
    #[arg(long)]
    sweep: bool,
}

#[derive(Debug, Subcommand)]
enum ExportTarget {
    /// An sbatch array (one task per run, requeued on pre-emption), a report job after it, and
    /// submit.sh.
    Slurm {
        #[command(flatten)]
        common: ExportArgs,
        /// Time limit of one task, HH:MM:SS.
        #[arg(long)]
        time: Option<String>,
        #[arg(long)]
        partition: Option<String>,
        #[arg(long)]
        account: Option<String>,
        /// CPUs per task.
        #[arg(long, default_value_t = 4)]
        cpus_per_run: u32,
        /// The lossbench binary on the cluster (default: this one).
        #[arg(long)]
        lossbench: Option<PathBuf>,
    },
    /// A Kubernetes Indexed Job (one pod per run) and a report Job, as JSON manifests.
    K8s {
        #[command(flatten)]
        common: ExportArgs,
        /// Container image with lossbench on its PATH.
        #[arg(long)]
        image: String,
        /// PersistentVolumeClaim holding the data and the results.
        #[arg(long, default_value = "lossbench")]
        claim: String,
        /// Where the claim is mounted in the pods. Every path the pods use (experiment file,
        /// results, report, data) must be under it, or under --claim-path.
        #[arg(long, default_value = "/work")]
        mount: PathBuf,
        /// Where this machine sees the claim's contents, if not at --mount: paths under it
        /// are written as the same paths under --mount.
        #[arg(long)]
        claim_path: Option<PathBuf>,
        /// Retries of one index before it counts as failed.
        #[arg(long, default_value_t = 3)]
        backoff_limit_per_index: u32,
    },
}

/// `p` from the current directory.
fn absolute(p: &Path) -> Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

fn export_options(args: ExportArgs, target: &str) -> Result<ExportOptions> {
    let experiment = absolute(&args.experiment)?;
    let name = lossbench_experiment::Experiment::load(&experiment)?.name;
    Ok(ExportOptions {
        experiment,
        results: absolute(&args.results)?,
        out: args
            .out
            .unwrap_or_else(|| PathBuf::from("jobs").join(format!("{name}-{target}"))),
        report_out: absolute(
            &args
                .report_out
                .unwrap_or_else(|| PathBuf::from("reports").join(&name)),
        )?,
        parallel: args.parallel,
        gpus_per_run: args.gpus_per_run,
        backend: args.backend,
        epochs: args.epochs,
        data_dir: None,
        kind: if args.sweep {
            GridKind::Sweep
        } else {
            GridKind::Main
        },
    })
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Download the official binary archive, verify its MD5 and extract it.
    Fetch {
        #[arg(value_parser = ["cifar10", "cifar100"])]
        set: String,
        /// Folder for the archive and the extracted files.
        #[arg(long, default_value = "data")]
        dir: PathBuf,
    },
    /// Write a synthetic data set: CIFAR-100 binary files, or an image folder
    /// (`train/<class>/`, `test/<class>/`) of PNG and/or JPEG images of mixed sizes and modes.
    Synth {
        #[arg(long)]
        out: PathBuf,
        /// `cifar` (binary files, 32×32) or `folder` (image files).
        #[arg(long, default_value = "cifar", value_parser = ["cifar", "folder"])]
        format: String,
        /// `--format folder`: shorter side of the images (their sizes vary from it to 2×).
        #[arg(long, default_value_t = 32)]
        side: usize,
        /// `--format folder`: `png`, `jpeg` or `mixed` (PNG and JPEG in turn).
        #[arg(long, default_value = "png", value_parser = ["png", "jpeg", "mixed"])]
        image_format: String,
        #[arg(long, default_value_t = 100)]
        classes: usize,
        #[arg(long, default_value_t = 500)]
        train_per_class: usize,
        #[arg(long, default_value_t = 100)]
        test_per_class: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Read a data set, check it and print counts per split and the class balance.
    Verify {
        /// Folder holding the .bin files.
        dir: PathBuf,
        #[arg(long, default_value = "cifar100", value_parser = ["cifar10", "cifar100"])]
        set: String,
    },
}

/// Print to stdout; a reader that went away (`lossbench losses | head`) is not an error.
pub(crate) fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `println!` through [`emit`].
macro_rules! out {
    ($($arg:tt)*) => {
        emit(&format!("{}\n", format_args!($($arg)*)))?
    };
}

fn kind(name: &str) -> Kind {
    if name == "cifar10" {
        Kind::Cifar10
    } else {
        Kind::Cifar100
    }
}

fn losses() -> Result<()> {
    for spec in lossbench_registry::LOSSES {
        out!("{}", spec.name);
        out!("  {}", spec.formula);
        if spec.params.is_empty() {
            out!("  (no parameters)");
        }
        for p in spec.params {
            out!(
                "  {:<13} default {:<8} {} ({})",
                p.name,
                p.default,
                p.help,
                p.allowed
            );
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Losses => losses()?,
        Command::Probe { input } => return Ok(probe::run(&input)),
        Command::Data { command } => match command {
            DataCommand::Fetch { set, dir } => {
                let kind = kind(&set);
                let outcome = fetch::fetch(&dir, kind, &fetch::Source::official(kind), true)?;
                match outcome {
                    fetch::Outcome::AlreadyPresent(p) => {
                        out!("{} is already present and verified", p.display())
                    }
                    fetch::Outcome::ExtractedLocalArchive(p) => {
                        out!("extracted the local archive into {}", p.display())
                    }
                    fetch::Outcome::Downloaded(p) => {
                        out!("downloaded, verified and extracted into {}", p.display())
                    }
                }
            }
            DataCommand::Synth {
                out,
                format,
                side,
                image_format,
                classes,
                train_per_class,
                test_per_class,
                seed,
            } => {
                let config = synth::SynthConfig {
                    classes,
                    train_per_class,
                    test_per_class,
                    seed,
                };
                if format == "folder" {
                    let file_format = match image_format.as_str() {
                        "jpeg" => synth::FileFormat::Jpeg,
                        "mixed" => synth::FileFormat::Mixed,
                        _ => synth::FileFormat::Png,
                    };
                    let m = synth::write_folder(&out, config, side, file_format)?;
                    out!(
                        "wrote a synthetic image folder to {}: {} classes, {} train and {} test {image_format} images (shorter side {side})",
                        out.display(),
                        m.classes,
                        m.classes * m.train_per_class,
                        m.classes * m.test_per_class
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                let m = synth::write(&out, config)?;
                out!(
                    "wrote a synthetic CIFAR-100-format set to {}: {} classes, {} train and {} test images",
                    out.display(),
                    m.classes,
                    m.classes * m.train_per_class,
                    m.classes * m.test_per_class
                );
            }
            DataCommand::Verify { dir, set } => {
                let summary = lossbench_data::verify(&dir, kind(&set))?;
                emit(&summary.to_string())?;
            }
        },
        Command::Run(args) => {
            return Ok(ExitCode::from(train_commands::run(args, GridKind::Main)?));
        }
        Command::Sweep { args, choose } => {
            return Ok(ExitCode::from(train_commands::sweep(args, choose)?));
        }
        Command::Bench {
            out,
            backends,
            quick,
            pytorch,
            pytorch_device,
            only,
        } => {
            let backends = backends
                .iter()
                .map(|b| b.parse::<BackendChoice>())
                .collect::<Result<Vec<_>>>()?;
            let report = lossbench_bench::run(
                &lossbench_bench::Options {
                    backends,
                    quick,
                    pytorch,
                    pytorch_device,
                    only,
                },
                &|line| eprintln!("{line}"),
            )?;
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            lossbench_experiment::atomic_write(&out, &serde_json::to_vec_pretty(&report)?)?;
            emit(&lossbench_bench::markdown(&report))?;
            out!("\n(results written to {})", out.display());
        }
        Command::Report {
            source,
            out,
            results,
        } => {
            let built = lossbench_report::build_from(&source, &results, out.as_deref())
                .with_context(|| format!("cannot build the report of {}", source.display()))?;
            out!("{built}");
        }
        Command::Devices => {
            emit(&lossbench_train::list_devices().to_string())?;
        }
        Command::Selfcheck {
            backend,
            device,
            quick,
        } => {
            let options = lossbench_selfcheck::Options {
                backend: backend.parse::<BackendChoice>()?,
                device,
                quick,
            };
            let report = lossbench_selfcheck::run(options, &|line| eprintln!("{line}"))?;
            out!("{report}");
            if !report.ok() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Plan {
            experiment,
            results,
            epochs,
            json,
            sweep,
        } => {
            let exp = lossbench_experiment::Experiment::load(&experiment)?;
            let kind = if sweep {
                GridKind::Sweep
            } else {
                GridKind::Main
            };
            let (runs, root) = experiment_grid(&exp, &experiment, epochs, &results, kind)?;
            let rows = plan_rows(&runs, &root);
            if json {
                out!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                emit(&plan_table(&rows))?;
                out!("grid {}: {} runs", grid_hash(&exp, &runs), rows.len());
            }
        }
        Command::Export { target } => {
            let (exported, name) = match target {
                ExportTarget::Slurm {
                    common,
                    time,
                    partition,
                    account,
                    cpus_per_run,
                    lossbench,
                } => {
                    let options = export_options(common, "slurm")?;
                    let lossbench = match lossbench {
                        Some(p) => p,
                        None => std::env::current_exe()?,
                    };
                    let slurm = SlurmOptions {
                        time,
                        partition,
                        account,
                        lossbench,
                        cpus_per_run,
                    };
                    (export::slurm(&options, &slurm)?, "bash submit.sh")
                }
                ExportTarget::K8s {
                    common,
                    image,
                    claim,
                    mount,
                    claim_path,
                    backoff_limit_per_index,
                } => {
                    let options = export_options(common, "k8s")?;
                    let k8s = K8sOptions {
                        image,
                        claim,
                        mount,
                        claim_path: claim_path.map(|p| absolute(&p)).transpose()?,
                        backoff_limit_per_index,
                    };
                    (
                        export::k8s(&options, &k8s)?,
                        "kubectl apply -f job.json, then -f report-job.json once it completes",
                    )
                }
            };
            for f in &exported.files {
                out!("wrote {}", f.display());
            }
            out!(
                "{} runs (grid {}); submit with: {name}",
                exported.runs,
                exported.grid
            );
        }
        Command::VerifyResults { dir } => {
            let verification = lossbench_grid::verify_results(&dir)?;
            out!("{verification}");
            if !verification.ok() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit code of bad input ([`BadInput`]) and of a request this machine cannot serve (a
/// backend or device it lacks), as for clap's usage errors: the same command fails again.
const REFUSED: u8 = lossbench_grid::EXIT_BAD_INPUT;

fn main() -> ExitCode {
    quiet_vulkan_device_selection();
    keep_freed_memory();
    lossbench_train::configure_gpu_runtime();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            if e.downcast_ref::<Unavailable>().is_some() || e.downcast_ref::<BadInput>().is_some() {
                ExitCode::from(REFUSED)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option index is taken from mimalloc.h: check it names the option whose default
    /// is purge_delay's (1000 ms in the bundled mimalloc 3), and that setting it takes.
    #[test]
    #[allow(unsafe_code)]
    fn purge_delay_option_index() {
        // SAFETY: reading and writing integer options of the linked mimalloc.
        unsafe {
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 1000);
            keep_freed_memory();
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), -1);
        }
    }
}
