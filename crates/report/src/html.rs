//! The HTML page: one template compiled in, values escaped, no external resources.

use std::collections::BTreeSet;
use std::fmt::Write;

use lossbench_experiment::{Experiment, RunStatus};

use crate::stats::Estimate;
use crate::summary::{LossSummary, Run};

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

fn ci(e: Option<&Estimate>) -> String {
    match e {
        Some(e) if e.has_ci() => format!("[{}, {}]", pct(e.ci.0), pct(e.ci.1)),
        _ => "—".into(),
    }
}

fn delta(e: Option<&Estimate>) -> String {
    match e {
        None => "—".into(),
        Some(e) if e.has_ci() => format!(
            "{:+.2} [{:+.2}, {:+.2}] <small>(n={})</small>",
            100.0 * e.mean,
            100.0 * e.ci.0,
            100.0 * e.ci.1,
            e.n
        ),
        Some(e) => format!("{:+.2} <small>(n={})</small>", 100.0 * e.mean, e.n),
    }
}

fn number(e: Option<&Estimate>, digits: usize) -> String {
    e.map_or_else(|| "—".into(), |e| format!("{:.*}", digits, e.mean))
}

fn status_cell(r: &LossSummary) -> String {
    let mut parts = vec![format!("{}/{} completed", r.completed, r.total_runs)];
    if r.diverged > 0 {
        parts.push(format!(
            "<span class=\"status-diverged\">{} diverged</span>",
            r.diverged
        ));
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

fn table(rows: &[LossSummary]) -> String {
    let mut t = String::from(
        "<table id=\"summary\"><thead><tr><th>loss</th><th>claimed top-1 %</th><th>claimed epochs</th><th>epochs run</th>\
         <th>runs</th><th>final top-1 %</th><th>95 % CI</th><th>best top-1 %</th><th>Δ softmax (pp) [95 % CI]</th>\
         <th>epochs to 95 %</th><th>epochs to 99 %</th><th>s / epoch</th><th>verdict</th></tr></thead><tbody>",
    );
    for r in rows {
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"verdict\">{}</td></tr>",
            escape(&r.loss),
            r.claimed_top1.map_or_else(|| "—".into(), pct),
            r.claimed_epochs
                .map_or_else(|| "—".into(), |e| e.to_string()),
            r.epochs,
            status_cell(r),
            mean_std(r.final_top1.as_ref()),
            ci(r.final_top1.as_ref()),
            mean_std(r.best_top1.as_ref()),
            if r.loss == "softmax" {
                "baseline".into()
            } else {
                delta(r.delta_vs_softmax.as_ref())
            },
            number(r.epochs_to_95.as_ref(), 1),
            number(r.epochs_to_99.as_ref(), 1),
            number(r.seconds_per_epoch.as_ref(), 1),
            escape(&r.verdict),
        );
    }
    t.push_str("</tbody></table>");
    t
}

fn runs_table(runs: &[Run]) -> String {
    let mut t = String::from(
        "<table id=\"runs\"><thead><tr><th>loss</th><th>seed</th><th>status</th><th>epochs</th><th>final top-1 %</th><th>detail</th><th>backend</th><th>device</th><th>started</th><th>finished</th></tr></thead><tbody>",
    );
    for r in runs {
        let status = format!("{:?}", r.manifest.status).to_lowercase();
        let detail = match r.manifest.status {
            RunStatus::Diverged => format!(
                "non-finite loss at step {}",
                r.manifest.diverged_at_step.unwrap_or(0)
            ),
            RunStatus::Failed => r.manifest.error.clone().unwrap_or_default(),
            _ => String::new(),
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
                .map_or_else(|| "—".into(), |x| pct(x.test_top1)),
            escape(&detail),
            escape(&r.manifest.backend),
            escape(&r.manifest.device),
            escape(&r.manifest.started_at),
            escape(r.manifest.finished_at.as_deref().unwrap_or("—")),
        );
    }
    t.push_str("</tbody></table>");
    t
}

fn distinct(runs: &[Run], f: impl Fn(&Run) -> String) -> String {
    let set: BTreeSet<String> = runs.iter().map(f).collect();
    escape(&set.into_iter().collect::<Vec<_>>().join("; "))
}

/// The whole page.
#[must_use]
pub fn page(
    experiment: &Experiment,
    rows: &[LossSummary],
    runs: &[Run],
    charts: &[(&str, &str, &str)],
) -> String {
    let mut banner = String::new();
    if runs.iter().any(|r| r.manifest.synthetic_data) {
        banner.push_str("<div class=\"banner\" id=\"synthetic\"><strong>Synthetic data.</strong> These runs used lossbench's generated CIFAR-format stand-in, not CIFAR-100: the numbers show the tool working, not how the losses compare on real images.</div>");
    }
    let unfinished: Vec<String> = runs
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
    if !unfinished.is_empty() {
        let _ = write!(
            banner,
            "<div class=\"warn\" id=\"incomplete\">Not completed: {}. They are excluded from the averages.</div>",
            escape(&unfinished.join(", "))
        );
    }
    let figures: String = charts
        .iter()
        .map(|(stem, title, caption)| {
            format!("<figure id=\"fig-{stem}\"><img src=\"{stem}.png\" alt=\"{}\" width=\"900\" height=\"480\"><figcaption>{} (<a href=\"{stem}.svg\">SVG</a>)</figcaption></figure>", escape(title), escape(caption))
        })
        .collect();
    TEMPLATE
        .replace("{{title}}", &escape(&experiment.name))
        .replace("{{description}}", &escape(&experiment.description))
        .replace("{{banner}}", &banner)
        .replace("{{table}}", &table(rows))
        .replace("{{charts}}", &figures)
        .replace("{{runs}}", &runs_table(runs))
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
