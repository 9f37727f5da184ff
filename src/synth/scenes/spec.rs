//! What one scene contains, drawn from the seed: the class, the conditions and the camera.

use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::store::Label;

/// Time of day; sets sky, light and whether lamps glow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Daytime {
    Day,
    Dusk,
    Night,
}

/// Weather; sets sky, haze and particles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weather {
    Clear,
    Overcast,
    Rain,
    Fog,
    Snow,
}

/// Surroundings; sets what lines the road.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Urban,
    Suburban,
    Highway,
}

/// Roadwork elements a positive scene can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Element {
    Cones,
    Barriers,
    Sign,
    Workers,
    Excavator,
    ArrowBoard,
    DugAsphalt,
}

/// Everything needed to draw one scene; a pure function of (seed, index).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneSpec {
    pub seed: u64,
    pub index: u64,
    pub width: u32,
    pub height: u32,
    pub label: Label,
    pub daytime: Daytime,
    pub weather: Weather,
    pub environment: Environment,
    /// Camera height above the road, metres (dash-cam ≈ 1.3, truck ≈ 2.5, pole ≈ 4).
    pub camera_height_m: f32,
    /// Horizon row as a fraction of the height (camera pitch).
    pub horizon_frac: f32,
    /// Roadwork elements present (empty for clean scenes).
    pub elements: Vec<Element>,
    /// Clean scenes only: includes look-alikes (orange vehicles, pedestrians, striped poles).
    pub hard_negative: bool,
    pub jpeg_quality: u8,
}

/// Output sizes, from validator-era crops to full-HD dash-cam frames.
const SIZES: [(u32, u32); 10] = [
    (224, 224),
    (256, 256),
    (384, 384),
    (512, 384),
    (640, 480),
    (800, 600),
    (1024, 768),
    (1024, 1024),
    (1280, 720),
    (1920, 1080),
];

const ELEMENTS: [Element; 7] = [
    Element::Cones,
    Element::Barriers,
    Element::Sign,
    Element::Workers,
    Element::Excavator,
    Element::ArrowBoard,
    Element::DugAsphalt,
];

/// A generator stream for one scene: independent of every other index, so scenes can be drawn in
/// parallel and any one reproduced alone.
pub fn scene_rng(seed: u64, index: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15);
    r.set_stream(index.wrapping_mul(4).wrapping_add(stream));
    r
}

impl SceneSpec {
    /// The scene at `index` of the set made with `seed`. Even indices are roadwork, odd are clean,
    /// so any prefix of a set is balanced.
    pub fn draw(seed: u64, index: u64) -> Self {
        let mut r = scene_rng(seed, index, 0);
        let (width, height) = *SIZES.choose(&mut r).unwrap_or(&(640, 480));
        let label = if index.is_multiple_of(2) {
            Label::Roadwork
        } else {
            Label::Clean
        };
        let daytime = *[
            Daytime::Day,
            Daytime::Day,
            Daytime::Day,
            Daytime::Dusk,
            Daytime::Night,
        ]
        .choose(&mut r)
        .unwrap_or(&Daytime::Day);
        let weather = *[
            Weather::Clear,
            Weather::Clear,
            Weather::Overcast,
            Weather::Rain,
            Weather::Fog,
            Weather::Snow,
        ]
        .choose(&mut r)
        .unwrap_or(&Weather::Clear);
        let environment = *[
            Environment::Urban,
            Environment::Suburban,
            Environment::Highway,
        ]
        .choose(&mut r)
        .unwrap_or(&Environment::Urban);
        let elements = if label == Label::Roadwork {
            let n = r.random_range(1..=4);
            let mut e: Vec<Element> = ELEMENTS.choose_multiple(&mut r, n).copied().collect();
            // Every positive shows at least one of the three things people key on.
            if !e
                .iter()
                .any(|x| matches!(x, Element::Cones | Element::Barriers | Element::Sign))
            {
                e.push(Element::Cones);
            }
            e.sort_by_key(|x| *x as u8);
            e
        } else {
            Vec::new()
        };
        Self {
            seed,
            index,
            width,
            height,
            label,
            daytime,
            weather,
            environment,
            camera_height_m: r.random_range(1.2..3.2),
            horizon_frac: r.random_range(0.36..0.52),
            elements,
            hard_negative: label == Label::Clean && r.random_bool(0.4),
            jpeg_quality: r.random_range(70..=95),
        }
    }

    /// This scene with `label`: a positive gets 1–3 roadwork elements drawn from `r` (at least one
    /// cone, barrier or sign), a negative loses them. Camera, road layout and conditions stay.
    pub fn relabelled(mut self, label: Label, hard_negative: bool, r: &mut ChaCha8Rng) -> Self {
        self.label = label;
        match label {
            Label::Roadwork => {
                self.hard_negative = false;
                if self.elements.is_empty() {
                    let n = r.random_range(1..=3);
                    let mut e: Vec<Element> = ELEMENTS.choose_multiple(r, n).copied().collect();
                    if !e
                        .iter()
                        .any(|x| matches!(x, Element::Cones | Element::Barriers | Element::Sign))
                    {
                        e.push(Element::Cones);
                    }
                    e.sort_by_key(|x| *x as u8);
                    self.elements = e;
                }
            }
            Label::Clean => {
                self.elements.clear();
                self.hard_negative = hard_negative;
            }
        }
        self
    }

    /// This scene under the conditions named by `daytime`, `weather` and `environment`
    /// attributes (values spelled as in the tags; others are ignored).
    pub fn with_attributes(mut self, attrs: &std::collections::BTreeMap<String, String>) -> Self {
        fn parse<T: serde::de::DeserializeOwned>(v: &str) -> Option<T> {
            serde_json::from_value(serde_json::Value::String(v.to_string())).ok()
        }
        if let Some(v) = attrs.get("daytime").and_then(|v| parse(v)) {
            self.daytime = v;
        }
        if let Some(v) = attrs.get("weather").and_then(|v| parse(v)) {
            self.weather = v;
        }
        if let Some(v) = attrs.get("environment").and_then(|v| parse(v)) {
            self.environment = v;
        }
        self
    }

    /// `key=value` tags stored with the sample.
    pub fn tags(&self) -> Vec<String> {
        let name = |v: &dyn erased::Name| v.name();
        let mut t = vec![
            format!("daytime={}", name(&self.daytime)),
            format!("weather={}", name(&self.weather)),
            format!("environment={}", name(&self.environment)),
            format!("camera_height_m={:.1}", self.camera_height_m),
        ];
        t.extend(self.elements.iter().map(|e| format!("element={}", name(e))));
        if self.hard_negative {
            t.push("hard_negative=true".into());
        }
        t
    }
}

mod erased {
    /// The serde spelling of a unit enum value.
    pub trait Name {
        fn name(&self) -> String;
    }
    impl<T: serde::Serialize> Name for T {
        fn name(&self) -> String {
            serde_json::to_value(self)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        }
    }
}
