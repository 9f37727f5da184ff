//! PNG charts for the reports a person opens (training, evaluation, mining): line charts, bars and
//! an annotated matrix, drawn with tiny-skia and a built-in bitmap font, so a report looks the same
//! on a laptop, in CI and on a headless server without fonts.

mod font;

use std::path::Path;

use tiny_skia::{Color, FillRule, Paint, PathBuilder, Pixmap, Rect, Stroke, Transform};

/// Why a chart could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("chart size {0}×{1} is not drawable")]
    Size(u32, u32),
    #[error("cannot write {path}: {why}")]
    Write { path: String, why: String },
}

/// A colour-blind-safe palette (Okabe–Ito), for series in order.
pub const PALETTE: [(u8, u8, u8); 6] = [
    (0, 114, 178),
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
];

/// The i-th series colour.
pub fn series_color(i: usize) -> Color {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    Color::from_rgba8(r, g, b, 255)
}

const MARGIN_L: f32 = 70.0;
const MARGIN_R: f32 = 20.0;
const MARGIN_T: f32 = 40.0;
const MARGIN_B: f32 = 55.0;
const TEXT_SCALE: f32 = 2.0;

/// A chart with axes mapping data coordinates onto a pixel area.
pub struct Chart {
    pixmap: Pixmap,
    x: (f64, f64),
    y: (f64, f64),
    legend: Vec<(String, Color)>,
}

fn paint(c: Color) -> Paint<'static> {
    let mut p = Paint::default();
    p.set_color(c);
    p.anti_alias = true;
    p
}

/// Draws `text` with its top-left corner at (x, y); `vertical` rotates it 90° counter-clockwise
/// (then (x, y) is the bottom-left corner).
fn draw_text(pm: &mut Pixmap, x: f32, y: f32, text: &str, color: Color, vertical: bool) {
    let p = paint(color);
    let s = TEXT_SCALE;
    for (k, c) in text.chars().enumerate() {
        let rows = font::glyph(c);
        let offset = k as f32 * (font::GLYPH_W as f32 + 1.0) * s;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..font::GLYPH_W {
                if bits & (1 << (font::GLYPH_W - 1 - col)) == 0 {
                    continue;
                }
                let (px, py) = if vertical {
                    (x + r as f32 * s, y - offset - (col as f32 + 1.0) * s)
                } else {
                    (x + offset + col as f32 * s, y + r as f32 * s)
                };
                if let Some(rect) = Rect::from_xywh(px, py, s, s) {
                    pm.fill_rect(rect, &p, Transform::identity(), None);
                }
            }
        }
    }
}

/// Pixel width of `text`.
pub fn text_width(text: &str) -> f32 {
    text.chars().count() as f32 * (font::GLYPH_W as f32 + 1.0) * TEXT_SCALE
}

/// A short label for a tick value.
fn tick_label(v: f64, span: f64) -> String {
    if span >= 100.0 || (v.fract() == 0.0 && span >= 10.0) {
        format!("{v:.0}")
    } else if span >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Chart {
    /// A white chart with a title, axis labels and the data ranges of both axes.
    pub fn new(
        width: u32,
        height: u32,
        title: &str,
        x_label: &str,
        y_label: &str,
        x: (f64, f64),
        y: (f64, f64),
    ) -> Result<Self, PlotError> {
        if width < 200 || height < 150 {
            return Err(PlotError::Size(width, height));
        }
        let mut pixmap = Pixmap::new(width, height).ok_or(PlotError::Size(width, height))?;
        pixmap.fill(Color::WHITE);
        let fix = |(a, b): (f64, f64)| {
            let (a, b) = if a.is_finite() && b.is_finite() {
                (a, b)
            } else {
                (0.0, 1.0)
            };
            if b > a { (a, b) } else { (a - 0.5, a + 0.5) }
        };
        let mut c = Self {
            pixmap,
            x: fix(x),
            y: fix(y),
            legend: Vec::new(),
        };
        c.axes(title, x_label, y_label);
        Ok(c)
    }

    fn area(&self) -> (f32, f32, f32, f32) {
        let (w, h) = (self.pixmap.width() as f32, self.pixmap.height() as f32);
        (MARGIN_L, MARGIN_T, w - MARGIN_R, h - MARGIN_B)
    }

    /// Data → pixel coordinates.
    fn to_px(&self, x: f64, y: f64) -> (f32, f32) {
        let (l, t, r, b) = self.area();
        let fx = ((x - self.x.0) / (self.x.1 - self.x.0)) as f32;
        let fy = ((y - self.y.0) / (self.y.1 - self.y.0)) as f32;
        (l + fx * (r - l), b - fy * (b - t))
    }

    fn axes(&mut self, title: &str, x_label: &str, y_label: &str) {
        let (l, t, r, b) = self.area();
        let grey = Color::from_rgba8(220, 220, 220, 255);
        let black = Color::from_rgba8(40, 40, 40, 255);
        for i in 0..=5 {
            let f = i as f64 / 5.0;
            let xv = self.x.0 + f * (self.x.1 - self.x.0);
            let yv = self.y.0 + f * (self.y.1 - self.y.0);
            let (px, _) = self.to_px(xv, self.y.0);
            let (_, py) = self.to_px(self.x.0, yv);
            self.segment((px, t), (px, b), grey, 1.0);
            self.segment((l, py), (r, py), grey, 1.0);
            let xl = tick_label(xv, self.x.1 - self.x.0);
            draw_text(
                &mut self.pixmap,
                px - text_width(&xl) / 2.0,
                b + 6.0,
                &xl,
                black,
                false,
            );
            let yl = tick_label(yv, self.y.1 - self.y.0);
            draw_text(
                &mut self.pixmap,
                l - text_width(&yl) - 6.0,
                py - 7.0,
                &yl,
                black,
                false,
            );
        }
        self.segment((l, b), (r, b), black, 1.5);
        self.segment((l, t), (l, b), black, 1.5);
        let w = self.pixmap.width() as f32;
        draw_text(
            &mut self.pixmap,
            (w - text_width(title)) / 2.0,
            10.0,
            title,
            black,
            false,
        );
        draw_text(
            &mut self.pixmap,
            (l + r - text_width(x_label)) / 2.0,
            b + 30.0,
            x_label,
            black,
            false,
        );
        draw_text(
            &mut self.pixmap,
            8.0,
            (t + b + text_width(y_label)) / 2.0,
            y_label,
            black,
            true,
        );
    }

    fn segment(&mut self, a: (f32, f32), b: (f32, f32), color: Color, width: f32) {
        let mut pb = PathBuilder::new();
        pb.move_to(a.0, a.1);
        pb.line_to(b.0, b.1);
        if let Some(path) = pb.finish() {
            let stroke = Stroke {
                width,
                ..Default::default()
            };
            self.pixmap
                .stroke_path(&path, &paint(color), &stroke, Transform::identity(), None);
        }
    }

    /// A polyline through the finite points, with a legend entry.
    pub fn line(&mut self, label: &str, xs: &[f64], ys: &[f64], color: Color) {
        let mut pb = PathBuilder::new();
        let mut started = false;
        for (&x, &y) in xs.iter().zip(ys) {
            if !x.is_finite() || !y.is_finite() {
                continue;
            }
            let (px, py) = self.to_px(x, y);
            if started {
                pb.line_to(px, py);
            } else {
                pb.move_to(px, py);
                started = true;
            }
        }
        if let Some(path) = pb.finish() {
            let stroke = Stroke {
                width: 2.0,
                ..Default::default()
            };
            self.pixmap
                .stroke_path(&path, &paint(color), &stroke, Transform::identity(), None);
        }
        if !label.is_empty() {
            self.legend.push((label.to_string(), color));
        }
    }

    /// A dashed-looking reference line (drawn thin and grey), e.g. the diagonal of a ROC plot.
    pub fn reference(&mut self, a: (f64, f64), b: (f64, f64)) {
        let (pa, pb) = (self.to_px(a.0, a.1), self.to_px(b.0, b.1));
        self.segment(pa, pb, Color::from_rgba8(150, 150, 150, 255), 1.0);
    }

    /// Vertical bars from the x axis, one per `(x_lo, x_hi, height)`.
    pub fn bars(&mut self, label: &str, bars: &[(f64, f64, f64)], color: Color) {
        let mut c = color;
        c.set_alpha(0.6);
        for &(lo, hi, h) in bars {
            if !h.is_finite() || h <= self.y.0 {
                continue;
            }
            let (x0, y0) = self.to_px(lo, h);
            let (x1, y1) = self.to_px(hi, self.y.0);
            if let Some(rect) = Rect::from_ltrb(x0 + 1.0, y0, x1 - 1.0, y1) {
                let mut pb = PathBuilder::new();
                pb.push_rect(rect);
                if let Some(path) = pb.finish() {
                    self.pixmap.fill_path(
                        &path,
                        &paint(c),
                        FillRule::Winding,
                        Transform::identity(),
                        None,
                    );
                }
            }
        }
        if !label.is_empty() {
            self.legend.push((label.to_string(), color));
        }
    }

    /// Writes the PNG (legend drawn last, top-left inside the plot area).
    pub fn save_png(mut self, path: &Path) -> Result<(), PlotError> {
        let (l, t, _, _) = self.area();
        let legend = std::mem::take(&mut self.legend);
        for (i, (label, color)) in legend.iter().enumerate() {
            let y = t + 8.0 + i as f32 * 20.0;
            if let Some(rect) = Rect::from_xywh(l + 10.0, y, 14.0, 14.0) {
                self.pixmap
                    .fill_rect(rect, &paint(*color), Transform::identity(), None);
            }
            draw_text(
                &mut self.pixmap,
                l + 30.0,
                y,
                label,
                Color::from_rgba8(40, 40, 40, 255),
                false,
            );
        }
        write_png(&self.pixmap, path)
    }
}

fn write_png(pm: &Pixmap, path: &Path) -> Result<(), PlotError> {
    pm.save_png(path).map_err(|e| PlotError::Write {
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

/// A labelled matrix of counts (e.g. a confusion matrix), shaded by value.
pub fn matrix_png(
    path: &Path,
    title: &str,
    rows: &[&str],
    cols: &[&str],
    values: &[Vec<u64>],
) -> Result<(), PlotError> {
    let cell = 120.0f32;
    let (left, top) = (150.0f32, 70.0f32);
    let w = (left + cell * cols.len() as f32 + 20.0) as u32;
    let h = (top + cell * rows.len() as f32 + 20.0) as u32;
    let mut pm = Pixmap::new(w, h).ok_or(PlotError::Size(w, h))?;
    pm.fill(Color::WHITE);
    let black = Color::from_rgba8(40, 40, 40, 255);
    draw_text(&mut pm, 10.0, 10.0, title, black, false);
    let max = values.iter().flatten().copied().max().unwrap_or(1).max(1) as f32;
    for (j, c) in cols.iter().enumerate() {
        draw_text(
            &mut pm,
            left + j as f32 * cell + 8.0,
            top - 22.0,
            c,
            black,
            false,
        );
    }
    for (i, r) in rows.iter().enumerate() {
        draw_text(
            &mut pm,
            10.0,
            top + i as f32 * cell + cell / 2.0 - 7.0,
            r,
            black,
            false,
        );
        for (j, _) in cols.iter().enumerate() {
            let v = values
                .get(i)
                .and_then(|row| row.get(j))
                .copied()
                .unwrap_or(0);
            let shade = 1.0 - 0.75 * v as f32 / max;
            let (r0, g0, b0) = PALETTE[0];
            let mix = |c: u8| (c as f32 + (255.0 - c as f32) * shade) as u8;
            let fill = Color::from_rgba8(mix(r0), mix(g0), mix(b0), 255);
            if let Some(rect) = Rect::from_xywh(
                left + j as f32 * cell + 2.0,
                top + i as f32 * cell + 2.0,
                cell - 4.0,
                cell - 4.0,
            ) {
                pm.fill_rect(rect, &paint(fill), Transform::identity(), None);
            }
            let text = v.to_string();
            let color = if shade < 0.5 { Color::WHITE } else { black };
            draw_text(
                &mut pm,
                left + j as f32 * cell + (cell - text_width(&text)) / 2.0,
                top + i as f32 * cell + cell / 2.0 - 7.0,
                &text,
                color,
                false,
            );
        }
    }
    write_png(&pm, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_chart_draws_its_series_in_colour() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Chart::new(400, 300, "ROC", "FPR", "TPR", (0.0, 1.0), (0.0, 1.0)).unwrap();
        c.line("head", &[0.0, 0.5, 1.0], &[0.0, 0.9, 1.0], series_color(0));
        let p = dir.path().join("a.png");
        c.save_png(&p).unwrap();
        let img = image::open(&p).unwrap().to_rgb8();
        let (r, g, b) = PALETTE[0];
        let coloured = img.pixels().filter(|px| px.0 == [r, g, b]).count();
        assert!(coloured > 100, "{coloured} series pixels");
        assert!(Chart::new(10, 10, "", "", "", (0.0, 1.0), (0.0, 1.0)).is_err());
    }
}
