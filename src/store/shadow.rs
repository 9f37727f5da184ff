//! The `shadow_scores` table (layout 5): what a challenger head said about a served image, next to
//! what the champion said. The server scores the challenger after the champion's answer has been
//! sent and logs it as a shadow line of the query log; the query-log ingest moves those lines here.
//! The promote stage counts and compares them; mining reads disagreements as hard cases.
//!
//! One row per (request, challenger version): `SELECT * FROM shadow_scores WHERE
//! challenger_version = '…'`.

use std::sync::Arc;

use arrow_array::{Array, Float32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, Utc};

use super::schema::{
    col, column, finish, from_micros, micros, opt_str_array, str_array, tables, ts_array, ts_type,
};
use super::{Merge, Store, StoreError, WriteResult, arrow};

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
#[derive(Debug, Clone, PartialEq)]
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
    pub ts: DateTime<Utc>,
    pub validator: Option<String>,
}

impl ShadowRow {
    /// The table key: `<request_id>/<challenger_version>`.
    pub fn shadow_id(&self) -> String {
        format!("{}/{}", self.request_id, self.challenger_version)
    }
}

fn f32s(v: impl Iterator<Item = f32>) -> Arc<Float32Array> {
    Arc::new(Float32Array::from_iter_values(v))
}

fn to_batch(rows: &[ShadowRow]) -> Result<RecordBatch, ArrowError> {
    let ids: Vec<String> = rows.iter().map(ShadowRow::shadow_id).collect();
    finish(
        shadow_scores_schema(),
        vec![
            str_array(ids.iter().map(String::as_str)),
            str_array(rows.iter().map(|r| r.request_id.as_str())),
            str_array(rows.iter().map(|r| r.sample_id.as_str())),
            str_array(rows.iter().map(|r| r.champion_version.as_str())),
            f32s(rows.iter().map(|r| r.champion_score)),
            str_array(rows.iter().map(|r| r.challenger_version.as_str())),
            f32s(rows.iter().map(|r| r.challenger_score)),
            f32s(rows.iter().map(|r| r.tier1_ms)),
            f32s(rows.iter().map(|r| r.champion_head_ms)),
            f32s(rows.iter().map(|r| r.challenger_head_ms)),
            ts_array(rows.iter().map(|r| Some(micros(&r.ts)))),
            opt_str_array(rows.iter().map(|r| r.validator.as_deref())),
        ],
    )
}

fn from_batch(b: &RecordBatch) -> Result<Vec<ShadowRow>, ArrowError> {
    let s = |name| column::<StringArray>(b, name);
    let f = |name| column::<Float32Array>(b, name);
    let (req, id, kv, cv) = (
        s(col::REQUEST_ID)?,
        s(col::SAMPLE_ID)?,
        s(col::CHAMPION_VERSION)?,
        s(col::CHALLENGER_VERSION)?,
    );
    let (ks, cs, t1, kh, ch) = (
        f(col::CHAMPION_SCORE)?,
        f(col::CHALLENGER_SCORE)?,
        f(col::TIER1_MS)?,
        f(col::CHAMPION_HEAD_MS)?,
        f(col::CHALLENGER_HEAD_MS)?,
    );
    let ts = column::<TimestampMicrosecondArray>(b, col::TS)?;
    let val = s(col::VALIDATOR)?;
    Ok((0..b.num_rows())
        .map(|i| ShadowRow {
            request_id: req.value(i).to_string(),
            sample_id: id.value(i).to_string(),
            champion_version: kv.value(i).to_string(),
            champion_score: ks.value(i),
            challenger_version: cv.value(i).to_string(),
            challenger_score: cs.value(i),
            tier1_ms: t1.value(i),
            champion_head_ms: kh.value(i),
            challenger_head_ms: ch.value(i),
            ts: from_micros(ts.value(i)),
            validator: (!val.is_null(i)).then(|| val.value(i).to_string()),
        })
        .collect())
}

impl Store {
    /// Writes shadow comparisons; a request already recorded for the same challenger is left as
    /// it is (re-ingesting a segment adds nothing).
    pub async fn put_shadow_scores(&self, rows: &[ShadowRow]) -> Result<WriteResult, StoreError> {
        let b = to_batch(rows).map_err(arrow(tables::SHADOW_SCORES))?;
        self.merge(tables::SHADOW_SCORES, b, Merge::InsertOnly)
            .await
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
        let mut rows = self
            .rows(tables::SHADOW_SCORES, filter.as_deref(), from_batch)
            .await?;
        rows.retain(|r| {
            challenger.is_none_or(|v| r.challenger_version == v)
                && champion.is_none_or(|v| r.champion_version == v)
        });
        Ok(rows)
    }
}
