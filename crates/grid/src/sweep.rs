//! Per-loss sweeps judged on the validation split (Musgrave et al.'s protocol): the grid of
//! sweep runs, each loss's best point by the sweep metric, and `results/<exp>/sweep.json`,
//! which `run` then trains every swept loss at.
//!
//! Sweep runs are ordinary runs under `results/<exp>/sweep/<loss>@<point>/seed-N`:
//! resumable, locked, addressable by index (`plan --sweep`, `sweep --index`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lossbench_experiment::{
    Experiment, HEAD_LR_SCALE, LossEntry, RunDir, RunManifest, RunStatus, experiment_dir,
    read_metrics, sha256_hex,
};
pub use lossbench_experiment::{LossSweep, Point, PointResult, SWEEP_FILE, SweepRecord};

/// Folder of the sweep runs inside `results/<exp>`.
pub const SWEEP_DIR: &str = "sweep";

/// Every combination of a loss's sweep values: keys in sorted order, the last key varying
/// fastest, values in the order the file lists them. A loss without a sweep has one (empty)
/// point.
#[must_use]
pub fn points(entry: &LossEntry) -> Vec<Point> {
    let mut all = vec![Point::new()];
    for (key, values) in &entry.sweep {
        all = all
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |&v| {
                    let mut q = p.clone();
                    q.insert(key.clone(), v);
                    q
                })
            })
            .collect();
    }
    all
}

/// `arcface@m=0.2,s=16`: a sweep run's folder name (the loss alone for an empty point).
#[must_use]
pub fn point_label(loss: &str, point: &Point) -> String {
    if point.is_empty() {
        return loss.to_string();
    }
    let values: Vec<String> = point.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{loss}@{}", values.join(","))
}

/// The loss parameters of `entry` with `point`'s loss keys on top (not `head_lr_scale`).
#[must_use]
pub fn params_at(entry: &LossEntry, point: &Point) -> serde_json::Map<String, serde_json::Value> {
    let mut params = entry.params.clone();
    for (k, v) in point.iter().filter(|(k, _)| *k != HEAD_LR_SCALE) {
        params.insert(k.clone(), serde_json::json!(v));
    }
    params
}

/// Where the sweep runs of an experiment live.
#[must_use]
pub fn sweep_root(results: &Path, experiment: &Experiment) -> PathBuf {
    experiment_dir(results, &experiment.name).join(SWEEP_DIR)
}

/// The fingerprint of what a sweep trains and how it judges: shared settings, metric,
/// epochs, seeds and every loss's parameters and sweep values.
#[must_use]
pub fn fingerprint(experiment: &Experiment) -> String {
    let mut text: String = lossbench_experiment::shared_settings(experiment)
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    if let Some(s) = &experiment.sweep {
        text.push_str(&format!("sweep {} {} {:?}\n", s.metric, s.epochs, s.seeds));
    }
    for l in &experiment.losses {
        text.push_str(&format!(
            "{} {} {}\n",
            l.name,
            serde_json::Value::Object(l.params.clone()),
            serde_json::to_string(&l.sweep).unwrap_or_default()
        ));
    }
    sha256_hex(&[text.as_bytes()])[..16].to_string()
}

/// Whether `value` beats `best` under `metric`.
fn better(metric: &str, value: f64, best: f64) -> bool {
    if metric == "val_loss" {
        value < best
    } else {
        value > best
    }
}

/// Pick each loss's best point from the finished sweep runs under `results`. Every sweep run
/// must have ended (completed or diverged); otherwise an error says how many have not.
pub fn choose(experiment: &Experiment, results: &Path) -> Result<SweepRecord> {
    let Some(settings) = &experiment.sweep else {
        bail!("{} has no [sweep] table", experiment.name);
    };
    let root = sweep_root(results, experiment);
    let metric = settings.metric.as_str();
    let mut unfinished = Vec::new();
    let mut losses = Vec::new();
    for entry in &experiment.losses {
        let mut results_here = Vec::new();
        for point in points(entry) {
            let mut values = Vec::new();
            let mut diverged = 0;
            for &seed in &settings.seeds {
                let run = RunDir::new(&root, &point_label(&entry.name, &point), seed);
                let status = RunManifest::read(&run.manifest()).map(|m| m.status).ok();
                match status {
                    Some(RunStatus::Diverged) => diverged += 1,
                    Some(RunStatus::Completed) => {
                        let records = read_metrics(&run)?;
                        let last = records.last().with_context(|| {
                            format!("{}: completed but without metrics", run.path.display())
                        })?;
                        let value = match metric {
                            "val_loss" => last.val_loss,
                            "val_map_at_r" => last.val_map_at_r,
                            "val_recall_at_1" => last.val_recall_at_1,
                            _ => last.val_top1,
                        };
                        values.push(value.with_context(|| {
                            format!("{}: no {metric} recorded", run.path.display())
                        })?);
                    }
                    _ => unfinished.push(run.path.display().to_string()),
                }
            }
            let value = (diverged == 0 && !values.is_empty())
                .then(|| values.iter().sum::<f64>() / values.len() as f64);
            results_here.push(PointResult {
                point,
                value,
                diverged,
                seeds: settings.seeds.len(),
            });
        }
        let mut chosen: Option<(&Point, f64)> = None;
        for r in &results_here {
            if let Some(v) = r.value
                && chosen.is_none_or(|(_, best)| better(metric, v, best))
            {
                chosen = Some((&r.point, v));
            }
        }
        // Every point diverged: keep the first, the report shows why.
        let chosen = chosen.map_or_else(|| results_here[0].point.clone(), |(p, _)| p.clone());
        let default = results_here
            .iter()
            .map(|r| &r.point)
            .find(|p| {
                p.iter().all(|(k, v)| {
                    if k == HEAD_LR_SCALE {
                        *v == experiment.training.head_lr_scale
                    } else {
                        entry.params.get(k).and_then(serde_json::Value::as_f64) == Some(*v)
                    }
                }) && !p.is_empty()
            })
            .cloned();
        losses.push(LossSweep {
            loss: entry.name.clone(),
            points: results_here,
            chosen,
            default,
        });
    }
    if !unfinished.is_empty() {
        bail!(
            "{} of the sweep runs have not finished (first: {}); run `lossbench sweep` again (it resumes)",
            unfinished.len(),
            unfinished[0]
        );
    }
    Ok(SweepRecord {
        metric: metric.to_string(),
        epochs: settings.epochs,
        seeds: settings.seeds.clone(),
        fingerprint: fingerprint(experiment),
        losses,
    })
}

/// The choice `run` trains at: required when the experiment sweeps, and refused when the
/// sweep it came from is not the experiment's any more.
pub fn choice_for_run(experiment: &Experiment, results: &Path) -> Result<Option<SweepRecord>> {
    if !experiment.losses.iter().any(|l| !l.sweep.is_empty()) {
        return Ok(None);
    }
    let Some(record) = SweepRecord::read(results, experiment)? else {
        bail!(
            "{} sweeps its losses: run `lossbench sweep` on it first (it writes {}/{}/{SWEEP_FILE})",
            experiment.name,
            results.display(),
            experiment.name
        );
    };
    if record.fingerprint != fingerprint(experiment) {
        bail!(
            "{}/{}/{SWEEP_FILE} was chosen for another sweep (settings, losses or values changed): run `lossbench sweep` again",
            results.display(),
            experiment.name
        );
    }
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sweep: &[(&str, &[f64])]) -> LossEntry {
        LossEntry {
            name: "arcface".into(),
            params: serde_json::Map::new(),
            epochs: None,
            sweep: sweep
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.to_vec()))
                .collect(),
        }
    }

    #[test]
    fn points_are_the_product_in_key_order() {
        let p = points(&entry(&[("s", &[16.0, 32.0]), ("m", &[0.2, 0.5])]));
        let labels: Vec<String> = p.iter().map(|p| point_label("arcface", p)).collect();
        assert_eq!(
            labels,
            [
                "arcface@m=0.2,s=16",
                "arcface@m=0.2,s=32",
                "arcface@m=0.5,s=16",
                "arcface@m=0.5,s=32"
            ]
        );
        assert_eq!(points(&entry(&[])), [Point::new()]);
        assert_eq!(point_label("softmax", &Point::new()), "softmax");
    }

    /// `(point label, seed, Some((val_top1, val_loss)) or None for a diverged run)`.
    type FakeRun<'a> = (&'a str, u64, Option<(f64, f64)>);

    /// A sweep's finished runs with known metrics: `(point label, seed) → last val_top1,
    /// val_loss`, or `None` for a diverged run.
    fn fake_results(root: &Path, runs: &[FakeRun<'_>]) {
        for &(label, seed, outcome) in runs {
            let dir = RunDir::new(root, label, seed);
            std::fs::create_dir_all(&dir.path).expect("mkdir");
            let manifest = serde_json::json!({
                "experiment": "x", "loss": label, "seed": seed, "params": {}, "epochs": 1,
                "epochs_completed": 1,
                "status": if outcome.is_some() { "completed" } else { "diverged" },
                "backend": "flex", "device": "CPU", "versions": {}, "synthetic_data": true,
                "started_at": "", "updated_at": "", "config": {}
            });
            std::fs::write(dir.manifest(), manifest.to_string()).expect("manifest");
            if let Some((top1, loss)) = outcome {
                let record = lossbench_experiment::EpochRecord {
                    experiment: "x".into(),
                    loss: label.into(),
                    seed,
                    epoch: 1,
                    iteration: 1,
                    lr: 0.1,
                    train_loss: 1.0,
                    train_top1: 0.5,
                    val_loss: Some(loss),
                    val_top1: Some(top1),
                    val_recall_at_1: None,
                    val_map_at_r: None,
                    test_loss: Some(9.0),
                    // The test set must play no part: make it disagree.
                    test_top1: Some(1.0 - top1),
                    test_top5: Some(1.0),
                    test_recall_at_1: None,
                    test_recall_at_2: None,
                    test_recall_at_4: None,
                    test_recall_at_8: None,
                    test_map_at_r: None,
                    target_angle_deg: Some(0.0),
                    nearest_other_angle_deg: Some(0.0),
                    epoch_seconds: 1.0,
                    images_per_second: 1.0,
                    backend: "flex".into(),
                };
                lossbench_experiment::write_metrics(&dir, &[record]).expect("metrics");
            }
        }
    }

    fn swept(metric: &str) -> Experiment {
        let text = format!(
            r#"name = "x"
seeds = [0]
[data]
set = "cifar100"
dir = "d"
validation = 10
[model]
arch = "resnet18"
[training]
epochs = 5
batch_size = 4
lr = 0.1
schedule = {{ kind = "constant" }}
[sweep]
epochs = 1
seeds = [0, 1]
metric = "{metric}"
[[losses]]
name = "softmax"
[[losses]]
name = "cosface"
params = {{ s = 16.0, m = 0.2 }}
sweep = {{ s = [16.0, 32.0], m = [0.2, 0.4] }}
"#
        );
        Experiment::parse(&text, Path::new("x.toml")).expect("valid")
    }

    #[test]
    fn the_best_point_on_the_validation_split_is_chosen() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = swept("val_top1");
        let root = sweep_root(dir.path(), &e);
        // Mean val_top1 per point: m0.2/s16 0.5, m0.2/s32 0.6 (one seed diverged),
        // m0.4/s16 0.7 (best), m0.4/s32 0.7 (equal, later in grid order).
        fake_results(
            &root,
            &[
                ("softmax", 0, Some((0.3, 2.0))),
                ("softmax", 1, Some((0.5, 2.0))),
                ("cosface@m=0.2,s=16", 0, Some((0.4, 1.0))),
                ("cosface@m=0.2,s=16", 1, Some((0.6, 1.0))),
                ("cosface@m=0.2,s=32", 0, Some((0.9, 0.1))),
                ("cosface@m=0.2,s=32", 1, None),
                ("cosface@m=0.4,s=16", 0, Some((0.7, 3.0))),
                ("cosface@m=0.4,s=16", 1, Some((0.7, 3.0))),
                ("cosface@m=0.4,s=32", 0, Some((0.6, 0.5))),
                ("cosface@m=0.4,s=32", 1, Some((0.8, 0.5))),
            ],
        );
        let record = choose(&e, dir.path()).expect("all finished");
        let cosface = &record.losses[1];
        let want: Point = [("m".to_string(), 0.4), ("s".to_string(), 16.0)].into();
        assert_eq!(cosface.chosen, want);
        assert_eq!(cosface.points[1].diverged, 1);
        assert_eq!(cosface.points[1].value, None);
        assert!((cosface.points[0].value.expect("mean") - 0.5).abs() < 1e-12);
        // The file's own parameters are a grid point: the report's "default" column.
        let default: Point = [("m".to_string(), 0.2), ("s".to_string(), 16.0)].into();
        assert_eq!(cosface.default, Some(default));
        assert_eq!(record.losses[0].chosen, Point::new());
        // Judged by the validation loss instead: lower is better.
        let by_loss = choose(&swept("val_loss"), dir.path()).expect("all finished");
        let want: Point = [("m".to_string(), 0.4), ("s".to_string(), 32.0)].into();
        assert_eq!(by_loss.losses[1].chosen, want);
        // Written and read back, and `run` accepts it for this experiment only.
        record.write(dir.path(), &e).expect("write");
        let tuned = choice_for_run(&e, dir.path()).expect("ok").expect("some");
        assert_eq!(tuned, record);
        let mut other = e.clone();
        other.losses[1].sweep.insert("s".into(), vec![16.0, 64.0]);
        let err = choice_for_run(&other, dir.path())
            .expect_err("stale")
            .to_string();
        assert!(err.contains("chosen for another sweep"), "{err}");
    }

    #[test]
    fn an_unfinished_sweep_cannot_choose_and_run_needs_a_choice() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = swept("val_top1");
        fake_results(
            &sweep_root(dir.path(), &e),
            &[("softmax", 0, Some((0.3, 2.0)))],
        );
        let err = choose(&e, dir.path()).expect_err("unfinished").to_string();
        assert!(
            err.starts_with("9 of the sweep runs have not finished"),
            "{err}"
        );
        let err = choice_for_run(&e, dir.path())
            .expect_err("no choice")
            .to_string();
        assert!(err.contains("run `lossbench sweep` on it first"), "{err}");
    }

    #[test]
    fn the_head_lr_scale_is_not_a_loss_parameter() {
        let e = entry(&[("s", &[16.0]), (HEAD_LR_SCALE, &[10.0])]);
        let p = &points(&e)[0];
        let params = params_at(&e, p);
        assert_eq!(params.len(), 1);
        assert_eq!(params["s"], serde_json::json!(16.0));
    }
}
