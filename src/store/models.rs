//! The training stage's tables (layout 2): the head registry (`models`), evaluation results
//! (`evaluations`) and per-sample head scores (`head_scores`, read by mining).
//!
//! The registry's source of truth is the artifact directory of each head (weights + model card); the
//! `models` row makes it queryable next to the data. Scores are keyed by (model version, sample) so a
//! re-run of the same training writes nothing new.

use std::sync::Arc;

use arrow_array::builder::{Float32Builder, UInt8Builder};
use arrow_array::{
    Array, Float32Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt8Array,
    UInt32Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, Utc};

use super::schema::{
    col, column, finish, from_micros, micros, str_array, tables, ts_array, ts_type,
};
use super::{Merge, SampleId, Store, StoreError, WriteResult, arrow};

/// `models`: one row per registered head.
pub fn models_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::MODEL_VERSION, DataType::Utf8, false),
        Field::new(col::CREATED_AT, ts_type(), false),
        Field::new(col::EMBEDDING_MODEL, DataType::Utf8, false),
        Field::new(col::SNAPSHOT, DataType::Utf8, false),
        Field::new(col::ARTIFACT_DIR, DataType::Utf8, false),
        Field::new(col::CARD, DataType::Utf8, false),
    ]))
}

/// `evaluations`: metrics of one model on one eval set (identified by a digest of its sample ids).
pub fn evaluations_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::EVAL_ID, DataType::Utf8, false),
        Field::new(col::MODEL_VERSION, DataType::Utf8, false),
        Field::new(col::TS, ts_type(), false),
        Field::new(col::EVAL_SET, DataType::Utf8, false),
        Field::new(col::N, DataType::UInt32, false),
        Field::new(col::METRICS, DataType::Utf8, false),
        Field::new(col::SLICES, DataType::Utf8, false),
    ]))
}

/// `head_scores`: what one training run knows about each labelled sample.
pub fn head_scores_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::SCORE_ID, DataType::Utf8, false),
        Field::new(col::MODEL_VERSION, DataType::Utf8, false),
        Field::new(col::SAMPLE_ID, DataType::Utf8, false),
        Field::new(col::SPLIT, DataType::Utf8, false),
        Field::new(col::LABEL, DataType::UInt8, true),
        Field::new(col::OOF_PROB, DataType::Float32, true),
        Field::new(col::PROB, DataType::Float32, false),
        Field::new(col::ENSEMBLE_MEAN, DataType::Float32, false),
        Field::new(col::ENSEMBLE_STD, DataType::Float32, false),
        Field::new(col::ENSEMBLE_MI, DataType::Float32, false),
        Field::new(col::TS, ts_type(), false),
    ]))
}

/// One registered head.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRow {
    pub model_version: String,
    pub created_at: DateTime<Utc>,
    /// The embeddings the head reads (`embeddings_<id>`).
    pub embedding_model: String,
    /// The snapshot (Lance tags) of the data it was trained on.
    pub snapshot: String,
    /// Where its weights and model card are.
    pub artifact_dir: String,
    /// The model card as JSON.
    pub card: String,
}

/// One model's metrics on one eval set.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationRow {
    pub model_version: String,
    pub ts: DateTime<Utc>,
    /// Digest of the eval set's sample ids: two evaluations are comparable only when it matches.
    pub eval_set: String,
    pub n: u32,
    /// JSON of the overall metrics.
    pub metrics: String,
    /// JSON of the per-slice metrics.
    pub slices: String,
}

impl EvaluationRow {
    /// Key: one row per (model, eval set); re-evaluating replaces it.
    pub fn eval_id(&self) -> String {
        format!("{}/{}", self.model_version, self.eval_set)
    }
}

/// What one training run knows about one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadScoreRow {
    pub model_version: String,
    pub sample_id: SampleId,
    /// `train|calib|eval|unlabelled`.
    pub split: String,
    /// Effective label at training time, if any.
    pub label: Option<u8>,
    /// Held-out probability from the K-fold head that did not see this sample (train split only).
    pub oof_prob: Option<f32>,
    /// Calibrated probability of the registered head.
    pub prob: f32,
    /// Mean and standard deviation of the fold heads' probabilities (ensemble disagreement).
    pub ensemble_mean: f32,
    pub ensemble_std: f32,
    /// Mutual information between prediction and ensemble member (BALD), nats.
    pub ensemble_mi: f32,
    pub ts: DateTime<Utc>,
}

impl HeadScoreRow {
    /// Key: one row per (model, sample).
    pub fn score_id(&self) -> String {
        format!("{}/{}", self.model_version, self.sample_id)
    }
}

/// Rows → one Arrow batch of [`models_schema`].
pub fn models_to_batch(rows: &[ModelRow]) -> Result<RecordBatch, ArrowError> {
    finish(
        models_schema(),
        vec![
            str_array(rows.iter().map(|r| r.model_version.as_str())),
            ts_array(rows.iter().map(|r| Some(micros(&r.created_at)))),
            str_array(rows.iter().map(|r| r.embedding_model.as_str())),
            str_array(rows.iter().map(|r| r.snapshot.as_str())),
            str_array(rows.iter().map(|r| r.artifact_dir.as_str())),
            str_array(rows.iter().map(|r| r.card.as_str())),
        ],
    )
}

/// A batch of [`models_schema`] → rows.
pub fn models_from_batch(batch: &RecordBatch) -> Result<Vec<ModelRow>, ArrowError> {
    let mv = column::<StringArray>(batch, col::MODEL_VERSION)?;
    let at = column::<TimestampMicrosecondArray>(batch, col::CREATED_AT)?;
    let emb = column::<StringArray>(batch, col::EMBEDDING_MODEL)?;
    let snap = column::<StringArray>(batch, col::SNAPSHOT)?;
    let dir = column::<StringArray>(batch, col::ARTIFACT_DIR)?;
    let card = column::<StringArray>(batch, col::CARD)?;
    Ok((0..batch.num_rows())
        .map(|i| ModelRow {
            model_version: mv.value(i).to_string(),
            created_at: from_micros(at.value(i)),
            embedding_model: emb.value(i).to_string(),
            snapshot: snap.value(i).to_string(),
            artifact_dir: dir.value(i).to_string(),
            card: card.value(i).to_string(),
        })
        .collect())
}

/// Rows → one Arrow batch of [`evaluations_schema`].
pub fn evaluations_to_batch(rows: &[EvaluationRow]) -> Result<RecordBatch, ArrowError> {
    let ids: Vec<String> = rows.iter().map(EvaluationRow::eval_id).collect();
    finish(
        evaluations_schema(),
        vec![
            str_array(ids.iter().map(String::as_str)),
            str_array(rows.iter().map(|r| r.model_version.as_str())),
            ts_array(rows.iter().map(|r| Some(micros(&r.ts)))),
            str_array(rows.iter().map(|r| r.eval_set.as_str())),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.n))),
            str_array(rows.iter().map(|r| r.metrics.as_str())),
            str_array(rows.iter().map(|r| r.slices.as_str())),
        ],
    )
}

/// A batch of [`evaluations_schema`] → rows.
pub fn evaluations_from_batch(batch: &RecordBatch) -> Result<Vec<EvaluationRow>, ArrowError> {
    let mv = column::<StringArray>(batch, col::MODEL_VERSION)?;
    let ts = column::<TimestampMicrosecondArray>(batch, col::TS)?;
    let set = column::<StringArray>(batch, col::EVAL_SET)?;
    let n = column::<UInt32Array>(batch, col::N)?;
    let metrics = column::<StringArray>(batch, col::METRICS)?;
    let slices = column::<StringArray>(batch, col::SLICES)?;
    Ok((0..batch.num_rows())
        .map(|i| EvaluationRow {
            model_version: mv.value(i).to_string(),
            ts: from_micros(ts.value(i)),
            eval_set: set.value(i).to_string(),
            n: n.value(i),
            metrics: metrics.value(i).to_string(),
            slices: slices.value(i).to_string(),
        })
        .collect())
}

/// Rows → one Arrow batch of [`head_scores_schema`].
pub fn head_scores_to_batch(rows: &[HeadScoreRow]) -> Result<RecordBatch, ArrowError> {
    let ids: Vec<String> = rows.iter().map(HeadScoreRow::score_id).collect();
    let mut label = UInt8Builder::new();
    let mut oof = Float32Builder::new();
    for r in rows {
        label.append_option(r.label);
        oof.append_option(r.oof_prob);
    }
    let f32s = |f: fn(&HeadScoreRow) -> f32| {
        Arc::new(Float32Array::from_iter_values(rows.iter().map(f))) as _
    };
    finish(
        head_scores_schema(),
        vec![
            str_array(ids.iter().map(String::as_str)),
            str_array(rows.iter().map(|r| r.model_version.as_str())),
            str_array(rows.iter().map(|r| r.sample_id.as_str())),
            str_array(rows.iter().map(|r| r.split.as_str())),
            Arc::new(label.finish()),
            Arc::new(oof.finish()),
            f32s(|r| r.prob),
            f32s(|r| r.ensemble_mean),
            f32s(|r| r.ensemble_std),
            f32s(|r| r.ensemble_mi),
            ts_array(rows.iter().map(|r| Some(micros(&r.ts)))),
        ],
    )
}

/// A batch of [`head_scores_schema`] → rows.
pub fn head_scores_from_batch(batch: &RecordBatch) -> Result<Vec<HeadScoreRow>, ArrowError> {
    let mv = column::<StringArray>(batch, col::MODEL_VERSION)?;
    let id = column::<StringArray>(batch, col::SAMPLE_ID)?;
    let split = column::<StringArray>(batch, col::SPLIT)?;
    let label = column::<UInt8Array>(batch, col::LABEL)?;
    let oof = column::<Float32Array>(batch, col::OOF_PROB)?;
    let prob = column::<Float32Array>(batch, col::PROB)?;
    let mean = column::<Float32Array>(batch, col::ENSEMBLE_MEAN)?;
    let std = column::<Float32Array>(batch, col::ENSEMBLE_STD)?;
    let mi = column::<Float32Array>(batch, col::ENSEMBLE_MI)?;
    let ts = column::<TimestampMicrosecondArray>(batch, col::TS)?;
    (0..batch.num_rows())
        .map(|i| {
            Ok(HeadScoreRow {
                model_version: mv.value(i).to_string(),
                sample_id: id
                    .value(i)
                    .parse()
                    .map_err(|e: super::BadSampleId| ArrowError::ParseError(e.to_string()))?,
                split: split.value(i).to_string(),
                label: (!label.is_null(i)).then(|| label.value(i)),
                oof_prob: (!oof.is_null(i)).then(|| oof.value(i)),
                prob: prob.value(i),
                ensemble_mean: mean.value(i),
                ensemble_std: std.value(i),
                ensemble_mi: mi.value(i),
                ts: from_micros(ts.value(i)),
            })
        })
        .collect()
}

impl Store {
    /// Registers a head (a re-registration of the same version replaces its row).
    pub async fn put_model(&self, row: &ModelRow) -> Result<WriteResult, StoreError> {
        let batch = models_to_batch(std::slice::from_ref(row)).map_err(arrow(tables::MODELS))?;
        self.merge(tables::MODELS, batch, Merge::Upsert).await
    }

    /// Every registered head, oldest first.
    pub async fn models(&self) -> Result<Vec<ModelRow>, StoreError> {
        let mut out = self.rows(tables::MODELS, None, models_from_batch).await?;
        out.sort_by_key(|m| m.created_at);
        Ok(out)
    }

    /// Stores (or replaces) a model's evaluation on an eval set.
    pub async fn put_evaluation(&self, row: &EvaluationRow) -> Result<WriteResult, StoreError> {
        let batch =
            evaluations_to_batch(std::slice::from_ref(row)).map_err(arrow(tables::EVALUATIONS))?;
        self.merge(tables::EVALUATIONS, batch, Merge::Upsert).await
    }

    /// Every evaluation of `model_version`.
    pub async fn evaluations(&self, model_version: &str) -> Result<Vec<EvaluationRow>, StoreError> {
        let filter = format!(
            "{} = '{}'",
            col::MODEL_VERSION,
            model_version.replace('\'', "''")
        );
        self.rows(tables::EVALUATIONS, Some(&filter), evaluations_from_batch)
            .await
    }

    /// Writes a run's per-sample scores in one commit.
    pub async fn put_head_scores(&self, rows: &[HeadScoreRow]) -> Result<WriteResult, StoreError> {
        let batch = head_scores_to_batch(rows).map_err(arrow(tables::HEAD_SCORES))?;
        self.merge(tables::HEAD_SCORES, batch, Merge::Upsert).await
    }

    /// The per-sample scores of one model version.
    pub async fn head_scores(&self, model_version: &str) -> Result<Vec<HeadScoreRow>, StoreError> {
        let filter = format!(
            "{} = '{}'",
            col::MODEL_VERSION,
            model_version.replace('\'', "''")
        );
        self.rows(tables::HEAD_SCORES, Some(&filter), head_scores_from_batch)
            .await
    }
}
