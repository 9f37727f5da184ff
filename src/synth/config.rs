//! `[synth]`: which generator, how much it may spend, which gaps count, the prompt templates and
//! the checks every image passes before it lands. Validated at load.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which generator answers the requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The offline street-scene generator: free, deterministic, no network (demo, CI).
    Procedural,
    /// Amazon Bedrock `InvokeModel` (Stability image models; Nova Canvas / Titan schema).
    Bedrock,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Procedural => "procedural",
            BackendKind::Bedrock => "bedrock",
        }
    }
}

/// `[synth]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SynthConfig {
    pub backend: BackendKind,
    /// The mining run whose gaps are filled (default: the latest successful one).
    pub mine_run: Option<String>,
    /// Seeds prompts, generator seeds and request ids: same plan + seed → same requests.
    pub seed: u64,
    /// Hard budget per run: images asked for (a call that can bill counts before it is sent).
    pub max_images: usize,
    /// Hard budget per run in dollars, at the configured prices per image.
    pub max_usd: f64,
    /// Generator calls in flight at most.
    pub max_concurrent: usize,
    /// Gaps planned at most, strongest first.
    pub max_gaps: usize,
    /// Images asked for one gap at most.
    pub per_gap: usize,
    /// Confidence of the `synthetic` label of a generated image (procedural scenes: 1, they are
    /// labelled by construction).
    pub label_confidence: f32,
    /// Where reports go (default `<data>/reports/synth`).
    pub report_dir: Option<PathBuf>,
    pub gaps: GapConfig,
    pub checks: CheckConfig,
    pub audit: AuditConfig,
    pub prompts: PromptConfig,
    pub bedrock: BedrockConfig,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Procedural,
            mine_run: None,
            seed: 0,
            max_images: 64,
            max_usd: 5.0,
            max_concurrent: 4,
            max_gaps: 6,
            per_gap: 16,
            label_confidence: 0.9,
            report_dir: None,
            gaps: GapConfig::default(),
            checks: CheckConfig::default(),
            audit: AuditConfig::default(),
            prompts: PromptConfig::default(),
            bedrock: BedrockConfig::default(),
        }
    }
}

/// `[synth.gaps]`: what counts as a gap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GapConfig {
    /// Clusters mining flagged as under-covered (traffic share ≫ training share).
    pub under_covered: bool,
    /// Clusters whose labelled members the champion gets wrong at least this often.
    pub min_error_rate: f32,
    /// ... counted only with this many labelled members.
    pub min_labelled: u32,
    /// Tag keys (and `era`) whose values are checked for class imbalance.
    pub strata: Vec<String>,
    /// A stratum value needs this many labelled training samples to be judged.
    pub min_stratum: usize,
    /// A stratum value whose majority class holds more than this share is imbalanced.
    pub max_class_share: f64,
}

impl Default for GapConfig {
    fn default() -> Self {
        Self {
            under_covered: true,
            min_error_rate: 0.25,
            min_labelled: 5,
            strata: vec![
                "daytime".into(),
                "weather".into(),
                "environment".into(),
                "era".into(),
            ],
            min_stratum: 10,
            max_class_share: 0.75,
        }
    }
}

/// `[synth.checks]`: what an image must pass before it lands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckConfig {
    /// Smaller sides are refused.
    pub min_side_px: u32,
    /// Pixel standard deviation (0–255) below this is a blank or flat image.
    pub min_pixel_std: f32,
    /// Perceptual hashes within this many bits of a stored image: a duplicate.
    pub phash_max_hamming: u32,
    /// Cosine distance below which two embeddings are near twins (default: the mining run's
    /// near-duplicate threshold).
    pub near_dup_distance: Option<f32>,
    /// Lands when the distance to the target centroid is at most this × the 90th percentile of
    /// the target members' own distances.
    pub land_ratio: f32,
    /// Synthetic members of a cluster may be at most this share of its real members.
    pub max_synthetic_ratio: f32,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            min_side_px: 64,
            min_pixel_std: 6.0,
            phash_max_hamming: 4,
            near_dup_distance: None,
            land_ratio: 1.5,
            max_synthetic_ratio: 0.5,
        }
    }
}

/// `[synth.audit]`: the shortcut audit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// A cluster is audited with at least this many real and this many synthetic members.
    pub min_per_side: usize,
    /// Held-out real-vs-synthetic AUC at or above this flags the cluster.
    pub flag_auc: f64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            min_per_side: 6,
            flag_auc: 0.9,
        }
    }
}

/// `[synth.prompts]`: templates and phrases; `{view}`, `{scene}`, `{element}` and `{lookalike}`
/// are filled per image from the request's attributes and the seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptConfig {
    /// Text-to-image, label roadwork.
    pub positive: String,
    /// Text-to-image, label clean (a hard negative).
    pub negative: String,
    /// Always sent as the negative prompt.
    pub negative_prompt: String,
    pub views: Vec<String>,
    /// One roadwork element per positive, at a realistic scale.
    pub elements: Vec<String>,
    /// Things that look like roadwork and are not.
    pub lookalikes: Vec<String>,
    /// Edits that add an element (inpaint / search-and-replace): what to paint.
    pub add_prompt: String,
    /// Search-and-replace that adds: what to find in a clean frame.
    pub add_search: String,
    /// Edits that remove roadwork: what to find ...
    pub remove_search: String,
    /// ... and what to paint instead.
    pub remove_prompt: String,
    /// Attribute phrases: `phrases.daytime.night = "at night under street lamps"`. A value
    /// without a phrase is used as it is.
    pub phrases: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for PromptConfig {
    fn default() -> Self {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let mut phrases = BTreeMap::new();
        phrases.insert(
            "daytime".into(),
            map(&[
                ("day", "in daylight"),
                ("dusk", "at dusk with low sun"),
                ("night", "at night under street lamps and headlights"),
            ]),
        );
        phrases.insert(
            "weather".into(),
            map(&[
                ("clear", "clear sky"),
                ("overcast", "overcast sky"),
                ("rain", "in heavy rain, wet reflective asphalt"),
                ("fog", "in dense fog, low contrast"),
                ("snow", "in falling snow, snow at the kerbs"),
            ]),
        );
        phrases.insert(
            "environment".into(),
            map(&[
                ("urban", "a city street with buildings on both sides"),
                ("suburban", "a suburban street with houses and trees"),
                ("highway", "a multi-lane highway"),
            ]),
        );
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Self {
            positive: "{view} of {scene}, {element}, photorealistic, natural colours".into(),
            negative: "{view} of {scene}, {lookalike}, no construction work, photorealistic, natural colours".into(),
            negative_prompt: "cartoon, illustration, painting, 3d render, aerial view, drone shot, indoor, text, caption, watermark, logo, blurry, distorted".into(),
            views: list(&[
                "a dash-cam photo",
                "a street-level photo taken from a car",
                "a photo from a delivery van's windscreen camera",
            ]),
            elements: list(&[
                "a row of orange traffic cones closing one lane",
                "red-and-white plastic road barriers around an open trench",
                "a triangular roadwork warning sign at the roadside",
                "a road worker in a high-visibility vest holding a stop sign",
                "a yellow excavator parked on dug-up asphalt",
                "an arrow board on a trailer directing traffic into one lane",
                "freshly dug asphalt with gravel and a small construction fence",
            ]),
            lookalikes: list(&[
                "an orange delivery van parked at the kerb",
                "a pedestrian in an orange jacket crossing the street",
                "a parked truck with striped mudflaps",
                "a \"road work ends\" sign after the works are cleared",
                "orange autumn leaves on an empty road",
                "a clear road with fresh lane markings",
            ]),
            add_prompt: "{element}, photorealistic, matching the lighting of the scene".into(),
            add_search: "empty asphalt road surface".into(),
            remove_search: "traffic cones, road barriers, roadwork signs, construction vehicles and workers".into(),
            remove_prompt: "empty asphalt road surface matching the surroundings".into(),
            phrases,
        }
    }
}

/// The request schema a Bedrock model speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelFamily {
    /// SD3.5 Large: `mode` text-to-image or image-to-image (`image`, `strength`).
    StabilitySd3,
    /// Stable Image Core / Ultra: text-to-image.
    StabilityImage,
    /// Image Services search-and-replace (`image`, `prompt`, `search_prompt`).
    StabilitySearchReplace,
    /// Image Services inpaint (`image`, `mask`, `prompt`).
    StabilityInpaint,
    /// Nova Canvas / Titan Image Generator (`taskType`), for accounts with private access.
    AmazonImage,
}

/// One Bedrock model: its id, schema and price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BedrockModel {
    /// The name the task settings refer to.
    pub name: String,
    /// The Bedrock model id (`stability.sd3-5-large-v1:0`).
    pub id: String,
    pub family: ModelFamily,
    /// Dollars per generated image (prices are third-party and change: check yours).
    pub price_usd: f64,
}

/// `[synth.bedrock]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BedrockConfig {
    /// Stability's image models are served in us-west-2.
    pub region: String,
    /// Another endpoint (a VPC endpoint, or a local server in tests).
    pub endpoint_url: Option<String>,
    /// A named profile of `~/.aws/config` (default: the standard chain).
    pub profile: Option<String>,
    /// Whole call including retries, milliseconds.
    pub timeout_ms: u64,
    /// One attempt, milliseconds.
    pub attempt_timeout_ms: u64,
    /// Attempts per call (throttling, model-not-ready and 5xx are retried with backoff).
    pub max_attempts: u32,
    /// First retry waits up to this long, doubling after.
    pub initial_backoff_ms: u64,
    /// Model names (from `models`) per task; an unset task is not used.
    pub text_to_image: Option<String>,
    pub image_to_image: Option<String>,
    /// Paints a roadwork element into a clean frame (inpaint or search-and-replace).
    pub add_element: Option<String>,
    /// Replaces the roadwork in a positive frame by empty road (search-and-replace or inpaint).
    pub remove_element: Option<String>,
    /// Image-to-image: how far from the source (0–1).
    pub strength: f32,
    /// Text-to-image aspect ratio for full-resolution gaps (224² gaps ask for 1:1).
    pub aspect_ratio: String,
    pub models: Vec<BedrockModel>,
}

impl Default for BedrockConfig {
    fn default() -> Self {
        let m = |name: &str, id: &str, family, price_usd| BedrockModel {
            name: name.into(),
            id: id.into(),
            family,
            price_usd,
        };
        Self {
            region: "us-west-2".into(),
            endpoint_url: None,
            profile: None,
            timeout_ms: 120_000,
            attempt_timeout_ms: 60_000,
            max_attempts: 4,
            initial_backoff_ms: 1_000,
            text_to_image: Some("sd35-large".into()),
            image_to_image: Some("sd35-large".into()),
            add_element: Some("inpaint".into()),
            remove_element: Some("search-replace".into()),
            strength: 0.45,
            aspect_ratio: "16:9".into(),
            models: vec![
                m(
                    "sd35-large",
                    "stability.sd3-5-large-v1:0",
                    ModelFamily::StabilitySd3,
                    0.08,
                ),
                m(
                    "image-core",
                    "stability.stable-image-core-v1:1",
                    ModelFamily::StabilityImage,
                    0.04,
                ),
                m(
                    "image-ultra",
                    "stability.stable-image-ultra-v1:1",
                    ModelFamily::StabilityImage,
                    0.14,
                ),
                m(
                    "search-replace",
                    "stability.stable-image-search-replace-v1:0",
                    ModelFamily::StabilitySearchReplace,
                    0.07,
                ),
                m(
                    "inpaint",
                    "stability.stable-image-inpaint-v1:0",
                    ModelFamily::StabilityInpaint,
                    0.07,
                ),
                m(
                    "nova-canvas",
                    "amazon.nova-canvas-v1:0",
                    ModelFamily::AmazonImage,
                    0.04,
                ),
            ],
        }
    }
}

impl BedrockConfig {
    /// The model a task setting names.
    pub fn model(&self, name: &str) -> Option<&BedrockModel> {
        self.models.iter().find(|m| m.name == name)
    }
}

const ASPECTS: [&str; 9] = [
    "16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21",
];

impl SynthConfig {
    /// Range checks serde cannot do; every task names a model of a family that can do it.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_concurrent == 0 || self.max_gaps == 0 || self.per_gap == 0 {
            return Err("synth.max_concurrent, max_gaps and per_gap must be at least 1".into());
        }
        if !(self.max_usd.is_finite() && self.max_usd >= 0.0) {
            return Err("synth.max_usd must be a finite amount ≥ 0".into());
        }
        if !(self.label_confidence > 0.5 && self.label_confidence <= 1.0) {
            return Err("synth.label_confidence must be in (0.5, 1]".into());
        }
        let g = &self.gaps;
        let shares_ok = (0.0..=1.0).contains(&g.min_error_rate)
            && g.max_class_share > 0.5
            && g.max_class_share < 1.0;
        if !shares_ok {
            return Err(
                "synth.gaps.min_error_rate must be in [0,1] and max_class_share in (0.5, 1)".into(),
            );
        }
        let c = &self.checks;
        let finite_pos = |v: f32| v.is_finite() && v >= 0.0;
        let checks_ok = finite_pos(c.land_ratio)
            && c.land_ratio > 0.0
            && finite_pos(c.max_synthetic_ratio)
            && c.min_pixel_std.is_finite()
            && c.near_dup_distance.is_none_or(finite_pos);
        if !checks_ok {
            return Err("synth.checks: land_ratio > 0, max_synthetic_ratio ≥ 0, near_dup_distance ≥ 0 (finite)".into());
        }
        if c.phash_max_hamming > 32 {
            return Err(
                "synth.checks.phash_max_hamming above 32 bits matches unrelated images".into(),
            );
        }
        if !(0.5..=1.0).contains(&self.audit.flag_auc) || self.audit.min_per_side < 2 {
            return Err("synth.audit.flag_auc must be in [0.5, 1] and min_per_side ≥ 2".into());
        }
        if self.prompts.views.is_empty()
            || self.prompts.elements.is_empty()
            || self.prompts.lookalikes.is_empty()
        {
            return Err("synth.prompts: views, elements and lookalikes must not be empty".into());
        }
        let b = &self.bedrock;
        if b.timeout_ms == 0 || b.attempt_timeout_ms == 0 || b.max_attempts == 0 {
            return Err(
                "synth.bedrock: timeout_ms, attempt_timeout_ms and max_attempts must be at least 1"
                    .into(),
            );
        }
        if !(b.strength > 0.0 && b.strength <= 1.0) {
            return Err("synth.bedrock.strength must be in (0, 1]".into());
        }
        if !ASPECTS.contains(&b.aspect_ratio.as_str()) {
            return Err(format!(
                "synth.bedrock.aspect_ratio {:?} is not one of {}",
                b.aspect_ratio,
                ASPECTS.join(", ")
            ));
        }
        for m in &b.models {
            if !(m.price_usd.is_finite() && m.price_usd >= 0.0) {
                return Err(format!(
                    "synth.bedrock model {}: price_usd must be ≥ 0",
                    m.name
                ));
            }
        }
        use ModelFamily::*;
        let tasks: [(&str, &Option<String>, &[ModelFamily]); 4] = [
            (
                "text_to_image",
                &b.text_to_image,
                &[StabilitySd3, StabilityImage, AmazonImage],
            ),
            (
                "image_to_image",
                &b.image_to_image,
                &[StabilitySd3, AmazonImage],
            ),
            (
                "add_element",
                &b.add_element,
                &[StabilityInpaint, StabilitySearchReplace, AmazonImage],
            ),
            (
                "remove_element",
                &b.remove_element,
                &[StabilityInpaint, StabilitySearchReplace, AmazonImage],
            ),
        ];
        for (task, name, families) in tasks {
            let Some(name) = name else { continue };
            let Some(m) = b.model(name) else {
                return Err(format!(
                    "synth.bedrock.{task} names {name:?}, which is not in synth.bedrock.models"
                ));
            };
            if !families.contains(&m.family) {
                return Err(format!(
                    "synth.bedrock.{task}: model {name} ({:?}) cannot do that task",
                    m.family
                ));
            }
        }
        if self.backend == BackendKind::Bedrock && b.text_to_image.is_none() {
            return Err(
                "synth.bedrock.text_to_image must name a model (every gap can fall back to it)"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_settings_say_why() {
        SynthConfig::default().validate().unwrap();
        let mut c = SynthConfig {
            backend: BackendKind::Bedrock,
            ..SynthConfig::default()
        };
        c.validate().unwrap();
        c.max_usd = f64::NAN;
        assert!(c.validate().unwrap_err().contains("max_usd"));
        c.max_usd = 1.0;
        c.bedrock.image_to_image = Some("image-core".into());
        assert!(c.validate().unwrap_err().contains("cannot do that task"));
        c.bedrock.image_to_image = Some("nope".into());
        assert!(
            c.validate()
                .unwrap_err()
                .contains("not in synth.bedrock.models")
        );
        c.bedrock.image_to_image = None;
        c.bedrock.aspect_ratio = "7:5".into();
        assert!(c.validate().unwrap_err().contains("aspect_ratio"));
    }
}
