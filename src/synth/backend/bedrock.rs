//! Amazon Bedrock `InvokeModel` (`POST /model/{modelId}/invoke`, JSON in and out) through
//! `aws-sdk-bedrockruntime`.
//!
//! Retries are the SDK's standard mode: ThrottlingException, ModelNotReadyException and 5xx
//! answers are retried with exponential backoff up to `max_attempts`; each attempt and the whole
//! call have their own timeout. A filtered answer (Stability's `finish_reasons`, Nova's `error`,
//! or a 400 ValidationException about content filters) is a [`GenError::Filtered`], never an
//! image.

use std::io::Cursor;
use std::time::Duration;

use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::config::retry::RetryConfig;
use aws_sdk_bedrockruntime::config::timeout::TimeoutConfig;
use aws_sdk_bedrockruntime::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::primitives::Blob;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Backend, GenError, Generated};
use crate::synth::config::{BedrockConfig, ModelFamily};
use crate::synth::plan::{Job, Task};

/// Bedrock's request body limit.
const MAX_BODY_BYTES: usize = 25_000_000;
/// Stability's image services take at most this many input pixels.
const MAX_INPUT_PIXELS: u64 = 9_437_184;

/// Bedrock as a synthesis backend.
#[derive(Debug, Clone)]
pub struct Bedrock {
    client: Client,
    cfg: BedrockConfig,
}

fn retry(cfg: &BedrockConfig) -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(cfg.max_attempts)
        .with_initial_backoff(Duration::from_millis(cfg.initial_backoff_ms))
}

fn timeouts(cfg: &BedrockConfig) -> TimeoutConfig {
    TimeoutConfig::builder()
        .operation_timeout(Duration::from_millis(cfg.timeout_ms))
        .operation_attempt_timeout(Duration::from_millis(cfg.attempt_timeout_ms))
        .connect_timeout(Duration::from_secs(10))
        .build()
}

impl Bedrock {
    /// Production: the standard AWS credential chain (environment, `~/.aws` profile — or
    /// `profile` — SSO, container and instance roles) in the configured region.
    pub async fn from_env(cfg: &BedrockConfig) -> Self {
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(cfg.region.clone()));
        if let Some(p) = &cfg.profile {
            loader = loader.profile_name(p);
        }
        let shared = loader.load().await;
        let mut b = aws_sdk_bedrockruntime::config::Builder::from(&shared)
            .retry_config(retry(cfg))
            .timeout_config(timeouts(cfg));
        if let Some(url) = &cfg.endpoint_url {
            b = b.endpoint_url(url);
        }
        Self {
            client: Client::from_conf(b.build()),
            cfg: cfg.clone(),
        }
    }

    /// Static credentials (keys handed out for one job, or a local test endpoint).
    pub fn with_credentials(cfg: &BedrockConfig, access_key_id: &str, secret: &str) -> Self {
        let creds = Credentials::new(access_key_id, secret, None, None, "roadwork-static");
        let mut b = aws_sdk_bedrockruntime::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(creds)
            .retry_config(retry(cfg))
            .timeout_config(timeouts(cfg));
        if let Some(url) = &cfg.endpoint_url {
            b = b.endpoint_url(url);
        }
        Self {
            client: Client::from_conf(b.build()),
            cfg: cfg.clone(),
        }
    }
}

/// A source frame as Stability and Nova accept it: JPEG/PNG/WebP as they are, anything else or
/// anything above 9.4 MP re-encoded (downscaled) as JPEG.
fn fit_source(bytes: &[u8]) -> Result<(Vec<u8>, u32, u32), GenError> {
    let bad = |e: String| GenError::Local(format!("source frame: {e}"));
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    let format = reader.format();
    let (w, h) = reader.into_dimensions().map_err(|e| bad(e.to_string()))?;
    let native = matches!(
        format,
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png | image::ImageFormat::WebP)
    );
    if native && u64::from(w) * u64::from(h) <= MAX_INPUT_PIXELS {
        return Ok((bytes.to_vec(), w, h));
    }
    let img = crate::imaging::decode(bytes, &crate::imaging::DecodeLimits::default())
        .map_err(|e| bad(e.to_string()))?
        .image;
    let scale = (MAX_INPUT_PIXELS as f64 / (f64::from(w) * f64::from(h)))
        .sqrt()
        .min(1.0);
    let (nw, nh) = (
        ((f64::from(w) * scale) as u32).max(64),
        ((f64::from(h) * scale) as u32).max(64),
    );
    let img = img
        .resize_exact(nw, nh, image::imageops::FilterType::Triangle)
        .to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
        .encode_image(&img)
        .map_err(|e| bad(e.to_string()))?;
    Ok((out, nw, nh))
}

/// The inpaint mask: white (repaint) over the road ahead — the lower middle of the frame, where
/// a roadwork element at a realistic scale stands — black elsewhere.
fn road_mask(w: u32, h: u32) -> Result<Vec<u8>, GenError> {
    let mut m = image::GrayImage::new(w, h);
    let (x0, x1) = (w * 30 / 100, w * 85 / 100);
    let (y0, y1) = (h * 55 / 100, h * 95 / 100);
    for y in y0..y1 {
        for x in x0..x1 {
            m.put_pixel(x, y, image::Luma([255]));
        }
    }
    let mut out = Vec::new();
    m.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| GenError::Local(format!("mask: {e}")))?;
    Ok(out)
}

fn chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Nova / Titan sizes: multiples of 16 in 320–4096.
fn amazon_side(v: u32) -> u32 {
    (v.clamp(320, 4096) / 16) * 16
}

/// The JSON body of one job for its model family (DESIGN §7 has the schemas).
pub fn request_body(
    job: &Job,
    source: Option<&[u8]>,
    cfg: &BedrockConfig,
) -> Result<Vec<u8>, GenError> {
    let family = job
        .model
        .family
        .ok_or_else(|| GenError::Local("a Bedrock job without a model family".into()))?;
    let src = match (job.task, source) {
        (Task::TextToImage, _) => None,
        (_, Some(b)) => Some(fit_source(b)?),
        (t, None) => {
            return Err(GenError::Local(format!(
                "{} needs a source frame",
                t.as_str()
            )));
        }
    };
    let aspect = if job.width == job.height {
        "1:1".to_string()
    } else {
        cfg.aspect_ratio.clone()
    };
    let prompt = chars(&job.prompt, 10_000);
    let neg = chars(&job.negative_prompt, 10_000);
    let b64 = |b: &[u8]| B64.encode(b);
    let body = match (family, job.task, &src) {
        (ModelFamily::StabilitySd3 | ModelFamily::StabilityImage, Task::TextToImage, _) => {
            let mut v = json!({
                "prompt": prompt, "negative_prompt": neg, "aspect_ratio": aspect,
                "seed": job.seed, "output_format": "jpeg",
            });
            if family == ModelFamily::StabilitySd3 {
                v["mode"] = json!("text-to-image");
            }
            v
        }
        (ModelFamily::StabilitySd3, Task::ImageToImage, Some((img, _, _))) => json!({
            "prompt": prompt, "negative_prompt": neg, "mode": "image-to-image",
            "image": b64(img), "strength": cfg.strength, "seed": job.seed, "output_format": "jpeg",
        }),
        (
            ModelFamily::StabilitySearchReplace,
            Task::AddElement | Task::RemoveElement,
            Some((img, _, _)),
        ) => json!({
            "image": b64(img), "prompt": prompt,
            "search_prompt": job.search_prompt.clone().unwrap_or_default(),
            "negative_prompt": neg, "seed": job.seed, "output_format": "jpeg",
        }),
        (
            ModelFamily::StabilityInpaint,
            Task::AddElement | Task::RemoveElement,
            Some((img, w, h)),
        ) => json!({
            "image": b64(img), "mask": b64(&road_mask(*w, *h)?), "prompt": prompt,
            "negative_prompt": neg, "grow_mask": 8, "seed": job.seed, "output_format": "jpeg",
        }),
        (ModelFamily::AmazonImage, task, src) => {
            let text = chars(&job.prompt, 1024);
            let negative = chars(&job.negative_prompt, 1024);
            let gen_cfg = json!({
                "width": amazon_side(job.width), "height": amazon_side(job.height),
                "quality": "standard", "cfgScale": 6.5,
                "seed": job.seed % 2_147_483_647, "numberOfImages": 1,
            });
            match (task, src) {
                (Task::TextToImage, _) => json!({
                    "taskType": "TEXT_IMAGE",
                    "textToImageParams": {"text": text, "negativeText": negative},
                    "imageGenerationConfig": gen_cfg,
                }),
                (Task::ImageToImage, Some((img, _, _))) => json!({
                    "taskType": "IMAGE_VARIATION",
                    "imageVariationParams": {"images": [b64(img)], "similarityStrength": (1.0 - cfg.strength).clamp(0.2, 1.0), "text": text, "negativeText": negative},
                    "imageGenerationConfig": gen_cfg,
                }),
                (_, Some((img, _, _))) => json!({
                    "taskType": "INPAINTING",
                    "inPaintingParams": {"image": b64(img), "text": text, "negativeText": negative,
                        "maskPrompt": chars(&job.search_prompt.clone().unwrap_or_default(), 1024)},
                    "imageGenerationConfig": gen_cfg,
                }),
                (t, None) => {
                    return Err(GenError::Local(format!(
                        "{} needs a source frame",
                        t.as_str()
                    )));
                }
            }
        }
        (f, t, _) => {
            return Err(GenError::Local(format!(
                "model family {f:?} cannot do {}",
                t.as_str()
            )));
        }
    };
    let bytes = serde_json::to_vec(&body).map_err(|e| GenError::Local(e.to_string()))?;
    if bytes.len() > MAX_BODY_BYTES {
        return Err(GenError::Local(format!(
            "request body of {} bytes exceeds Bedrock's {MAX_BODY_BYTES}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The image of a successful (HTTP 200) answer, or why there is none.
pub(crate) fn parse_answer(family: ModelFamily, body: &[u8]) -> Result<Vec<u8>, GenError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| GenError::Malformed(format!("not JSON: {e}")))?;
    if family == ModelFamily::AmazonImage
        && let Some(err) = v.get("error").and_then(Value::as_str)
        && !err.is_empty()
    {
        return Err(GenError::Filtered {
            reason: format!("output: {err}"),
            billed: true,
        });
    }
    if let Some(reason) = v
        .get("finish_reasons")
        .and_then(Value::as_array)
        .and_then(|r| r.first())
        .and_then(Value::as_str)
    {
        return Err(if reason.starts_with("Filter reason") {
            GenError::Filtered {
                reason: reason.to_string(),
                billed: reason.contains("output"),
            }
        } else {
            GenError::Server(reason.to_string())
        });
    }
    let first = v
        .get("images")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .ok_or_else(|| GenError::Malformed("no images in the answer".into()))?;
    B64.decode(first)
        .map_err(|e| GenError::Malformed(format!("image is not base64: {e}")))
}

/// The SDK's error, classified.
fn classify<R: std::fmt::Debug>(
    e: SdkError<aws_sdk_bedrockruntime::operation::invoke_model::InvokeModelError, R>,
) -> GenError {
    match e {
        SdkError::TimeoutError(_) => GenError::Timeout("no answer within the timeout".into()),
        SdkError::DispatchFailure(d) => {
            if d.is_timeout() {
                GenError::Timeout(format!("{d:?}"))
            } else {
                GenError::Unreachable(format!("{d:?}"))
            }
        }
        SdkError::ResponseError(r) => GenError::Server(format!("unreadable answer: {r:?}")),
        SdkError::ServiceError(s) => {
            let err = s.into_err();
            let msg = format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("")
            );
            let lower = msg.to_ascii_lowercase();
            if err.is_validation_exception()
                && (lower.contains("content filter") || lower.contains("blocked"))
            {
                GenError::Filtered {
                    reason: format!("input: {msg}"),
                    billed: false,
                }
            } else if err.is_throttling_exception()
                || err.is_model_not_ready_exception()
                || err.is_service_quota_exceeded_exception()
            {
                GenError::Throttled(msg)
            } else if err.is_model_timeout_exception() {
                GenError::Timeout(msg)
            } else if err.is_internal_server_exception()
                || err.is_service_unavailable_exception()
                || err.is_model_error_exception()
            {
                GenError::Server(msg)
            } else if err.is_validation_exception()
                || err.is_access_denied_exception()
                || err.is_resource_not_found_exception()
            {
                GenError::Refused(msg)
            } else {
                GenError::Server(msg)
            }
        }
        // No credentials, no region: every call would fail the same way.
        SdkError::ConstructionFailure(c) => GenError::Refused(format!(
            "cannot build the request (credentials? region?): {c:?}"
        )),
        other => GenError::Local(format!("{other:?}")),
    }
}

impl Backend for Bedrock {
    fn name(&self) -> &'static str {
        "bedrock"
    }

    fn generate<'a>(
        &'a self,
        job: &'a Job,
        source: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Generated, GenError>> {
        async move {
            let family = job
                .model
                .family
                .ok_or_else(|| GenError::Local("a Bedrock job without a model family".into()))?;
            let body = request_body(job, source, &self.cfg)?;
            let out = self
                .client
                .invoke_model()
                .model_id(&job.model.id)
                .content_type("application/json")
                .accept("application/json")
                .body(Blob::new(body))
                .send()
                .await
                .map_err(classify)?;
            let bytes = parse_answer(family, out.body().as_ref())?;
            Ok(Generated {
                bytes,
                model_id: job.model.id.clone(),
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_their_documented_shape() {
        let img = B64.encode(b"jpeg bytes");
        let ok = format!(r#"{{"seeds":[1],"finish_reasons":[null],"images":["{img}"]}}"#);
        assert_eq!(
            parse_answer(ModelFamily::StabilitySd3, ok.as_bytes()).unwrap(),
            b"jpeg bytes"
        );
        let filtered = r#"{"seeds":[1],"finish_reasons":["Filter reason: prompt"]}"#;
        assert!(matches!(
            parse_answer(ModelFamily::StabilitySd3, filtered.as_bytes()),
            Err(GenError::Filtered { billed: false, .. })
        ));
        let out = r#"{"seeds":[1],"finish_reasons":["Filter reason: output image"],"images":[]}"#;
        assert!(matches!(
            parse_answer(ModelFamily::StabilityImage, out.as_bytes()),
            Err(GenError::Filtered { billed: true, .. })
        ));
        let inference = r#"{"finish_reasons":["Inference error"]}"#;
        assert!(matches!(
            parse_answer(ModelFamily::StabilitySd3, inference.as_bytes()),
            Err(GenError::Server(_))
        ));
        let nova = r#"{"images":[],"error":"blocked by content filters"}"#;
        assert!(matches!(
            parse_answer(ModelFamily::AmazonImage, nova.as_bytes()),
            Err(GenError::Filtered { billed: true, .. })
        ));
        assert!(matches!(
            parse_answer(ModelFamily::StabilitySd3, b"{not json"),
            Err(GenError::Malformed(_))
        ));
        assert!(matches!(
            parse_answer(ModelFamily::StabilitySd3, br#"{"images":["%%%"]}"#),
            Err(GenError::Malformed(_))
        ));
    }

    #[test]
    fn masks_cover_the_road_ahead_and_sizes_fit_amazon() {
        let m = image::load_from_memory(&road_mask(100, 50).unwrap())
            .unwrap()
            .to_luma8();
        assert_eq!(m.dimensions(), (100, 50));
        assert_eq!(m.get_pixel(50, 40).0, [255]);
        assert_eq!(m.get_pixel(5, 5).0, [0]);
        assert_eq!(
            (amazon_side(224), amazon_side(1000), amazon_side(9000)),
            (320, 992, 4096)
        );
    }
}
