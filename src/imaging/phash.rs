//! 64-bit DCT perceptual hash: survives re-encoding, resizing and mild colour changes, so re-encoded
//! copies of one image are found by Hamming distance where the content hash sees different bytes.
//!
//! Recipe (the common pHash formulation): grey 32×32 → 2-D DCT-II → the 8×8 lowest frequencies →
//! one bit per coefficient, set when above the median of the 63 non-DC coefficients.

use std::sync::OnceLock;

use image::DynamicImage;
use image::imageops::FilterType;

const N: usize = 32;
const K: usize = 8;

/// cos((2x+1)uπ / 2N) for u < K, x < N.
fn dct_table() -> &'static [[f32; N]; K] {
    static T: OnceLock<[[f32; N]; K]> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = [[0f32; N]; K];
        for (u, row) in t.iter_mut().enumerate() {
            for (x, v) in row.iter_mut().enumerate() {
                *v = (((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI) / (2.0 * N as f64))
                    .cos() as f32;
            }
        }
        t
    })
}

/// The perceptual hash of an image.
pub fn phash(img: &DynamicImage) -> u64 {
    // A cheap box pre-shrink keeps this fast on full-resolution frames; the triangle filter then
    // gives the 32×32 the DCT reads.
    let small = if img.width() > 4 * N as u32 || img.height() > 4 * N as u32 {
        img.thumbnail_exact(4 * N as u32, 4 * N as u32)
    } else {
        img.clone()
    };
    let grey = small
        .resize_exact(N as u32, N as u32, FilterType::Triangle)
        .to_luma32f();
    let px = grey.as_raw();
    let t = dct_table();
    // rows: tmp[u][x] = sum_y cos_u(y) * px[y][x]
    let mut tmp = [[0f32; N]; K];
    for (u, row) in tmp.iter_mut().enumerate() {
        for y in 0..N {
            let c = t[u][y];
            for x in 0..N {
                row[x] += c * px[y * N + x];
            }
        }
    }
    let mut coef = [0f32; K * K];
    for u in 0..K {
        for v in 0..K {
            coef[u * K + v] = (0..N).map(|x| tmp[u][x] * t[v][x]).sum();
        }
    }
    let mut ac: Vec<f32> = coef[1..].to_vec();
    ac.sort_by(f32::total_cmp);
    let median = (ac[ac.len() / 2 - 1] + ac[ac.len() / 2]) / 2.0;
    coef.iter()
        .enumerate()
        .fold(0u64, |h, (i, &c)| if c > median { h | (1 << i) } else { h })
}

/// Number of differing bits; ≤ 10 of 64 is the usual "same picture" threshold.
pub fn hamming(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, RgbImage};
    use std::io::Cursor;

    fn scene(seed: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(RgbImage::from_fn(320, 240, |x, y| {
            let v = ((x * (3 + seed) + y * (7 + 2 * seed)) / 9 % 256) as u8;
            let w = if (x / 40 + y / 30 + seed).is_multiple_of(2) {
                200
            } else {
                30
            };
            image::Rgb([v, w, v / 2])
        }))
    }

    #[test]
    fn re_encoded_copy_is_close_and_other_image_is_far() {
        let a = scene(1);
        let mut jpg = Vec::new();
        a.write_to(&mut Cursor::new(&mut jpg), ImageFormat::Jpeg)
            .unwrap();
        let re =
            image::load_from_memory(&jpg)
                .unwrap()
                .resize_exact(200, 150, FilterType::Lanczos3);
        let (ha, hre, hb) = (phash(&a), phash(&re), phash(&scene(4)));
        assert!(
            hamming(ha, hre) <= 6,
            "re-encode moved {}",
            hamming(ha, hre)
        );
        assert!(
            hamming(ha, hb) >= 16,
            "different image only {}",
            hamming(ha, hb)
        );
    }
}
