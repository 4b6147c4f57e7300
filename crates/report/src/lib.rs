//! The report: statistics, charts and an HTML page comparing the losses of one experiment,
//! rebuilt from the results on disk alone (as criterion rebuilds its report from saved
//! estimates), so it can be rerun at any time — also while runs are still going.

pub mod charts;
mod heatmap;
mod html;
pub mod stats;
pub mod summary;
mod sweep;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lossbench_experiment::{
    EXPERIMENT_COPY, EpochRecord, Experiment, Headline, RunStatus, atomic_write_with,
    experiment_dir,
};
use polars::prelude::*;

use crate::charts::{Chart, Dot, DotChart, Figure, Line, Panels, colour, render};
use crate::stats::Estimate;
use crate::summary::{LossSummary, Results, Run, load_runs, pairwise, per_epoch, summarise};
use plotters::prelude::SeriesLabelPosition;

/// What a report build produced.
#[derive(Debug)]
pub struct Built {
    pub index: PathBuf,
    pub files: Vec<PathBuf>,
    pub runs: usize,
    /// `loss seed-n (status)` of every run that is not completed, or unreadable.
    pub incomplete: Vec<String>,
    /// Runs read from their intact metrics file because the other one was damaged.
    pub notes: Vec<String>,
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
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
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
    let results = load_runs(&dir)?;
    let out = out.map_or_else(
        || Path::new("reports").join(&experiment.name),
        Path::to_path_buf,
    );
    build(&experiment, &results, &out)
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
                && matches!(
                    r.manifest.status,
                    RunStatus::Completed | RunStatus::Running | RunStatus::Interrupted
                )
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

fn pp(v: f64) -> f64 {
    100.0 * v
}

/// Forest plot: per loss, Δ headline vs softmax (pp) with its 95 % CI, the claimed Δ as a
/// cross (claims are top-1: only when top-1 is the headline).
fn forest(experiment: &Experiment, rows: &[LossSummary]) -> Option<Figure> {
    let headline = experiment.headline();
    let softmax_claim = experiment
        .claimed
        .get("softmax")
        .map(|c| c.top1)
        .filter(|_| headline == Headline::Top1);
    let dots: Vec<Dot> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.loss != "softmax")
        .map(|(i, r)| {
            let d = r.delta_vs_softmax;
            let mut notes = Vec::new();
            if let Some(d) = d.filter(|d| !d.enough_for_interval()) {
                notes.push(format!("n = {}: too few for a CI", d.n));
            }
            if let Some(label) = r.diverged_label() {
                notes.push(label);
            }
            if r.confounded_vs_softmax {
                notes.push("confounded: other epochs".into());
            }
            Dot {
                label: r.loss.clone(),
                colour: colour(&r.loss, i),
                value: d.map(|d| pp(d.mean)),
                interval: d
                    .filter(Estimate::enough_for_interval)
                    .map(|d| (pp(d.ci.0), pp(d.ci.1))),
                marker: r.claimed_top1.zip(softmax_claim).map(|(c, s)| pp(c - s)),
                note: notes.join("; "),
            }
        })
        .collect();
    (rows.iter().any(|r| r.loss == "softmax") && !dots.is_empty()).then(|| {
        Figure::Dots(DotChart {
            file_stem: "delta_vs_softmax".into(),
            title: format!(
                "Final test {} minus softmax's (paired by seed)",
                headline.label()
            ),
            x_label: format!("Δ {} (percentage points)", headline.label()),
            rows: dots,
            reference: Some(0.0),
        })
    })
}

/// Per loss, the measured final test top-1 with its 95 % prediction interval, and the claim.
fn claimed_vs_measured(rows: &[LossSummary]) -> Figure {
    Figure::Dots(DotChart {
        file_stem: "claimed_vs_measured".into(),
        title: "Claimed vs measured final test top-1".into(),
        x_label: "top-1 (%)".into(),
        rows: rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let f = r.final_headline;
                let mut notes = Vec::new();
                if let Some(f) = f.filter(|f| !f.enough_for_interval()) {
                    notes.push(format!("n = {}: too few for an interval", f.n));
                }
                if let Some(label) = r.diverged_label() {
                    notes.push(label);
                }
                Dot {
                    label: r.loss.clone(),
                    colour: colour(&r.loss, i),
                    value: f.map(|f| pp(f.mean)),
                    interval: f
                        .filter(Estimate::enough_for_interval)
                        .map(|f| (pp(f.pi.0), pp(f.pi.1))),
                    marker: r.claimed_top1.map(pp),
                    note: notes.join("; "),
                }
            })
            .collect(),
        reference: None,
    })
}

fn figures(
    experiment: &Experiment,
    rows: &[LossSummary],
    runs: &[Run],
) -> Vec<(Figure, &'static str)> {
    let losses: Vec<String> = rows.iter().map(|r| r.loss.clone()).collect();
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
        // Accuracies rise from the lower left; losses and times fall or stay flat.
        legend: Some(if range.is_some() {
            SeriesLabelPosition::UpperLeft
        } else {
            SeriesLabelPosition::UpperRight
        }),
    };
    let angles = Panels {
        file_stem: "angles".into(),
        title: "Feature angles on the test set, per loss".into(),
        panels: losses
            .iter()
            .enumerate()
            .map(|(i, l)| Chart {
                file_stem: format!("angles-{l}"),
                title: l.clone(),
                y_label: "degrees".into(),
                lines: [
                    line(
                        runs,
                        l,
                        i,
                        |r| r.target_angle_deg.unwrap_or(f64::NAN),
                        "to own class".into(),
                        false,
                    ),
                    line(
                        runs,
                        l,
                        i,
                        |r| r.nearest_other_angle_deg.unwrap_or(f64::NAN),
                        "to nearest other".into(),
                        true,
                    ),
                ]
                .into_iter()
                .flatten()
                .collect(),
                y_range: Some((0.0, 120.0)),
                legend: None,
            })
            .collect(),
    };
    let mut list = Vec::new();
    let headline = experiment.headline();
    let any = |f: fn(&EpochRecord) -> Option<f64>| {
        runs.iter()
            .any(|r| r.records.iter().any(|x| f(x).is_some()))
    };
    if let Some(f) = forest(experiment, rows) {
        list.push((
            f,
            if headline == Headline::Top1 {
                "Δ final test top-1 vs softmax per loss, paired by seed: dot = mean, bar = 95 % CI (none when n < 3), red cross = the claimed Δ (claimed loss minus claimed softmax). A bar that crosses the dashed zero line means no measured difference."
            } else {
                "Δ final test headline metric vs softmax per loss, paired by seed: dot = mean, bar = 95 % CI (none when n < 3). A bar that crosses the dashed zero line means no measured difference."
            },
        ));
    }
    // Claims are top-1 accuracies: their chart exists where top-1 is the headline.
    if headline == Headline::Top1 {
        list.push((
            claimed_vs_measured(rows),
            "Final test top-1 per loss: dot = mean over completed seeds, bar = 95 % prediction interval of one more run (what a single published number is compared with), red cross = the claim.",
        ));
    }
    if any(|x| x.test_top1) {
        list.push((
            Figure::Lines(simple(
                "test_top1",
                "Test top-1 accuracy",
                "top-1",
                |r| r.test_top1.unwrap_or(f64::NAN),
                Some((0.0, 1.0)),
            )),
            "Test top-1 per epoch: mean over seeds, band from the lowest to the highest seed.",
        ));
    }
    if any(|x| x.val_map_at_r) {
        list.push((
            Figure::Lines(simple(
                "val_map_at_r",
                "Validation MAP@R (unseen classes)",
                "MAP@R",
                |r| r.val_map_at_r.unwrap_or(f64::NAN),
                Some((0.0, 1.0)),
            )),
            "MAP@R on the validation classes held out of training (the open protocol): what model selection uses.",
        ));
    }
    if runs
        .iter()
        .any(|r| r.records.iter().any(|x| x.val_top1.is_some()))
    {
        list.push((
            Figure::Lines(simple(
                "val_top1",
                "Validation top-1 accuracy",
                "top-1",
                |r| r.val_top1.unwrap_or(f64::NAN),
                Some((0.0, 1.0)),
            )),
            "Top-1 on the validation split held out of the training images: what model selection uses.",
        ));
    }
    if runs
        .iter()
        .any(|r| r.records.iter().any(|x| x.test_map_at_r.is_some()))
    {
        list.push((
            Figure::Lines(simple(
                "map_at_r",
                "Retrieval: MAP@R on the test set",
                "MAP@R",
                |r| r.test_map_at_r.unwrap_or(f64::NAN),
                Some((0.0, 1.0)),
            )),
            "MAP@R of the L2-normalised test embeddings (leave-one-out, cosine; Musgrave et al. 2020) per epoch.",
        ));
    }
    list.push((
        Figure::Lines(simple(
            "train_loss",
            "Training loss",
            "loss (with margin)",
            |r| r.train_loss,
            None,
        )),
        "Mean training loss per epoch. Losses are on different scales (s, margins): compare shapes, not heights.",
    ));
    list.push((
        Figure::Lines(simple(
            "lr",
            "Learning rate",
            "learning rate",
            |r| r.lr,
            None,
        )),
        "Learning rate at the end of each epoch (identical for every loss by design).",
    ));
    list.extend(any(|x| x.target_angle_deg).then_some((
        Figure::Panels(angles),
        "Mean angle between a test feature and its class weight (solid) and the nearest other class weight (dashed), one panel per loss: margins should open the gap.",
    )));
    list.push((
        Figure::Lines(simple(
            "epoch_seconds",
            "Time per epoch",
            "seconds",
            |r| r.epoch_seconds,
            None,
        )),
        "Wall time of an epoch (training and evaluation).",
    ));
    list
}

fn summary_frame(rows: &[LossSummary], headline: Headline) -> Result<DataFrame> {
    let nan_none = |v: f64| v.is_finite().then_some(v);
    let est = |name: &str, f: fn(&LossSummary) -> Option<Estimate>| -> Vec<Column> {
        let mean: Vec<Option<f64>> = rows.iter().map(|r| f(r).map(|e| e.mean)).collect();
        let std: Vec<Option<f64>> = rows
            .iter()
            .map(|r| f(r).and_then(|e| nan_none(e.std)))
            .collect();
        vec![
            Column::new(format!("{name}_mean").into(), mean),
            Column::new(format!("{name}_std").into(), std),
        ]
    };
    let interval = |name: &str, f: fn(&LossSummary) -> Option<(f64, f64)>| -> Vec<Column> {
        vec![
            Column::new(
                format!("{name}_low").into(),
                rows.iter()
                    .map(|r| f(r).and_then(|i| nan_none(i.0)))
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                format!("{name}_high").into(),
                rows.iter()
                    .map(|r| f(r).and_then(|i| nan_none(i.1)))
                    .collect::<Vec<_>>(),
            ),
        ]
    };
    let count = |name: &str, f: fn(&LossSummary) -> usize| {
        Column::new(
            name.into(),
            rows.iter().map(|r| f(r) as u32).collect::<Vec<_>>(),
        )
    };
    let mean_of = |name: &str, f: fn(&LossSummary) -> Option<Estimate>| {
        Column::new(
            name.into(),
            rows.iter()
                .map(|r| f(r).map(|e| e.mean))
                .collect::<Vec<_>>(),
        )
    };
    let mut columns = vec![
        Column::new(
            "loss".into(),
            rows.iter().map(|r| r.loss.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "claimed_top1".into(),
            rows.iter().map(|r| r.claimed_top1).collect::<Vec<_>>(),
        ),
        Column::new(
            "claimed_epochs".into(),
            rows.iter().map(|r| r.claimed_epochs).collect::<Vec<_>>(),
        ),
        Column::new(
            "epochs".into(),
            rows.iter().map(|r| r.epochs).collect::<Vec<_>>(),
        ),
        count("runs", |r| r.total_runs),
        count("completed", |r| r.completed),
        count("diverged", |r| r.diverged),
        count("failed", |r| r.failed),
    ];
    // The headline's columns are named by its metric: final_top1 (closed protocol) or
    // final_map_at_r / final_recall_at_1.
    let stem = headline.stem();
    columns.extend(est(&format!("final_{stem}"), |r| r.final_headline));
    columns.extend(interval(&format!("final_{stem}_ci"), |r| {
        r.final_headline.map(|e| e.ci)
    }));
    columns.extend(interval(&format!("final_{stem}_pi"), |r| {
        r.final_headline.map(|e| e.pi)
    }));
    columns.extend(est(&format!("val_selected_{stem}"), |r| {
        r.selected_headline
    }));
    columns.extend(est(&format!("optimistic_max_test_{stem}"), |r| {
        r.optimistic_headline
    }));
    columns.push(mean_of("delta_vs_softmax_mean", |r| r.delta_vs_softmax));
    columns.extend(interval("delta_vs_softmax_ci", |r| {
        r.delta_vs_softmax.map(|e| e.ci)
    }));
    columns.push(Column::new(
        "delta_vs_softmax_confounded".into(),
        rows.iter()
            .map(|r| r.confounded_vs_softmax)
            .collect::<Vec<_>>(),
    ));
    if headline != Headline::MapAtR {
        columns.extend(est("final_map_at_r", |r| r.final_map_at_r));
        columns.push(mean_of("val_selected_map_at_r_mean", |r| {
            r.selected_map_at_r
        }));
    }
    if headline != Headline::RecallAt1 {
        columns.extend(est("final_recall_at_1", |r| r.final_recall_at_1));
    }
    columns.push(mean_of("epochs_to_95pct", |r| r.epochs_to_95));
    columns.push(mean_of("epochs_to_99pct", |r| r.epochs_to_99));
    columns.push(mean_of("seconds_per_epoch", |r| r.seconds_per_epoch));
    columns.push(Column::new(
        "verdict".into(),
        rows.iter().map(|r| r.verdict.as_str()).collect::<Vec<_>>(),
    ));
    Ok(DataFrame::new(rows.len(), columns)?)
}

/// Build the report of `experiment` from `results` into `out`.
pub fn build(experiment: &Experiment, results: &Results, out: &Path) -> Result<Built> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let runs = &results.runs;
    let rows = summarise(experiment, runs);
    let pairs = pairwise(experiment, runs);
    let mut files = Vec::new();
    let figures = figures(experiment, &rows, runs);
    for (figure, _) in &figures {
        render(figure, out)?;
        files.push(out.join(format!("{}.png", figure.file_stem())));
        files.push(out.join(format!("{}.svg", figure.file_stem())));
    }
    let mut frame = summary_frame(&rows, experiment.headline())?;
    let csv = out.join("summary.csv");
    atomic_write_with(&csv, |f| Ok(CsvWriter::new(f).finish(&mut frame)?))?;
    let parquet = out.join("summary.parquet");
    atomic_write_with(&parquet, |f| {
        ParquetWriter::new(f).finish(&mut frame)?;
        Ok(())
    })?;
    files.extend([csv, parquet]);
    let tuning = match &results.sweep {
        Some(record) => sweep::section(record, out, &mut files)?,
        None => String::new(),
    };
    let index = out.join("index.html");
    let page = html::page(
        experiment,
        &rows,
        &pairs,
        results,
        &tuning,
        &figures
            .iter()
            .map(|(f, caption)| html::FigureRef {
                stem: f.file_stem(),
                title: f.title(),
                caption,
                size: f.size(),
            })
            .collect::<Vec<_>>(),
    );
    lossbench_experiment::atomic_write(&index, page.as_bytes())?;
    files.push(index.clone());
    let mut incomplete: Vec<String> = runs
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
    incomplete.extend(results.unreadable.iter().map(|u| {
        format!(
            "{} seed-{} (unreadable: {})",
            u.dir.loss, u.dir.seed, u.reason
        )
    }));
    let notes = runs
        .iter()
        .filter_map(|r| {
            r.note
                .as_ref()
                .map(|n| format!("{} seed-{}: {n}", r.dir.loss, r.dir.seed))
        })
        .collect();
    Ok(Built {
        index,
        files,
        runs: runs.len(),
        incomplete,
        notes,
    })
}
