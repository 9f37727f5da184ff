//! The `synth_images` table (layout 6): every image the synthesis stage asked a generator for,
//! with its provenance (backend, model, task, prompt, seed, source frame, cost) and its fate
//! (accepted into `samples`, or rejected and why).
//!
//! It is also the stage's memory: a job id is a hash of (plan request, image index), so a re-run
//! of the same plan and seed finds its jobs here and generates nothing twice. Jobs that failed
//! for a transient reason (throttled past the retries, a timeout, a server error) are retried.
//!
//! `SELECT status, reason, count(*) FROM synth_images WHERE run_id = '…' GROUP BY status, reason`.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::rows::{TableRow, serde_as};
use super::schema::{col, tables, ts_type};
use super::{Label, Merge, Store, StoreError, WriteResult};

/// `synth_images`: one row per generation job.
pub fn synth_images_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::SYNTH_ID, DataType::Utf8, false),
        Field::new(col::RUN_ID, DataType::Utf8, false),
        Field::new(col::REQUEST_ID, DataType::Utf8, false),
        Field::new(col::GAP, DataType::Utf8, false),
        Field::new(col::CLUSTER, DataType::UInt32, true),
        Field::new(col::LABEL, DataType::UInt8, false),
        Field::new(col::BACKEND, DataType::Utf8, false),
        Field::new(col::MODEL_ID, DataType::Utf8, false),
        Field::new(col::TASK, DataType::Utf8, false),
        Field::new(col::PROMPT, DataType::Utf8, false),
        Field::new(col::NEGATIVE_PROMPT, DataType::Utf8, false),
        Field::new(col::SEED, DataType::UInt64, false),
        Field::new(col::SOURCE_SAMPLE, DataType::Utf8, true),
        Field::new(col::COST_USD, DataType::Float64, false),
        Field::new(col::STATUS, DataType::Utf8, false),
        Field::new(col::REASON, DataType::Utf8, false),
        Field::new(col::SAMPLE_ID, DataType::Utf8, true),
        Field::new(col::DISTANCE, DataType::Float32, true),
        Field::new(col::LAND_LIMIT, DataType::Float32, true),
        Field::new(col::NEAREST_CLUSTER, DataType::UInt32, true),
        Field::new(col::TS, ts_type(), false),
    ]))
}

/// What became of one generation job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynthStatus {
    /// Passed every check and landed in `samples` with a `synthetic` label.
    Accepted,
    /// Generated, then refused by a check (duplicate, leakage, missed the gap, cap, bad image).
    Rejected,
    /// The generator's content filter answered instead of an image.
    Filtered,
    /// No image: the call failed (timeout, server error, malformed answer). Retried on a re-run.
    Failed,
}

impl SynthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SynthStatus::Accepted => "accepted",
            SynthStatus::Rejected => "rejected",
            SynthStatus::Filtered => "filtered",
            SynthStatus::Failed => "failed",
        }
    }

    /// Whether a re-run asks again: only calls that produced nothing for a transient reason.
    pub fn is_final(self) -> bool {
        self != SynthStatus::Failed
    }
}

/// One generation job and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthImageRow {
    /// Hash of (request id, image index): stable across re-runs of one plan.
    pub synth_id: String,
    pub run_id: String,
    pub request_id: String,
    /// `under-covered:c12`, `high-error:c3`, `imbalance:daytime=night`.
    pub gap: String,
    pub cluster: Option<u32>,
    /// The label the image was made to carry.
    #[serde(with = "serde_as::label_u8")]
    pub label: Label,
    /// `procedural` or `bedrock`.
    pub backend: String,
    pub model_id: String,
    /// `text-to-image`, `image-to-image`, `search-replace`, `inpaint`, `variation`.
    pub task: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: u64,
    /// The real frame an edit or variation started from.
    pub source_sample: Option<String>,
    /// What the call was charged at the configured price (0 when nothing was billed).
    pub cost_usd: f64,
    pub status: SynthStatus,
    /// Empty when accepted; otherwise why (`duplicate: …`, `leak: …`, `missed gap: …`, …).
    pub reason: String,
    /// The generated image's sample id, when an image came back.
    pub sample_id: Option<String>,
    /// Cosine distance of its embedding to the target's centroid.
    pub distance: Option<f32>,
    /// The largest distance that counts as landing in the target.
    pub land_limit: Option<f32>,
    /// The mining run's cluster whose centroid is nearest.
    pub nearest_cluster: Option<u32>,
    #[serde(with = "serde_as::micros")]
    pub ts: DateTime<Utc>,
}

impl TableRow for SynthImageRow {
    const TABLE: &'static str = tables::SYNTH_IMAGES;
}

impl Store {
    /// Records generation jobs; a job already recorded is replaced (a failed job retried by a
    /// later run gets its new outcome).
    pub async fn put_synth_images(
        &self,
        rows: &[SynthImageRow],
    ) -> Result<WriteResult, StoreError> {
        self.write_rows(rows, Merge::Upsert).await
    }

    /// Every recorded job, or those of one run.
    pub async fn synth_images(
        &self,
        run_id: Option<&str>,
    ) -> Result<Vec<SynthImageRow>, StoreError> {
        let filter = run_id.map(|r| format!("{} = '{}'", col::RUN_ID, r.replace('\'', "''")));
        let mut rows = self.read_rows::<SynthImageRow>(filter.as_deref()).await?;
        rows.retain(|r| run_id.is_none_or(|id| r.run_id == id));
        Ok(rows)
    }
}
