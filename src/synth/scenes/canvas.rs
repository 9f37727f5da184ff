//! A pinhole camera over a flat ground plane and a painter on a tiny-skia pixmap.
//!
//! World coordinates are metres: `x` to the right of the camera, `y` up from the ground, `z` ahead.
//! Objects are drawn as "sprites": paths in metres, placed at a ground point and scaled by the
//! perspective factor `f / z`, so size and position shrink together toward the horizon.

use tiny_skia::{
    BlendMode, Color, FillRule, GradientStop, LinearGradient, Paint, Path, PathBuilder, Pixmap,
    Point, RadialGradient, Shader, SpreadMode, Stroke, Transform,
};

/// How a surface answers light. Retroreflective surfaces (cone sleeves, vests, signs, barrier
/// boards) send headlight back to the camera, so at night they stay bright while asphalt goes dark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Material {
    Matte,
    Retroreflective,
}

/// An sRGB colour with alpha, 0–255.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rgba(pub u8, pub u8, pub u8, pub u8);

impl Rgba {
    pub const fn rgb(r: u8, g: u8, b: u8) -> Self {
        Rgba(r, g, b, 255)
    }

    pub fn with_alpha(self, a: u8) -> Self {
        Rgba(self.0, self.1, self.2, a)
    }

    /// Scales brightness (night, shade) without touching alpha.
    pub fn shade(self, k: f32) -> Self {
        let c = |v: u8| (v as f32 * k).clamp(0.0, 255.0) as u8;
        Rgba(c(self.0), c(self.1), c(self.2), self.3)
    }

    /// Linear mix toward `other` by `t` in [0,1] (fog, haze).
    pub fn mix(self, other: Rgba, t: f32) -> Self {
        let t = t.clamp(0.0, 1.0);
        let m = |a: u8, b: u8| (a as f32 * (1.0 - t) + b as f32 * t) as u8;
        Rgba(
            m(self.0, other.0),
            m(self.1, other.1),
            m(self.2, other.2),
            self.3,
        )
    }

    fn color(self) -> Color {
        Color::from_rgba8(self.0, self.1, self.2, self.3)
    }
}

/// Where the camera is and how it sees.
#[derive(Debug, Clone, Copy)]
pub struct Camera {
    pub width: f32,
    pub height: f32,
    /// Screen row of the horizon, pixels.
    pub horizon: f32,
    /// Focal length, pixels.
    pub focal: f32,
    /// Camera height above the road, metres.
    pub cam_height: f32,
}

impl Camera {
    /// Screen position of a world point.
    pub fn project(&self, x: f32, y: f32, z: f32) -> (f32, f32) {
        let z = z.max(0.05);
        (
            self.width / 2.0 + self.focal * x / z,
            self.horizon + self.focal * (self.cam_height - y) / z,
        )
    }

    /// Pixels per metre at distance `z`.
    pub fn scale(&self, z: f32) -> f32 {
        self.focal / z.max(0.05)
    }
}

/// The image being painted: the scene, plus a layer holding only the retroreflective surfaces that
/// remain visible (a matte surface drawn in front erases them from it).
pub struct Canvas {
    pub pix: Pixmap,
    pub reflective: Pixmap,
    pub cam: Camera,
    /// Material of what is drawn next.
    pub material: Material,
    reflective_used: bool,
}

fn paint(c: Rgba) -> Paint<'static> {
    let mut p = Paint::default();
    p.set_color(c.color());
    p.anti_alias = true;
    p
}

fn poly_path(pts: &[(f32, f32)]) -> Option<Path> {
    let (first, rest) = pts.split_first()?;
    let mut pb = PathBuilder::new();
    pb.move_to(first.0, first.1);
    for p in rest {
        pb.line_to(p.0, p.1);
    }
    pb.close();
    pb.finish()
}

fn stops(s: &[(f32, Rgba)]) -> Vec<GradientStop> {
    s.iter()
        .map(|(t, c)| GradientStop::new(*t, c.color()))
        .collect()
}

impl Canvas {
    /// A blank canvas (`None` when the size is zero).
    pub fn new(cam: Camera) -> Option<Self> {
        let pix = Pixmap::new(cam.width as u32, cam.height as u32)?;
        let reflective = Pixmap::new(cam.width as u32, cam.height as u32)?;
        Some(Self {
            pix,
            reflective,
            cam,
            material: Material::Matte,
            reflective_used: false,
        })
    }

    /// Fills `path` on the scene and keeps the reflective layer in step with the material.
    fn fill(&mut self, path: &Path, c: Rgba) {
        let p = paint(c);
        let id = Transform::identity();
        self.pix.fill_path(path, &p, FillRule::Winding, id, None);
        match self.material {
            Material::Retroreflective => {
                self.reflective_used = true;
                self.reflective
                    .fill_path(path, &p, FillRule::Winding, id, None);
            }
            Material::Matte if self.reflective_used && c.3 == 255 => {
                let mut erase = paint(c);
                erase.blend_mode = BlendMode::Clear;
                self.reflective
                    .fill_path(path, &erase, FillRule::Winding, id, None);
            }
            Material::Matte => {}
        }
    }

    /// Fills a screen-space polygon.
    pub fn poly(&mut self, pts: &[(f32, f32)], c: Rgba) {
        if let Some(path) = poly_path(pts) {
            self.fill(&path, c);
        }
    }

    /// Fills a screen-space rectangle.
    pub fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, c: Rgba) {
        self.poly(&[(x0, y0), (x1, y0), (x1, y1), (x0, y1)], c);
    }

    /// Fills a screen-space circle.
    pub fn circle(&mut self, cx: f32, cy: f32, r: f32, c: Rgba) {
        if let Some(path) = PathBuilder::from_circle(cx, cy, r.max(0.1)) {
            self.fill(&path, c);
        }
    }

    /// Strokes a screen-space segment.
    pub fn line(&mut self, a: (f32, f32), b: (f32, f32), width: f32, c: Rgba) {
        let mut pb = PathBuilder::new();
        pb.move_to(a.0, a.1);
        pb.line_to(b.0, b.1);
        let stroke = Stroke {
            width: width.max(0.3),
            ..Stroke::default()
        };
        if let Some(outline) = pb.finish().and_then(|p| p.stroke(&stroke, 1.0)) {
            self.fill(&outline, c);
        }
    }

    /// Fills a band of rows with a vertical gradient.
    pub fn vgradient(&mut self, y0: f32, y1: f32, s: &[(f32, Rgba)]) {
        let w = self.cam.width;
        let shader = LinearGradient::new(
            Point::from_xy(0.0, y0),
            Point::from_xy(0.0, y1.max(y0 + 1.0)),
            stops(s),
            SpreadMode::Pad,
            Transform::identity(),
        );
        self.fill_shader(&[(0.0, y0), (w, y0), (w, y1), (0.0, y1)], shader);
    }

    /// A soft round light: `c` at the centre fading to transparent at radius `r`.
    pub fn glow(&mut self, cx: f32, cy: f32, r: f32, c: Rgba) {
        if r < 0.5 {
            return;
        }
        let shader = RadialGradient::new(
            Point::from_xy(cx, cy),
            Point::from_xy(cx, cy),
            r,
            stops(&[(0.0, c), (1.0, c.with_alpha(0))]),
            SpreadMode::Pad,
            Transform::identity(),
        );
        self.fill_shader(
            &[
                (cx - r, cy - r),
                (cx + r, cy - r),
                (cx + r, cy + r),
                (cx - r, cy + r),
            ],
            shader,
        );
    }

    fn fill_shader(&mut self, pts: &[(f32, f32)], shader: Option<Shader<'static>>) {
        let (Some(shader), Some(path)) = (shader, poly_path(pts)) else {
            return;
        };
        let p = Paint {
            shader,
            anti_alias: true,
            ..Paint::default()
        };
        self.pix
            .fill_path(&path, &p, FillRule::Winding, Transform::identity(), None);
    }

    /// Fills a world-space polygon (points in metres).
    pub fn world_poly(&mut self, pts: &[(f32, f32, f32)], c: Rgba) {
        let screen: Vec<(f32, f32)> = pts
            .iter()
            .map(|&(x, y, z)| self.cam.project(x, y, z))
            .collect();
        self.poly(&screen, c);
    }

    /// A painter for an object standing on the ground at `(x, z)`, drawn in metres facing the camera.
    pub fn sprite(&mut self, x: f32, z: f32) -> Sprite<'_> {
        let (bx, by) = self.cam.project(x, 0.0, z);
        let s = self.cam.scale(z);
        self.material = Material::Matte;
        Sprite {
            canvas: self,
            bx,
            by,
            s,
        }
    }
}

/// Draws in metres relative to a ground anchor; `y` points up.
pub struct Sprite<'a> {
    canvas: &'a mut Canvas,
    bx: f32,
    by: f32,
    /// Pixels per metre.
    pub s: f32,
}

impl Sprite<'_> {
    /// Sets the material of what this sprite draws next.
    pub fn material(&mut self, m: Material) {
        self.canvas.material = m;
    }

    fn at(&self, dx: f32, dy: f32) -> (f32, f32) {
        (self.bx + dx * self.s, self.by - dy * self.s)
    }

    /// Polygon in metres.
    pub fn poly(&mut self, pts: &[(f32, f32)], c: Rgba) {
        let screen: Vec<(f32, f32)> = pts.iter().map(|&(x, y)| self.at(x, y)).collect();
        self.canvas.poly(&screen, c);
    }

    /// Axis-aligned box from (x0, y0) to (x1, y1), metres.
    pub fn rect(&mut self, x0: f32, y0: f32, x1: f32, y1: f32, c: Rgba) {
        self.poly(&[(x0, y0), (x1, y0), (x1, y1), (x0, y1)], c);
    }

    /// Circle in metres.
    pub fn circle(&mut self, x: f32, y: f32, r: f32, c: Rgba) {
        let (cx, cy) = self.at(x, y);
        self.canvas.circle(cx, cy, r * self.s, c);
    }

    /// Segment in metres with a width in metres.
    pub fn line(&mut self, a: (f32, f32), b: (f32, f32), width: f32, c: Rgba) {
        let (pa, pb) = (self.at(a.0, a.1), self.at(b.0, b.1));
        self.canvas.line(pa, pb, width * self.s, c);
    }
}
