//! Local predictions and the bad-image list: deterministic, finite, or -1, in bounded time and memory.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn local_predictions_are_deterministic_finite_and_minus_one_for_garbage() {
    let s = start(&[], Clock::System).await;
    let c = reqwest::Client::new();
    let jpg = support::small_scene(5, 1);
    let raw: Value = c
        .post(format!("{}/v1/predict", s.url))
        .header("content-type", "image/jpeg")
        .body(jpg.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p = raw["prediction"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p) && p != 0.5);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&jpg);
    let js: Value = c
        .post(format!("{}/v1/predict", s.url))
        .json(&serde_json::json!({ "image": format!("data:image/jpeg;base64,{b64}") }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        js["prediction"], raw["prediction"],
        "same image, same answer"
    );
    for garbage in [
        b"not an image".to_vec(),
        jpg[..jpg.len() / 3].to_vec(),
        vec![],
    ] {
        let g = predict_json(&c, &s.url, &garbage).await;
        assert_eq!(g["prediction"], -1.0);
        assert!(g["error"].as_str().is_some());
    }
    let bad = c
        .post(format!("{}/v1/predict", s.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let h = healthz_of(&s.url).await;
    assert_eq!(h["model_version"], "head-a");
}

/// CRC-32 (IEEE) for hand-made PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in bytes {
        c ^= *b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG that declares `w`×`h` (8-bit, `color` type) but carries one tiny IDAT: a header bomb.
fn png_header_bomb(w: u32, h: u32, color: u8, depth: u8) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        c.extend_from_slice(&body);
        c.extend_from_slice(&crc32(&body).to_be_bytes());
        c
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// `jpeg` with an EXIF APP1 segment saying "rotate 90° clockwise to view" (orientation 6).
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\x00\x08\x00\x00\x00".to_vec();
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// The bad-image list of the serving issue: odd colour models, containers and metadata that must
/// get an answer, and bombs, truncations and garbage that must get -1 — quickly, in bounded memory.
fn bad_images() -> Vec<(&'static str, Vec<u8>, bool)> {
    use image::{DynamicImage, ImageFormat};
    use jpeg_encoder::SamplingFactor::{F_1_1, F_2_2};
    let rgb = roadwork::synth::scenes::render(&{
        let mut s = roadwork::synth::scenes::SceneSpec::draw(9, 3);
        (s.width, s.height) = (96, 64);
        s
    });
    let img = DynamicImage::ImageRgb8(rgb.clone());
    let enc = |i: &DynamicImage, f: ImageFormat| {
        let mut v = std::io::Cursor::new(Vec::new());
        i.write_to(&mut v, f).unwrap();
        v.into_inner()
    };
    let jpg = enc(&img, ImageFormat::Jpeg);
    let cmyk = |color, sampling| {
        let px: Vec<u8> = rgb
            .pixels()
            .flat_map(|p| {
                let [r, g, b] = p.0.map(|c| c as f32 / 255.0);
                let k = 1.0 - r.max(g).max(b);
                let d = (1.0 - k).max(1e-6);
                [(1.0 - r - k) / d, (1.0 - g - k) / d, (1.0 - b - k) / d, k]
                    .map(|c| (c * 255.0) as u8)
            })
            .collect();
        let mut out = Vec::new();
        let mut e = jpeg_encoder::Encoder::new(&mut out, 85);
        // libjpeg's layout for CMYK: no subsampling. (Subsampled 4-channel JPEGs decode with
        // wrong colours in the decoder we use; they still get a finite answer, tested below.)
        e.set_sampling_factor(sampling);
        e.encode(&px, 96, 64, color).unwrap();
        out
    };
    // A genuine decompression bomb: 7000×7000 of zeros, 49 MB decoded from a file 150× smaller,
    // just under the 50 MP cap (answered); 8000×8000 is over it (refused from the header).
    let bomb = enc(
        &DynamicImage::ImageLuma8(image::GrayImage::new(7000, 7000)),
        ImageFormat::Png,
    );
    assert!(bomb.len() < 49_000_000 / 150, "{}", bomb.len());
    let over = enc(
        &DynamicImage::ImageLuma8(image::GrayImage::new(8000, 8000)),
        ImageFormat::Png,
    );
    let big = enc(
        &DynamicImage::ImageRgb8(image::imageops::resize(
            &rgb,
            3000,
            2000,
            image::imageops::FilterType::Nearest,
        )),
        ImageFormat::Jpeg,
    );
    let mut gif_bomb = b"GIF89a".to_vec();
    gif_bomb.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x3B]);
    vec![
        (
            "grayscale jpeg",
            enc(&img.grayscale(), ImageFormat::Jpeg),
            true,
        ),
        (
            "cmyk jpeg",
            cmyk(jpeg_encoder::ColorType::Cmyk, F_1_1),
            true,
        ),
        (
            "ycck jpeg",
            cmyk(jpeg_encoder::ColorType::CmykAsYcck, F_1_1),
            true,
        ),
        (
            "subsampled cmyk jpeg",
            cmyk(jpeg_encoder::ColorType::Cmyk, F_2_2),
            true,
        ),
        ("exif-rotated jpeg", with_exif_orientation(&jpg, 6), true),
        ("gray png", enc(&img.grayscale(), ImageFormat::Png), true),
        (
            "gray+alpha png",
            enc(
                &DynamicImage::ImageLumaA8(img.to_luma_alpha8()),
                ImageFormat::Png,
            ),
            true,
        ),
        (
            "rgba png",
            enc(&DynamicImage::ImageRgba8(img.to_rgba8()), ImageFormat::Png),
            true,
        ),
        (
            "16-bit png",
            enc(&DynamicImage::ImageRgb16(img.to_rgb16()), ImageFormat::Png),
            true,
        ),
        (
            "webp",
            enc(&DynamicImage::ImageRgba8(img.to_rgba8()), ImageFormat::WebP),
            true,
        ),
        ("bmp", enc(&img, ImageFormat::Bmp), true),
        (
            "gif",
            enc(&DynamicImage::ImageRgba8(img.to_rgba8()), ImageFormat::Gif),
            true,
        ),
        ("7000x7000 png bomb", bomb, true),
        ("8000x8000 png over the pixel cap", over, false),
        ("3000x2000 jpeg", big, true),
        (
            "png claiming 40000x40000",
            png_header_bomb(40_000, 40_000, 2, 8),
            false,
        ),
        (
            "png claiming 16000x16000 rgba16",
            png_header_bomb(16_000, 16_000, 6, 16),
            false,
        ),
        ("gif claiming 65535x65535", gif_bomb, false),
        ("truncated jpeg", jpg[..jpg.len() / 2].to_vec(), false),
        ("jpeg header only", jpg[..20].to_vec(), false),
        ("html", b"<html><body>hi</body></html>".to_vec(), false),
        (
            "random bytes",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            false,
        ),
        ("empty", vec![], false),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_image_gets_a_finite_answer_or_minus_one() {
    let limits = DecodeLimits::default();
    let s = start(&[], Clock::System).await;
    let c = reqwest::Client::new();
    for (name, bytes, answerable) in bad_images() {
        let t = std::time::Instant::now();
        let v = predict_json(&c, &s.url, &bytes).await;
        let p = v["prediction"].as_f64().unwrap_or(f64::NAN);
        if answerable {
            assert!((0.0..=1.0).contains(&p) && p != 0.5, "{name}: {v}");
        } else {
            assert_eq!(p, -1.0, "{name}: {v}");
            assert!(
                v["error"].as_str().is_some(),
                "{name}: the reason is returned"
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(7),
            "{name}: {:?}",
            t.elapsed()
        );
        // Same image, same answer (the JSON/base64 route too).
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let again = predict_field(&c, &s.url, &b64).await;
        assert_eq!(again["prediction"], v["prediction"], "{name}");
        assert_eq!(
            roadwork::imaging::decode(&bytes, &limits).is_ok(),
            answerable,
            "{name}"
        );
    }
    // EXIF orientation is applied: a 96×64 photo tagged "rotate 90°" is 64×96 upright.
    let (_, rotated, _) = bad_images()
        .into_iter()
        .find(|b| b.0 == "exif-rotated jpeg")
        .unwrap();
    let d = roadwork::imaging::decode(&rotated, &limits).unwrap();
    assert_eq!((d.image.width(), d.image.height()), (64, 96));
    // CMYK comes out as the colours it encodes (not inverted, not garbled).
    let (_, cmyk, _) = bad_images()
        .into_iter()
        .find(|b| b.0 == "cmyk jpeg")
        .unwrap();
    let (_, gray, _) = bad_images()
        .into_iter()
        .find(|b| b.0 == "gray png")
        .unwrap();
    let (_, bmp, _) = bad_images().into_iter().find(|b| b.0 == "bmp").unwrap();
    let rgb = |b: &[u8]| {
        roadwork::imaging::decode(b, &limits)
            .unwrap()
            .image
            .to_rgb8()
    };
    let mad = |a: &image::RgbImage, b: &image::RgbImage| {
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y) as f64)
            .sum::<f64>()
            / a.as_raw().len() as f64
    };
    let truth = rgb(&bmp);
    let (_, ycck, _) = bad_images()
        .into_iter()
        .find(|b| b.0 == "ycck jpeg")
        .unwrap();
    assert!(
        mad(&rgb(&ycck), &truth) < 12.0,
        "{}",
        mad(&rgb(&ycck), &truth)
    );
    assert!(
        mad(&rgb(&cmyk), &truth) < 12.0,
        "{}",
        mad(&rgb(&cmyk), &truth)
    );
    assert!(
        mad(&rgb(&gray), &truth) > mad(&rgb(&cmyk), &truth),
        "the check can tell colours apart"
    );
    // Not a base64 string at all: -1 through the JSON route.
    let v = predict_field(&c, &s.url, "%%% not base64 %%%").await;
    assert_eq!(v["prediction"], -1.0);
}

/// `img` encoded as `format` with its header patched by `patch` to declare a huge size: what an
/// attacker sends (a few KB that decode to gigabytes).
fn header_bomb(format: image::ImageFormat, patch: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([x as u8 * 9, y as u8 * 9, 90])
    }));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), format)
        .unwrap();
    patch(&mut out);
    out
}

/// Offset of the first `marker` segment (FF xx) of a JPEG.
fn jpeg_segment(j: &[u8], marker: u8) -> usize {
    j.windows(2).position(|w| w == [0xFF, marker]).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn header_bombs_of_every_format_are_refused_before_decoding() {
    use image::ImageFormat;
    let set_sof = |progressive: bool| {
        move |j: &mut Vec<u8>| {
            let at = jpeg_segment(j, 0xC0);
            if progressive {
                j[at + 1] = 0xC2;
            }
            // FF C0, length (2), precision (1), height (2), width (2).
            j[at + 5..at + 7].copy_from_slice(&16_384u16.to_be_bytes());
            j[at + 7..at + 9].copy_from_slice(&16_384u16.to_be_bytes());
        }
    };
    let bombs: Vec<(&str, Vec<u8>)> = vec![
        (
            "baseline jpeg 16384²",
            header_bomb(ImageFormat::Jpeg, set_sof(false)),
        ),
        (
            "progressive jpeg 16384²",
            header_bomb(ImageFormat::Jpeg, set_sof(true)),
        ),
        (
            "lossless webp 16383²",
            header_bomb(ImageFormat::WebP, |w| {
                let at = w.windows(4).position(|x| x == b"VP8L").unwrap() + 8;
                assert_eq!(w[at], 0x2f, "VP8L signature");
                let bits: u32 = 16_382 | (16_382 << 14) | (1 << 28);
                w[at + 1..at + 5].copy_from_slice(&bits.to_le_bytes());
            }),
        ),
        (
            "bmp 10000²",
            header_bomb(ImageFormat::Bmp, |b| {
                b[18..22].copy_from_slice(&10_000i32.to_le_bytes());
                b[22..26].copy_from_slice(&10_000i32.to_le_bytes());
            }),
        ),
        (
            "gif 10000²",
            header_bomb(ImageFormat::Gif, |g| {
                g[6..8].copy_from_slice(&10_000u16.to_le_bytes());
                g[8..10].copy_from_slice(&10_000u16.to_le_bytes());
                let d = g.iter().position(|&b| b == 0x2C).unwrap();
                g[d + 5..d + 7].copy_from_slice(&10_000u16.to_le_bytes());
                g[d + 7..d + 9].copy_from_slice(&10_000u16.to_le_bytes());
            }),
        ),
    ];
    // Every format decodes normally below the caps, so the patch alone is what is refused.
    for f in [
        ImageFormat::Jpeg,
        ImageFormat::WebP,
        ImageFormat::Bmp,
        ImageFormat::Gif,
    ] {
        assert!(
            roadwork::imaging::decode(&header_bomb(f, |_| {}), &DecodeLimits::default()).is_ok(),
            "{f:?}"
        );
    }
    let s = start(&[], Clock::System).await;
    let c = reqwest::Client::new();
    for (name, bytes) in bombs {
        assert!(bytes.len() < 4096, "{name}: {} bytes", bytes.len());
        let t = std::time::Instant::now();
        let v = predict_json(&c, &s.url, &bytes).await;
        assert_eq!(v["prediction"], -1.0, "{name}: {v}");
        let why = v["error"].as_str().unwrap_or_default();
        assert!(
            why.contains("exceeds") || why.contains("decode limits"),
            "{name}: {why}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{name}: {:?}",
            t.elapsed()
        );
    }
}
