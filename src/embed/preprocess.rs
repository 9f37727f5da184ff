//! Image → model input, the way the Hugging Face DINOv3 processor does it: RGB, resize to the model
//! resolution with antialiased bilinear filtering (no crop), scale to [0,1], normalise with the
//! ImageNet mean/std. Optionally letterbox instead of stretching.
//!
//! The resize follows the published separable antialiased filter (PIL / torchvision): per axis,
//! output pixel `i` averages inputs around `centre = (i + ½)·scale` with a triangle kernel whose
//! support grows with the downscale factor. The model input is resized in floating point, as
//! transformers' DINOv3 image processor does (no rounding between or after the passes: rounding to
//! 8 bits moves pixels by up to one level, 0.0175 after normalisation, and pooled features by
//! ~2e-3). [`resize_bilinear_aa`] is the 8-bit variant (torchvision's uint8 path, rounded after
//! each pass) for images that are looked at rather than encoded.

use image::{DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};

/// ImageNet statistics the DINOv3 checkpoints were trained with.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How an image of another aspect ratio is fitted to the square model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Stretch to the target size (what the HF processor does).
    #[default]
    Stretch,
    /// Keep the aspect ratio, pad with the mean colour (which normalises to zero).
    Letterbox,
}

/// Per-output-pixel filter taps along one axis.
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

fn taps(in_len: usize, out_len: usize) -> Vec<Taps> {
    let scale = in_len as f64 / out_len as f64;
    let support = scale.max(1.0);
    let inv = 1.0 / support;
    (0..out_len)
        .map(|i| {
            let centre = (i as f64 + 0.5) * scale;
            let lo = ((centre - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((centre + support + 0.5).floor() as usize).min(in_len);
            let mut w: Vec<f64> = (lo..hi)
                .map(|j| {
                    let x = (j as f64 - centre + 0.5) * inv;
                    (1.0 - x.abs()).max(0.0)
                })
                .collect();
            let sum: f64 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            }
            Taps {
                start: lo,
                weights: w.into_iter().map(|v| v as f32).collect(),
            }
        })
        .collect()
}

fn round_u8(v: f32) -> u8 {
    v.round().clamp(0.0, 255.0) as u8
}

/// Antialiased bilinear resize of an RGB image.
pub fn resize_bilinear_aa(src: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = (src.width() as usize, src.height() as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    let src = src.as_raw();
    // Horizontal pass: h rows × ow columns.
    let tx = taps(w, ow);
    let mut mid = vec![0u8; h * ow * 3];
    for y in 0..h {
        for (x, t) in tx.iter().enumerate() {
            let mut acc = [0f32; 3];
            for (k, wt) in t.weights.iter().enumerate() {
                let p = (y * w + t.start + k) * 3;
                for c in 0..3 {
                    acc[c] += wt * f32::from(src[p + c]);
                }
            }
            let o = (y * ow + x) * 3;
            for c in 0..3 {
                mid[o + c] = round_u8(acc[c]);
            }
        }
    }
    // Vertical pass.
    let ty = taps(h, oh);
    let mut out = vec![0u8; oh * ow * 3];
    for (y, t) in ty.iter().enumerate() {
        for x in 0..ow {
            let mut acc = [0f32; 3];
            for (k, wt) in t.weights.iter().enumerate() {
                let p = ((t.start + k) * ow + x) * 3;
                for c in 0..3 {
                    acc[c] += wt * f32::from(mid[p + c]);
                }
            }
            let o = (y * ow + x) * 3;
            for c in 0..3 {
                out[o + c] = round_u8(acc[c]);
            }
        }
    }
    RgbImage::from_raw(out_w, out_h, out).unwrap_or_else(|| RgbImage::new(out_w, out_h))
}

/// Antialiased bilinear resize in floating point: interleaved RGB `out_h × out_w × 3`, values on
/// the 0–255 scale, not rounded.
pub fn resize_bilinear_aa_f32(src: &RgbImage, out_w: u32, out_h: u32) -> Vec<f32> {
    let (w, h) = (src.width() as usize, src.height() as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    let src = src.as_raw();
    let tx = taps(w, ow);
    let mut mid = vec![0f32; h * ow * 3];
    for y in 0..h {
        for (x, t) in tx.iter().enumerate() {
            let o = (y * ow + x) * 3;
            for (k, wt) in t.weights.iter().enumerate() {
                let p = (y * w + t.start + k) * 3;
                for c in 0..3 {
                    mid[o + c] += wt * f32::from(src[p + c]);
                }
            }
        }
    }
    let ty = taps(h, oh);
    let mut out = vec![0f32; oh * ow * 3];
    for (y, t) in ty.iter().enumerate() {
        for x in 0..ow {
            let o = (y * ow + x) * 3;
            for (k, wt) in t.weights.iter().enumerate() {
                let p = ((t.start + k) * ow + x) * 3;
                for c in 0..3 {
                    out[o + c] += wt * mid[p + c];
                }
            }
        }
    }
    out
}

/// Fits `img` into `width`×`height` keeping its aspect ratio, centred on a mean-colour canvas.
fn letterbox(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let s = (width as f64 / img.width() as f64).min(height as f64 / img.height() as f64);
    let (nw, nh) = (
        ((img.width() as f64 * s).round() as u32).clamp(1, width),
        ((img.height() as f64 * s).round() as u32).clamp(1, height),
    );
    let inner = resize_bilinear_aa(img, nw, nh);
    let fill = IMAGENET_MEAN.map(|m| round_u8(m * 255.0));
    let mut canvas = RgbImage::from_pixel(width, height, image::Rgb(fill));
    image::imageops::replace(
        &mut canvas,
        &inner,
        i64::from((width - nw) / 2),
        i64::from((height - nh) / 2),
    );
    canvas
}

/// What the model input looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    pub height: u32,
    pub width: u32,
    pub mode: ResizeMode,
}

impl Preprocess {
    /// The 8-bit image the model will see (after resize or letterbox), for inspection and tests.
    pub fn resized(&self, img: &DynamicImage) -> RgbImage {
        let rgb = img.to_rgb8();
        if rgb.width() == self.width && rgb.height() == self.height {
            return rgb;
        }
        match self.mode {
            ResizeMode::Stretch => resize_bilinear_aa(&rgb, self.width, self.height),
            ResizeMode::Letterbox => letterbox(&rgb, self.width, self.height),
        }
    }

    /// The resized image as interleaved RGB floats on the 0–255 scale, before normalisation:
    /// stretched in floating point (as the reference processor), or letterboxed (the 8-bit
    /// letterbox; the processor has no letterbox to match).
    fn resized_f32(&self, img: &DynamicImage) -> Vec<f32> {
        let rgb = img.to_rgb8();
        match self.mode {
            _ if rgb.width() == self.width && rgb.height() == self.height => {
                rgb.as_raw().iter().map(|&v| f32::from(v)).collect()
            }
            ResizeMode::Stretch => resize_bilinear_aa_f32(&rgb, self.width, self.height),
            ResizeMode::Letterbox => letterbox(&rgb, self.width, self.height)
                .as_raw()
                .iter()
                .map(|&v| f32::from(v))
                .collect(),
        }
    }

    /// Normalised `[3, height, width]` floats, appended to `out` (so a batch is one buffer).
    pub fn append_pixels(&self, img: &DynamicImage, out: &mut Vec<f32>) {
        let rgb = self.resized_f32(img);
        let plane = (self.width * self.height) as usize;
        let base = out.len();
        out.resize(base + 3 * plane, 0.0);
        for (i, p) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[base + c * plane + i] = (p[c] / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_unchanged_and_flat_stays_flat() {
        let img = RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, 100]));
        assert_eq!(resize_bilinear_aa(&img, 40, 30), img);
        let flat = RgbImage::from_pixel(97, 61, image::Rgb([10, 200, 33]));
        let r = resize_bilinear_aa(&flat, 16, 16);
        assert!(r.pixels().all(|p| p.0 == [10, 200, 33]));
    }

    #[test]
    fn downscale_by_two_averages_pairs() {
        // Columns alternate 0/200: a 2× antialiased downscale averages them (with the triangle's
        // neighbours) to the middle, never to one of the extremes as point sampling would.
        let img = RgbImage::from_fn(8, 2, |x, _| {
            image::Rgb([if x % 2 == 0 { 0 } else { 200 }; 3])
        });
        let r = resize_bilinear_aa(&img, 4, 2);
        for p in r.pixels() {
            assert!((80..=120).contains(&p.0[0]), "{:?}", p.0);
        }
    }

    #[test]
    fn letterbox_keeps_aspect_and_pads_with_mean() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(200, 100, image::Rgb([255, 0, 0])));
        let p = Preprocess {
            height: 32,
            width: 32,
            mode: ResizeMode::Letterbox,
        };
        let r = p.resized(&img);
        assert_eq!(r.get_pixel(16, 16).0, [255, 0, 0]);
        assert_eq!(r.get_pixel(16, 1).0, [124, 116, 104]);
        let mut px = Vec::new();
        p.append_pixels(&img, &mut px);
        assert_eq!(px.len(), 3 * 32 * 32);
        assert!(px[32].abs() < 0.01, "padding normalises to ~0: {}", px[32]);
    }
}
