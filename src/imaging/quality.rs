//! Image-quality scores and the issues they raise, CleanVision's set: dark, light, blurry, low
//! information, odd aspect ratio, odd size, grayscale.
//!
//! Scores are computed once per image at ingest, on a thumbnail of at most [`THUMB_SIDE`] pixels a
//! side (the same bytes always give the same scores), and stored per sample (`image_quality`);
//! issues are the scores against thresholds from config, so a threshold can change without
//! decoding anything again. Mining reads issues as reasons, evaluation as `quality=` slices.

use image::DynamicImage;
use image::imageops::FilterType;
use serde::{Deserialize, Serialize};

/// The longest side of the thumbnail the scores are computed on.
pub const THUMB_SIDE: u32 = 256;

/// Per-image scores, each in its natural unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct QualityScores {
    /// Mean luma (Rec. 601) in [0, 1].
    pub brightness: f32,
    /// Variance of the 4-neighbour Laplacian of luma in [0, 1] units: edges and texture. A blurred
    /// image loses it first.
    pub sharpness: f32,
    /// Shannon entropy of the 256-bin luma histogram, bits (0 for one flat colour, 8 at most).
    pub entropy: f32,
    /// Mean over pixels of the largest channel difference, in [0, 1] (0: grayscale).
    pub colorfulness: f32,
    /// Longer side over shorter side (≥ 1).
    pub aspect_ratio: f32,
    pub width: u32,
    pub height: u32,
}

/// One issue type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityIssue {
    Dark,
    Light,
    Blurry,
    LowInformation,
    OddAspectRatio,
    OddSize,
    Grayscale,
}

impl QualityIssue {
    pub const ALL: [QualityIssue; 7] = [
        QualityIssue::Dark,
        QualityIssue::Light,
        QualityIssue::Blurry,
        QualityIssue::LowInformation,
        QualityIssue::OddAspectRatio,
        QualityIssue::OddSize,
        QualityIssue::Grayscale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            QualityIssue::Dark => "dark",
            QualityIssue::Light => "light",
            QualityIssue::Blurry => "blurry",
            QualityIssue::LowInformation => "low_information",
            QualityIssue::OddAspectRatio => "odd_aspect_ratio",
            QualityIssue::OddSize => "odd_size",
            QualityIssue::Grayscale => "grayscale",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.as_str() == s)
    }
}

/// Thresholds of the issues (`[ingest.quality]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityThresholds {
    /// Dark below this mean luma.
    pub dark_below: f32,
    /// Light above this mean luma.
    pub light_above: f32,
    /// Blurry below this Laplacian variance.
    pub blurry_below: f32,
    /// Low information below this histogram entropy (bits).
    pub low_information_below: f32,
    /// Odd aspect ratio above this long/short side ratio.
    pub odd_aspect_above: f32,
    /// Odd size when the shorter side is below this many pixels.
    pub odd_size_below_px: u32,
    /// Grayscale below this colourfulness.
    pub grayscale_below: f32,
}

impl Default for QualityThresholds {
    fn default() -> Self {
        Self {
            dark_below: 0.12,
            light_above: 0.92,
            blurry_below: 2e-4,
            low_information_below: 2.5,
            odd_aspect_above: 2.5,
            odd_size_below_px: 64,
            grayscale_below: 0.01,
        }
    }
}

impl QualityThresholds {
    /// Rejects thresholds that cannot mean anything.
    pub fn validate(&self) -> Result<(), String> {
        let finite = [
            self.dark_below,
            self.light_above,
            self.blurry_below,
            self.low_information_below,
            self.odd_aspect_above,
            self.grayscale_below,
        ]
        .iter()
        .all(|v| v.is_finite() && *v >= 0.0);
        if !finite {
            return Err("ingest.quality thresholds must be finite and ≥ 0".into());
        }
        if self.dark_below >= self.light_above {
            return Err(format!(
                "ingest.quality.dark_below ({}) must be below light_above ({})",
                self.dark_below, self.light_above
            ));
        }
        Ok(())
    }

    /// The issues `s` raises, in [`QualityIssue::ALL`] order.
    pub fn issues(&self, s: &QualityScores) -> Vec<QualityIssue> {
        let mut out = Vec::new();
        if s.brightness < self.dark_below {
            out.push(QualityIssue::Dark);
        }
        if s.brightness > self.light_above {
            out.push(QualityIssue::Light);
        }
        if s.sharpness < self.blurry_below {
            out.push(QualityIssue::Blurry);
        }
        if s.entropy < self.low_information_below {
            out.push(QualityIssue::LowInformation);
        }
        if s.aspect_ratio > self.odd_aspect_above {
            out.push(QualityIssue::OddAspectRatio);
        }
        if s.width.min(s.height) < self.odd_size_below_px {
            out.push(QualityIssue::OddSize);
        }
        if s.colorfulness < self.grayscale_below {
            out.push(QualityIssue::Grayscale);
        }
        out
    }

    /// The `quality=` tags of `s`: one per issue, or `quality=ok`.
    pub fn tags(&self, s: &QualityScores) -> Vec<String> {
        let issues = self.issues(s);
        if issues.is_empty() {
            return vec!["quality=ok".into()];
        }
        issues
            .into_iter()
            .map(|i| format!("quality={}", i.as_str()))
            .collect()
    }
}

/// Scores of a decoded image.
pub fn score(img: &DynamicImage) -> QualityScores {
    let (width, height) = (img.width(), img.height());
    // Large images are scored on a thumbnail; small ones are converted once, without a copy.
    let rgb = if width.max(height) > THUMB_SIDE {
        img.resize(THUMB_SIDE, THUMB_SIDE, FilterType::Triangle)
            .to_rgb8()
    } else {
        img.to_rgb8()
    };
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let n = (w * h).max(1);
    let mut luma = Vec::with_capacity(w * h);
    let mut hist = [0u64; 256];
    let (mut sum, mut chroma) = (0f64, 0f64);
    for p in rgb.pixels() {
        let [r, g, b] = p.0;
        let y = (0.299 * r as f32 + 0.587 * g as f32 + 0.114 * b as f32) / 255.0;
        luma.push(y);
        hist[((y * 255.0).round() as usize).min(255)] += 1;
        sum += y as f64;
        let (hi, lo) = (r.max(g).max(b), r.min(g).min(b));
        chroma += (hi - lo) as f64 / 255.0;
    }
    let entropy = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            -p * p.log2()
        })
        .sum::<f64>();
    let sharpness = if w >= 3 && h >= 3 {
        let (mut s, mut s2, mut k) = (0f64, 0f64, 0f64);
        for yy in 1..h - 1 {
            for xx in 1..w - 1 {
                let c = luma[yy * w + xx];
                let l = luma[yy * w + xx - 1]
                    + luma[yy * w + xx + 1]
                    + luma[(yy - 1) * w + xx]
                    + luma[(yy + 1) * w + xx]
                    - 4.0 * c;
                s += l as f64;
                s2 += (l as f64) * (l as f64);
                k += 1.0;
            }
        }
        let mean = s / k;
        (s2 / k - mean * mean).max(0.0)
    } else {
        0.0
    };
    QualityScores {
        brightness: (sum / n as f64) as f32,
        sharpness: sharpness as f32,
        entropy: entropy as f32,
        colorfulness: (chroma / n as f64) as f32,
        aspect_ratio: width.max(height) as f32 / width.min(height).max(1) as f32,
        width,
        height,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    /// A colourful street-like texture: gradients, stripes and pseudo-random speckle.
    fn scene(w: u32, h: u32) -> RgbImage {
        let mut state = 99u32;
        RgbImage::from_fn(w, h, |x, y| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let n = (state >> 24) as u8 / 4;
            let stripe = if (x / 7 + y / 11) % 2 == 0 { 60 } else { 0 };
            Rgb([
                (x * 200 / w) as u8 / 2 + n + stripe,
                (y * 200 / h) as u8 / 2 + n,
                120u8.saturating_sub(stripe) + n,
            ])
        })
    }

    fn issues(img: RgbImage) -> Vec<QualityIssue> {
        QualityThresholds::default().issues(&score(&DynamicImage::ImageRgb8(img)))
    }

    #[test]
    fn a_textured_colour_scene_has_no_issue() {
        assert_eq!(issues(scene(640, 480)), vec![]);
        assert_eq!(
            QualityThresholds::default().tags(&score(&DynamicImage::ImageRgb8(scene(640, 480)))),
            vec!["quality=ok".to_string()]
        );
    }

    #[test]
    fn constructed_images_raise_their_issue() {
        // A black frame is dark, low-information and grayscale (and flat: blurry).
        let black = issues(RgbImage::new(320, 240));
        for i in [
            QualityIssue::Dark,
            QualityIssue::LowInformation,
            QualityIssue::Grayscale,
        ] {
            assert!(black.contains(&i), "{black:?}");
        }
        assert!(!black.contains(&QualityIssue::Light));
        // A white one is light.
        let white = issues(RgbImage::from_pixel(320, 240, Rgb([255, 255, 255])));
        assert!(white.contains(&QualityIssue::Light) && !white.contains(&QualityIssue::Dark));
        // The scene blurred hard is blurry and nothing it was not before but blurry.
        let blurred = image::imageops::blur(&scene(640, 480), 6.0);
        assert_eq!(issues(blurred), vec![QualityIssue::Blurry]);
        // Darkened to 10 % it is dark.
        let mut dim = scene(640, 480);
        dim.pixels_mut().for_each(|p| p.0 = p.0.map(|v| v / 10));
        assert!(issues(dim).contains(&QualityIssue::Dark));
        // A grey copy of the scene is grayscale only.
        let grey = DynamicImage::ImageRgb8(scene(640, 480))
            .grayscale()
            .to_rgb8();
        assert_eq!(issues(grey), vec![QualityIssue::Grayscale]);
        // A panorama strip has an odd aspect ratio and an odd size.
        let strip = issues(scene(900, 60));
        assert!(strip.contains(&QualityIssue::OddAspectRatio), "{strip:?}");
        assert!(strip.contains(&QualityIssue::OddSize), "{strip:?}");
    }

    #[test]
    fn scores_are_ordered_as_their_meaning() {
        let s = score(&DynamicImage::ImageRgb8(scene(400, 300)));
        let b = score(&DynamicImage::ImageRgb8(image::imageops::blur(
            &scene(400, 300),
            2.0,
        )));
        assert!(b.sharpness < s.sharpness / 4.0, "{b:?} vs {s:?}");
        assert!((s.aspect_ratio - 4.0 / 3.0).abs() < 1e-6);
        assert!(s.entropy > 4.0 && s.entropy <= 8.0, "{s:?}");
        let t = QualityThresholds::default();
        assert!(t.validate().is_ok());
        let bad = QualityThresholds {
            dark_below: 0.95,
            ..t
        };
        assert!(bad.validate().is_err());
        for i in QualityIssue::ALL {
            assert_eq!(QualityIssue::parse(i.as_str()), Some(i));
        }
    }
}
