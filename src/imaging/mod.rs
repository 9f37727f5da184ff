//! Image decoding and fingerprints, done one way for every stage (ingest, embed, serve), so the same
//! bytes always give the same pixels.
//!
//! Decoding is bounded: dimensions and allocation are capped ([`DecodeLimits`]) so a decompression
//! bomb is an error, not an out-of-memory kill. EXIF orientation is applied, so a phone photo is
//! upright before anything looks at it.

pub mod augment;
mod letterbox;
mod phash;
mod quality;

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

pub use letterbox::has_letterbox_bars;
pub use phash::{hamming, phash};
pub use quality::{QualityIssue, QualityScores, QualityThresholds, score as quality_scores};

/// Caps on what one image may cost to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeLimits {
    /// Largest accepted width or height, pixels.
    pub max_side_px: u32,
    /// Largest accepted width × height (phone photos are ~12 MP; 50 MP refuses nothing real).
    pub max_pixels: u64,
    /// Largest decoded buffer and decoder allocation, bytes.
    pub max_alloc_bytes: u64,
    /// Refuse a JPEG without its end-of-image marker. Decoders fill a truncated file with grey and
    /// call it fine; the store must not learn from half an image. (Serving may answer on it anyway.)
    pub reject_truncated: bool,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_side_px: 16_384,
            max_pixels: 50_000_000,
            max_alloc_bytes: 512 << 20,
            reject_truncated: true,
        }
    }
}

/// Why bytes are not a usable image. The message is what a person sees in an ingest summary.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty file")]
    Empty,
    #[error("not a supported image format (JPEG, PNG, WebP, BMP, GIF)")]
    UnknownFormat,
    #[error("unsupported image format {0}")]
    Unsupported(String),
    #[error("image exceeds the decode limits: {0}")]
    TooLarge(String),
    #[error("truncated {format} image: {detail}")]
    Truncated {
        format: &'static str,
        detail: &'static str,
    },
    #[error("corrupt {format} image: {detail}")]
    Corrupt { format: String, detail: String },
}

/// A decoded, upright image and what it was stored as.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub image: DynamicImage,
    /// Lowercase container name: `jpeg`, `png`, `webp`, `bmp`, `gif`.
    pub format: &'static str,
}

fn format_name(f: ImageFormat) -> Option<&'static str> {
    Some(match f {
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Png => "png",
        ImageFormat::WebP => "webp",
        ImageFormat::Bmp => "bmp",
        ImageFormat::Gif => "gif",
        _ => return None,
    })
}

/// Decodes `bytes` (format sniffed from the content, never the file name), applies EXIF orientation,
/// and enforces `limits`.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Decoded, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| DecodeError::UnknownFormat)?;
    let fmt = reader.format().ok_or(DecodeError::UnknownFormat)?;
    let format = format_name(fmt).ok_or_else(|| DecodeError::Unsupported(format!("{fmt:?}")))?;
    if limits.reject_truncated && format == "jpeg" && !jpeg_has_end_marker(bytes) {
        return Err(DecodeError::Truncated {
            format,
            detail: "no end-of-image marker",
        });
    }
    let mut l = Limits::default();
    l.max_image_width = Some(limits.max_side_px);
    l.max_image_height = Some(limits.max_side_px);
    l.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(l.clone());
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => DecodeError::TooLarge(l.to_string()),
        other => DecodeError::Corrupt {
            format: format.to_string(),
            detail: other.to_string(),
        },
    };
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    // The image crate charges its allocation limit in `ImageReader::decode` but not on this path,
    // so every cap is checked here, from the header, before a pixel is decoded.
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if w > limits.max_side_px || h > limits.max_side_px {
        return Err(DecodeError::TooLarge(format!(
            "{w}×{h} exceeds the largest side of {} px",
            limits.max_side_px
        )));
    }
    if pixels > limits.max_pixels {
        return Err(DecodeError::TooLarge(format!(
            "{w}×{h} = {:.1} MP exceeds {:.1} MP",
            pixels as f64 / 1e6,
            limits.max_pixels as f64 / 1e6
        )));
    }
    if decoder.total_bytes() > limits.max_alloc_bytes {
        return Err(DecodeError::TooLarge(format!(
            "{w}×{h} decodes to {} MiB, over {} MiB",
            decoder.total_bytes() >> 20,
            limits.max_alloc_bytes >> 20
        )));
    }
    decoder.set_limits(l).map_err(corrupt)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    image.apply_orientation(orientation);
    Ok(Decoded { image, format })
}

/// Whether an end-of-image marker (FF D9) sits near the end. Entropy-coded JPEG data escapes every
/// 0xFF, so the marker cannot occur by accident there; some writers append a few bytes after it.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn decodes_by_content_and_reports_format() {
        let d = decode(&png(20, 10), &DecodeLimits::default()).unwrap();
        assert_eq!(
            (d.image.width(), d.image.height(), d.format),
            (20, 10, "png")
        );
    }

    #[test]
    fn refuses_garbage_truncation_and_oversize() {
        let lim = DecodeLimits::default();
        assert!(matches!(decode(b"", &lim), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(b"hello world", &lim),
            Err(DecodeError::UnknownFormat)
        ));
        let mut jpg = Vec::new();
        image::RgbImage::from_pixel(64, 64, image::Rgb([9, 99, 199]))
            .write_to(&mut Cursor::new(&mut jpg), ImageFormat::Jpeg)
            .unwrap();
        assert!(decode(&jpg, &lim).is_ok());
        let cut = &jpg[..jpg.len() - 2];
        assert!(matches!(
            decode(cut, &lim),
            Err(DecodeError::Truncated { .. })
        ));
        let lenient = DecodeLimits {
            reject_truncated: false,
            ..lim
        };
        assert!(decode(cut, &lenient).is_ok());
        let p = png(64, 64);
        assert!(matches!(
            decode(&p[..p.len() / 2], &lim),
            Err(DecodeError::Corrupt { .. })
        ));
        let small = DecodeLimits {
            max_side_px: 32,
            ..lim
        };
        assert!(matches!(decode(&p, &small), Err(DecodeError::TooLarge(_))));
    }
}
