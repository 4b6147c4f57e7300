//! Charts with plotters, PNG and SVG, fixed size and palette, text in an embedded font
//! (DejaVu Sans) so nothing depends on the fonts of the machine.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

pub use crate::heatmap::Heatmap;

/// Pixel size of every chart.
pub const SIZE: (u32, u32) = (900, 480);
pub(crate) const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// Fixed colours for the registered losses (Okabe–Ito, colour-blind safe, then Tableau),
/// the rest by position.
#[must_use]
pub fn colour(loss: &str, index: usize) -> RGBColor {
    const OTHERS: [RGBColor; 4] = [
        RGBColor(127, 60, 141),
        RGBColor(17, 165, 121),
        RGBColor(57, 105, 172),
        RGBColor(242, 183, 1),
    ];
    match loss {
        "softmax" => RGBColor(60, 60, 60),
        "arcface" => RGBColor(0, 114, 178),
        "cosface" => RGBColor(230, 159, 0),
        "sphereface" => RGBColor(0, 158, 115),
        "normface" => RGBColor(204, 121, 167),
        "combined" => RGBColor(86, 180, 233),
        "adacos" => RGBColor(213, 94, 0),
        "curricularface" => RGBColor(140, 86, 75),
        "subcenter-arcface" => RGBColor(188, 189, 34),
        _ => OTHERS[index % OTHERS.len()],
    }
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registration only fails for an unparsable font, which the tests would catch.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

/// One line (mean over seeds) with an optional band (min–max over seeds).
#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    pub colour: RGBColor,
    pub points: Vec<(f64, f64)>,
    pub band: Vec<(f64, f64, f64)>,
    pub dashed: bool,
}

/// A line chart against the epoch.
#[derive(Debug, Clone)]
pub struct Chart {
    pub file_stem: String,
    pub title: String,
    pub y_label: String,
    pub lines: Vec<Line>,
    /// Fixed y range (e.g. accuracy in [0, 1]); `None` fits the data.
    pub y_range: Option<(f64, f64)>,
    /// Where the legend goes (where the curves usually are not); `None`: no legend (small
    /// multiples, whose caption explains the lines).
    pub legend: Option<SeriesLabelPosition>,
}

fn bounds(chart: &Chart) -> ((i32, i32), (f64, f64)) {
    let xs = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0));
    let x_max = xs.fold(1.0_f64, f64::max).max(2.0).round() as i32;
    let ys: Vec<f64> = chart
        .lines
        .iter()
        .flat_map(|l| {
            l.points
                .iter()
                .map(|p| p.1)
                .chain(l.band.iter().flat_map(|b| [b.1, b.2]))
        })
        .filter(|v| v.is_finite())
        .collect();
    let (mut lo, mut hi) = chart.y_range.unwrap_or_else(|| {
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) }
    });
    if (hi - lo).abs() < 1e-12 {
        lo -= 0.5;
        hi += 0.5;
    }
    if chart.y_range.is_none() {
        let pad = 0.05 * (hi - lo);
        lo -= pad;
        hi += pad;
    }
    ((1, x_max), (lo, hi))
}

/// Epochs are whole numbers: the x axis is an integer axis, so its ticks are too.
fn epoch(x: f64) -> i32 {
    x.round() as i32
}

fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, chart: &Chart, font: u32) -> Result<()> {
    let e =
        |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("cannot draw {}: {e:?}", chart.file_stem);
    area.fill(&WHITE).map_err(e)?;
    let ((x0, x1), (y0, y1)) = bounds(chart);
    let mut ctx = ChartBuilder::on(area)
        .caption(&chart.title, (FONT, font + 8))
        .margin(12)
        .x_label_area_size(font * 3)
        .y_label_area_size(font * 5)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    ctx.configure_mesh()
        .x_desc("epoch")
        .y_desc(&chart.y_label)
        .x_labels(((x1 - x0 + 1) as usize).min(12))
        .label_style((FONT, font))
        .axis_desc_style((FONT, font + 1))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(e)?;
    for line in &chart.lines {
        if line.band.len() > 1 {
            let mut polygon: Vec<(i32, f64)> =
                line.band.iter().map(|b| (epoch(b.0), b.2)).collect();
            polygon.extend(line.band.iter().rev().map(|b| (epoch(b.0), b.1)));
            ctx.draw_series(std::iter::once(Polygon::new(
                polygon,
                line.colour.mix(0.18),
            )))
            .map_err(e)?;
        }
    }
    for line in &chart.lines {
        let style = line.colour.stroke_width(2);
        let colour = line.colour;
        let points: Vec<(i32, f64)> = line.points.iter().map(|p| (epoch(p.0), p.1)).collect();
        let legend = move |(x, y): (i32, i32)| {
            PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(2))
        };
        if line.dashed {
            ctx.draw_series(DashedLineSeries::new(points.clone(), 6, 4, style))
                .map_err(e)?
                .label(&line.label)
                .legend(legend);
        } else {
            ctx.draw_series(LineSeries::new(points.clone(), style))
                .map_err(e)?
                .label(&line.label)
                .legend(legend);
        }
        if points.len() == 1 {
            ctx.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                .map_err(e)?;
        }
    }
    if let Some(position) = &chart.legend {
        ctx.configure_series_labels()
            .position(position.clone())
            .label_font((FONT, font))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()
            .map_err(e)?;
    }
    Ok(())
}

/// One row of a dot chart: a value with an optional interval and an optional marker.
#[derive(Debug, Clone)]
pub struct Dot {
    pub label: String,
    pub colour: RGBColor,
    pub value: Option<f64>,
    /// Shown as an error bar; `None` with a value draws the point alone with `note`.
    pub interval: Option<(f64, f64)>,
    /// A second value drawn as a cross (a claim).
    pub marker: Option<f64>,
    /// Text beside the point (e.g. "n too small").
    pub note: String,
}

/// Rows of dots with intervals against one value axis: a forest plot.
#[derive(Debug, Clone)]
pub struct DotChart {
    pub file_stem: String,
    pub title: String,
    pub x_label: String,
    pub rows: Vec<Dot>,
    /// Draw a vertical reference line at this value (0 for differences).
    pub reference: Option<f64>,
}

impl DotChart {
    fn size(&self) -> (u32, u32) {
        (SIZE.0, 130 + 44 * self.rows.len().max(1) as u32)
    }

    fn x_range(&self) -> (f64, f64) {
        let xs: Vec<f64> = self
            .rows
            .iter()
            .flat_map(|r| {
                r.value
                    .into_iter()
                    .chain(r.marker)
                    .chain(r.interval.into_iter().flat_map(|(a, b)| [a, b]))
            })
            .chain(self.reference)
            .filter(|v| v.is_finite())
            .collect();
        let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            return (-1.0, 1.0);
        }
        let pad = ((hi - lo) * 0.08).max(0.5);
        (lo - pad, hi + pad)
    }
}

fn draw_dots<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, chart: &DotChart) -> Result<()> {
    let e =
        |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("cannot draw {}: {e:?}", chart.file_stem);
    area.fill(&WHITE).map_err(e)?;
    let n = chart.rows.len().max(1);
    let (x0, x1) = chart.x_range();
    let mut ctx = ChartBuilder::on(area)
        .caption(&chart.title, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(190)
        .build_cartesian_2d(x0..x1, -0.6..(n as f64 - 0.4))
        .map_err(e)?;
    ctx.configure_mesh()
        .x_desc(&chart.x_label)
        .disable_y_mesh()
        .max_light_lines(1)
        .y_labels(0)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(e)?;
    // The first row on top.
    let y = |i: usize| (n - 1 - i) as f64;
    if let Some(r) = chart.reference {
        ctx.draw_series(DashedLineSeries::new(
            vec![(r, -0.6), (r, n as f64 - 0.4)],
            5,
            4,
            RGBColor(120, 120, 120).stroke_width(1),
        ))
        .map_err(e)?;
    }
    let label_style =
        TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
    // Notes go under the loss name, in the label area, where they never cover data.
    let note_style = TextStyle::from((FONT, 11).into_font())
        .color(&RGBColor(110, 110, 110))
        .pos(Pos::new(HPos::Right, VPos::Top));
    for (i, row) in chart.rows.iter().enumerate() {
        let yi = y(i);
        let (px, py) = ctx.backend_coord(&(x0, yi));
        let label_y = if row.note.is_empty() { py } else { py - 6 };
        area.draw(&Text::new(
            row.label.clone(),
            (px - 8, label_y),
            label_style.clone(),
        ))
        .map_err(e)?;
        if !row.note.is_empty() {
            area.draw(&Text::new(
                row.note.clone(),
                (px - 8, py + 4),
                note_style.clone(),
            ))
            .map_err(e)?;
        }
        let style = row.colour.stroke_width(2);
        if let Some((lo, hi)) = row.interval {
            ctx.draw_series([
                PathElement::new(vec![(lo, yi), (hi, yi)], style),
                PathElement::new(vec![(lo, yi - 0.15), (lo, yi + 0.15)], style),
                PathElement::new(vec![(hi, yi - 0.15), (hi, yi + 0.15)], style),
            ])
            .map_err(e)?;
        }
        if let Some(v) = row.value {
            ctx.draw_series(std::iter::once(Circle::new(
                (v, yi),
                5,
                row.colour.filled(),
            )))
            .map_err(e)?;
        }
        if let Some(m) = row.marker {
            ctx.draw_series(std::iter::once(Cross::new(
                (m, yi),
                7,
                RGBColor(200, 0, 0).stroke_width(2),
            )))
            .map_err(e)?;
        }
    }
    Ok(())
}

/// Small multiples: one line chart per panel, three panels a row.
#[derive(Debug, Clone)]
pub struct Panels {
    pub file_stem: String,
    pub title: String,
    pub panels: Vec<Chart>,
}

const PANEL_COLUMNS: usize = 3;

impl Panels {
    fn grid(&self) -> (usize, usize) {
        let cols = self.panels.len().clamp(1, PANEL_COLUMNS);
        (self.panels.len().div_ceil(cols).max(1), cols)
    }
}

fn draw_panels<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, figure: &Panels) -> Result<()> {
    let e =
        |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("cannot draw {}: {e:?}", figure.file_stem);
    area.fill(&WHITE).map_err(e)?;
    let inner = area.titled(&figure.title, (FONT, 22)).map_err(e)?;
    for (cell, chart) in inner.split_evenly(figure.grid()).iter().zip(&figure.panels) {
        draw(cell, chart, 12)?;
    }
    Ok(())
}

/// Any figure of the report.
#[derive(Debug, Clone)]
pub enum Figure {
    Lines(Chart),
    Dots(DotChart),
    Panels(Panels),
    Heatmap(Heatmap),
}

impl Figure {
    #[must_use]
    pub fn file_stem(&self) -> &str {
        match self {
            Self::Lines(c) => &c.file_stem,
            Self::Dots(c) => &c.file_stem,
            Self::Panels(c) => &c.file_stem,
            Self::Heatmap(c) => &c.file_stem,
        }
    }

    #[must_use]
    pub fn title(&self) -> &str {
        match self {
            Self::Lines(c) => &c.title,
            Self::Dots(c) => &c.title,
            Self::Panels(c) => &c.title,
            Self::Heatmap(c) => &c.title,
        }
    }

    /// Pixel size (fixed for line charts; growing with the rows otherwise).
    #[must_use]
    pub fn size(&self) -> (u32, u32) {
        match self {
            Self::Lines(_) => SIZE,
            Self::Dots(c) => c.size(),
            Self::Panels(p) => (SIZE.0, 40 + 230 * p.grid().0 as u32),
            Self::Heatmap(h) => h.size(),
        }
    }

    fn draw_on<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        match self {
            Self::Lines(c) => draw(area, c, 14),
            Self::Dots(c) => draw_dots(area, c),
            Self::Panels(p) => draw_panels(area, p),
            Self::Heatmap(h) => h.draw(area),
        }?;
        area.present()
            .map_err(|e| anyhow!("cannot draw {}: {e:?}", self.file_stem()))
    }
}

/// Write `<stem>.png` and `<stem>.svg` into `dir`.
pub fn render(figure: &Figure, dir: &Path) -> Result<()> {
    register_font();
    let size = figure.size();
    let png = dir.join(format!("{}.png", figure.file_stem()));
    figure.draw_on(&BitMapBackend::new(&png, size).into_drawing_area())?;
    let svg = dir.join(format!("{}.svg", figure.file_stem()));
    figure.draw_on(&SVGBackend::new(&svg, size).into_drawing_area())?;
    Ok(())
}
