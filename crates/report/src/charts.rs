//! Charts with plotters, PNG and SVG, fixed size and palette, text in an embedded font
//! (DejaVu Sans) so nothing depends on the fonts of the machine.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Pixel size of every chart.
pub const SIZE: (u32, u32) = (900, 480);
const FONT: &str = "sans-serif";
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
    /// Where the legend goes (where the curves usually are not).
    pub legend: SeriesLabelPosition,
}

fn bounds(chart: &Chart) -> ((f64, f64), (f64, f64)) {
    let xs = chart
        .lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0));
    let x_max = xs.fold(1.0_f64, f64::max).max(2.0);
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
    ((1.0, x_max), (lo, hi))
}

fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, chart: &Chart) -> Result<()> {
    let e =
        |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("cannot draw {}: {e:?}", chart.file_stem);
    area.fill(&WHITE).map_err(e)?;
    let ((x0, x1), (y0, y1)) = bounds(chart);
    let mut ctx = ChartBuilder::on(area)
        .caption(&chart.title, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(e)?;
    ctx.configure_mesh()
        .x_desc("epoch")
        .y_desc(&chart.y_label)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(e)?;
    for line in &chart.lines {
        if line.band.len() > 1 {
            let mut polygon: Vec<(f64, f64)> = line.band.iter().map(|b| (b.0, b.2)).collect();
            polygon.extend(line.band.iter().rev().map(|b| (b.0, b.1)));
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
        let legend = move |(x, y): (i32, i32)| {
            PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(2))
        };
        if line.dashed {
            ctx.draw_series(DashedLineSeries::new(line.points.clone(), 6, 4, style))
                .map_err(e)?
                .label(&line.label)
                .legend(legend);
        } else {
            ctx.draw_series(LineSeries::new(line.points.clone(), style))
                .map_err(e)?
                .label(&line.label)
                .legend(legend);
        }
        if line.points.len() == 1 {
            ctx.draw_series(
                line.points
                    .iter()
                    .map(|&p| Circle::new(p, 3, colour.filled())),
            )
            .map_err(e)?;
        }
    }
    ctx.configure_series_labels()
        .position(chart.legend.clone())
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(e)?;
    area.present().map_err(e)?;
    Ok(())
}

/// Write `<stem>.png` and `<stem>.svg` into `dir`.
pub fn render(chart: &Chart, dir: &Path) -> Result<()> {
    register_font();
    let png = dir.join(format!("{}.png", chart.file_stem));
    draw(&BitMapBackend::new(&png, SIZE).into_drawing_area(), chart)?;
    let svg = dir.join(format!("{}.svg", chart.file_stem));
    draw(&SVGBackend::new(&svg, SIZE).into_drawing_area(), chart)?;
    Ok(())
}
