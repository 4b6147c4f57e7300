//! `lossbench selfcheck`: the backend parity tests inside the binary, for a machine without
//! Rust (a GPU host). A binary built with features the test suite was not built with
//! (autotune, fusion, cuda) is trusted only after this passes on the device it will train on.
//!
//! Three checks, each a table:
//! 1. every registered loss head — loss, feature and weight gradients — on the backend in f32
//!    against the float64 reference (the probe's maths) on a few hundred rows;
//! 2. one training step of a ResNet-18 at 1/8 width against flex: the loss, the features and
//!    the first convolution's weights after the step;
//! 3. every loss trained for two epochs on a tiny synthetic set, against the same on flex,
//!    with the tolerances of the slow tests.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::DType;
use lossbench_experiment::EpochRecord;
use lossbench_head::eval::Case;
use lossbench_head::{HeadDims, Labels};
use lossbench_model::{Arch, ResNetConfig};
use lossbench_registry::{LOSSES, evaluate_named, evaluate_named_as, init_head, resolve_params};
use lossbench_train::sgd::{SgdConfig, SgdState};
use lossbench_train::{Backend, BackendChoice, Net, Precision, Progress};

/// One compared quantity: its largest deviation relative to the reference's largest value.
#[derive(Debug, Clone)]
pub struct Row {
    pub check: &'static str,
    pub what: String,
    /// `max |got − want| / max(|want|, floor)`.
    pub deviation: f64,
    pub tolerance: f64,
}

impl Row {
    #[must_use]
    pub fn ok(&self) -> bool {
        self.deviation.is_finite() && self.deviation <= self.tolerance
    }
}

/// Every row of every check, and on which device.
#[derive(Debug, Clone)]
pub struct Report {
    pub backend: String,
    pub device: String,
    pub rows: Vec<Row>,
}

impl Report {
    /// Whether every row is within its tolerance.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.rows.iter().all(Row::ok)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "selfcheck of {} ({})", self.backend, self.device)?;
        let mut check = "";
        for r in &self.rows {
            if r.check != check {
                check = r.check;
                writeln!(f, "\n{check}")?;
                writeln!(
                    f,
                    "  {:<44} {:>11} {:>10}  verdict",
                    "quantity", "deviation", "tolerance"
                )?;
            }
            writeln!(
                f,
                "  {:<44} {:>11.3e} {:>10.1e}  {}",
                r.what,
                r.deviation,
                r.tolerance,
                if r.ok() { "ok" } else { "DRIFT" }
            )?;
        }
        let bad = self.rows.iter().filter(|r| !r.ok()).count();
        if bad == 0 {
            write!(f, "\nall {} quantities within tolerance", self.rows.len())
        } else {
            write!(
                f,
                "\n{bad} of {} quantities drifted: do not train on this backend",
                self.rows.len()
            )
        }
    }
}

/// The largest deviation of `got` from `want`, relative to the largest `|want|` (at least
/// `floor`, so an all-zero reference is compared absolutely).
fn deviation(got: &[f64], want: &[f64], floor: f64) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(floor, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / scale)
        .fold(
            0.0,
            |m: f64, d| if d.is_nan() { f64::NAN } else { m.max(d) },
        )
}

/// The heads' f32 results on a GPU differ from float64 by reduction order and f32 rounding;
/// 0.2 % of the largest value is what the parity tests hold every head to.
const HEAD_TOLERANCE: f64 = 2e-3;

/// A few hundred rows on which every head is compared: features of mixed norms, some nearly
/// aligned with their class weight and some opposite (where ArcFace and SphereFace switch
/// branches), 20 classes of 32 dimensions.
fn head_case(rows_per_class: usize, weight_rows: usize) -> Case {
    const CLASSES: usize = 20;
    const DIM: usize = 32;
    let mut stream = lossbench_rng::Stream::new(11, lossbench_rng::Purpose::Synthetic, 5);
    let weights: Vec<Vec<f64>> = (0..CLASSES * weight_rows)
        .map(|_| (0..DIM).map(|_| stream.next_f64() * 2.0 - 1.0).collect())
        .collect();
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for class in 0..CLASSES {
        for i in 0..rows_per_class {
            let toward = &weights[class * weight_rows];
            // Every fourth row points at its class (small angle), every seventh away from it.
            let pull = match i % 28 {
                0 | 4 | 8 | 12 | 16 | 20 | 24 => 3.0,
                7 | 14 | 21 => -3.0,
                _ => 0.0,
            };
            let norm = 0.5 + 4.0 * stream.next_f64();
            let row: Vec<f64> = toward
                .iter()
                .map(|&w| norm * (pull * w + stream.next_f64() * 2.0 - 1.0))
                .collect();
            features.push(row);
            labels.push(class as i64);
        }
    }
    Case {
        features,
        weights,
        bias: None,
        labels,
        iteration: 10,
    }
}

/// Check 1: every head on `backend` in f32 against float64 on flex.
fn heads(backend: &Backend) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for spec in LOSSES {
        let params = resolve_params(spec.name, &serde_json::Map::new())?;
        rows.extend(head_rows(spec.name, &params, &params, backend)?);
    }
    Ok(rows)
}

/// Head `name` with `params` on `backend` in f32 against the float64 reference computed with
/// `reference_params` (the same in `selfcheck`; a test changes them to show a head whose
/// maths differs being caught).
fn head_rows(
    name: &str,
    params: &lossbench_head::ResolvedParams,
    reference_params: &lossbench_head::ResolvedParams,
    backend: &Backend,
) -> Result<Vec<Row>> {
    let per_class = lossbench_registry::weight_rows(name, params)?;
    let case = head_case(16, per_class);
    let want = evaluate_named(name, reference_params, &case, &Device::flex())
        .with_context(|| format!("{name}: the float64 reference"))?;
    let got = evaluate_named_as(name, params, &case, &backend.device, DType::F32)
        .with_context(|| format!("{name} on {}", backend.name))?;
    let flat = |m: &[Vec<f64>]| m.iter().flatten().copied().collect::<Vec<f64>>();
    Ok([
        ("loss", vec![got.loss], vec![want.loss]),
        ("logits", flat(&got.logits), flat(&want.logits)),
        (
            "feature gradient",
            flat(&got.grad_features),
            flat(&want.grad_features),
        ),
        (
            "weight gradient",
            flat(&got.grad_weights),
            flat(&want.grad_weights),
        ),
    ]
    .into_iter()
    .map(|(what, g, w)| Row {
        check: "1. loss heads, f32 on the backend vs float64 (320 rows, 20 classes)",
        what: format!("{name} {what}"),
        deviation: deviation(&g, &w, 1e-6),
        tolerance: HEAD_TOLERANCE,
    })
    .collect())
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    let n = t.shape().num_elements();
    t.reshape([n])
        .into_data()
        .try_into_vec_as::<f64>()
        .expect("float tensor data converts to f64")
}

/// The first parameter of the backbone (the stem convolution's weights).
fn stem_weights(net: &Net) -> Vec<f64> {
    struct First(Option<Vec<f64>>);
    impl ModuleVisitor for First {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if self.0.is_none() {
                self.0 = Some(host(p.val()));
            }
        }
    }
    let mut first = First(None);
    net.backbone.visit(&mut first);
    first.0.unwrap_or_default()
}

/// Loss, features and the stem's weights after one SGD step of a ResNet-18 at 1/8 width.
fn training_step_on(device: &Device) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    const BATCH: usize = 16;
    let device = device.clone().autodiff();
    let config = ResNetConfig::new(Arch::ResNet18).with_width(0.125);
    let params = resolve_params("softmax", &serde_json::Map::new())?;
    let dims = HeadDims {
        num_classes: 10,
        feature_dim: config.feature_dim(),
    };
    let net = Net {
        backbone: config.init(3, &device)?,
        neck: None,
        head: init_head("softmax", &params, dims, 3, &device)?,
    };
    let images: Vec<f32> = lossbench_rng::Stream::new(4, lossbench_rng::Purpose::Synthetic, 1)
        .normal_vec(BATCH * 3 * 32 * 32, 1.0);
    let labels: Vec<i64> = (0..BATCH as i64).map(|i| i % 10).collect();
    let labels = Labels::new(&labels, 10, &device)?;
    let x = Tensor::<4>::from_data(TensorData::new(images, [BATCH, 3, 32, 32]), &device);
    let features = net.features(x); // [batch, dim]
    let loss = net.head.loss(features.clone(), &labels, 0);
    let grads = loss.backward();
    let sgd = SgdConfig {
        momentum: 0.9,
        weight_decay: 5e-4,
        nesterov: false,
    };
    let stepped = SgdState::default().step(net, &grads, 0.1, sgd);
    Ok((
        host(loss.inner()),
        host(features.inner()),
        stem_weights(&stepped),
    ))
}

/// Check 2: one ResNet training step on `backend` against flex.
fn training_step(backend: &Backend) -> Result<Vec<Row>> {
    let want = training_step_on(&Device::flex())?;
    let got = training_step_on(&backend.device)?;
    let check = "2. one training step, ResNet-18 at 1/8 width, batch 16, vs flex";
    Ok(vec![
        Row {
            check,
            what: "loss".into(),
            deviation: deviation(&got.0, &want.0, 1e-6),
            tolerance: 2e-3,
        },
        Row {
            check,
            what: "features".into(),
            deviation: deviation(&got.1, &want.1, 1e-6),
            tolerance: 2e-3,
        },
        Row {
            check,
            what: "stem convolution weights after the step".into(),
            deviation: deviation(&got.2, &want.2, 1e-6),
            tolerance: 2e-3,
        },
    ])
}

/// The experiment of check 3: every loss, 2 epochs, on a tiny synthetic set in `dir`.
fn tiny_experiment(dir: &Path) -> Result<std::path::PathBuf> {
    let mut text = format!(
        r#"name = "selfcheck"
seeds = [0]

[data]
set = "cifar100"
dir = "{}"
synthetic = {{ classes = 4, train_per_class = 12, test_per_class = 4, seed = 1 }}

[model]
arch = "resnet18"
width = 0.0625

[training]
epochs = 2
batch_size = 16
eval_batch_size = 8
lr = 0.05
warmup_epochs = 1
schedule = {{ kind = "multistep", milestones = [2], gamma = 0.5 }}
"#,
        dir.join("data").display()
    );
    for spec in LOSSES {
        let params = match spec.name {
            "normface" => "params = { s = 8.0 }\n",
            "arcface" | "cosface" => "params = { s = 8.0, m = 0.2 }\n",
            _ => "",
        };
        text.push_str(&format!("\n[[losses]]\nname = \"{}\"\n{params}", spec.name));
    }
    let path = dir.join("selfcheck.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Train every loss of the tiny experiment on `choice` into `results`.
fn train_tiny(exp: &Path, results: &Path, choice: BackendChoice, device: usize) -> Result<()> {
    let options = lossbench_grid::RunOptions {
        backend: choice,
        device,
        results: results.to_path_buf(),
        ..Default::default()
    };
    let reports = lossbench_grid::run_experiment(exp, &options, &mut Progress::quiet())?;
    for r in reports {
        anyhow::ensure!(
            r.status == lossbench_experiment::RunStatus::Completed,
            "{} did not complete on {choice}: {}",
            r.loss,
            r.detail
        );
    }
    Ok(())
}

/// A per-epoch metric of check 3.
type Metric = fn(&EpochRecord) -> f64;

/// The metrics check 3 compares and their tolerances, measured on lavapipe (the slow test
/// `every_loss_trains_alike_on_flex_and_wgpu`): losses at scale s end up to 2.7 % apart after
/// two epochs, SphereFace's test loss 8.7 %; 16 test images move top-1 by 1/16 per flipped
/// prediction.
const TRAINED: [(&str, f64, Metric); 3] = [
    ("train loss", 0.05, |r| r.train_loss),
    ("test loss", 0.12, |r| r.test_loss.unwrap_or(f64::NAN)),
    ("test top-1", 0.13, |r| r.test_top1.unwrap_or(f64::NAN)),
];

/// Check 3: every loss trained for two epochs on `choice` and on flex.
fn training(choice: BackendChoice, device: usize) -> Result<Vec<Row>> {
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let exp = tiny_experiment(dir.path())?;
    train_tiny(&exp, &dir.path().join("flex"), BackendChoice::Flex, 0)?;
    train_tiny(&exp, &dir.path().join("backend"), choice, device)?;
    let check = "3. two epochs of every loss, 48 images, vs flex (per-epoch metrics)";
    let mut rows = Vec::new();
    for spec in LOSSES {
        let read = |root: &str| {
            lossbench_experiment::read_metrics(&lossbench_experiment::RunDir::new(
                &dir.path().join(root).join("selfcheck"),
                spec.name,
                0,
            ))
        };
        let (want, got) = (read("flex")?, read("backend")?);
        for &(what, tolerance, pick) in &TRAINED {
            let g: Vec<f64> = got.iter().map(pick).collect();
            let w: Vec<f64> = want.iter().map(pick).collect();
            rows.push(Row {
                check,
                what: format!("{} {what}", spec.name),
                deviation: deviation(&g, &w, 1.0),
                tolerance,
            });
        }
    }
    Ok(rows)
}

/// What to check: which backend and device, and whether to include the two-epoch training.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub backend: BackendChoice,
    pub device: usize,
    /// Skip check 3 (the slowest: it trains every loss twice).
    pub quick: bool,
}

/// Run the checks on the chosen device; `log` hears each check as it starts.
pub fn run(options: Options, log: &dyn Fn(&str)) -> Result<Report> {
    let backend = options.backend.resolve(options.device, Precision::F32)?;
    log(&format!(
        "selfcheck on {} ({}): loss heads",
        backend.name, backend.device_name
    ));
    let mut rows = heads(&backend)?;
    log("selfcheck: one ResNet training step");
    rows.extend(training_step(&backend)?);
    if !options.quick {
        log("selfcheck: two epochs of every loss (here and on flex)");
        let choice = backend.name.parse::<BackendChoice>()?;
        rows.extend(training(choice, backend.index)?);
    }
    Ok(Report {
        backend: backend.name.to_string(),
        device: backend.device_name.clone(),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deviation_is_relative_to_the_largest_reference_value() {
        assert_eq!(deviation(&[1.0, 2.0], &[1.0, 2.0], 1e-6), 0.0);
        assert!((deviation(&[1.0, 2.1], &[1.0, 2.0], 1e-6) - 0.05).abs() < 1e-12);
        assert_eq!(deviation(&[1.0], &[1.0, 2.0], 1e-6), f64::INFINITY);
        assert!(deviation(&[f64::NAN], &[1.0], 1e-6).is_nan());
        let row = Row {
            check: "c",
            what: "w".into(),
            deviation: f64::NAN,
            tolerance: 1.0,
        };
        assert!(!row.ok(), "NaN is drift");
    }

    #[test]
    fn flex_passes_its_own_selfcheck() {
        let report = run(
            Options {
                backend: BackendChoice::Flex,
                device: 0,
                quick: true,
            },
            &|_| {},
        )
        .expect("selfcheck");
        assert!(report.ok(), "{report}");
        assert_eq!(report.rows.len(), LOSSES.len() * 4 + 3);
    }

    /// A head whose maths changed — ArcFace's margin 0.5 computed as 0.49, CosFace's 0.35 as
    /// 0.34 — drifts in check 1: the loss always (1.2 % for CosFace), ArcFace's gradients
    /// too; the logits carry no margin and agree.
    #[test]
    fn a_head_whose_maths_changed_drifts() {
        let backend = BackendChoice::Flex
            .resolve(0, Precision::F32)
            .expect("flex");
        for (name, m) in [("arcface", 0.49), ("cosface", 0.34)] {
            let reference = resolve_params(name, &serde_json::Map::new()).expect("defaults");
            let changed = resolve_params(
                name,
                &serde_json::json!({ "m": m })
                    .as_object()
                    .cloned()
                    .expect("map"),
            )
            .expect("valid m");
            let rows = head_rows(name, &changed, &reference, &backend).expect("rows");
            let verdict = |what: &str| {
                rows.iter()
                    .find(|r| r.what == format!("{name} {what}"))
                    .map(Row::ok)
                    .expect("row")
            };
            assert!(verdict("logits"), "{rows:?}");
            let changed_rows: &[&str] = if name == "arcface" {
                &["loss", "feature gradient", "weight gradient"]
            } else {
                &["loss"]
            };
            for what in changed_rows {
                assert!(!verdict(what), "{name} {what} not caught: {rows:?}");
            }
            let unchanged = head_rows(name, &reference, &reference, &backend).expect("rows");
            assert!(unchanged.iter().all(Row::ok), "{unchanged:?}");
        }
    }
}
