//! The `shadow_scores` table (layout 5): what a challenger head said about a served image, next to
//! what the champion said. The server scores the challenger after the champion's answer has been
//! sent and logs it as a shadow line of the query log; the query-log ingest moves those lines here.
//! The promote stage counts and compares them; mining reads disagreements as hard cases.
//!
//! One row per (request, challenger version): `SELECT * FROM shadow_scores WHERE
//! challenger_version = '…'`.

use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::rows::{TableRow, keys, serde_as};
use super::schema::{col, tables, ts_type};
use super::{Merge, Store, StoreError, WriteResult};

/// `shadow_scores`: one row per (request, challenger).
pub fn shadow_scores_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::SHADOW_ID, DataType::Utf8, false),
        Field::new(col::REQUEST_ID, DataType::Utf8, false),
        Field::new(col::SAMPLE_ID, DataType::Utf8, false),
        Field::new(col::CHAMPION_VERSION, DataType::Utf8, false),
        Field::new(col::CHAMPION_SCORE, DataType::Float32, false),
        Field::new(col::CHALLENGER_VERSION, DataType::Utf8, false),
        Field::new(col::CHALLENGER_SCORE, DataType::Float32, false),
        Field::new(col::TIER1_MS, DataType::Float32, false),
        Field::new(col::CHAMPION_HEAD_MS, DataType::Float32, false),
        Field::new(col::CHALLENGER_HEAD_MS, DataType::Float32, false),
        Field::new(col::TS, ts_type(), false),
        Field::new(col::VALIDATOR, DataType::Utf8, true),
    ]))
}

/// One shadow comparison. Scores are tier-1 head probabilities (calibrated, before any tier 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowRow {
    pub request_id: String,
    pub sample_id: String,
    pub champion_version: String,
    pub champion_score: f32,
    pub challenger_version: String,
    pub challenger_score: f32,
    /// The champion's whole tier-1 time (decode, encode, head), milliseconds.
    pub tier1_ms: f32,
    /// The champion head's forward alone.
    pub champion_head_ms: f32,
    /// The challenger head's forward on the same features.
    pub challenger_head_ms: f32,
    /// When the challenger scored.
    #[serde(with = "serde_as::micros")]
    pub ts: DateTime<Utc>,
    pub validator: Option<String>,
}

impl ShadowRow {
    /// The table key: `<request_id>/<challenger_version>`.
    pub fn shadow_id(&self) -> String {
        format!("{}/{}", self.request_id, self.challenger_version)
    }
}

impl TableRow for ShadowRow {
    const TABLE: &'static str = tables::SHADOW_SCORES;
    const DERIVED: &'static [&'static str] = &[col::SHADOW_ID];
    fn derived(rows: &[Self]) -> Vec<ArrayRef> {
        vec![keys(rows, ShadowRow::shadow_id)]
    }
}

impl Store {
    /// Writes shadow comparisons; a request already recorded for the same challenger is left as
    /// it is (re-ingesting a segment adds nothing).
    pub async fn put_shadow_scores(&self, rows: &[ShadowRow]) -> Result<WriteResult, StoreError> {
        self.write_rows(rows, Merge::InsertOnly).await
    }

    /// Every shadow comparison of `challenger` (any champion when `champion` is `None`).
    pub async fn shadow_scores(
        &self,
        challenger: Option<&str>,
        champion: Option<&str>,
    ) -> Result<Vec<ShadowRow>, StoreError> {
        let q = |c: &str, v: &str| format!("{c} = '{}'", v.replace('\'', "''"));
        let mut parts = Vec::new();
        if let Some(v) = challenger {
            parts.push(q(col::CHALLENGER_VERSION, v));
        }
        if let Some(v) = champion {
            parts.push(q(col::CHAMPION_VERSION, v));
        }
        let filter = (!parts.is_empty()).then(|| parts.join(" AND "));
        let mut rows = self.read_rows::<ShadowRow>(filter.as_deref()).await?;
        rows.retain(|r| {
            challenger.is_none_or(|v| r.challenger_version == v)
                && champion.is_none_or(|v| r.champion_version == v)
        });
        Ok(rows)
    }
}
