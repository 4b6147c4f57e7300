//! The report's tuning section: per swept loss a heatmap of the sweep metric over its two
//! main parameters (one row for a single parameter), the chosen point framed, and a table
//! "defaults vs tuned".

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use lossbench_experiment::{LossSweep, Point, SweepRecord};

use crate::charts::{Figure, Heatmap, render};
use crate::html::escape;

fn percent(v: f64) -> String {
    format!("{:.1} %", 100.0 * v)
}

fn plain(v: f64) -> String {
    format!("{v:.3}")
}

fn number(v: f64) -> String {
    format!("{v}")
}

fn point_text(p: &Point) -> String {
    if p.is_empty() {
        return "—".into();
    }
    p.iter()
        .map(|(k, v)| format!("{k} = {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The heatmap of one loss: columns = the first swept key's values, rows = the second's,
/// any further key fixed at the chosen point.
fn heatmap(record: &SweepRecord, sweep: &LossSweep) -> Option<Heatmap> {
    let keys: Vec<&String> = sweep.chosen.keys().collect();
    let (x_key, y_key) = match keys.as_slice() {
        [] => return None,
        [x] => (*x, None),
        [x, y, ..] => (*x, Some(*y)),
    };
    let distinct = |key: &str| -> Vec<f64> {
        let mut values: Vec<f64> = Vec::new();
        for p in &sweep.points {
            if let Some(&v) = p.point.get(key)
                && !values.contains(&v)
            {
                values.push(v);
            }
        }
        values
    };
    let xs = distinct(x_key);
    let ys = y_key.map_or_else(|| vec![f64::NAN], |k| distinct(k));
    let fixed = |p: &Point| {
        p.iter()
            .filter(|(k, _)| *k != x_key && Some(*k) != y_key)
            .all(|(k, v)| sweep.chosen.get(k) == Some(v))
    };
    let mut values = vec![vec![None; xs.len()]; ys.len()];
    let mut chosen = None;
    for p in sweep.points.iter().filter(|p| fixed(&p.point)) {
        let c = xs
            .iter()
            .position(|v| Some(v) == p.point.get(x_key.as_str()));
        let r = match y_key {
            Some(k) => ys.iter().position(|v| Some(v) == p.point.get(k.as_str())),
            None => Some(0),
        };
        if let (Some(r), Some(c)) = (r, c) {
            values[r][c] = p.value;
            if p.point == sweep.chosen {
                chosen = Some((r, c));
            }
        }
    }
    let loss_metric = record.metric == "val_loss";
    let others: Vec<String> = sweep
        .chosen
        .iter()
        .filter(|(k, _)| *k != x_key && Some(*k) != y_key)
        .map(|(k, v)| format!("{k} = {v}"))
        .collect();
    let title = format!(
        "{}: {} after {} epochs{}",
        sweep.loss,
        record.metric,
        record.epochs,
        if others.is_empty() {
            String::new()
        } else {
            format!(" ({})", others.join(", "))
        }
    );
    Some(Heatmap {
        file_stem: format!("sweep-{}", sweep.loss),
        title,
        x_label: x_key.clone(),
        columns: xs.iter().map(|v| number(*v)).collect(),
        y_label: y_key.cloned().unwrap_or_default(),
        rows: match y_key {
            Some(_) => ys.iter().map(|v| number(*v)).collect(),
            None => vec![sweep.loss.clone()],
        },
        values,
        chosen,
        format: if loss_metric { plain } else { percent },
        higher_is_better: !loss_metric,
    })
}

/// Render the section's figures into `out` and return its HTML; the files written are
/// added to `files`.
pub fn section(record: &SweepRecord, out: &Path, files: &mut Vec<PathBuf>) -> Result<String> {
    let format = if record.metric == "val_loss" {
        plain
    } else {
        percent
    };
    let value_of = |sweep: &LossSweep, point: &Point| -> String {
        sweep.points.iter().find(|p| &p.point == point).map_or_else(
            || "—".into(),
            |p| p.value.map_or_else(|| "diverged".into(), format),
        )
    };
    let mut html = format!(
        "<p>Each loss's parameters were chosen on the validation split by <code>{}</code> after {} epochs (mean over seeds {:?}); the runs above were trained at the chosen points. The test set played no part in the choice.</p>",
        escape(&record.metric),
        record.epochs,
        record.seeds
    );
    if let Some(budget) = record.unequal_budget() {
        let _ = write!(
            html,
            "<div class=\"warn\" id=\"unequal-budget\">The losses were not tuned with the same number of points ({}): a loss with more points had more chances to look good.</div>",
            escape(&budget)
        );
    }
    html.push_str("<table id=\"tuning\"><thead><tr><th>loss</th><th>points</th><th>default</th><th>at default</th><th>tuned</th><th>at tuned</th></tr></thead><tbody>");
    for s in &record.losses {
        let default = s.default.as_ref();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.loss),
            s.points.len(),
            default.map_or_else(|| "not in the grid".into(), |d| escape(&point_text(d))),
            default.map_or_else(|| "—".into(), |d| value_of(s, d)),
            escape(&point_text(&s.chosen)),
            value_of(s, &s.chosen),
        );
    }
    html.push_str("</tbody></table>");
    for s in &record.losses {
        let Some(map) = heatmap(record, s) else {
            continue;
        };
        let figure = Figure::Heatmap(map);
        render(&figure, out)?;
        let stem = figure.file_stem().to_string();
        let (w, h) = figure.size();
        files.push(out.join(format!("{stem}.png")));
        files.push(out.join(format!("{stem}.svg")));
        let _ = write!(
            html,
            "<figure id=\"fig-{stem}\"><img src=\"{stem}.png\" alt=\"{}\" width=\"{w}\" height=\"{h}\"><figcaption>Sweep of {}: {} per point on the validation split; the red frame is the chosen point. (<a href=\"{stem}.svg\">SVG</a>)</figcaption></figure>",
            escape(figure.title()),
            escape(&s.loss),
            escape(&record.metric),
        );
    }
    Ok(html)
}
