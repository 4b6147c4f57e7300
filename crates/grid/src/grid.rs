//! The grid of an experiment: every (loss, seed) run in one fixed order — the losses as the
//! file lists them, each with every seed — so an index names the same run on every node of
//! a cluster, whatever is already on disk. `lossbench plan` prints it; `run --index` and
//! `run --shard` pick from it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use lossbench_experiment::{
    Experiment, HEAD_LR_SCALE, RunDir, RunManifest, RunStatus, experiment_dir, read_metrics,
    sha256_hex, shared_settings,
};
use lossbench_head::ResolvedParams;
use lossbench_registry::resolve_params;
use serde::Serialize;

use crate::sweep::{
    Point, SWEEP_FILE, SweepRecord, choice_for_run, params_at, point_label, points, sweep_root,
};

/// One run of the grid.
#[derive(Debug, Clone)]
pub struct GridRun {
    /// Position in the full grid (0-based), independent of filters and of the disk.
    pub index: usize,
    /// The registered loss.
    pub loss: String,
    /// The run's folder under the grid's root: the loss, or `loss@point` in a sweep.
    pub dir: String,
    pub params: ResolvedParams,
    /// A swept head learning-rate factor, replacing `training.head_lr_scale`.
    pub head_lr_scale: Option<f64>,
    pub seed: u64,
    pub epochs: u32,
}

impl GridRun {
    /// The experiment this run trains: `experiment` with the run's own head learning rate.
    #[must_use]
    pub fn experiment<'a>(&self, experiment: &'a Experiment) -> Cow<'a, Experiment> {
        match self.head_lr_scale {
            Some(scale) if scale != experiment.training.head_lr_scale => {
                let mut e = experiment.clone();
                e.training.head_lr_scale = scale;
                Cow::Owned(e)
            }
            _ => Cow::Borrowed(experiment),
        }
    }
}

/// The experiment's runs, or its sweep's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GridKind {
    #[default]
    Main,
    /// Every point of every loss's sweep × the sweep seeds (`lossbench sweep`).
    Sweep,
}

/// The grid of `kind` and the folder its runs live in. The main grid of an experiment that
/// sweeps trains each swept loss at the point `sweep.json` chose.
pub fn experiment_grid(
    experiment: &Experiment,
    path: &Path,
    epochs: Option<u32>,
    results: &Path,
    kind: GridKind,
) -> Result<(Vec<GridRun>, PathBuf)> {
    Ok(match kind {
        GridKind::Main => {
            let tuned = choice_for_run(experiment, results)?;
            (
                grid_at(experiment, path, epochs, tuned.as_ref())?,
                experiment_dir(results, &experiment.name),
            )
        }
        GridKind::Sweep => (
            sweep_grid(experiment, path, epochs)?,
            sweep_root(results, experiment),
        ),
    })
}

fn check_epochs(epochs: Option<u32>) -> Result<()> {
    if epochs == Some(0) {
        bail!("--epochs 0 is invalid: must be at least 1");
    }
    Ok(())
}

/// The main grid, swept losses at `tuned`'s chosen points ([`choice_for_run`] gives a record
/// whenever a loss is swept).
fn grid_at(
    experiment: &Experiment,
    path: &Path,
    epochs: Option<u32>,
    tuned: Option<&SweepRecord>,
) -> Result<Vec<GridRun>> {
    check_epochs(epochs)?;
    let mut runs = Vec::new();
    for entry in &experiment.losses {
        let point = if entry.sweep.is_empty() {
            Point::new()
        } else {
            // Only a sweep.json edited by hand (its fingerprint still matching) lacks a loss.
            tuned
                .and_then(|t| t.chosen(&entry.name))
                .cloned()
                .with_context(|| {
                    format!(
                        "{}: {SWEEP_FILE} has no chosen point for `{}`: run `lossbench sweep --choose` again",
                        path.display(),
                        entry.name
                    )
                })?
        };
        let params = resolve_params(&entry.name, &params_at(entry, &point))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for &seed in &experiment.seeds {
            runs.push(GridRun {
                index: runs.len(),
                loss: entry.name.clone(),
                dir: entry.name.clone(),
                params: params.clone(),
                head_lr_scale: point.get(HEAD_LR_SCALE).copied(),
                seed,
                epochs: epochs.unwrap_or_else(|| experiment.epochs_for(&entry.name)),
            });
        }
    }
    Ok(runs)
}

/// The sweep grid: losses as listed, each point of its sweep (see [`points`]), each sweep
/// seed; `sweep.epochs` epochs (or `epochs`).
pub fn sweep_grid(
    experiment: &Experiment,
    path: &Path,
    epochs: Option<u32>,
) -> Result<Vec<GridRun>> {
    check_epochs(epochs)?;
    let Some(settings) = &experiment.sweep else {
        bail!(
            "{} has no [sweep] table (and no loss with `sweep` values)",
            path.display()
        );
    };
    let mut runs = Vec::new();
    for entry in &experiment.losses {
        for point in points(entry) {
            let params = resolve_params(&entry.name, &params_at(entry, &point)).map_err(|e| {
                anyhow::anyhow!("{}: sweep of `{}`: {e}", path.display(), entry.name)
            })?;
            for &seed in &settings.seeds {
                runs.push(GridRun {
                    index: runs.len(),
                    loss: entry.name.clone(),
                    dir: point_label(&entry.name, &point),
                    params: params.clone(),
                    head_lr_scale: point.get(HEAD_LR_SCALE).copied(),
                    seed,
                    epochs: epochs.unwrap_or(settings.epochs),
                });
            }
        }
    }
    Ok(runs)
}

/// A fingerprint of the grid: the shared settings and every run's loss, parameters, seed and
/// epochs, in order. An exported cluster job carries it, so a job started after the
/// experiment file changed refuses instead of running another grid's run under an index.
#[must_use]
pub fn grid_hash(experiment: &Experiment, runs: &[GridRun]) -> String {
    let mut text: String = shared_settings(experiment)
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect();
    for r in runs {
        let params: BTreeMap<&str, String> = r
            .params
            .iter()
            .map(|(k, v)| (k, format!("{v:?}")))
            .collect();
        text.push_str(&format!(
            "{} {} {:?} {} {}\n",
            r.index, r.loss, params, r.seed, r.epochs
        ));
        // Only where set, so grids from before these settings keep their fingerprint.
        if r.dir != r.loss || r.head_lr_scale.is_some() {
            text.push_str(&format!("  {} {:?}\n", r.dir, r.head_lr_scale));
        }
    }
    sha256_hex(&[text.as_bytes()])[..16].to_string()
}

/// Which runs of the grid one `lossbench run` executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    /// Every run (after `--loss` / `--seed` filters).
    #[default]
    All,
    /// Exactly this index.
    Index(usize),
    /// The runs whose index ≡ `k` (mod `n`), one after another.
    Shard { k: usize, n: usize },
}

impl Selection {
    /// `--index N`, or `--index auto`: `SLURM_ARRAY_TASK_ID`, else `JOB_COMPLETION_INDEX`
    /// (Kubernetes Indexed Jobs), read through `env`.
    pub fn index(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let (value, source) = if text == "auto" {
            match ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"]
                .into_iter()
                .find_map(|name| env(name).map(|v| (v, name)))
            {
                Some(found) => found,
                None => bail!(
                    "--index auto: neither SLURM_ARRAY_TASK_ID (a Slurm array task) nor JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) is set"
                ),
            }
        } else {
            (text.to_string(), "--index")
        };
        match value.trim().parse::<usize>() {
            Ok(i) => Ok(Self::Index(i)),
            Err(_) => bail!("{source} = {value:?} is not a run index (a whole number from 0)"),
        }
    }

    /// `--shard K/N`.
    pub fn shard(text: &str) -> Result<Self> {
        let parsed = text
            .split_once('/')
            .and_then(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((k, n)) if n > 0 && k < n => Ok(Self::Shard { k, n }),
            _ => bail!("--shard {text:?} is invalid: write K/N with 0 <= K < N, e.g. 0/4"),
        }
    }

    /// The chosen runs of `runs` (the full grid, possibly filtered); an index outside the
    /// grid is an error.
    pub fn choose(self, runs: Vec<GridRun>, grid_len: usize) -> Result<Vec<GridRun>> {
        Ok(match self {
            Self::All => runs,
            Self::Index(i) => {
                if i >= grid_len {
                    bail!(
                        "run index {i} is outside the grid of {grid_len} runs (0–{}); see `lossbench plan`",
                        grid_len.saturating_sub(1)
                    );
                }
                runs.into_iter().filter(|r| r.index == i).collect()
            }
            Self::Shard { k, n } => runs.into_iter().filter(|r| r.index % n == k).collect(),
        })
    }
}

/// Where a run of the grid stands on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanStatus {
    /// No run.json yet.
    Pending,
    Running,
    Completed,
    Diverged,
    Failed,
    /// Stopped by a signal (pre-emption); `--resume` continues it.
    Interrupted,
    /// run.json is there but cannot be read.
    Unreadable,
}

impl fmt::Display for PlanStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

/// One line of `lossbench plan`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub index: usize,
    pub loss: String,
    pub seed: u64,
    pub epochs: u32,
    pub status: PlanStatus,
    pub epochs_done: usize,
    pub folder: String,
}

/// The grid with each run's status from the results under `root` (`results/<experiment>`).
#[must_use]
pub fn plan_rows(runs: &[GridRun], root: &Path) -> Vec<PlanRow> {
    runs.iter()
        .map(|r| {
            let dir = RunDir::new(root, &r.dir, r.seed);
            let status = if !dir.manifest().exists() {
                PlanStatus::Pending
            } else {
                match RunManifest::read(&dir.manifest()).map(|m| m.status) {
                    Err(_) => PlanStatus::Unreadable,
                    Ok(RunStatus::Running) => PlanStatus::Running,
                    Ok(RunStatus::Completed) => PlanStatus::Completed,
                    Ok(RunStatus::Diverged) => PlanStatus::Diverged,
                    Ok(RunStatus::Failed) => PlanStatus::Failed,
                    Ok(RunStatus::Interrupted) => PlanStatus::Interrupted,
                }
            };
            PlanRow {
                index: r.index,
                loss: r.dir.clone(),
                seed: r.seed,
                epochs: r.epochs,
                status,
                epochs_done: read_metrics(&dir).map_or(0, |m| m.len()),
                folder: dir.path.display().to_string(),
            }
        })
        .collect()
}

/// The plan as an aligned text table.
#[must_use]
pub fn plan_table(rows: &[PlanRow]) -> String {
    let width = rows.iter().map(|r| r.loss.len()).max().unwrap_or(4).max(4);
    let mut out = format!(
        "{:>5}  {:<width$}  {:>6}  {:>6}  {:<10}  {:>5}  folder\n",
        "index", "loss", "seed", "epochs", "status", "done"
    );
    for r in rows {
        out.push_str(&format!(
            "{:>5}  {:<width$}  {:>6}  {:>6}  {:<10}  {:>5}  {}\n",
            r.index,
            r.loss,
            r.seed,
            r.epochs,
            r.status.to_string(),
            format!("{}/{}", r.epochs_done, r.epochs),
            r.folder
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn index_auto_reads_slurm_then_kubernetes() {
        let both = env(&[("SLURM_ARRAY_TASK_ID", "3"), ("JOB_COMPLETION_INDEX", "5")]);
        assert_eq!(
            Selection::index("auto", both).expect("slurm"),
            Selection::Index(3)
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "5")]);
        assert_eq!(
            Selection::index("auto", k8s).expect("k8s"),
            Selection::Index(5)
        );
        let err = Selection::index("auto", env(&[]))
            .expect_err("none")
            .to_string();
        assert!(err.contains("neither SLURM_ARRAY_TASK_ID"), "{err}");
        let err = Selection::index("auto", env(&[("SLURM_ARRAY_TASK_ID", "x")]))
            .expect_err("bad")
            .to_string();
        assert!(
            err.contains("SLURM_ARRAY_TASK_ID = \"x\" is not a run index"),
            "{err}"
        );
        assert_eq!(
            Selection::index("7", env(&[])).expect("n"),
            Selection::Index(7)
        );
        assert!(Selection::index("-1", env(&[])).is_err());
    }

    #[test]
    fn a_sweep_record_without_a_swept_loss_is_an_error() {
        let text = r#"name = "x"
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
schedule = { kind = "constant" }
[sweep]
epochs = 1
seeds = [0]
metric = "val_top1"
[[losses]]
name = "softmax"
[[losses]]
name = "cosface"
sweep = { s = [16.0, 32.0] }
"#;
        let e = Experiment::parse(text, Path::new("x.toml")).expect("valid");
        let empty = SweepRecord {
            metric: "val_top1".into(),
            epochs: 1,
            seeds: vec![0],
            fingerprint: String::new(),
            losses: Vec::new(),
        };
        let err = grid_at(&e, Path::new("x.toml"), None, Some(&empty))
            .expect_err("cosface has no point")
            .to_string();
        assert!(
            err.contains("sweep.json has no chosen point for `cosface`"),
            "{err}"
        );
    }

    #[test]
    fn shards_partition_the_grid() {
        assert_eq!(
            Selection::shard("1/3").expect("ok"),
            Selection::Shard { k: 1, n: 3 }
        );
        for bad in ["3/3", "1", "a/b", "0/0", "-1/2"] {
            assert!(Selection::shard(bad).is_err(), "{bad}");
        }
        let runs = |n: usize| -> Vec<GridRun> {
            (0..n)
                .map(|i| GridRun {
                    index: i,
                    loss: "softmax".into(),
                    dir: "softmax".into(),
                    head_lr_scale: None,
                    params: ResolvedParams::resolve("softmax", &[], &serde_json::Map::new())
                        .expect("no parameters"),
                    seed: i as u64,
                    epochs: 1,
                })
                .collect()
        };
        let mut seen: Vec<usize> = (0..3)
            .flat_map(|k| {
                Selection::Shard { k, n: 3 }
                    .choose(runs(8), 8)
                    .expect("shard")
                    .into_iter()
                    .map(|r| r.index)
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..8).collect::<Vec<_>>(), "every run exactly once");
        let one = Selection::Index(5).choose(runs(8), 8).expect("index");
        assert_eq!(one.iter().map(|r| r.index).collect::<Vec<_>>(), [5]);
        let err = Selection::Index(8)
            .choose(runs(8), 8)
            .expect_err("out")
            .to_string();
        assert!(err.contains("outside the grid of 8 runs (0–7)"), "{err}");
    }
}
