//! `lossbench bench`: medians of repeated, warmed-up measurements of
//! - every loss head, forward + backward, against plain linear + cross-entropy (softmax);
//! - a full training step (forward, loss, backward, SGD update) of the CIFAR ResNets;
//! - the three convolutions of a step (forward, input and weight gradient) on every
//!   convolution shape of the CIFAR ResNet-18 and ResNet-50;
//! - the data path (augment + batch),
//!
//! optionally beside PyTorch measuring the same shapes in the same run
//! (`bench/pytorch/bench.py`), so the table reports ratios measured side by side.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::prelude::*;
use lossbench_data::{Batcher, ChannelStats, Kind, Split, load, synth};
use lossbench_head::{HeadDims, Labels};
use lossbench_model::{Arch, ResNetConfig};
use lossbench_registry::{LOSSES, init_head, resolve_params};
use lossbench_train::BackendChoice;
use lossbench_train::Net;
use lossbench_train::sgd::{SgdConfig, SgdState};
use serde::{Deserialize, Serialize};

mod conv;
mod own_data;
mod peak;
pub use peak::{Peak, fma_peak};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    pub backends: Vec<BackendChoice>,
    /// Smaller shapes and fewer repeats (a smoke run).
    pub quick: bool,
    /// Python interpreter with torch, to run `bench/pytorch/bench.py` in the same run.
    pub pytorch: Option<PathBuf>,
    /// Where PyTorch's training steps run: `cpu` or `cuda`.
    pub pytorch_device: String,
    /// Measure only these groups (see [`GROUPS`]); empty = all.
    pub only: Vec<String>,
}

/// The measurement groups (`retrieval` first when asked alone: its peak memory is its own).
pub const GROUPS: [&str; 6] = ["data", "head", "train_step", "conv", "images", "retrieval"];

impl Options {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// `head`, `train_step` or `data`.
    pub group: String,
    /// Loss name, model name or data path stage.
    pub name: String,
    /// e.g. `batch 128, dim 2048, classes 100`.
    pub shape: String,
    /// Backend or framework.
    pub backend: String,
    pub median_seconds: f64,
    pub repeats: usize,
    /// Images (or samples) per second, where meaningful.
    #[serde(default)]
    pub per_second: Option<f64>,
    /// Peak resident memory of the process during the measurement.
    #[serde(default)]
    pub peak_rss_mib: Option<f64>,
    /// f32 FLOPs of one measured operation, from the layer shapes (2 per multiply-add), where
    /// they are the point: convolutions and training steps.
    #[serde(default)]
    pub flops: Option<f64>,
}

/// Everything `bench` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub machine: String,
    pub threads: usize,
    /// The machine's f32 FMA peak on `threads` threads, measured in the same run.
    #[serde(default)]
    pub peak: Option<Peak>,
    pub lossbench: Vec<Measurement>,
    #[serde(default)]
    pub pytorch: Vec<Measurement>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Peak-RSS bookkeeping through /proc (Linux); `None` elsewhere.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn time(warmup: usize, repeats: usize, mut f: impl FnMut()) -> (f64, usize) {
    for _ in 0..warmup {
        f();
    }
    let samples = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    (median(samples), repeats)
}

fn machine() -> String {
    format!(
        "{}, {} logical CPUs, {}",
        lossbench_train::cpu::model(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::env::consts::OS
    )
}

fn random(rows: usize, cols: usize, seed: u64, device: &Device) -> Tensor<2> {
    let mut s = lossbench_rng::Stream::new(seed, lossbench_rng::Purpose::Synthetic, 7);
    Tensor::from_data(
        TensorData::new(s.normal_vec(rows * cols, 1.0), [rows, cols]),
        device,
    )
}

/// Loss heads, forward + backward.
fn heads(quick: bool, out: &mut Vec<Measurement>, log: &dyn Fn(&str)) -> Result<()> {
    let device = Device::flex().autodiff();
    let shapes: &[(usize, usize, usize)] = if quick {
        &[(128, 2048, 100), (256, 512, 10_000)]
    } else {
        &[(128, 2048, 100), (256, 512, 10_000), (256, 512, 100_000)]
    };
    let repeats = if quick { 3 } else { 5 };
    for &(batch, dim, classes) in shapes {
        let x = random(batch, dim, 1, &device);
        let labels: Vec<i64> = (0..batch as i64)
            .map(|i| (i * 7919) % classes as i64)
            .collect();
        let labels = Labels::new(&labels, classes, &device)?;
        for spec in LOSSES {
            let params = resolve_params(spec.name, &serde_json::Map::new())?;
            let head = init_head(
                spec.name,
                &params,
                HeadDims {
                    num_classes: classes,
                    feature_dim: dim,
                },
                3,
                &device,
            )?;
            let (seconds, repeats) = time(1, repeats, || {
                let xr = x.clone().require_grad();
                let grads = head.loss(xr.clone(), &labels, 100).backward();
                // Reading a reduction of the gradient waits for all of it.
                let _: f32 = xr.grad(&grads).map_or(0.0, |g| g.sum().into_scalar());
            });
            let m = Measurement {
                group: "head".into(),
                name: spec.name.into(),
                shape: format!("batch {batch}, dim {dim}, classes {classes}"),
                backend: "flex".into(),
                median_seconds: seconds,
                repeats,
                per_second: None,
                peak_rss_mib: None,
                flops: None,
            };
            log(&format!(
                "head {:<10} {:<34} {:>9.2} ms",
                m.name,
                m.shape,
                1e3 * seconds
            ));
            out.push(m);
        }
    }
    Ok(())
}

/// Full training steps of the CIFAR ResNets.
fn train_steps(
    backends: &[BackendChoice],
    quick: bool,
    out: &mut Vec<Measurement>,
    log: &dyn Fn(&str),
) -> Result<()> {
    let configs: &[(Arch, usize)] = if quick {
        &[(Arch::ResNet18, 64)]
    } else {
        &[
            (Arch::ResNet18, 64),
            (Arch::ResNet18, 128),
            (Arch::ResNet50, 64),
            (Arch::ResNet50, 128),
        ]
    };
    for choice in backends {
        let backend = choice.resolve(0, lossbench_train::Precision::F32)?;
        let device = backend.training_device();
        for &(arch, batch) in configs {
            let config = ResNetConfig::new(arch);
            let dims = HeadDims {
                num_classes: 100,
                feature_dim: config.feature_dim(),
            };
            let params = resolve_params("softmax", &serde_json::Map::new())?;
            let mut net = Net {
                backbone: config.init(0, &device)?,
                neck: None,
                head: init_head("softmax", &params, dims, 0, &device)?,
            };
            let images: Vec<f32> =
                lossbench_rng::Stream::new(1, lossbench_rng::Purpose::Synthetic, 3)
                    .normal_vec(batch * 3 * 32 * 32, 1.0);
            let labels: Vec<i64> = (0..batch as i64).map(|i| i % 100).collect();
            let labels = Labels::new(&labels, 100, &device)?;
            let mut sgd = SgdState::default();
            let sgd_config = SgdConfig {
                momentum: 0.9,
                weight_decay: 5e-4,
                nesterov: false,
            };
            reset_peak_rss();
            // A GPU tunes its kernels during the first steps (autotune) and runs ahead of the
            // host: more warm-up, more repeats, and a sync inside every timed step. On a CPU
            // two warm-up steps and five timed ones (bench.py does the same): with one and three,
            // PyTorch's ResNet-18 step read 45 and 63 img/s in two runs of one session.
            let (warmup, repeats) = match (backend.warms_up(), quick) {
                (true, _) => (5, 20),
                (false, true) => (1, 2),
                (false, false) => (2, 5),
            };
            let (seconds, repeats) = time(warmup, repeats, || {
                let x = Tensor::<4>::from_data(
                    TensorData::new(images.clone(), [batch, 3, 32, 32]),
                    &device,
                );
                let loss = net.head.loss(net.features(x), &labels, 0);
                let grads = loss.backward();
                net = sgd.step(net.clone(), &grads, 0.1, sgd_config);
                let _ = backend.device.sync();
            });
            let m = Measurement {
                group: "train_step".into(),
                name: arch.name().into(),
                shape: format!("batch {batch}"),
                backend: backend.name.into(),
                median_seconds: seconds,
                repeats,
                per_second: Some(batch as f64 / seconds),
                peak_rss_mib: peak_rss_mib(),
                // Forward, input and weight gradients of every convolution: 3 × forward.
                flops: Some(6.0 * config.forward_macs(32) as f64 * batch as f64),
            };
            log(&format!(
                "train step {:<9} batch {batch:<4} {:<6} {:>8.1} img/s",
                m.name,
                m.backend,
                batch as f64 / seconds
            ));
            out.push(m);
        }
    }
    Ok(())
}

/// Augment + batch one epoch of a synthetic set held in memory.
fn data_path(out: &mut Vec<Measurement>, log: &dyn Fn(&str)) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("lossbench-bench-data-{}", std::process::id()));
    synth::write(
        &dir,
        synth::SynthConfig {
            classes: 100,
            train_per_class: 100,
            test_per_class: 1,
            seed: 0,
        },
    )?;
    let set = load(&dir, Kind::Cifar100, Split::Train)?;
    let _ = std::fs::remove_dir_all(&dir);
    let stats = ChannelStats::of(&set);
    let mut epoch = 0;
    let (seconds, repeats) = time(1, 5, || {
        let batcher = Batcher::train(&set, stats, 128, 0, epoch);
        epoch += 1;
        for b in 0..batcher.len() {
            std::hint::black_box(batcher.batch(b));
        }
    });
    let m = Measurement {
        group: "data".into(),
        name: "augment + batch".into(),
        shape: format!("{} images, batch 128", set.len()),
        backend: format!("rayon, {} threads", rayon_threads()),
        median_seconds: seconds,
        repeats,
        per_second: Some(set.len() as f64 / seconds),
        peak_rss_mib: None,
        flops: None,
    };
    log(&format!(
        "data path {:>10.0} img/s",
        set.len() as f64 / seconds
    ));
    out.push(m);
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Run the PyTorch side (`bench/pytorch/bench.py`) with `python`.
fn pytorch(python: &Path, device: &str, quick: bool, only: &[String]) -> Result<Vec<Measurement>> {
    let out = std::env::temp_dir().join(format!("lossbench-pytorch-{}.json", std::process::id()));
    let mut cmd = std::process::Command::new(python);
    cmd.arg("bench/pytorch/bench.py")
        .arg("--out")
        .arg(&out)
        .arg("--threads")
        .arg(rayon_threads().to_string())
        .arg("--device")
        .arg(device);
    if quick {
        cmd.arg("--quick");
    }
    if !only.is_empty() {
        cmd.arg("--only").arg(only.join(","));
    }
    // The convolution shapes come from the model crate, so both sides measure the same ones.
    cmd.arg("--conv-shapes")
        .arg(conv::argument(&conv::resnet_shapes(quick)));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", python.display()))?;
    anyhow::ensure!(status.success(), "bench/pytorch/bench.py failed ({status})");
    let bytes = std::fs::read(&out)?;
    let _ = std::fs::remove_file(&out);
    Ok(serde_json::from_slice(&bytes)?)
}

/// Measure everything; `log` receives one line per measurement.
pub fn run(options: &Options, log: &dyn Fn(&str)) -> Result<Report> {
    if let Some(bad) = options.only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        anyhow::bail!(
            "unknown benchmark group `{bad}` (known: {})",
            GROUPS.join(", ")
        );
    }
    let threads = rayon_threads();
    // The peak is what convolutions and training steps are judged against; nothing else needs it.
    let peak = (options.wants("conv") || options.wants("train_step")).then(|| {
        let peak = fma_peak(threads);
        log(&format!(
            "f32 FMA peak: {:.0} GFLOP/s on {threads} threads ({})",
            peak.gflops, peak.isa
        ));
        peak
    });
    let mut lossbench = Vec::new();
    // Training steps first, smallest to largest: the binary's allocator keeps freed memory
    // (crates/cli/src/main.rs), so a step's peak RSS is only its own if nothing bigger ran
    // before it (the 100,000-class heads hold ~3 GiB).
    if options.wants("retrieval") {
        own_data::retrieval_scale(options.quick, &mut lossbench, log)?;
    }
    if options.wants("train_step") {
        train_steps(&options.backends, options.quick, &mut lossbench, log)?;
    }
    if options.wants("images") {
        own_data::images(options.quick, &mut lossbench, log)?;
    }
    if options.wants("data") {
        data_path(&mut lossbench, log)?;
    }
    if options.wants("head") {
        heads(options.quick, &mut lossbench, log)?;
    }
    if options.wants("conv") {
        conv::convolutions(options.quick, &mut lossbench, log)?;
    }
    let pytorch = match &options.pytorch {
        Some(python) => pytorch(
            python,
            &options.pytorch_device,
            options.quick,
            &options.only,
        )?,
        None => Vec::new(),
    };
    Ok(Report {
        machine: machine(),
        threads,
        peak,
        lossbench,
        pytorch,
    })
}

/// The Markdown table: lossbench, PyTorch where measured, and their ratio.
#[must_use]
pub fn markdown(report: &Report) -> String {
    let mut s = format!(
        "Machine: {}; {} threads.\n\n",
        report.machine, report.threads
    );
    if let Some(p) = &report.peak {
        s.push_str(&format!(
            "f32 FMA peak of this machine on {} threads: {:.0} GFLOP/s ({}, measured in this run); GFLOP/s from the layer shapes (2 per multiply-add; a training step = 3 × the forward convolutions).\n\n",
            p.threads, p.gflops, p.isa
        ));
    }
    let peak = report.peak.as_ref().map(|p| p.gflops);
    let achieved = |m: &Measurement, flops: Option<f64>| -> String {
        match (flops.map(|f| f / m.median_seconds / 1e9), peak) {
            (Some(g), Some(p)) => format!("{g:.0} ({:.0} %)", 100.0 * g / p),
            (Some(g), None) => format!("{g:.0}"),
            _ => "—".into(),
        }
    };
    s.push_str("| benchmark | case | backend | lossbench | vs softmax | GFLOP/s (% of peak) | PyTorch | PyTorch GFLOP/s (% of peak) | lossbench / PyTorch time |\n|---|---|---|---:|---:|---:|---:|---:|---:|\n");
    for m in &report.lossbench {
        let value = match m.per_second {
            Some(p) => format!(
                "{p:.1} img/s{}",
                m.peak_rss_mib
                    .map_or(String::new(), |r| format!(", peak {r:.0} MiB"))
            ),
            None => format!("{:.2} ms", 1e3 * m.median_seconds),
        };
        let vs_softmax = if m.group == "head" {
            report
                .lossbench
                .iter()
                .find(|b| b.group == "head" && b.name == "softmax" && b.shape == m.shape)
                .map_or("—".into(), |b| {
                    format!("{:.2}×", m.median_seconds / b.median_seconds)
                })
        } else {
            "—".into()
        };
        let torch = report
            .pytorch
            .iter()
            .find(|p| p.group == m.group && p.name == m.name && p.shape == m.shape);
        let (t, torch_gflops, ratio) =
            torch.map_or(("—".into(), "—".into(), "—".into()), |p| {
                let v = match p.per_second {
                    Some(x) => format!("{x:.1} img/s"),
                    None => format!("{:.2} ms", 1e3 * p.median_seconds),
                };
                // The same shapes, so the same FLOPs.
                (
                    v,
                    achieved(p, m.flops),
                    format!("{:.2}", m.median_seconds / p.median_seconds),
                )
            });
        s.push_str(&format!(
            "| {} | {} {} | {} | {value} | {vs_softmax} | {} | {t} | {torch_gflops} | {ratio} |\n",
            m.group,
            m.name,
            m.shape,
            m.backend,
            achieved(m, m.flops)
        ));
    }
    s
}
