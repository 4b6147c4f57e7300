//! Read every run of an experiment from disk and summarise it per loss.

use std::path::Path;

use anyhow::{Context, Result, bail};
use lossbench_experiment::{
    EpochRecord, Experiment, RunDir, RunManifest, RunStatus, discover_runs, read_metrics,
};

use crate::stats::{Estimate, epochs_to_reach, paired_difference};

/// One run as found on disk.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: RunDir,
    pub manifest: RunManifest,
    pub records: Vec<EpochRecord>,
}

impl Run {
    /// Completed runs enter the headline statistics; others are listed but not averaged.
    #[must_use]
    pub fn completed(&self) -> bool {
        self.manifest.status == RunStatus::Completed
            && self.records.len() as u32 >= self.manifest.epochs
    }

    fn final_top1(&self) -> Option<f64> {
        self.records.last().map(|r| r.test_top1)
    }

    fn best_top1(&self) -> Option<f64> {
        self.records.iter().map(|r| r.test_top1).reduce(f64::max)
    }
}

/// Read every run under `experiment_dir`.
pub fn load_runs(experiment_dir: &Path) -> Result<Vec<Run>> {
    if !experiment_dir.is_dir() {
        bail!(
            "{} does not exist: run the experiment first (`lossbench run EXPERIMENT.toml`)",
            experiment_dir.display()
        );
    }
    let mut runs = Vec::new();
    for dir in discover_runs(experiment_dir)? {
        let manifest = RunManifest::read(&dir.manifest())?;
        let records = read_metrics(&dir).with_context(|| format!("run {}", dir.path.display()))?;
        runs.push(Run {
            dir,
            manifest,
            records,
        });
    }
    if runs.is_empty() {
        bail!(
            "{} holds no runs (no <loss>/seed-<n>/run.json): run the experiment first",
            experiment_dir.display()
        );
    }
    Ok(runs)
}

/// The headline row of one loss.
#[derive(Debug, Clone)]
pub struct LossSummary {
    pub loss: String,
    pub claimed_top1: Option<f64>,
    pub claimed_epochs: Option<u32>,
    pub epochs: u32,
    /// Runs of this loss on disk, by status.
    pub total_runs: usize,
    pub completed: usize,
    pub diverged: usize,
    pub failed: usize,
    pub incomplete: usize,
    pub final_top1: Option<Estimate>,
    pub best_top1: Option<Estimate>,
    /// Final top-1 minus softmax's, paired by seed.
    pub delta_vs_softmax: Option<Estimate>,
    pub epochs_to_95: Option<Estimate>,
    pub epochs_to_99: Option<Estimate>,
    pub seconds_per_epoch: Option<Estimate>,
    pub verdict: String,
}

fn verdict(
    claim: Option<f64>,
    measured: Option<&Estimate>,
    completed: usize,
    total: usize,
) -> String {
    let (Some(claim), Some(m)) = (claim, measured) else {
        return match (claim, completed) {
            (None, _) => "no claim".into(),
            (Some(_), 0) if total > 0 => "no completed run to compare".into(),
            _ => "not run".into(),
        };
    };
    if !m.has_ci() {
        let rel = if claim > m.mean {
            "above"
        } else {
            "at or below"
        };
        return format!("claim {rel} the single measured run (one seed: no CI)");
    }
    if claim > m.ci.1 {
        "claim above the measured 95 % CI".into()
    } else if claim < m.ci.0 {
        "claim below the measured 95 % CI".into()
    } else {
        "claim inside the measured 95 % CI".into()
    }
}

/// Summaries in the experiment's loss order (losses found only on disk come last).
#[must_use]
pub fn summarise(experiment: &Experiment, runs: &[Run]) -> Vec<LossSummary> {
    let mut names: Vec<String> = experiment.losses.iter().map(|l| l.name.clone()).collect();
    for r in runs {
        if !names.contains(&r.dir.loss) {
            names.push(r.dir.loss.clone());
        }
    }
    let finals = |loss: &str| -> Vec<(u64, f64)> {
        runs.iter()
            .filter(|r| r.dir.loss == loss && r.completed())
            .filter_map(|r| r.final_top1().map(|v| (r.dir.seed, v)))
            .collect()
    };
    let softmax = finals("softmax");
    names
        .iter()
        .map(|loss| {
            let mine: Vec<&Run> = runs.iter().filter(|r| &r.dir.loss == loss).collect();
            let done: Vec<&Run> = mine.iter().copied().filter(|r| r.completed()).collect();
            let count = |s: RunStatus| mine.iter().filter(|r| r.manifest.status == s).count();
            let values = |f: &dyn Fn(&Run) -> Option<f64>| -> Vec<f64> {
                done.iter().filter_map(|r| f(r)).collect()
            };
            let final_top1 = Estimate::of(&values(&|r| r.final_top1()));
            let claim = experiment.claimed.get(loss);
            let curve = |r: &Run| r.records.iter().map(|x| x.test_top1).collect::<Vec<_>>();
            LossSummary {
                loss: loss.clone(),
                claimed_top1: claim.map(|c| c.top1),
                claimed_epochs: claim.and_then(|c| c.epochs),
                epochs: experiment.epochs_for(loss),
                total_runs: mine.len(),
                completed: done.len(),
                diverged: count(RunStatus::Diverged),
                failed: count(RunStatus::Failed),
                incomplete: mine.len()
                    - done.len()
                    - count(RunStatus::Diverged)
                    - count(RunStatus::Failed),
                best_top1: Estimate::of(&values(&|r| r.best_top1())),
                delta_vs_softmax: if loss == "softmax" {
                    None
                } else {
                    paired_difference(&finals(loss), &softmax)
                },
                epochs_to_95: Estimate::of(&values(&|r| {
                    epochs_to_reach(&curve(r), 0.95).map(|e| e as f64)
                })),
                epochs_to_99: Estimate::of(&values(&|r| {
                    epochs_to_reach(&curve(r), 0.99).map(|e| e as f64)
                })),
                seconds_per_epoch: Estimate::of(&values(&|r| {
                    (!r.records.is_empty()).then(|| {
                        r.records.iter().map(|x| x.epoch_seconds).sum::<f64>()
                            / r.records.len() as f64
                    })
                })),
                verdict: verdict(
                    claim.map(|c| c.top1),
                    final_top1.as_ref(),
                    done.len(),
                    mine.len(),
                ),
                final_top1,
            }
        })
        .collect()
}

/// Mean, min and max of a per-epoch metric across the given runs, by 1-based epoch.
#[must_use]
pub fn per_epoch(runs: &[&Run], metric: fn(&EpochRecord) -> f64) -> Vec<(f64, f64, f64, f64)> {
    let epochs = runs.iter().map(|r| r.records.len()).max().unwrap_or(0);
    (1..=epochs)
        .filter_map(|e| {
            let vals: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.records.get(e - 1))
                .map(metric)
                .filter(|v| v.is_finite())
                .collect();
            if vals.is_empty() {
                return None;
            }
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Some((e as f64, mean, lo, hi))
        })
        .collect()
}
