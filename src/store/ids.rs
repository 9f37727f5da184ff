//! Typed identifiers and label values shared by every stage.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Content address of a sample: hex sha256 of the original image bytes. Because the id is derived from
/// the bytes, every ingest path is idempotent and the same image from two sources is one sample.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SampleId(String);

impl SampleId {
    /// The id of these bytes.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    /// The 64 lowercase hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SampleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a string is not a sample id.
#[derive(Debug, thiserror::Error)]
#[error("not a sample id (64 hex characters of sha256): {0:?}")]
pub struct BadSampleId(pub String);

impl FromStr for SampleId {
    type Err = BadSampleId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if ok {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(BadSampleId(s.to_string()))
        }
    }
}

impl TryFrom<String> for SampleId {
    type Error = BadSampleId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SampleId> for String {
    fn from(id: SampleId) -> Self {
        id.0
    }
}

/// The binary class the classifier answers: roadwork present or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// No roadwork in the scene (stored as 0).
    Clean,
    /// Roadwork present (stored as 1).
    Roadwork,
}

impl Label {
    /// `roadwork` or `clean`, as folders, reports and prompts spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Clean => "clean",
            Label::Roadwork => "roadwork",
        }
    }

    /// The stored integer (0 or 1), as the subnet and the NATIX dataset spell it.
    pub fn as_u8(self) -> u8 {
        match self {
            Label::Clean => 0,
            Label::Roadwork => 1,
        }
    }

    /// The label for a stored integer; anything but 0/1 is not a label.
    pub fn from_int(v: i64) -> Option<Self> {
        match v {
            0 => Some(Label::Clean),
            1 => Some(Label::Roadwork),
            _ => None,
        }
    }

    /// Parses the spellings people put in label files: `1/0`, `roadwork/clean`, `true/false`,
    /// `yes/no`, `positive/negative`.
    pub fn parse_loose(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "1" | "roadwork" | "true" | "yes" | "positive" | "pos" => Some(Label::Roadwork),
            "0" | "clean" | "false" | "no" | "negative" | "neg" | "no_roadwork" | "none" => {
                Some(Label::Clean)
            }
            _ => None,
        }
    }
}

/// Where a label came from. Order of precedence (highest first): human, dataset, synthetic, teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSource {
    /// A person reviewed the image.
    Human,
    /// A published dataset (e.g. NATIX `roadwork`) or a labelled folder.
    Dataset,
    /// The generator that made the image intended this label.
    Synthetic,
    /// A model (the VLM tier) said so.
    Teacher,
}

impl LabelSource {
    /// Larger wins when two sources disagree about one sample.
    pub fn precedence(self) -> u8 {
        match self {
            LabelSource::Human => 3,
            LabelSource::Dataset => 2,
            LabelSource::Synthetic => 1,
            LabelSource::Teacher => 0,
        }
    }

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LabelSource::Human => "human",
            LabelSource::Dataset => "dataset",
            LabelSource::Synthetic => "synthetic",
            LabelSource::Teacher => "teacher",
        }
    }

    /// The source for a stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "human" => Some(LabelSource::Human),
            "dataset" => Some(LabelSource::Dataset),
            "synthetic" => Some(LabelSource::Synthetic),
            "teacher" => Some(LabelSource::Teacher),
            _ => None,
        }
    }
}

/// Where a sample's image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleSource {
    /// A validator query answered by our server.
    Validator,
    /// A published dataset.
    Dataset,
    /// Made by a generator (procedural or Bedrock).
    Synthetic,
    /// Brought in by a person (an image folder).
    Upload,
    /// A signed query from a key no allow-list vouched for (`serve.allow_any_validator`): anyone
    /// can produce these, so they are kept apart from `validator` traffic (layout 5).
    Unverified,
}

impl SampleSource {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SampleSource::Validator => "validator",
            SampleSource::Dataset => "dataset",
            SampleSource::Synthetic => "synthetic",
            SampleSource::Upload => "upload",
            SampleSource::Unverified => "unverified",
        }
    }
}

impl FromStr for SampleSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "validator" => Ok(SampleSource::Validator),
            "dataset" => Ok(SampleSource::Dataset),
            "synthetic" => Ok(SampleSource::Synthetic),
            "upload" => Ok(SampleSource::Upload),
            "unverified" => Ok(SampleSource::Unverified),
            other => Err(format!(
                "unknown sample source {other:?} (validator|dataset|synthetic|upload|unverified)"
            )),
        }
    }
}

/// The image distribution a sample belongs to; validators changed what they send over time
/// (DESIGN.md §5), so training and evaluation slice by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Era {
    /// 224×224 centre/random crops (before April 2026).
    Crop224,
    /// 224×224 letterboxed (April 2026).
    Letterbox224,
    /// Full resolution (since May 2026).
    Fullres,
    /// Not known.
    Unknown,
}

impl Era {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Era::Crop224 => "crop224",
            Era::Letterbox224 => "letterbox224",
            Era::Fullres => "fullres",
            Era::Unknown => "unknown",
        }
    }

    /// The era of a stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [Era::Crop224, Era::Letterbox224, Era::Fullres, Era::Unknown]
            .into_iter()
            .find(|e| e.as_str() == s)
    }

    /// The era of a validator query, from when it was received and what its image is
    /// (DESIGN.md §5): from 2026-05-03 validators send unaugmented images at full resolution;
    /// before that every image was a 224×224 JPEG, letterboxed with black bars from 2026-04-06 when
    /// its augmentation level was 0, a crop otherwise. `letterboxed` is whether the image shows
    /// such bars ([`crate::imaging::has_letterbox_bars`]).
    pub fn of_query(
        received_at: chrono::DateTime<chrono::Utc>,
        width: u32,
        height: u32,
        letterboxed: bool,
    ) -> Self {
        let day = received_at.date_naive();
        let ymd = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default();
        if day >= ymd(2026, 5, 3) {
            return Era::Fullres;
        }
        match (width, height) {
            (224, 224) if letterboxed && day >= ymd(2026, 4, 6) => Era::Letterbox224,
            (224, 224) => Era::Crop224,
            (w, h) => Self::guess_from_size(w, h),
        }
    }

    /// A best guess from the image size alone: 224×224 is a crop, anything larger is full resolution.
    pub fn guess_from_size(width: u32, height: u32) -> Self {
        match (width, height) {
            (224, 224) => Era::Crop224,
            (w, h) if w > 224 || h > 224 => Era::Fullres,
            _ => Era::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_id_is_sha256_hex() {
        let id = SampleId::of_bytes(b"abc");
        assert_eq!(
            id.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!("xyz".parse::<SampleId>().is_err());
        assert_eq!(id.as_str().to_uppercase().parse::<SampleId>().unwrap(), id);
    }

    #[test]
    fn the_era_of_a_query_follows_the_validator_timeline() {
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|d| d.with_timezone(&chrono::Utc))
                .unwrap()
        };
        let march = at("2026-03-20T12:00:00Z");
        let april = at("2026-04-20T12:00:00Z");
        let may = at("2026-05-03T00:00:01Z");
        assert_eq!(Era::of_query(march, 224, 224, false), Era::Crop224);
        // No letterboxing before 2026-04-06: bars in March are part of the picture.
        assert_eq!(Era::of_query(march, 224, 224, true), Era::Crop224);
        assert_eq!(Era::of_query(april, 224, 224, true), Era::Letterbox224);
        assert_eq!(Era::of_query(april, 224, 224, false), Era::Crop224);
        // From 3 May everything is full resolution, whatever its size.
        assert_eq!(Era::of_query(may, 224, 224, true), Era::Fullres);
        assert_eq!(Era::of_query(may, 1920, 1080, false), Era::Fullres);
        assert_eq!(Era::of_query(april, 1920, 1080, false), Era::Fullres);
        assert_eq!(Era::of_query(april, 100, 100, false), Era::Unknown);
    }

    #[test]
    fn label_spellings() {
        assert_eq!(Label::parse_loose(" Roadwork "), Some(Label::Roadwork));
        assert_eq!(Label::parse_loose("0"), Some(Label::Clean));
        assert_eq!(Label::parse_loose("maybe"), None);
        assert_eq!(Label::from_int(2), None);
    }

    #[test]
    fn precedence_order() {
        use LabelSource::*;
        let mut v = [Teacher, Human, Synthetic, Dataset];
        v.sort_by_key(|s| std::cmp::Reverse(s.precedence()));
        assert_eq!(v, [Human, Dataset, Synthetic, Teacher]);
    }
}
