//! A heatmap of a sweep: one cell per grid point, its value written in it, the chosen point
//! framed. A sweep over one parameter is one row.

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::charts::FONT;

/// Cells `values[row][column]`; `None` for a point where a seed diverged.
#[derive(Debug, Clone)]
pub struct Heatmap {
    pub file_stem: String,
    pub title: String,
    pub x_label: String,
    pub columns: Vec<String>,
    /// Empty label for a one-parameter sweep (one row).
    pub y_label: String,
    pub rows: Vec<String>,
    pub values: Vec<Vec<Option<f64>>>,
    /// `(row, column)` of the chosen point.
    pub chosen: Option<(usize, usize)>,
    /// How a value is written (e.g. as a percentage).
    pub format: fn(f64) -> String,
    /// Whether a higher value is better (the colour scale runs light → dark towards better).
    pub higher_is_better: bool,
}

const CELL_H: u32 = 56;

impl Heatmap {
    /// Pixel size: a fixed width, a height growing with the rows.
    #[must_use]
    pub fn size(&self) -> (u32, u32) {
        (720, 150 + CELL_H * self.rows.len().max(1) as u32)
    }

    /// Where `value` lies between the worst (0) and the best (1) value of the map.
    fn goodness(&self, value: f64, lo: f64, hi: f64) -> f64 {
        let t = if hi > lo {
            (value - lo) / (hi - lo)
        } else {
            1.0
        };
        if self.higher_is_better { t } else { 1.0 - t }
    }

    /// Light yellow (worst) to dark blue (best).
    fn colour(goodness: f64) -> RGBColor {
        let mix =
            |a: u8, b: u8| (f64::from(a) + goodness * (f64::from(b) - f64::from(a))).round() as u8;
        RGBColor(mix(255, 8), mix(247, 48), mix(188, 107))
    }

    pub(crate) fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| {
            anyhow!("cannot draw {}: {e:?}", self.file_stem)
        };
        area.fill(&WHITE).map_err(e)?;
        let inner = area.titled(&self.title, (FONT, 20)).map_err(e)?;
        let (width, height) = inner.dim_in_pixel();
        let (left, bottom, top) = (130_i32, 60_i32, 10_i32);
        let cols = self.columns.len().max(1) as i32;
        let rows = self.rows.len().max(1) as i32;
        let cell_w = (width as i32 - left - 20) / cols;
        let cell_h = ((height as i32 - bottom - top) / rows).min(CELL_H as i32);
        let finite: Vec<f64> = self.values.iter().flatten().flatten().copied().collect();
        let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let centre = Pos::new(HPos::Center, VPos::Center);
        for (r, row) in self.values.iter().enumerate() {
            for (c, value) in row.iter().enumerate() {
                let x0 = left + c as i32 * cell_w;
                let y0 = top + r as i32 * cell_h;
                let goodness = value.map(|v| self.goodness(v, lo, hi));
                let (fill, text) = match (value, goodness) {
                    (Some(v), Some(g)) => (Self::colour(g), (self.format)(*v)),
                    _ => (RGBColor(200, 200, 200), "diverged".to_string()),
                };
                inner
                    .draw(&Rectangle::new(
                        [(x0, y0), (x0 + cell_w, y0 + cell_h)],
                        fill.filled(),
                    ))
                    .map_err(e)?;
                let dark = goodness.is_some_and(|g| g > 0.55);
                let ink = if dark { WHITE } else { BLACK };
                inner
                    .draw(&Text::new(
                        text,
                        (x0 + cell_w / 2, y0 + cell_h / 2),
                        (FONT, 15).into_font().color(&ink).pos(centre),
                    ))
                    .map_err(e)?;
            }
        }
        if let Some((r, c)) = self.chosen {
            let x0 = left + c as i32 * cell_w;
            let y0 = top + r as i32 * cell_h;
            for inset in 0..3 {
                inner
                    .draw(&Rectangle::new(
                        [
                            (x0 + inset, y0 + inset),
                            (x0 + cell_w - inset, y0 + cell_h - inset),
                        ],
                        RED.stroke_width(1),
                    ))
                    .map_err(e)?;
            }
        }
        let label = |text: &str, at: (i32, i32), pos: Pos| {
            inner.draw(&Text::new(
                text.to_string(),
                at,
                (FONT, 14).into_font().color(&BLACK).pos(pos),
            ))
        };
        for (c, name) in self.columns.iter().enumerate() {
            let x = left + c as i32 * cell_w + cell_w / 2;
            label(
                name,
                (x, top + rows * cell_h + 8),
                Pos::new(HPos::Center, VPos::Top),
            )
            .map_err(e)?;
        }
        let x_mid = left + cols * cell_w / 2;
        label(
            &self.x_label,
            (x_mid, top + rows * cell_h + 32),
            Pos::new(HPos::Center, VPos::Top),
        )
        .map_err(e)?;
        for (r, name) in self.rows.iter().enumerate() {
            let y = top + r as i32 * cell_h + cell_h / 2;
            label(name, (left - 8, y), Pos::new(HPos::Right, VPos::Center)).map_err(e)?;
        }
        if !self.y_label.is_empty() {
            label(&self.y_label, (8, top), Pos::new(HPos::Left, VPos::Top)).map_err(e)?;
        }
        Ok(())
    }
}
