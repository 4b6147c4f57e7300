//! The HTML page: one template compiled in, values escaped, no external resources.

use std::collections::BTreeSet;
use std::fmt::Write;

use lossbench_experiment::{DataSummary, Experiment, Headline, RunStatus};

use crate::stats::Estimate;
use crate::summary::{LossSummary, PairComparison, Results, Run, Unreadable, headline_of};

const TEMPLATE: &str = include_str!("template.html");

/// Escape text for HTML.
#[must_use]
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(v: f64) -> String {
    format!("{:.2}", 100.0 * v)
}

fn n_too_small(e: &Estimate) -> String {
    format!("<span class=\"muted\">n too small (n = {})</span>", e.n)
}

fn mean_std(e: Option<&Estimate>) -> String {
    match e {
        None => "—".into(),
        Some(e) if e.std.is_finite() => format!(
            "{} ± {} <small>(n={})</small>",
            pct(e.mean),
            pct(e.std),
            e.n
        ),
        Some(e) => format!("{} <small>(n={})</small>", pct(e.mean), e.n),
    }
}

fn interval(e: Option<&Estimate>, bounds: fn(&Estimate) -> (f64, f64)) -> String {
    match e {
        Some(e) if e.enough_for_interval() => {
            let (lo, hi) = bounds(e);
            format!("[{}, {}]", pct(lo), pct(hi))
        }
        Some(e) => n_too_small(e),
        None => "—".into(),
    }
}

fn delta(e: Option<&Estimate>) -> String {
    match e {
        None => "—".into(),
        Some(e) if e.enough_for_interval() => format!(
            "{:+.2} [{:+.2}, {:+.2}] <small>(n={})</small>",
            100.0 * e.mean,
            100.0 * e.ci.0,
            100.0 * e.ci.1,
            e.n
        ),
        Some(e) => format!("{:+.2} {}", 100.0 * e.mean, n_too_small(e)),
    }
}

fn number(e: Option<&Estimate>, digits: usize) -> String {
    e.map_or_else(|| "—".into(), |e| format!("{:.*}", digits, e.mean))
}

fn percent_mean(e: Option<&Estimate>) -> String {
    e.map_or_else(|| "—".into(), |e| pct(e.mean))
}

fn diverged_flag(r: &LossSummary) -> String {
    r.diverged_label().map_or_else(String::new, |label| {
        format!("<br><span class=\"status-diverged\">{label}</span>")
    })
}

fn status_cell(r: &LossSummary) -> String {
    let mut parts = vec![format!("{}/{} completed", r.completed, r.total_runs)];
    if let Some(label) = r.diverged_label() {
        parts.push(format!("<span class=\"status-diverged\">{label}</span>"));
    }
    if r.failed > 0 {
        parts.push(format!(
            "<span class=\"status-failed\">{} failed</span>",
            r.failed
        ));
    }
    if r.incomplete > 0 {
        parts.push(format!(
            "<span class=\"status-running\">{} unfinished</span>",
            r.incomplete
        ));
    }
    parts.join("<br>")
}

fn table(rows: &[LossSummary], label: &str) -> String {
    let with_validation = rows.iter().any(|r| r.selected_headline.is_some());
    let mut t = format!(
        "<div class=\"scroll\"><table id=\"summary\"><thead><tr><th>loss</th><th>claimed top-1 % (epochs)</th><th>epochs run</th>\
         <th>runs</th><th>final test {label} %</th><th>95 % CI of the mean<br>95 % prediction interval</th>",
    );
    if with_validation {
        let _ = write!(t, "<th>test {label} % at the best validation epoch</th>");
    }
    let _ = write!(
        t,
        "<th>max test {label} % over epochs <small>optimistic (selected on test)</small></th>\
         <th>Δ softmax (pp) [95 % CI]</th><th>MAP@R %</th><th>Recall@1 %</th>\
         <th>epochs to 95 % / 99 %</th><th>s / epoch</th><th>verdict</th></tr></thead><tbody>",
    );
    for r in rows {
        let claim = r.claimed_top1.map_or_else(
            || "—".into(),
            |c| match r.claimed_epochs {
                Some(e) => format!("{} ({e})", pct(c)),
                None => pct(c),
            },
        );
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{claim}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td>",
            escape(&r.loss),
            r.epochs,
            status_cell(r),
            mean_std(r.final_headline.as_ref()),
            diverged_flag(r),
            match r.final_headline.as_ref() {
                Some(e) if e.enough_for_interval() => format!(
                    "CI {}<br>PI {}",
                    interval(Some(e), |e| e.ci),
                    interval(Some(e), |e| e.pi)
                ),
                other => interval(other, |e| e.ci),
            },
        );
        if with_validation {
            let _ = write!(t, "<td>{}</td>", mean_std(r.selected_headline.as_ref()));
        }
        let delta_cell = if r.loss == "softmax" {
            "baseline".to_string()
        } else {
            let mut cell = delta(r.delta_vs_softmax.as_ref());
            cell.push_str(&diverged_flag(r));
            if r.confounded_vs_softmax {
                cell.push_str("<br><span class=\"confounded\">confounded: other epoch count than softmax</span>");
            }
            cell
        };
        let _ = write!(
            t,
            "<td>{}</td><td>{delta_cell}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td class=\"verdict\">{}</td></tr>",
            mean_std(r.optimistic_headline.as_ref()),
            percent_mean(r.final_map_at_r.as_ref()),
            percent_mean(r.final_recall_at_1.as_ref()),
            number(r.epochs_to_95.as_ref(), 1),
            number(r.epochs_to_99.as_ref(), 1),
            number(r.seconds_per_epoch.as_ref(), 1),
            escape(&r.verdict),
        );
    }
    t.push_str("</tbody></table></div>");
    t
}

fn p_value(p: Option<f64>) -> String {
    match p {
        None => "—".into(),
        Some(p) if p < 0.001 => "&lt; 0.001".into(),
        Some(p) => format!("{p:.3}"),
    }
}

fn pairs_table(pairs: &[PairComparison]) -> String {
    let mut t = String::from(
        "<table id=\"pairwise\"><thead><tr><th>a</th><th>b</th><th>Δ a − b (pp) [95 % CI]</th>\
         <th>paired t-test p</th><th>p, Holm-adjusted</th><th>note</th></tr></thead><tbody>",
    );
    for pair in pairs {
        let significant = pair.p_holm.is_some_and(|p| p < 0.05);
        let _ = write!(
            t,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if significant {
                " class=\"significant\""
            } else {
                ""
            },
            escape(&pair.a),
            escape(&pair.b),
            delta(pair.delta.as_ref()),
            p_value(pair.p),
            p_value(pair.p_holm),
            if pair.confounded {
                "<span class=\"confounded\">confounded: different epoch counts</span>"
            } else {
                ""
            },
        );
    }
    t.push_str("</tbody></table>");
    t
}

fn runs_table(runs: &[Run], unreadable: &[Unreadable], headline: Headline) -> String {
    let mut t = format!(
        "<table id=\"runs\"><thead><tr><th>loss</th><th>seed</th><th>status</th><th>epochs</th><th>final {} %</th><th>detail</th><th>backend</th><th>device</th><th>started</th><th>finished</th></tr></thead><tbody>",
        headline.label()
    );
    for r in runs {
        let status = format!("{:?}", r.manifest.status).to_lowercase();
        let mut detail = match r.manifest.status {
            RunStatus::Diverged => format!(
                "non-finite loss at step {}",
                r.manifest.diverged_at_step.unwrap_or(0)
            ),
            RunStatus::Failed => r.manifest.error.clone().unwrap_or_default(),
            _ => String::new(),
        };
        if let Some(note) = &r.note {
            if !detail.is_empty() {
                detail.push_str("; ");
            }
            detail.push_str(note);
        }
        // A run resumed on another backend: which epochs ran where.
        let backends: BTreeSet<&str> = r
            .records
            .iter()
            .map(|x| x.backend.as_str())
            .filter(|b| !b.is_empty())
            .collect();
        let backend = if backends.len() > 1 {
            r.records
                .iter()
                .map(|x| format!("{}: {}", x.epoch, x.backend))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            r.manifest.backend.clone()
        };
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td class=\"status-{status}\">{status}</td><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.dir.loss),
            r.dir.seed,
            r.records.len(),
            r.manifest.epochs,
            r.records
                .last()
                .and_then(|x| headline_of(x, headline))
                .map_or_else(|| "—".into(), pct),
            escape(&detail),
            escape(&backend),
            escape(&r.manifest.device),
            escape(&r.manifest.started_at),
            escape(r.manifest.finished_at.as_deref().unwrap_or("—")),
        );
    }
    for u in unreadable {
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td class=\"status-failed\">unreadable</td><td>—</td><td>—</td><td>{}</td><td></td><td></td><td></td><td></td></tr>",
            escape(&u.dir.loss),
            u.dir.seed,
            escape(&format!("unreadable: {}", u.reason)),
        );
    }
    t.push_str("</tbody></table>");
    t
}

fn distinct(runs: &[Run], f: impl Fn(&Run) -> String) -> String {
    let set: BTreeSet<String> = runs.iter().map(f).collect();
    escape(&set.into_iter().collect::<Vec<_>>().join("; "))
}

/// A rendered figure as the page shows it.
#[derive(Debug, Clone, Copy)]
pub struct FigureRef<'a> {
    pub stem: &'a str,
    pub title: &'a str,
    pub caption: &'a str,
    pub size: (u32, u32),
}

fn figure_html(f: &FigureRef<'_>) -> String {
    format!(
        "<figure id=\"fig-{stem}\"><img src=\"{stem}.png\" alt=\"{}\" width=\"{}\" height=\"{}\"><figcaption>{} (<a href=\"{stem}.svg\">SVG</a>)</figcaption></figure>",
        escape(f.title),
        f.size.0,
        f.size.1,
        escape(f.caption),
        stem = f.stem,
    )
}

/// What the runs trained and tested on, by class name (from a run's `run.json`).
fn data_line(d: &DataSummary) -> String {
    let names = |classes: &[String]| {
        let shown: Vec<&str> = classes.iter().take(8).map(String::as_str).collect();
        let more = classes.len().saturating_sub(shown.len());
        format!(
            "{}{}",
            escape(&shown.join(", ")),
            if more > 0 {
                format!(", … ({more} more)")
            } else {
                String::new()
            }
        )
    };
    let mut line = format!(
        "<p id=\"data\">Data: {}×{} images, {} protocol; {} training images of {} classes ({})",
        d.image_size,
        d.image_size,
        escape(&d.protocol),
        d.train_images,
        d.train_classes.len(),
        names(&d.train_classes)
    );
    if d.protocol == "open" {
        let _ = write!(
            line,
            "; {} test images of {} unseen classes ({})",
            d.test_images,
            d.test_classes.len(),
            names(&d.test_classes)
        );
    } else {
        let _ = write!(line, "; {} test images", d.test_images);
    }
    if d.validation_images > 0 {
        let _ = write!(line, "; {} validation images", d.validation_images);
    }
    if !d.skipped_images.is_empty() {
        let _ = write!(
            line,
            "; <strong>{} unreadable images left out</strong> (listed in each run.json)",
            d.skipped_images.len()
        );
    }
    line.push_str(".</p>");
    line
}

/// The figures that answer the question, shown with the table.
const VERDICT_FIGURES: [&str; 2] = ["delta_vs_softmax", "claimed_vs_measured"];

/// The whole page.
#[must_use]
pub fn page(
    experiment: &Experiment,
    rows: &[LossSummary],
    pairs: &[PairComparison],
    results: &Results,
    tuning: &str,
    figures: &[FigureRef<'_>],
) -> String {
    let runs = &results.runs;
    let mut banner = String::new();
    if runs.iter().any(|r| r.manifest.synthetic_data) {
        banner.push_str("<div class=\"banner\" id=\"synthetic\"><strong>Synthetic data.</strong> These runs used lossbench's generated stand-in images, not a real data set: the numbers show the tool working, not how the losses compare on real images.</div>");
    }
    if let Some(d) = runs.iter().find_map(|r| r.manifest.data.as_ref()) {
        banner.push_str(&data_line(d));
    }
    let mut unfinished: Vec<String> = runs
        .iter()
        .filter(|r| !r.completed())
        .map(|r| {
            format!(
                "{} seed {} ({:?})",
                r.dir.loss, r.dir.seed, r.manifest.status
            )
            .to_lowercase()
        })
        .collect();
    unfinished.extend(
        results
            .unreadable
            .iter()
            .map(|u| format!("{} seed {} (unreadable)", u.dir.loss, u.dir.seed)),
    );
    if !unfinished.is_empty() {
        let _ = write!(
            banner,
            "<div class=\"warn\" id=\"incomplete\">Not completed: {}. They are excluded from the averages, and every cell of their loss says how many diverged.</div>",
            escape(&unfinished.join(", "))
        );
    }
    let notes: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            r.note
                .as_ref()
                .map(|n| format!("{} seed {}: {n}", r.dir.loss, r.dir.seed))
        })
        .collect();
    if !notes.is_empty() {
        let _ = write!(
            banner,
            "<div class=\"warn\" id=\"damaged\">Damaged metrics files: {}. Check with <code>lossbench verify-results</code>.</div>",
            escape(&notes.join("; "))
        );
    }
    let (verdict_figures, curves): (Vec<&FigureRef<'_>>, Vec<&FigureRef<'_>>) = figures
        .iter()
        .partition(|f| VERDICT_FIGURES.contains(&f.stem));
    let headline = experiment.headline();
    let label = headline.label();
    let selection = if rows.iter().any(|r| r.selected_headline.is_some()) {
        format!(
            "The headline is the test {label} after the last epoch; the model selected on the validation split (its best validation epoch) is shown beside it."
        )
    } else {
        format!(
            "This experiment has no validation split (<code>[data] validation</code>): the headline is the test {label} after the last epoch, and no epoch is selected."
        )
    };
    TEMPLATE
        .replace("{{title}}", &escape(&experiment.name))
        .replace("{{description}}", &escape(&experiment.description))
        .replace("{{banner}}", &banner)
        .replace(
            "{{verdict_figures}}",
            &verdict_figures
                .iter()
                .map(|f| figure_html(f))
                .collect::<String>(),
        )
        .replace("{{table}}", &table(rows, label))
        .replace("{{selection}}", &selection)
        .replace("{{headline}}", label)
        .replace("{{pairwise}}", &pairs_table(pairs))
        .replace(
            "{{tuning}}",
            &if tuning.is_empty() {
                String::new()
            } else {
                format!("<h2 id=\"tuning-section\">Tuning on the validation split</h2>{tuning}")
            },
        )
        .replace(
            "{{charts}}",
            &curves.iter().map(|f| figure_html(f)).collect::<String>(),
        )
        .replace("{{runs}}", &runs_table(runs, &results.unreadable, headline))
        .replace(
            "{{backends}}",
            &distinct(runs, |r| {
                format!("{} on {}", r.manifest.backend, r.manifest.device)
            }),
        )
        .replace(
            "{{versions}}",
            &distinct(runs, |r| {
                r.manifest
                    .versions
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
        )
        .replace(
            "{{commits}}",
            &distinct(runs, |r| {
                r.manifest
                    .git_commit
                    .clone()
                    .unwrap_or_else(|| "unknown".into())
            }),
        )
        .replace("{{config}}", &escape(&experiment.to_toml()))
        .replace("{{version}}", env!("CARGO_PKG_VERSION"))
        .replace("{{generated}}", &lossbench_experiment::now_rfc3339())
}
