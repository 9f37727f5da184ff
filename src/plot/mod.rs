//! Charts for the reports a person opens (training, evaluation, mining, the nightly run): line
//! charts, bars and an annotated matrix, as SVG inlined into the report's HTML. The browser draws
//! the text with its own fonts, so no font ships with the project and the report is one
//! self-contained file that needs no network.

use std::fmt::Write as _;

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("chart size {0}×{1} is not drawable")]
    Size(u32, u32),
}

/// A colour-blind-safe palette (Okabe–Ito), for series in order.
pub const PALETTE: [&str; 6] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9",
];

/// The i-th series colour.
pub fn series_color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

const MARGIN_L: f64 = 64.0;
const MARGIN_R: f64 = 16.0;
const MARGIN_T: f64 = 36.0;
const MARGIN_B: f64 = 48.0;

/// Escapes text for SVG/HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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

/// A chart with axes mapping data coordinates onto an SVG viewport.
pub struct Chart {
    width: f64,
    height: f64,
    x: (f64, f64),
    y: (f64, f64),
    title: String,
    body: String,
    legend: Vec<(String, &'static str)>,
}

impl Chart {
    /// A chart with a title, axis labels and the data ranges of both axes.
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
        let fix = |(a, b): (f64, f64)| {
            let (a, b) = if a.is_finite() && b.is_finite() {
                (a, b)
            } else {
                (0.0, 1.0)
            };
            if b > a { (a, b) } else { (a - 0.5, a + 0.5) }
        };
        let mut c = Self {
            width: width as f64,
            height: height as f64,
            x: fix(x),
            y: fix(y),
            title: title.to_string(),
            body: String::new(),
            legend: Vec::new(),
        };
        c.axes(x_label, y_label);
        Ok(c)
    }

    fn to_px(&self, x: f64, y: f64) -> (f64, f64) {
        let w = self.width - MARGIN_L - MARGIN_R;
        let h = self.height - MARGIN_T - MARGIN_B;
        (
            MARGIN_L + (x - self.x.0) / (self.x.1 - self.x.0) * w,
            MARGIN_T + h - (y - self.y.0) / (self.y.1 - self.y.0) * h,
        )
    }

    fn axes(&mut self, x_label: &str, y_label: &str) {
        let (x0, y0) = self.to_px(self.x.0, self.y.0);
        let (x1, y1) = self.to_px(self.x.1, self.y.1);
        let b = &mut self.body;
        let _ = write!(
            b,
            r##"<rect x="{x0:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
            x1 - x0,
            y0 - y1
        );
        for i in 0..=5 {
            let f = i as f64 / 5.0;
            let (vx, vy) = (
                self.x.0 + f * (self.x.1 - self.x.0),
                self.y.0 + f * (self.y.1 - self.y.0),
            );
            let px = x0 + f * (x1 - x0);
            let py = y0 + f * (y1 - y0);
            let _ = write!(
                b,
                r##"<line x1="{px:.1}" y1="{y1:.1}" x2="{px:.1}" y2="{y0:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text><line x1="{x0:.1}" y1="{py:.1}" x2="{x1:.1}" y2="{py:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                y0 + 16.0,
                tick_label(vx, self.x.1 - self.x.0),
                x0 - 6.0,
                py + 4.0,
                tick_label(vy, self.y.1 - self.y.0),
            );
        }
        let _ = write!(
            b,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            self.height - 8.0,
            esc(x_label),
            (y0 + y1) / 2.0,
            esc(y_label)
        );
    }

    /// A polyline through the finite points of a series.
    pub fn line(&mut self, label: &str, xs: &[f64], ys: &[f64], color: &'static str) {
        let pts: Vec<String> = xs
            .iter()
            .zip(ys)
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(&x, &y)| {
                let (px, py) = self.to_px(x, y);
                format!("{px:.1},{py:.1}")
            })
            .collect();
        if !pts.is_empty() {
            let _ = write!(
                self.body,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                pts.join(" ")
            );
        }
        self.legend.push((label.to_string(), color));
    }

    /// Dots at the finite points of a series (a scatter plot; `r` in pixels).
    pub fn points(&mut self, label: &str, xs: &[f64], ys: &[f64], color: &'static str, r: f64) {
        for (&x, &y) in xs
            .iter()
            .zip(ys)
            .filter(|(x, y)| x.is_finite() && y.is_finite())
        {
            let (px, py) = self.to_px(x, y);
            let _ = write!(
                self.body,
                r#"<circle cx="{px:.1}" cy="{py:.1}" r="{r:.1}" fill="{color}" opacity="0.7"/>"#
            );
        }
        self.legend.push((label.to_string(), color));
    }

    /// A dashed grey reference segment (the diagonal of ROC and reliability charts).
    pub fn reference(&mut self, a: (f64, f64), b: (f64, f64)) {
        let (ax, ay) = self.to_px(a.0, a.1);
        let (bx, by) = self.to_px(b.0, b.1);
        let _ = write!(
            self.body,
            r##"<line x1="{ax:.1}" y1="{ay:.1}" x2="{bx:.1}" y2="{by:.1}" stroke="#999" stroke-dasharray="4 4"/>"##
        );
    }

    /// Bars `(x_from, x_to, height)` from the x axis.
    pub fn bars(&mut self, label: &str, bars: &[(f64, f64, f64)], color: &'static str) {
        for &(a, b, h) in bars
            .iter()
            .filter(|b| b.0.is_finite() && b.1.is_finite() && b.2.is_finite())
        {
            let (x0, y0) = self.to_px(a, self.y.0.max(0.0).min(self.y.1));
            let (x1, y1) = self.to_px(b, h);
            let _ = write!(
                self.body,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}" opacity="0.8"/>"#,
                x0.min(x1),
                y0.min(y1),
                (x1 - x0).abs(),
                (y1 - y0).abs()
            );
        }
        self.legend.push((label.to_string(), color));
    }

    /// The chart as an `<svg>` element.
    pub fn to_svg(&self) -> String {
        let mut s = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12" role="img"><title>{t}</title><rect width="{w}" height="{h}" fill="white"/><text x="{cx}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{t}</text>"#,
            w = self.width,
            h = self.height,
            cx = self.width / 2.0,
            t = esc(&self.title),
        );
        s.push_str(&self.body);
        if !self.legend.is_empty() {
            // A white box under the legend keeps it readable over dense scatter plots.
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="166" height="{:.1}" fill="white" opacity="0.85"/>"#,
                self.width - MARGIN_R - 174.0,
                MARGIN_T + 2.0,
                18.0 * self.legend.len() as f64 + 4.0
            );
        }
        for (i, (label, color)) in self.legend.iter().enumerate() {
            let y = MARGIN_T + 14.0 + 18.0 * i as f64;
            let x = self.width - MARGIN_R - 170.0;
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="14" height="4" fill="{color}"/><text x="{:.1}" y="{y:.1}">{}</text>"#,
                y - 6.0,
                x + 20.0,
                esc(label)
            );
        }
        s.push_str("</svg>");
        s
    }
}

/// An annotated matrix (a confusion matrix): one cell per value, shaded by its share of the
/// largest, with the count written in it.
pub fn matrix_svg(title: &str, rows: &[&str], cols: &[&str], values: &[Vec<u64>]) -> String {
    let cell = 90.0;
    let (left, top) = (100.0, 60.0);
    let w = left + cell * cols.len() as f64 + 20.0;
    let h = top + cell * rows.len() as f64 + 20.0;
    let max = values.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="13" role="img"><title>{t}</title><rect width="{w}" height="{h}" fill="white"/><text x="{cx}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{t}</text>"#,
        cx = w / 2.0,
        t = esc(title)
    );
    for (j, c) in cols.iter().enumerate() {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            left + cell * (j as f64 + 0.5),
            top - 8.0,
            esc(c)
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let y = top + cell * i as f64;
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + cell / 2.0 + 4.0,
            esc(r)
        );
        for j in 0..cols.len() {
            let v = values
                .get(i)
                .and_then(|row| row.get(j))
                .copied()
                .unwrap_or(0);
            let share = v as f64 / max;
            let x = left + cell * j as f64;
            let ink = if share > 0.5 { "white" } else { "black" };
            let _ = write!(
                s,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{cell}" height="{cell}" fill="#0072b2" fill-opacity="{:.3}" stroke="#ccc"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="{ink}" font-size="16">{v}</text>"##,
                0.08 + 0.92 * share,
                x + cell / 2.0,
                y + cell / 2.0 + 5.0
            );
        }
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_chart_is_svg_with_its_series_axes_and_escaped_text() {
        let mut c =
            Chart::new(400, 300, "ROC <a&b>", "FPR", "TPR", (0.0, 1.0), (0.0, 1.0)).unwrap();
        c.line(
            "head",
            &[0.0, 0.5, f64::NAN, 1.0],
            &[0.0, 0.9, 0.2, 1.0],
            series_color(0),
        );
        let svg = c.to_svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains(&format!("stroke=\"{}\"", PALETTE[0])));
        // Three finite points (the NaN one is dropped), mapped into the plot area.
        let pts = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(pts.split(' ').count(), 3, "{pts}");
        assert!(svg.contains("ROC &lt;a&amp;b&gt;") && !svg.contains("<a&b>"));
        assert!(Chart::new(10, 10, "", "", "", (0.0, 1.0), (0.0, 1.0)).is_err());
    }

    #[test]
    fn a_matrix_writes_every_count() {
        let svg = matrix_svg("c", &["a", "b"], &["x", "y"], &[vec![7, 0], vec![3, 12]]);
        for v in [">7<", ">0<", ">3<", ">12<"] {
            assert!(svg.contains(v), "{v}");
        }
    }
}
