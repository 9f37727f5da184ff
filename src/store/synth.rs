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

use arrow_array::{
    Array, Float32Array, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt8Array, UInt32Array, UInt64Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::schema::{
    col, column, finish, from_micros, micros, opt_str_array, str_array, tables, ts_array, ts_type,
};
use super::{Label, Merge, Store, StoreError, WriteResult, arrow};

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

    fn parse(s: &str) -> Result<Self, ArrowError> {
        Ok(match s {
            "accepted" => SynthStatus::Accepted,
            "rejected" => SynthStatus::Rejected,
            "filtered" => SynthStatus::Filtered,
            "failed" => SynthStatus::Failed,
            other => {
                return Err(ArrowError::ParseError(format!(
                    "unknown synth status {other:?}"
                )));
            }
        })
    }

    /// Whether a re-run asks again: only calls that produced nothing for a transient reason.
    pub fn is_final(self) -> bool {
        self != SynthStatus::Failed
    }
}

/// One generation job and its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthImageRow {
    /// Hash of (request id, image index): stable across re-runs of one plan.
    pub synth_id: String,
    pub run_id: String,
    pub request_id: String,
    /// `under-covered:c12`, `high-error:c3`, `imbalance:daytime=night`.
    pub gap: String,
    pub cluster: Option<u32>,
    /// The label the image was made to carry.
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
    pub ts: DateTime<Utc>,
}

fn to_batch(rows: &[SynthImageRow]) -> Result<RecordBatch, ArrowError> {
    let s = |f: fn(&SynthImageRow) -> &str| str_array(rows.iter().map(f));
    finish(
        synth_images_schema(),
        vec![
            s(|r| &r.synth_id),
            s(|r| &r.run_id),
            s(|r| &r.request_id),
            s(|r| &r.gap),
            Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.cluster))),
            Arc::new(UInt8Array::from_iter_values(
                rows.iter().map(|r| r.label.as_u8()),
            )),
            s(|r| &r.backend),
            s(|r| &r.model_id),
            s(|r| &r.task),
            s(|r| &r.prompt),
            s(|r| &r.negative_prompt),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.seed))),
            opt_str_array(rows.iter().map(|r| r.source_sample.as_deref())),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.cost_usd),
            )),
            s(|r| r.status.as_str()),
            s(|r| &r.reason),
            opt_str_array(rows.iter().map(|r| r.sample_id.as_deref())),
            Arc::new(Float32Array::from_iter(rows.iter().map(|r| r.distance))),
            Arc::new(Float32Array::from_iter(rows.iter().map(|r| r.land_limit))),
            Arc::new(UInt32Array::from_iter(
                rows.iter().map(|r| r.nearest_cluster),
            )),
            ts_array(rows.iter().map(|r| Some(micros(&r.ts)))),
        ],
    )
}

fn from_batch(b: &RecordBatch) -> Result<Vec<SynthImageRow>, ArrowError> {
    let s = |name| column::<StringArray>(b, name);
    let u32s = |name| column::<UInt32Array>(b, name);
    let f32s = |name| column::<Float32Array>(b, name);
    let (id, run, req, gap, backend, model, task, prompt, neg, src, status, reason, sample) = (
        s(col::SYNTH_ID)?,
        s(col::RUN_ID)?,
        s(col::REQUEST_ID)?,
        s(col::GAP)?,
        s(col::BACKEND)?,
        s(col::MODEL_ID)?,
        s(col::TASK)?,
        s(col::PROMPT)?,
        s(col::NEGATIVE_PROMPT)?,
        s(col::SOURCE_SAMPLE)?,
        s(col::STATUS)?,
        s(col::REASON)?,
        s(col::SAMPLE_ID)?,
    );
    let (cluster, nearest) = (u32s(col::CLUSTER)?, u32s(col::NEAREST_CLUSTER)?);
    let (dist, limit) = (f32s(col::DISTANCE)?, f32s(col::LAND_LIMIT)?);
    let label = column::<UInt8Array>(b, col::LABEL)?;
    let seed = column::<UInt64Array>(b, col::SEED)?;
    let cost = column::<Float64Array>(b, col::COST_USD)?;
    let ts = column::<TimestampMicrosecondArray>(b, col::TS)?;
    let opt_s = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
    let opt_u = |a: &UInt32Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
    let opt_f = |a: &Float32Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
    (0..b.num_rows())
        .map(|i| {
            Ok(SynthImageRow {
                synth_id: id.value(i).to_string(),
                run_id: run.value(i).to_string(),
                request_id: req.value(i).to_string(),
                gap: gap.value(i).to_string(),
                cluster: opt_u(cluster, i),
                label: Label::from_int(i64::from(label.value(i))).ok_or_else(|| {
                    ArrowError::ParseError(format!("label {} is not 0 or 1", label.value(i)))
                })?,
                backend: backend.value(i).to_string(),
                model_id: model.value(i).to_string(),
                task: task.value(i).to_string(),
                prompt: prompt.value(i).to_string(),
                negative_prompt: neg.value(i).to_string(),
                seed: seed.value(i),
                source_sample: opt_s(src, i),
                cost_usd: cost.value(i),
                status: SynthStatus::parse(status.value(i))?,
                reason: reason.value(i).to_string(),
                sample_id: opt_s(sample, i),
                distance: opt_f(dist, i),
                land_limit: opt_f(limit, i),
                nearest_cluster: opt_u(nearest, i),
                ts: from_micros(ts.value(i)),
            })
        })
        .collect()
}

impl Store {
    /// Records generation jobs; a job already recorded is replaced (a failed job retried by a
    /// later run gets its new outcome).
    pub async fn put_synth_images(
        &self,
        rows: &[SynthImageRow],
    ) -> Result<WriteResult, StoreError> {
        let b = to_batch(rows).map_err(arrow(tables::SYNTH_IMAGES))?;
        self.merge(tables::SYNTH_IMAGES, b, Merge::Upsert).await
    }

    /// Every recorded job, or those of one run.
    pub async fn synth_images(
        &self,
        run_id: Option<&str>,
    ) -> Result<Vec<SynthImageRow>, StoreError> {
        let filter = run_id.map(|r| format!("{} = '{}'", col::RUN_ID, r.replace('\'', "''")));
        let mut rows = self
            .rows(tables::SYNTH_IMAGES, filter.as_deref(), from_batch)
            .await?;
        rows.retain(|r| run_id.is_none_or(|id| r.run_id == id));
        Ok(rows)
    }
}
