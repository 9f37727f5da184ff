//! The query-log records: one JSON object per line, written by the serving cascade for every
//! answered request ([`QueryLogRecord`]) and, when a challenger is scored in shadow, one
//! [`ShadowRecord`] per shadow score (`"kind": "shadow"`), read back by `roadwork ingest querylog`.
//! These structs are the format; both sides use them.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Format version written in every record, so a reader can refuse lines from a future writer.
pub const QUERY_LOG_VERSION: u32 = 3;

/// One answered request, complete enough to rebuild the sample and the prediction from it alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryLogRecord {
    /// [`QUERY_LOG_VERSION`] of the writer.
    pub v: u32,
    /// Unique per request (the dendrite uuid + nonce for validator traffic).
    pub request_id: String,
    pub received_at: DateTime<Utc>,
    /// When the reply was sent.
    pub answered_at: DateTime<Utc>,
    /// Validator hotkey (ss58) for `/ImageSynapse` traffic; absent for local clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_hotkey: Option<String>,
    /// No allow-list vouched for the hotkey (answered under `serve.allow_any_validator`): ingested
    /// as source `unverified`, never `validator` (since version 2).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unverified: bool,
    /// The serving profile that answered (`speed`, `accuracy`, …).
    pub profile: String,
    /// The image bytes exactly as received after transport decoding, standard base64; only their
    /// first bytes, or none, when [`image_cut`](Self::image_cut) says why.
    pub image_b64: String,
    /// Hex sha256 of all the received bytes (the sample id), whether or not all are logged.
    pub image_sha256: String,
    /// Set when `image_b64` holds less than the request's image (since version 3): the server
    /// keeps only the first bytes of a payload that did not decode (`undecodable`), and none
    /// while the log's disk is below its free-space floor (`disk_floor`). Such a record still
    /// gives a prediction row, never a sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_cut: Option<ImageCut>,
    /// Length of the received image when `image_b64` is cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_len: Option<u64>,
    /// Champion head version that answered tier 1.
    pub model_version: String,
    /// Every tier that ran, in order.
    pub tiers: Vec<TierOutput>,
    /// The tier whose answer was sent.
    pub decided_by: u8,
    /// What was sent: finite in [0,1], or -1 for an image that could not be decoded.
    pub final_score: f32,
    /// Receive → reply, milliseconds.
    pub latency_ms: f32,
    /// Why the image could not be decoded, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_error: Option<String>,
}

/// Why a record's `image_b64` is shorter than the request's image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageCut {
    /// The payload did not decode as an image: only its first bytes are kept (enough to see
    /// what it was), so junk cannot fill the disk at the body limit per request.
    Undecodable,
    /// The disk was below `serve.querylog_min_free_mib`: the answer was logged without its image.
    DiskFloor,
}

impl ImageCut {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::DiskFloor => "disk_floor",
        }
    }
}

/// What one tier of the cascade said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierOutput {
    /// 1 = embedding + head, 2 = VLM.
    pub tier: u8,
    /// Calibrated P(roadwork), absent when the tier failed or timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    pub latency_ms: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `kind` of a shadow line.
pub const SHADOW_KIND: &str = "shadow";

/// A challenger head's score for an answered request, written after the reply went out. It never
/// changed the answer; it is what the promote stage compares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowRecord {
    /// [`QUERY_LOG_VERSION`] of the writer.
    pub v: u32,
    /// Always [`SHADOW_KIND`].
    pub kind: String,
    /// The answered request ([`QueryLogRecord::request_id`]).
    pub request_id: String,
    pub image_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator_hotkey: Option<String>,
    /// The head that answered, and its tier-1 probability.
    pub champion_version: String,
    pub champion_score: f32,
    /// The head scored in shadow on the same features.
    pub challenger_version: String,
    pub challenger_score: f32,
    /// The champion's whole tier-1 time (decode, encode, head), milliseconds.
    pub tier1_ms: f32,
    pub champion_head_ms: f32,
    pub challenger_head_ms: f32,
    pub scored_at: DateTime<Utc>,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq)]
pub enum LogLine {
    /// An answered request and its decoded image bytes.
    Answer(Box<QueryLogRecord>, Vec<u8>),
    Shadow(ShadowRecord),
}

impl LogLine {
    /// Parses and checks a line of either kind.
    pub fn parse(line: &str) -> Result<Self, QueryLogError> {
        #[derive(Deserialize)]
        struct Probe<'a> {
            #[serde(default, borrow)]
            kind: Option<&'a str>,
        }
        let probe: Probe = serde_json::from_str(line)?;
        match probe.kind {
            None => {
                let (rec, bytes) = QueryLogRecord::parse_line(line)?;
                Ok(Self::Answer(Box::new(rec), bytes))
            }
            Some(SHADOW_KIND) => {
                let mut rec: ShadowRecord = serde_json::from_str(line)?;
                if rec.v > QUERY_LOG_VERSION {
                    return Err(QueryLogError::TooNew { found: rec.v });
                }
                for s in [rec.champion_score, rec.challenger_score] {
                    if !(s.is_finite() && (0.0..=1.0).contains(&s)) {
                        return Err(QueryLogError::BadScore(s));
                    }
                }
                match rec.image_sha256.parse::<super::SampleId>() {
                    Ok(id) => rec.image_sha256 = id.to_string(),
                    Err(_) => return Err(QueryLogError::BadId(rec.image_sha256)),
                }
                Ok(Self::Shadow(rec))
            }
            Some(other) => Err(QueryLogError::UnknownKind(other.chars().take(40).collect())),
        }
    }
}

/// Why a log line cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum QueryLogError {
    #[error("not a query-log record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("record version {found} is newer than this reader ({QUERY_LOG_VERSION})")]
    TooNew { found: u32 },
    #[error("image_b64 is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("image_sha256 {claimed} does not match the image bytes ({actual})")]
    HashMismatch { claimed: String, actual: String },
    #[error("score {0} is neither in [0,1] nor -1")]
    BadScore(f32),
    #[error("image_sha256 {0:?} is not a sample id")]
    BadId(String),
    #[error("unknown line kind {0:?}")]
    UnknownKind(String),
    #[error("a cut image holds {kept} bytes but claims {claimed:?} in all")]
    BadCut { kept: usize, claimed: Option<u64> },
}

impl QueryLogRecord {
    /// Parses and checks one line: version, score range, and that the bytes hash to the claimed id
    /// (for a cut image: that the id is one and the kept bytes fit the claimed length).
    /// Returns the record and the decoded image bytes (all of them, or the part kept).
    pub fn parse_line(line: &str) -> Result<(Self, Vec<u8>), QueryLogError> {
        let rec: QueryLogRecord = serde_json::from_str(line)?;
        if rec.v > QUERY_LOG_VERSION {
            return Err(QueryLogError::TooNew { found: rec.v });
        }
        let s = rec.final_score;
        if !(s.is_finite() && ((0.0..=1.0).contains(&s) || s == -1.0)) {
            return Err(QueryLogError::BadScore(s));
        }
        let bytes = base64::engine::general_purpose::STANDARD.decode(&rec.image_b64)?;
        if rec.image_cut.is_some() {
            if rec.image_len.is_none_or(|n| (bytes.len() as u64) > n) {
                return Err(QueryLogError::BadCut {
                    kept: bytes.len(),
                    claimed: rec.image_len,
                });
            }
            if rec.image_sha256.parse::<super::SampleId>().is_err() {
                return Err(QueryLogError::BadId(rec.image_sha256));
            }
            return Ok((rec, bytes));
        }
        let actual = super::SampleId::of_bytes(&bytes);
        if !actual.as_str().eq_ignore_ascii_case(&rec.image_sha256) {
            return Err(QueryLogError::HashMismatch {
                claimed: rec.image_sha256.clone(),
                actual: actual.to_string(),
            });
        }
        Ok((rec, bytes))
    }

    /// The score a tier gave, if it ran and answered.
    pub fn tier_score(&self, tier: u8) -> Option<f32> {
        self.tiers
            .iter()
            .find(|t| t.tier == tier)
            .and_then(|t| t.score)
    }
}
