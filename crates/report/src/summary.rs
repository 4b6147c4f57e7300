//! Read every run of an experiment from disk and summarise it per loss and per pair of losses.

use std::path::Path;

use anyhow::{Result, bail};
use lossbench_experiment::{
    EpochRecord, Experiment, Headline, RunDir, RunManifest, RunStatus, SweepRecord, discover_runs,
    read_metrics_resilient,
};

/// The test value of the headline metric in one epoch's record.
#[must_use]
pub fn headline_of(x: &EpochRecord, headline: Headline) -> Option<f64> {
    match headline {
        Headline::Top1 => x.test_top1,
        Headline::MapAtR => x.test_map_at_r,
        Headline::RecallAt1 => x.test_recall_at_1,
    }
}

/// What model selection reads in a record: validation top-1 where the validation classes are
/// the head's (closed set), else validation MAP@R (the open protocol's unseen classes).
fn selection_value(x: &EpochRecord) -> Option<f64> {
    x.val_top1.or(x.val_map_at_r).filter(|v| v.is_finite())
}

use crate::stats::{Estimate, epochs_to_reach, holm, paired_t_test, paired_values};

/// One run as found on disk.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: RunDir,
    pub manifest: RunManifest,
    pub records: Vec<EpochRecord>,
    /// Set when a metrics file was damaged and the other one was used (or they differ).
    pub note: Option<String>,
}

impl Run {
    /// Completed runs enter the headline statistics; others are listed but not averaged.
    #[must_use]
    pub fn completed(&self) -> bool {
        self.manifest.status == RunStatus::Completed
            && self.records.len() as u32 >= self.manifest.epochs
    }

    fn final_record(&self) -> Option<&EpochRecord> {
        self.records.last()
    }

    /// The epoch with the best validation top-1 (open protocol: validation MAP@R), the
    /// earliest on ties; `None` without a validation split.
    #[must_use]
    pub fn selected_record(&self) -> Option<&EpochRecord> {
        self.records
            .iter()
            .filter(|r| selection_value(r).is_some())
            .fold(None, |best: Option<&EpochRecord>, r| match best {
                Some(b) if selection_value(b) >= selection_value(r) => Some(b),
                _ => Some(r),
            })
    }

    /// Max over epochs of the test headline: selected on the test set, so optimistic.
    fn optimistic_headline(&self, headline: Headline) -> Option<f64> {
        self.records
            .iter()
            .filter_map(|r| headline_of(r, headline))
            .reduce(f64::max)
    }
}

/// A run folder whose files could not be read, and why.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub dir: RunDir,
    pub reason: String,
}

/// Everything found under an experiment's results folder.
#[derive(Debug, Clone)]
pub struct Results {
    pub runs: Vec<Run>,
    pub unreadable: Vec<Unreadable>,
    /// `sweep.json`: the per-loss tuning the runs were trained at, if the experiment swept.
    pub sweep: Option<SweepRecord>,
}

fn load_run(dir: RunDir) -> Result<Run, Unreadable> {
    let manifest = RunManifest::read(&dir.manifest()).map_err(|e| Unreadable {
        dir: dir.clone(),
        reason: format!("{e:#}"),
    })?;
    match read_metrics_resilient(&dir) {
        Ok(read) => Ok(Run {
            dir,
            manifest,
            records: read.records,
            note: read.note,
        }),
        Err(e) => Err(Unreadable {
            dir,
            reason: format!("{e:#}"),
        }),
    }
}

/// Read every run under `experiment_dir`. A run whose files cannot be read is listed in
/// `unreadable` with the reason, never dropped and never fatal.
pub fn load_runs(experiment_dir: &Path) -> Result<Results> {
    if !experiment_dir.is_dir() {
        bail!(
            "{} does not exist: run the experiment first (`lossbench run EXPERIMENT.toml`)",
            experiment_dir.display()
        );
    }
    let mut results = Results {
        runs: Vec::new(),
        unreadable: Vec::new(),
        sweep: SweepRecord::read_in(experiment_dir)?,
    };
    for dir in discover_runs(experiment_dir)? {
        match load_run(dir) {
            Ok(run) => results.runs.push(run),
            Err(u) => results.unreadable.push(u),
        }
    }
    if results.runs.is_empty() && results.unreadable.is_empty() && results.sweep.is_none() {
        bail!(
            "{} holds no runs (no <loss>/seed-<n>/run.json): run the experiment first",
            experiment_dir.display()
        );
    }
    Ok(results)
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
    /// The headline metric (`Experiment::headline`: test top-1, MAP@R or Recall@1) after
    /// the last epoch.
    pub final_headline: Option<Estimate>,
    /// The headline at the validation-selected epoch (only with a validation split).
    pub selected_headline: Option<Estimate>,
    /// Max over epochs of the headline: selected on the test set, so optimistic.
    pub optimistic_headline: Option<Estimate>,
    /// Final headline minus softmax's, paired by seed.
    pub delta_vs_softmax: Option<Estimate>,
    /// Whether this loss ran for another number of epochs than softmax: its Δ mixes the loss
    /// with the training length.
    pub confounded_vs_softmax: bool,
    /// Retrieval on the test set with the final model's embeddings.
    pub final_map_at_r: Option<Estimate>,
    pub final_recall_at_1: Option<Estimate>,
    /// The same at the validation-selected epoch.
    pub selected_map_at_r: Option<Estimate>,
    pub epochs_to_95: Option<Estimate>,
    pub epochs_to_99: Option<Estimate>,
    pub seconds_per_epoch: Option<Estimate>,
    pub verdict: String,
}

impl LossSummary {
    /// "k/n diverged" when any run of this loss diverged.
    #[must_use]
    pub fn diverged_label(&self) -> Option<String> {
        (self.diverged > 0).then(|| format!("{}/{} diverged", self.diverged, self.total_runs))
    }
}

/// Where a published number lies against the measured runs: the 95 % prediction interval
/// of one more run (a claim is one run), not the CI of the mean. A loss with a diverged
/// seed is never "inside": its survivors alone do not describe it.
fn verdict(
    claim: Option<f64>,
    measured: Option<&Estimate>,
    completed: usize,
    total: usize,
    diverged: usize,
) -> String {
    let (Some(claim), Some(m)) = (claim, measured) else {
        return match (claim, completed) {
            (None, _) => "no claim".into(),
            (Some(_), 0) if total > 0 => "no completed run to compare".into(),
            _ => "not run".into(),
        };
    };
    let diverged_note = if diverged > 0 {
        format!("; {diverged}/{total} diverged")
    } else {
        String::new()
    };
    if !m.enough_for_interval() {
        let rel = if claim > m.mean {
            "above"
        } else {
            "at or below"
        };
        return format!(
            "n too small for a verdict (n = {}); claim {rel} the measured mean{diverged_note}",
            m.n
        );
    }
    if claim > m.pi.1 {
        format!("claim above the measured 95 % prediction interval{diverged_note}")
    } else if claim < m.pi.0 {
        format!("claim below the measured 95 % prediction interval{diverged_note}")
    } else if diverged > 0 {
        format!(
            "not confirmed: {diverged}/{total} diverged (claim inside the survivors' 95 % prediction interval)"
        )
    } else {
        "claim inside the measured 95 % prediction interval".into()
    }
}

/// Loss names in the experiment's order, then those found only on disk.
fn loss_names(experiment: &Experiment, runs: &[Run]) -> Vec<String> {
    let mut names: Vec<String> = experiment.losses.iter().map(|l| l.name.clone()).collect();
    for r in runs {
        if !names.contains(&r.dir.loss) {
            names.push(r.dir.loss.clone());
        }
    }
    names
}

/// `(seed, final headline)` of the completed runs of `loss`.
fn finals(runs: &[Run], loss: &str, headline: Headline) -> Vec<(u64, f64)> {
    runs.iter()
        .filter(|r| r.dir.loss == loss && r.completed())
        .filter_map(|r| {
            r.final_record()
                .and_then(|x| headline_of(x, headline))
                .map(|v| (r.dir.seed, v))
        })
        .collect()
}

/// Summaries in the experiment's loss order (losses found only on disk come last).
#[must_use]
pub fn summarise(experiment: &Experiment, runs: &[Run]) -> Vec<LossSummary> {
    let headline = experiment.headline();
    let softmax = finals(runs, "softmax", headline);
    let softmax_epochs = experiment.epochs_for("softmax");
    loss_names(experiment, runs)
        .iter()
        .map(|loss| {
            let mine: Vec<&Run> = runs.iter().filter(|r| &r.dir.loss == loss).collect();
            let done: Vec<&Run> = mine.iter().copied().filter(|r| r.completed()).collect();
            let count = |s: RunStatus| mine.iter().filter(|r| r.manifest.status == s).count();
            let values = |f: &dyn Fn(&Run) -> Option<f64>| -> Vec<f64> {
                done.iter().filter_map(|r| f(r)).collect()
            };
            let final_headline = Estimate::of(&values(&|r| {
                r.final_record().and_then(|x| headline_of(x, headline))
            }));
            let claim = experiment.claimed.get(loss);
            let curve = |r: &Run| {
                r.records
                    .iter()
                    .map(|x| headline_of(x, headline).unwrap_or(f64::NAN))
                    .collect::<Vec<_>>()
            };
            let diverged = count(RunStatus::Diverged);
            let epochs = experiment.epochs_for(loss);
            LossSummary {
                loss: loss.clone(),
                claimed_top1: claim.map(|c| c.top1),
                claimed_epochs: claim.and_then(|c| c.epochs),
                epochs,
                total_runs: mine.len(),
                completed: done.len(),
                diverged,
                failed: count(RunStatus::Failed),
                incomplete: mine.len() - done.len() - diverged - count(RunStatus::Failed),
                selected_headline: Estimate::of(&values(&|r| {
                    r.selected_record().and_then(|x| headline_of(x, headline))
                })),
                optimistic_headline: Estimate::of(&values(&|r| r.optimistic_headline(headline))),
                delta_vs_softmax: if loss == "softmax" {
                    None
                } else {
                    Estimate::of(&paired_values(&finals(runs, loss, headline), &softmax))
                },
                confounded_vs_softmax: loss != "softmax" && epochs != softmax_epochs,
                final_map_at_r: Estimate::of(&values(&|r| {
                    r.final_record().and_then(|x| x.test_map_at_r)
                })),
                final_recall_at_1: Estimate::of(&values(&|r| {
                    r.final_record().and_then(|x| x.test_recall_at_1)
                })),
                selected_map_at_r: Estimate::of(&values(&|r| {
                    r.selected_record().and_then(|x| x.test_map_at_r)
                })),
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
                // Claims are top-1: compared only when top-1 is the headline.
                verdict: if headline == Headline::Top1 || claim.is_none() {
                    verdict(
                        claim.map(|c| c.top1),
                        final_headline.as_ref(),
                        done.len(),
                        mine.len(),
                        diverged,
                    )
                } else {
                    format!(
                        "claim is top-1, the headline is {}: not compared",
                        headline.label()
                    )
                },
                final_headline,
            }
        })
        .collect()
}

/// The paired comparison of two losses: the final headline of `a` minus `b` over the seeds
/// both completed.
#[derive(Debug, Clone)]
pub struct PairComparison {
    pub a: String,
    pub b: String,
    pub delta: Option<Estimate>,
    /// Paired t-test, two-sided; `None` for fewer than two common seeds.
    pub p: Option<f64>,
    /// Holm-adjusted over every pair with a p-value.
    pub p_holm: Option<f64>,
    /// The two losses ran for different numbers of epochs.
    pub confounded: bool,
}

/// Every pair of losses (in summary order, `a` before `b`), with Holm's correction across
/// the whole family, so "ArcFace > CosFace" is tested as well as "ArcFace > softmax".
#[must_use]
pub fn pairwise(experiment: &Experiment, runs: &[Run]) -> Vec<PairComparison> {
    let names = loss_names(experiment, runs);
    let headline = experiment.headline();
    let mut pairs = Vec::new();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            let diffs = paired_values(&finals(runs, a, headline), &finals(runs, b, headline));
            pairs.push(PairComparison {
                a: a.clone(),
                b: b.clone(),
                delta: Estimate::of(&diffs),
                p: paired_t_test(&diffs),
                p_holm: None,
                confounded: experiment.epochs_for(a) != experiment.epochs_for(b),
            });
        }
    }
    let raw: Vec<f64> = pairs.iter().map(|p| p.p.unwrap_or(f64::NAN)).collect();
    for (pair, adjusted) in pairs.iter_mut().zip(holm(&raw)) {
        pair.p_holm = (!adjusted.is_nan()).then_some(adjusted);
    }
    pairs
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_use_the_prediction_interval_and_count_divergence() {
        // 0.70, 0.72, 0.74: PI 0.72 ± 0.0994, CI 0.72 ± 0.0497.
        let m = Estimate::of(&[0.70, 0.72, 0.74]).expect("values");
        let v =
            |claim: f64, diverged: usize| verdict(Some(claim), Some(&m), 3, 3 + diverged, diverged);
        // Outside the CI of the mean but inside the prediction interval of one run.
        assert_eq!(
            v(0.78, 0),
            "claim inside the measured 95 % prediction interval"
        );
        assert_eq!(
            v(0.83, 0),
            "claim above the measured 95 % prediction interval"
        );
        assert_eq!(
            v(0.61, 0),
            "claim below the measured 95 % prediction interval"
        );
        // A diverged seed: never "inside"; outside stays outside, with the count.
        assert_eq!(
            v(0.72, 1),
            "not confirmed: 1/4 diverged (claim inside the survivors' 95 % prediction interval)"
        );
        assert_eq!(
            v(0.83, 1),
            "claim above the measured 95 % prediction interval; 1/4 diverged"
        );
        let two = Estimate::of(&[0.70, 0.74]).expect("two");
        assert_eq!(
            verdict(Some(0.9), Some(&two), 2, 2, 0),
            "n too small for a verdict (n = 2); claim above the measured mean"
        );
        assert_eq!(verdict(None, Some(&m), 3, 3, 0), "no claim");
        assert_eq!(
            verdict(Some(0.9), None, 0, 2, 2),
            "no completed run to compare"
        );
    }
}
