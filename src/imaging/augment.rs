//! The validators' image augmentation before 2026-05-03 (`apply_augmentation_by_level`, DESIGN.md
//! §5), reproduced with its quirks so that evaluation and training see what validators sent.
//!
//! A challenge image got one of four levels with probability ¼ each:
//! - **0**: centre crop to a square, resize to 224 (from 2026-04-06: letterbox to 224 on black);
//! - **1**: rotation by U(−20°, 20°) about the centre with *nearest* sampling, black corners and no
//!   expansion (the bilinear mode the code asks for is never passed on), then a square
//!   RandomResizedCrop to 224 with area share U(0.2, 1) (bilinear, antialiased); the horizontal and
//!   vertical flips of the code never fire;
//! - **2**: level 1, then colour saturation (CS), colour contrast (CC) and "JPEG" (down- and
//!   up-sampling, not compression), each at a strength drawn from {0, 1};
//! - **3**: level 1, then CS, CC, "JPEG", Gaussian noise in YCbCr (GNC) and Gaussian blur (GB),
//!   each at a strength drawn from {0, 1, 2}.
//!
//! Strength 0 is off; 1 and 2 are the first two DeeperForensics parameters: CS chroma × 0.4 / 0.3,
//! CC pixels × 0.85 / 0.725, "JPEG" bilinear down ×2 / ×3 and back up, GNC variance 0.001 / 0.002,
//! GB kernel 7 / 9 with σ = k/6. Each distortion that runs first truncates the float image to 8
//! bits (`(x·255) as u8`), works on those, and goes back to float; the result is truncated to 8
//! bits once more and sent as JPEG quality 75. The random draws come from one ChaCha8 stream per
//! seed, so a (image, seed) pair always gives the same picture; the validators' own Python RNG
//! streams cannot be reproduced and are not meant to be.

use image::imageops::FilterType;
use image::{ImageBuffer, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The side of every augmented image.
pub const SIDE: u32 = 224;
/// The JPEG quality validators sent augmented images at.
pub const JPEG_QUALITY: u8 = 75;

type Rgb32 = ImageBuffer<Rgb<f32>, Vec<f32>>;

/// One DeeperForensics distortion family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distortion {
    /// Chroma scaled towards grey in YCbCr.
    ColorSaturation,
    /// Every channel scaled down (a darkening).
    ColorContrast,
    /// Bilinear down-sampling and up-sampling again (named "JPEG" by the validator).
    Resample,
    /// Gaussian noise added in YCbCr.
    GaussianNoise,
    /// Gaussian blur.
    GaussianBlur,
}

impl Distortion {
    pub const ALL: [Distortion; 5] = [
        Distortion::ColorSaturation,
        Distortion::ColorContrast,
        Distortion::Resample,
        Distortion::GaussianNoise,
        Distortion::GaussianBlur,
    ];

    /// The validator's short name.
    pub fn code(self) -> &'static str {
        match self {
            Distortion::ColorSaturation => "CS",
            Distortion::ColorContrast => "CC",
            Distortion::Resample => "JPEG",
            Distortion::GaussianNoise => "GNC",
            Distortion::GaussianBlur => "GB",
        }
    }

    /// The parameter at strength 1 or 2 (`None` for 0, off).
    pub fn parameter(self, strength: u8) -> Option<f64> {
        let table: [f64; 2] = match self {
            Distortion::ColorSaturation => [0.4, 0.3],
            Distortion::ColorContrast => [0.85, 0.725],
            Distortion::Resample => [2.0, 3.0],
            Distortion::GaussianNoise => [0.001, 0.002],
            Distortion::GaussianBlur => [7.0, 9.0],
        };
        match strength {
            1 | 2 => Some(table[strength as usize - 1]),
            _ => None,
        }
    }

    /// Applies this distortion at `strength` to an 8-bit image.
    pub fn apply(self, img: &RgbImage, strength: u8, rng: &mut ChaCha8Rng) -> RgbImage {
        let Some(p) = self.parameter(strength) else {
            return img.clone();
        };
        match self {
            Distortion::ColorSaturation => saturation(img, p),
            Distortion::ColorContrast => contrast(img, p),
            Distortion::Resample => resample(img, p as u32),
            Distortion::GaussianNoise => noise(img, p, rng),
            Distortion::GaussianBlur => blur(img, p as usize),
        }
    }
}

/// What one augmentation did: enough to report metrics per level and distortion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub level: u8,
    /// Level 0 after 2026-04-06: letterbox instead of centre crop.
    pub letterbox: bool,
    /// Rotation in degrees, counter-clockwise (levels 1–3).
    pub angle: Option<f32>,
    /// The square crop `(top, left, side)` of the rotated image (levels 1–3).
    pub crop: Option<(u32, u32, u32)>,
    /// Distortions that ran, with their strength (1 or 2), in order.
    pub distortions: Vec<(Distortion, u8)>,
}

/// A level drawn as the validator drew it: 0–3 with probability ¼ each.
pub fn draw_level(rng: &mut ChaCha8Rng) -> u8 {
    rng.random_range(0..4u8)
}

/// Augments `img` at `level` (0–3; larger is clamped to 3) as a validator did on the day whose
/// level 0 was a letterbox (`letterbox`) or a centre crop. Returns the 224² 8-bit image before
/// the JPEG step ([`to_jpeg`]) and what was applied.
pub fn augment(img: &RgbImage, level: u8, letterbox: bool, seed: u64) -> (RgbImage, Applied) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let level = level.min(3);
    let mut applied = Applied {
        level,
        letterbox: letterbox && level == 0,
        angle: None,
        crop: None,
        distortions: Vec::new(),
    };
    if level == 0 {
        let out = if letterbox {
            letterbox_224(img)
        } else {
            centre_crop_224(img)
        };
        return (out, applied);
    }
    let angle = rng.random_range(-20.0f32..=20.0);
    let rotated = rotate_nearest(&to_float(img), angle);
    let (top, left, side) = square_crop(rotated.width(), rotated.height(), &mut rng);
    let crop = image::imageops::crop_imm(&rotated, left, top, side, side).to_image();
    let mut x = image::imageops::resize(&crop, SIDE, SIDE, FilterType::Triangle);
    applied.angle = Some(angle);
    applied.crop = Some((top, left, side));
    let (families, max): (&[Distortion], u8) = match level {
        1 => (&[], 0),
        2 => (&Distortion::ALL[..3], 1),
        _ => (&Distortion::ALL, 2),
    };
    for &d in families {
        let strength = rng.random_range(0..=max);
        if strength > 0 {
            x = to_float(&d.apply(&truncate(&x), strength, &mut rng));
            applied.distortions.push((d, strength));
        }
    }
    (truncate(&x), applied)
}

/// The image as validators sent it: JPEG at quality 75.
pub fn to_jpeg(img: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY).encode_image(img)?;
    Ok(out)
}

fn to_float(img: &RgbImage) -> Rgb32 {
    ImageBuffer::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y).0;
        Rgb(p.map(|v| v as f32 / 255.0))
    })
}

/// `(x · 255)` truncated to 8 bits, as numpy's `astype(np.uint8)` of an image in [0, 1].
fn truncate(img: &Rgb32) -> RgbImage {
    ImageBuffer::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y).0;
        Rgb(p.map(|v| (v * 255.0).clamp(0.0, 255.0) as u8))
    })
}

fn centre_crop_224(img: &RgbImage) -> RgbImage {
    let side = img.width().min(img.height()).max(1);
    let left = (img.width() - side) / 2;
    let top = (img.height() - side) / 2;
    let sq = image::imageops::crop_imm(img, left, top, side, side).to_image();
    image::imageops::resize(&sq, SIDE, SIDE, FilterType::Triangle)
}

fn letterbox_224(img: &RgbImage) -> RgbImage {
    let (w, h) = (img.width().max(1), img.height().max(1));
    let scale = SIDE as f64 / w.max(h) as f64;
    let nw = ((w as f64 * scale).round() as u32).clamp(1, SIDE);
    let nh = ((h as f64 * scale).round() as u32).clamp(1, SIDE);
    let inner = image::imageops::resize(img, nw, nh, FilterType::Triangle);
    let mut out = RgbImage::new(SIDE, SIDE);
    image::imageops::overlay(
        &mut out,
        &inner,
        ((SIDE - nw) / 2) as i64,
        ((SIDE - nh) / 2) as i64,
    );
    out
}

/// Counter-clockwise rotation about the centre, nearest sample, black outside, same size.
fn rotate_nearest(img: &Rgb32, degrees: f32) -> Rgb32 {
    let (w, h) = (img.width(), img.height());
    let (s, c) = (degrees as f64).to_radians().sin_cos();
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    ImageBuffer::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
        let sx = (cx + c * dx - s * dy).floor();
        let sy = (cy + s * dx + c * dy).floor();
        if sx < 0.0 || sy < 0.0 || sx >= w as f64 || sy >= h as f64 {
            Rgb([0.0; 3])
        } else {
            *img.get_pixel(sx as u32, sy as u32)
        }
    })
}

/// torchvision's RandomResizedCrop parameters with ratio (1, 1) and scale (0.2, 1): ten tries
/// at a square of U(0.2, 1) of the area placed uniformly, else the centred largest square.
fn square_crop(w: u32, h: u32, rng: &mut ChaCha8Rng) -> (u32, u32, u32) {
    let area = w as f64 * h as f64;
    for _ in 0..10 {
        let side = (area * rng.random_range(0.2..1.0f64)).sqrt().round() as u32;
        if side > 0 && side <= w && side <= h {
            let top = rng.random_range(0..=h - side);
            let left = rng.random_range(0..=w - side);
            return (top, left, side);
        }
    }
    let side = w.min(h).max(1);
    ((h - side) / 2, (w - side) / 2, side)
}

fn map_pixels(img: &RgbImage, f: impl Fn([f64; 3]) -> [f64; 3]) -> RgbImage {
    ImageBuffer::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y).0.map(|v| v as f64);
        Rgb(f(p).map(|v| v.clamp(0.0, 255.0) as u8))
    })
}

/// OpenCV's float YCrCb (with its float offset ½) and the inverse, as the validator's
/// `bgr2ycbcr`/`ycbcr2bgr` pair computes them on 0–255 floats.
fn to_ycc([r, g, b]: [f64; 3]) -> [f64; 3] {
    let y = 0.299 * r + 0.587 * g + 0.114 * b;
    [y, (r - y) * 0.713 + 0.5, (b - y) * 0.564 + 0.5]
}

fn from_ycc([y, cr, cb]: [f64; 3]) -> [f64; 3] {
    let (cr, cb) = (cr - 0.5, cb - 0.5);
    [y + 1.403 * cr, y - 0.714 * cr - 0.344 * cb, y + 1.773 * cb]
}

/// CS: chroma scaled by `p` in the validator's studio-range YCbCr. Scaling `(c·224 + 16)/255`
/// around ½ and back leaves chroma `p·c + (1 − p)·111.5/224` (OpenCV units), the small offset
/// included.
fn saturation(img: &RgbImage, p: f64) -> RgbImage {
    let rest = (1.0 - p) * (111.5 / 224.0);
    map_pixels(img, |px| {
        let [y, cr, cb] = to_ycc(px);
        from_ycc([y, p * cr + rest, p * cb + rest])
    })
}

/// CC: every channel times `p`, truncated.
fn contrast(img: &RgbImage, p: f64) -> RgbImage {
    map_pixels(img, |px| px.map(|v| (v * p).floor()))
}

/// OpenCV's `INTER_LINEAR` resize (half-pixel centres, edge clamp, no antialiasing), rounded.
fn linear_resize(img: &RgbImage, nw: u32, nh: u32) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let (sx, sy) = (w as f64 / nw as f64, h as f64 / nh as f64);
    let axis = |d: u32, scale: f64, n: u32| {
        let f = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
        let i = (f.floor() as u32).min(n - 1);
        let j = (i + 1).min(n - 1);
        (i, j, f - i as f64)
    };
    ImageBuffer::from_fn(nw, nh, |x, y| {
        let (x0, x1, fx) = axis(x, sx, w);
        let (y0, y1, fy) = axis(y, sy, h);
        let px = |xx, yy| img.get_pixel(xx, yy).0.map(|v| v as f64);
        let (a, b, c, d) = (px(x0, y0), px(x1, y0), px(x0, y1), px(x1, y1));
        let mut out = [0u8; 3];
        for k in 0..3 {
            let top = a[k] + (b[k] - a[k]) * fx;
            let bottom = c[k] + (d[k] - c[k]) * fx;
            out[k] = (top + (bottom - top) * fy).round().clamp(0.0, 255.0) as u8;
        }
        Rgb(out)
    })
}

/// "JPEG": down by `factor` (integer division of the size) and back up, both bilinear.
fn resample(img: &RgbImage, factor: u32) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let (dw, dh) = ((w / factor).max(1), (h / factor).max(1));
    linear_resize(&linear_resize(img, dw, dh), w, h)
}

/// A standard normal draw (Box–Muller).
fn gauss(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// GNC: Gaussian noise of variance `var` added to the validator's studio-range YCbCr. Its
/// `/255 … ·255` around the noise makes that noise `255·√var` in studio units, i.e.
/// `255·√var·255/219` on luma and `·255/224` on chroma in 0–255 units; clipped and truncated.
fn noise(img: &RgbImage, var: f64, rng: &mut ChaCha8Rng) -> RgbImage {
    let s = 255.0 * var.sqrt();
    let (ky, kc) = (s * 255.0 / 219.0, s * 255.0 / 224.0);
    ImageBuffer::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y).0.map(|v| v as f64);
        let [l, cr, cb] = to_ycc(p);
        let (nl, ncb, ncr) = (gauss(rng), gauss(rng), gauss(rng));
        let out = from_ycc([l + ky * nl, cr + kc * ncr, cb + kc * ncb]);
        Rgb(out.map(|v| v.clamp(0.0, 255.0) as u8))
    })
}

/// GB: OpenCV's Gaussian blur with a `k × k` kernel, σ = k/6, reflect-101 borders, rounded.
fn blur(img: &RgbImage, k: usize) -> RgbImage {
    let sigma = k as f64 / 6.0;
    let r = (k / 2) as i64;
    let mut kernel: Vec<f64> = (-r..=r)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = kernel.iter().sum();
    kernel.iter_mut().for_each(|v| *v /= sum);
    let reflect = |i: i64, n: i64| -> u32 {
        if n == 1 {
            return 0;
        }
        let period = 2 * (n - 1);
        let m = i.rem_euclid(period);
        (if m < n { m } else { period - m }) as u32
    };
    let (w, h) = (img.width() as i64, img.height() as i64);
    let horizontal: Vec<[f64; 3]> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| {
            let mut acc = [0.0; 3];
            for (t, &kv) in kernel.iter().enumerate() {
                let p = img.get_pixel(reflect(x + t as i64 - r, w), y as u32).0;
                for c in 0..3 {
                    acc[c] += kv * p[c] as f64;
                }
            }
            acc
        })
        .collect();
    ImageBuffer::from_fn(w as u32, h as u32, |x, y| {
        let mut acc = [0.0; 3];
        for (t, &kv) in kernel.iter().enumerate() {
            let yy = reflect(y as i64 + t as i64 - r, h) as i64;
            let p = horizontal[(yy * w + x as i64) as usize];
            for c in 0..3 {
                acc[c] += kv * p[c];
            }
        }
        Rgb(acc.map(|v| v.round().clamp(0.0, 255.0) as u8))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A colourful 320×240 street-like picture.
    fn picture() -> RgbImage {
        RgbImage::from_fn(320, 240, |x, y| {
            let stripe = if (x / 9 + y / 13) % 2 == 0 { 70 } else { 0 };
            Rgb([
                (x * 150 / 320) as u8 + stripe,
                (y * 150 / 240) as u8 + 40,
                200 - stripe,
            ])
        })
    }

    fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(&x, &y)| (x as f64 - y as f64).abs())
            .sum::<f64>()
            / a.as_raw().len() as f64
    }

    #[test]
    fn every_level_gives_224_squares_deterministically_per_seed() {
        let img = picture();
        for level in 0..4u8 {
            let (a, ap) = augment(&img, level, false, 7);
            let (b, bp) = augment(&img, level, false, 7);
            assert_eq!((a.width(), a.height()), (SIDE, SIDE), "level {level}");
            assert_eq!(a, b, "level {level} is not deterministic");
            assert_eq!(ap, bp);
            assert_eq!(ap.level, level);
            assert_eq!(ap.angle.is_some(), level > 0);
            let max = if level == 2 { 1 } else { 2 };
            assert!(ap.distortions.iter().all(|&(_, s)| (1..=max).contains(&s)));
            if level == 2 {
                assert!(
                    ap.distortions
                        .iter()
                        .all(|&(d, _)| Distortion::ALL[..3].contains(&d))
                );
            }
            if level < 2 {
                assert!(ap.distortions.is_empty());
            }
            let jpeg = to_jpeg(&a).unwrap();
            let back = image::load_from_memory(&jpeg).unwrap();
            assert_eq!((back.width(), back.height()), (SIDE, SIDE));
        }
        // Other seeds give other rotations and crops.
        let angles: std::collections::BTreeSet<i64> = (0..20)
            .filter_map(|s| augment(&img, 1, false, s).1.angle)
            .map(|a| (a * 100.0) as i64)
            .collect();
        assert!(angles.len() > 15);
        assert!(
            augment(&img, 1, false, 1)
                .1
                .angle
                .is_some_and(|a| a.abs() <= 20.0)
        );
        // Level 3 over many seeds uses every family at both strengths.
        let mut seen = std::collections::BTreeSet::new();
        for s in 0..60 {
            seen.extend(augment(&img, 3, false, s).1.distortions);
        }
        assert_eq!(seen.len(), 10, "{seen:?}");
    }

    #[test]
    fn level_zero_crops_or_letterboxes_and_rotation_leaves_black_corners() {
        let img = picture();
        let (crop, _) = augment(&img, 0, false, 0);
        assert!(!crate::imaging::has_letterbox_bars(
            &image::DynamicImage::ImageRgb8(crop.clone())
        ));
        let (boxed, applied) = augment(&img, 0, true, 0);
        assert!(applied.letterbox);
        // 4:3 into 224: 168 rows of picture, 28 black rows above and below.
        assert_eq!(boxed.get_pixel(100, 5).0, [0, 0, 0]);
        assert_eq!(boxed.get_pixel(100, 218).0, [0, 0, 0]);
        assert_ne!(boxed.get_pixel(100, 112).0, [0, 0, 0]);
        // A 20° rotation of an all-white image has black corners and a white centre.
        let white = RgbImage::from_pixel(400, 300, Rgb([255; 3]));
        let r = truncate(&rotate_nearest(&to_float(&white), 20.0));
        assert_eq!(r.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(r.get_pixel(399, 299).0, [0, 0, 0]);
        assert_eq!(r.get_pixel(200, 150).0, [255; 3]);
        // Rotating by 0 changes nothing (nearest sampling: no resampling blur).
        assert_eq!(truncate(&rotate_nearest(&to_float(&img), 0.0)), img);
    }

    #[test]
    fn each_distortion_matches_its_definition_and_strength_orders_its_effect() {
        let img = picture();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // CC: exact integer scaling with truncation.
        let cc = Distortion::ColorContrast.apply(&img, 1, &mut rng);
        for (a, b) in img.as_raw().iter().zip(cc.as_raw()) {
            assert_eq!(*b, (*a as f64 * 0.85).floor() as u8);
        }
        // CS: luma kept (within the offset and truncation), chroma shrunk.
        let cs = Distortion::ColorSaturation.apply(&img, 1, &mut rng);
        let p = img.get_pixel(37, 51).0.map(f64::from);
        let q = cs.get_pixel(37, 51).0.map(f64::from);
        let luma = |c: [f64; 3]| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
        assert!((luma(p) - luma(q)).abs() < 1.5, "{p:?} → {q:?}");
        let spread = |c: [f64; 3]| {
            c.iter().cloned().fold(f64::MIN, f64::max) - c.iter().cloned().fold(f64::MAX, f64::min)
        };
        assert!((spread(q) - 0.4 * spread(p)).abs() < 2.5, "{p:?} → {q:?}");
        // Strength 0 is off; strength 2 does more than strength 1, for every family.
        for d in Distortion::ALL {
            assert_eq!(d.apply(&img, 0, &mut rng), img, "{d:?}");
            let one = mean_abs_diff(&img, &d.apply(&img, 1, &mut ChaCha8Rng::seed_from_u64(3)));
            let two = mean_abs_diff(&img, &d.apply(&img, 2, &mut ChaCha8Rng::seed_from_u64(3)));
            assert!(one > 0.2, "{d:?} at 1 changes nothing: {one}");
            assert!(
                two > one,
                "{d:?}: strength 2 ({two}) not stronger than 1 ({one})"
            );
        }
        // GNC: the noise has the variance the quirk implies (luma sd 255·√0.001·255/219 ≈ 9.4).
        let grey = RgbImage::from_pixel(200, 200, Rgb([128; 3]));
        let noisy = Distortion::GaussianNoise.apply(&grey, 1, &mut rng);
        let lumas: Vec<f64> = noisy.pixels().map(|p| luma(p.0.map(f64::from))).collect();
        let m = lumas.iter().sum::<f64>() / lumas.len() as f64;
        let sd = (lumas.iter().map(|v| (v - m).powi(2)).sum::<f64>() / lumas.len() as f64).sqrt();
        assert!((sd - 9.39).abs() < 0.6, "luma noise sd {sd}");
        // GB and the resampling keep a flat image flat and the size unchanged.
        for d in [Distortion::GaussianBlur, Distortion::Resample] {
            let out = d.apply(&grey, 2, &mut rng);
            assert_eq!(out, grey, "{d:?}");
        }
        let odd = RgbImage::from_pixel(225, 223, Rgb([9; 3]));
        assert_eq!(
            Distortion::Resample.apply(&odd, 2, &mut rng).dimensions(),
            (225, 223)
        );
    }
}
