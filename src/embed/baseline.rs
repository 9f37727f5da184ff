//! A baseline encoder that carries signal without any weights: colour and edge statistics of the
//! image, in the spirit of the hand-made features that preceded learned ones. It stands in for
//! DINOv3 in the offline demo and the end-to-end tests, where no weights can be downloaded and a
//! random-weight ViT carries no signal at all, so that "the loop improves a head" can be shown and
//! tested. It is never the production path, and its model id (`baseline-hsvhog-v1-…`) says so in
//! every table name and printout.
//!
//! Features of one image, from the same preprocessed pixels the ViT reads (resized, normalised):
//! - per cell of a 4 × 4 grid, a 12-bin hue histogram weighted by saturation × value (how much of
//!   each colour, e.g. the orange of cones and barriers), one achromatic bin and the mean value;
//! - per cell, an 8-bin histogram of unsigned gradient orientations weighted by magnitude (edges:
//!   stripes, signs, road markings);
//! - a 24-bin global hue histogram.
//!
//! Each block is L1-normalised and square-rooted (the Hellinger map, so Euclidean distance
//! compares histograms sensibly), then the whole vector is L2-normalised.

use super::preprocess::{IMAGENET_MEAN, IMAGENET_STD};
use super::{EmbedConfig, EmbedError, EncoderSpec, FeatureKind, ImageEncoder, Preprocess};
use crate::embed::ResizeMode;

const GRID: usize = 4;
const HUE_BINS: usize = 12;
const ORIENT_BINS: usize = 8;
const GLOBAL_HUE_BINS: usize = 24;
/// Saturation below which a pixel counts as achromatic (grey, white, black).
const ACHROMATIC_S: f32 = 0.2;
const CELL_DIM: usize = HUE_BINS + 1 + 1 + ORIENT_BINS;
/// Length of a baseline vector.
pub const BASELINE_DIM: usize = GRID * GRID * CELL_DIM + GLOBAL_HUE_BINS;

/// The colour + gradient histogram encoder.
pub struct BaselineEncoder {
    spec: EncoderSpec,
}

impl BaselineEncoder {
    pub fn new(cfg: &EmbedConfig) -> Result<Self, EmbedError> {
        if cfg.resolution < 16 || !cfg.resolution.is_multiple_of(16) {
            return Err(EmbedError::Resolution(cfg.resolution));
        }
        let model_id = format!(
            "baseline-hsvhog-v1-r{}{}",
            cfg.resolution,
            if cfg.resize == ResizeMode::Letterbox {
                "-lb"
            } else {
                ""
            }
        );
        Ok(Self {
            spec: EncoderSpec {
                pre: Preprocess {
                    height: cfg.resolution,
                    width: cfg.resolution,
                    mode: cfg.resize,
                },
                features: FeatureKind::Cls,
                l2: true,
                model_id,
                dim: BASELINE_DIM,
                random: false,
                prefix: 0,
                hidden: BASELINE_DIM,
            },
        })
    }
}

/// Hue in [0, 1), saturation and value of an RGB pixel in [0, 1].
fn hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let s = if max > 0.0 { d / max } else { 0.0 };
    let h = if d <= f32::EPSILON {
        0.0
    } else if max == r {
        ((g - b) / d).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / d + 2.0) / 6.0
    } else {
        ((r - g) / d + 4.0) / 6.0
    };
    (h.clamp(0.0, 0.999_999), s, max)
}

/// L1-normalises a block and takes square roots (Hellinger).
fn hellinger(block: &mut [f32]) {
    let sum: f32 = block.iter().sum();
    if sum > 0.0 {
        block.iter_mut().for_each(|v| *v = (*v / sum).sqrt());
    }
}

/// The baseline vector of one `[3, h, w]` normalised image.
fn features(px: &[f32], h: usize, w: usize) -> Vec<f32> {
    let plane = h * w;
    let rgb = |c: usize, i: usize| {
        (px[c * plane + i] * IMAGENET_STD[c] + IMAGENET_MEAN[c]).clamp(0.0, 1.0)
    };
    let luma: Vec<f32> = (0..plane)
        .map(|i| 0.299 * rgb(0, i) + 0.587 * rgb(1, i) + 0.114 * rgb(2, i))
        .collect();
    let mut out = vec![0f32; BASELINE_DIM];
    let mut counts = [0usize; GRID * GRID];
    let global = GRID * GRID * CELL_DIM;
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let cell = (y * GRID / h) * GRID + x * GRID / w;
            let base = cell * CELL_DIM;
            counts[cell] += 1;
            let (hue, s, v) = hsv(rgb(0, i), rgb(1, i), rgb(2, i));
            if s < ACHROMATIC_S {
                out[base + HUE_BINS] += 1.0;
            } else {
                out[base + (hue * HUE_BINS as f32) as usize] += s * v;
                out[global + (hue * GLOBAL_HUE_BINS as f32) as usize] += s * v;
            }
            out[base + HUE_BINS + 1] += v;
            // Central differences inside the image, one-sided at its border.
            let (xl, xr) = (x.saturating_sub(1), (x + 1).min(w - 1));
            let (yu, yd) = (y.saturating_sub(1), (y + 1).min(h - 1));
            let gx = luma[y * w + xr] - luma[y * w + xl];
            let gy = luma[yd * w + x] - luma[yu * w + x];
            let mag = (gx * gx + gy * gy).sqrt();
            if mag > 1e-6 {
                let angle = gy.atan2(gx).rem_euclid(std::f32::consts::PI);
                let bin = ((angle / std::f32::consts::PI) * ORIENT_BINS as f32) as usize;
                out[base + HUE_BINS + 2 + bin.min(ORIENT_BINS - 1)] += mag;
            }
        }
    }
    for (cell, &n) in counts.iter().enumerate() {
        let base = cell * CELL_DIM;
        // The mean value stays a mean (not a histogram share).
        out[base + HUE_BINS + 1] /= n.max(1) as f32;
        let (colour, rest) = out[base..base + CELL_DIM].split_at_mut(HUE_BINS + 1);
        hellinger(colour);
        hellinger(&mut rest[1..]);
    }
    hellinger(&mut out[global..]);
    let norm = out.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        out.iter_mut().for_each(|v| *v /= norm);
    }
    out
}

impl ImageEncoder for BaselineEncoder {
    fn spec(&self) -> &EncoderSpec {
        &self.spec
    }

    fn embed_pixels(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (h, w) = (self.spec.pre.height as usize, self.spec.pre.width as usize);
        let per = 3 * h * w;
        if pixels.len() != n * per {
            return Err(EmbedError::Engine(format!(
                "{} pixel values for {n} images of 3 × {h} × {w}",
                pixels.len()
            )));
        }
        Ok(pixels
            .chunks_exact(per)
            .map(|img| features(img, h, w))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder() -> BaselineEncoder {
        BaselineEncoder::new(&EmbedConfig {
            resolution: 64,
            ..Default::default()
        })
        .unwrap()
    }

    fn solid(e: &BaselineEncoder, rgb: [u8; 3]) -> Vec<f32> {
        let img =
            image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(80, 60, image::Rgb(rgb)));
        e.embed_images(&[img]).unwrap().remove(0)
    }

    #[test]
    fn vectors_are_finite_unit_length_and_tell_colours_apart() {
        let e = encoder();
        assert!(e.model_id().starts_with("baseline-hsvhog-v1-r64"));
        let orange = solid(&e, [240, 120, 20]);
        let orange2 = solid(&e, [230, 125, 30]);
        let blue = solid(&e, [20, 60, 200]);
        let grey = solid(&e, [128, 128, 128]);
        for v in [&orange, &blue, &grey] {
            assert_eq!(v.len(), BASELINE_DIM);
            assert!(v.iter().all(|x| x.is_finite()));
            let n: f32 = v.iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-4, "{n}");
        }
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        assert!(dot(&orange, &orange2) > 0.95);
        assert!(dot(&orange, &blue) < 0.6 && dot(&orange, &grey) < 0.6);
        assert!(e.embed_pixels(vec![0.0; 5], 1).is_err());
    }

    #[test]
    fn hue_is_in_range_for_every_primary() {
        for (r, g, b) in [
            (1.0, 0.0, 0.0),
            (0.0, 1.0, 0.0),
            (0.0, 0.0, 1.0),
            (1.0, 0.0, 0.999),
        ] {
            let (h, s, v) = hsv(r, g, b);
            assert!(
                (0.0..1.0).contains(&h) && s > 0.99 && v > 0.99,
                "{h} {s} {v}"
            );
        }
    }
}
