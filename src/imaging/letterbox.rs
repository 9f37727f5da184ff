//! Letterbox detection: whether an image carries the black bars of a validator's letterbox
//! (the image scaled to fit 224×224 and centred on black, DESIGN.md §5), so the ingest of a query
//! can name its era from the image itself rather than guess it from the size.

use image::DynamicImage;

/// Bars must be at least this many pixels thick on both sides.
const MIN_BAR: usize = 6;
/// A bar's rows may differ in thickness by this much (JPEG blocks smear the edge).
const BAR_SLACK: usize = 4;

/// Whether `img` has black bars of about equal thickness at top and bottom, or at left and right,
/// around content that is not black.
pub fn has_letterbox_bars(img: &DynamicImage) -> bool {
    let g = img.to_luma8();
    let (w, h) = (g.width() as usize, g.height() as usize);
    if w < 3 * MIN_BAR || h < 3 * MIN_BAR {
        return false;
    }
    let px = g.as_raw();
    // A line is black when its mean is near 0 and no pixel is brighter than JPEG ringing makes.
    let black = |vals: &mut dyn Iterator<Item = u8>| {
        let (mut sum, mut max, mut n) = (0u32, 0u8, 0u32);
        for v in vals {
            sum += v as u32;
            max = max.max(v);
            n += 1;
        }
        n > 0 && sum <= 10 * n && max <= 40
    };
    let row = |y: usize| black(&mut px[y * w..(y + 1) * w].iter().copied());
    let column = |x: usize| black(&mut (0..h).map(|y| px[y * w + x]));
    let bars = |len: usize, line: &dyn Fn(usize) -> bool| {
        let lead = (0..len).take_while(|&i| line(i)).count();
        if lead == len {
            return false; // all black: no content to frame
        }
        let trail = (0..len).rev().take_while(|&i| line(i)).count();
        lead >= MIN_BAR && trail >= MIN_BAR && lead.abs_diff(trail) <= BAR_SLACK
    };
    bars(h, &row) || bars(w, &column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn content(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 3) as u8, (y * 5) as u8, 90]))
    }

    /// A 16:9 frame letterboxed into 224×224, through JPEG q75 as validators sent it.
    fn letterboxed() -> DynamicImage {
        let inner =
            image::imageops::resize(&content(1280, 720), 224, 126, image::imageops::Triangle);
        let mut out = RgbImage::new(224, 224);
        image::imageops::overlay(&mut out, &inner, 0, 49);
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 75)
            .encode_image(&out)
            .unwrap();
        image::load_from_memory(&jpeg).unwrap()
    }

    #[test]
    fn finds_the_bars_of_a_validator_letterbox_and_nothing_in_a_crop() {
        assert!(has_letterbox_bars(&letterboxed()));
        let crop = DynamicImage::ImageRgb8(image::imageops::resize(
            &content(300, 300),
            224,
            224,
            image::imageops::Triangle,
        ));
        assert!(!has_letterbox_bars(&crop));
        // Pillarbox (portrait content) counts too.
        let inner =
            image::imageops::resize(&content(720, 1280), 126, 224, image::imageops::Triangle);
        let mut pillar = RgbImage::new(224, 224);
        image::imageops::overlay(&mut pillar, &inner, 49, 0);
        assert!(has_letterbox_bars(&DynamicImage::ImageRgb8(pillar)));
        // A black frame and a dark bar on one side only are not a letterbox.
        assert!(!has_letterbox_bars(&DynamicImage::ImageRgb8(
            RgbImage::new(224, 224)
        )));
        let mut top_only = content(224, 224);
        for y in 0..30 {
            for x in 0..224 {
                top_only.put_pixel(x, y, Rgb([0, 0, 0]));
            }
        }
        assert!(!has_letterbox_bars(&DynamicImage::ImageRgb8(top_only)));
    }
}
