//! The report: statistics, charts and an HTML page comparing the losses of one experiment,
//! rebuilt from the results on disk alone (as criterion rebuilds its report from saved
//! estimates), so it can be rerun at any time — also while runs are still going.

pub mod charts;
mod html;
pub mod stats;
pub mod summary;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lossbench_experiment::{
    EXPERIMENT_COPY, EpochRecord, Experiment, RunStatus, atomic_write_with, experiment_dir,
};
use polars::prelude::*;

use crate::charts::{Chart, Line, colour, render};
use crate::summary::{LossSummary, Run, load_runs, per_epoch, summarise};
use plotters::prelude::SeriesLabelPosition;

/// What a report build produced.
#[derive(Debug)]
pub struct Built {
    pub index: PathBuf,
    pub files: Vec<PathBuf>,
    pub runs: usize,
    /// `loss seed-n (status)` of every run that is not completed.
    pub incomplete: Vec<String>,
}

impl fmt::Display for Built {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "report: {} ({} runs, {} files)",
            self.index.display(),
            self.runs,
            self.files.len()
        )?;
        if !self.incomplete.is_empty() {
            writeln!(f, "not completed: {}", self.incomplete.join(", "))?;
        }
        Ok(())
    }
}

/// The experiment and its results folder from an experiment file or a results folder.
pub fn resolve(source: &Path, results_root: &Path) -> Result<(Experiment, PathBuf)> {
    if source.is_dir() {
        let copy = source.join(EXPERIMENT_COPY);
        anyhow::ensure!(
            copy.exists(),
            "{} is not a results folder of an experiment (no {EXPERIMENT_COPY})",
            source.display()
        );
        Ok((Experiment::load(&copy)?, source.to_path_buf()))
    } else {
        anyhow::ensure!(
            source.exists(),
            "{} does not exist (give an experiment file or results/<experiment>)",
            source.display()
        );
        let experiment = Experiment::load(source)?;
        let dir = experiment_dir(results_root, &experiment.name);
        Ok((experiment, dir))
    }
}

/// Build the report of `source` into `out` (default `reports/<experiment>`).
pub fn build_from(source: &Path, results_root: &Path, out: Option<&Path>) -> Result<Built> {
    let (experiment, dir) = resolve(source, results_root)?;
    let runs = load_runs(&dir)?;
    let out = out.map_or_else(
        || Path::new("reports").join(&experiment.name),
        Path::to_path_buf,
    );
    build(&experiment, &runs, &out)
}

fn line(
    runs: &[Run],
    loss: &str,
    index: usize,
    metric: fn(&EpochRecord) -> f64,
    label: String,
    dashed: bool,
) -> Option<Line> {
    let chosen: Vec<&Run> = runs
        .iter()
        .filter(|r| {
            r.dir.loss == loss
                && matches!(r.manifest.status, RunStatus::Completed | RunStatus::Running)
        })
        .collect();
    let series = per_epoch(&chosen, metric);
    (!series.is_empty()).then(|| Line {
        label,
        colour: colour(loss, index),
        points: series.iter().map(|s| (s.0, s.1)).collect(),
        band: if chosen.len() > 1 {
            series.iter().map(|s| (s.0, s.2, s.3)).collect()
        } else {
            Vec::new()
        },
        dashed,
    })
}

fn charts(losses: &[String], runs: &[Run]) -> Vec<(Chart, &'static str)> {
    let simple = |stem: &str,
                  title: &str,
                  y: &str,
                  metric: fn(&EpochRecord) -> f64,
                  range: Option<(f64, f64)>| Chart {
        file_stem: stem.into(),
        title: title.into(),
        y_label: y.into(),
        lines: losses
            .iter()
            .enumerate()
            .filter_map(|(i, l)| line(runs, l, i, metric, l.clone(), false))
            .collect(),
        y_range: range,
        legend: if stem == "test_top1" {
            SeriesLabelPosition::UpperLeft
        } else {
            SeriesLabelPosition::UpperRight
        },
    };
    let mut angles = simple(
        "angles",
        "Feature angles on the test set",
        "degrees",
        |r| r.target_angle_deg,
        None,
    );
    angles.lines = losses
        .iter()
        .enumerate()
        .flat_map(|(i, l)| {
            [
                line(
                    runs,
                    l,
                    i,
                    |r| r.target_angle_deg,
                    format!("{l}: to own class"),
                    false,
                ),
                line(
                    runs,
                    l,
                    i,
                    |r| r.nearest_other_angle_deg,
                    format!("{l}: to nearest other"),
                    true,
                ),
            ]
        })
        .flatten()
        .collect();
    vec![
        (
            simple(
                "test_top1",
                "Test top-1 accuracy",
                "top-1",
                |r| r.test_top1,
                Some((0.0, 1.0)),
            ),
            "Test top-1 per epoch: mean over seeds, band from the lowest to the highest seed.",
        ),
        (
            simple(
                "train_loss",
                "Training loss",
                "loss (with margin)",
                |r| r.train_loss,
                None,
            ),
            "Mean training loss per epoch. Losses are on different scales (s, margins): compare shapes, not heights.",
        ),
        (
            simple("lr", "Learning rate", "learning rate", |r| r.lr, None),
            "Learning rate at the end of each epoch (identical for every loss by design).",
        ),
        (
            angles,
            "Mean angle between a test feature and its class weight (solid) and the nearest other class weight (dashed): margins should open the gap.",
        ),
        (
            simple(
                "epoch_seconds",
                "Time per epoch",
                "seconds",
                |r| r.epoch_seconds,
                None,
            ),
            "Wall time of an epoch (training and evaluation).",
        ),
    ]
}

fn summary_frame(rows: &[LossSummary]) -> Result<DataFrame> {
    let opt = |f: &dyn Fn(&LossSummary) -> Option<f64>| -> Vec<Option<f64>> {
        rows.iter().map(f).collect()
    };
    let nan_none = |v: f64| v.is_finite().then_some(v);
    Ok(DataFrame::new(
        rows.len(),
        vec![
            Column::new(
                "loss".into(),
                rows.iter().map(|r| r.loss.as_str()).collect::<Vec<_>>(),
            ),
            Column::new("claimed_top1".into(), opt(&|r| r.claimed_top1)),
            Column::new(
                "claimed_epochs".into(),
                rows.iter().map(|r| r.claimed_epochs).collect::<Vec<_>>(),
            ),
            Column::new(
                "epochs".into(),
                rows.iter().map(|r| r.epochs).collect::<Vec<_>>(),
            ),
            Column::new(
                "runs".into(),
                rows.iter().map(|r| r.total_runs as u32).collect::<Vec<_>>(),
            ),
            Column::new(
                "completed".into(),
                rows.iter().map(|r| r.completed as u32).collect::<Vec<_>>(),
            ),
            Column::new(
                "diverged".into(),
                rows.iter().map(|r| r.diverged as u32).collect::<Vec<_>>(),
            ),
            Column::new(
                "failed".into(),
                rows.iter().map(|r| r.failed as u32).collect::<Vec<_>>(),
            ),
            Column::new(
                "final_top1_mean".into(),
                opt(&|r| r.final_top1.map(|e| e.mean)),
            ),
            Column::new(
                "final_top1_std".into(),
                opt(&|r| r.final_top1.and_then(|e| nan_none(e.std))),
            ),
            Column::new(
                "final_top1_ci_low".into(),
                opt(&|r| r.final_top1.and_then(|e| nan_none(e.ci.0))),
            ),
            Column::new(
                "final_top1_ci_high".into(),
                opt(&|r| r.final_top1.and_then(|e| nan_none(e.ci.1))),
            ),
            Column::new(
                "best_top1_mean".into(),
                opt(&|r| r.best_top1.map(|e| e.mean)),
            ),
            Column::new(
                "best_top1_std".into(),
                opt(&|r| r.best_top1.and_then(|e| nan_none(e.std))),
            ),
            Column::new(
                "delta_vs_softmax_mean".into(),
                opt(&|r| r.delta_vs_softmax.map(|e| e.mean)),
            ),
            Column::new(
                "delta_vs_softmax_ci_low".into(),
                opt(&|r| r.delta_vs_softmax.and_then(|e| nan_none(e.ci.0))),
            ),
            Column::new(
                "delta_vs_softmax_ci_high".into(),
                opt(&|r| r.delta_vs_softmax.and_then(|e| nan_none(e.ci.1))),
            ),
            Column::new(
                "epochs_to_95pct".into(),
                opt(&|r| r.epochs_to_95.map(|e| e.mean)),
            ),
            Column::new(
                "epochs_to_99pct".into(),
                opt(&|r| r.epochs_to_99.map(|e| e.mean)),
            ),
            Column::new(
                "seconds_per_epoch".into(),
                opt(&|r| r.seconds_per_epoch.map(|e| e.mean)),
            ),
            Column::new(
                "verdict".into(),
                rows.iter().map(|r| r.verdict.as_str()).collect::<Vec<_>>(),
            ),
        ],
    )?)
}

/// Build the report of `experiment` from `runs` into `out`.
pub fn build(experiment: &Experiment, runs: &[Run], out: &Path) -> Result<Built> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let rows = summarise(experiment, runs);
    let losses: Vec<String> = rows.iter().map(|r| r.loss.clone()).collect();
    let mut files = Vec::new();
    let charts = charts(&losses, runs);
    for (chart, _) in &charts {
        render(chart, out)?;
        files.push(out.join(format!("{}.png", chart.file_stem)));
        files.push(out.join(format!("{}.svg", chart.file_stem)));
    }
    let mut frame = summary_frame(&rows)?;
    let csv = out.join("summary.csv");
    atomic_write_with(&csv, |f| Ok(CsvWriter::new(f).finish(&mut frame)?))?;
    let parquet = out.join("summary.parquet");
    atomic_write_with(&parquet, |f| {
        ParquetWriter::new(f).finish(&mut frame)?;
        Ok(())
    })?;
    files.extend([csv, parquet]);
    let index = out.join("index.html");
    let page = html::page(
        experiment,
        &rows,
        runs,
        &charts
            .iter()
            .map(|(c, cap)| (c.file_stem.as_str(), c.title.as_str(), *cap))
            .collect::<Vec<_>>(),
    );
    lossbench_experiment::atomic_write(&index, page.as_bytes())?;
    files.push(index.clone());
    let incomplete = runs
        .iter()
        .filter(|r| !r.completed())
        .map(|r| {
            format!(
                "{} seed-{} ({:?}, {}/{} epochs)",
                r.dir.loss,
                r.dir.seed,
                r.manifest.status,
                r.records.len(),
                r.manifest.epochs
            )
            .to_lowercase()
        })
        .collect();
    Ok(Built {
        index,
        files,
        runs: runs.len(),
        incomplete,
    })
}
