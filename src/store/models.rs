//! The training stage's tables (layout 2): the head registry (`models`), evaluation results
//! (`evaluations`) and per-sample head scores (`head_scores`, read by mining).
//!
//! The registry's source of truth is the artifact directory of each head (weights + model card); the
//! `models` row makes it queryable next to the data. Scores are keyed by (model version, sample) so a
//! re-run of the same training writes nothing new.

use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::rows::{TableRow, keys, serde_as};
use super::schema::{col, tables, ts_type};
use super::{Merge, SampleId, Store, StoreError, WriteResult};

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRow {
    pub model_version: String,
    #[serde(with = "serde_as::micros")]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationRow {
    pub model_version: String,
    #[serde(with = "serde_as::micros")]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(with = "serde_as::micros")]
    pub ts: DateTime<Utc>,
}

impl HeadScoreRow {
    /// Key: one row per (model, sample).
    pub fn score_id(&self) -> String {
        format!("{}/{}", self.model_version, self.sample_id)
    }
}

impl TableRow for ModelRow {
    const TABLE: &'static str = tables::MODELS;
}

impl TableRow for EvaluationRow {
    const TABLE: &'static str = tables::EVALUATIONS;
    const DERIVED: &'static [&'static str] = &[col::EVAL_ID];
    fn derived(rows: &[Self]) -> Vec<ArrayRef> {
        vec![keys(rows, EvaluationRow::eval_id)]
    }
}

impl TableRow for HeadScoreRow {
    const TABLE: &'static str = tables::HEAD_SCORES;
    const DERIVED: &'static [&'static str] = &[col::SCORE_ID];
    fn derived(rows: &[Self]) -> Vec<ArrayRef> {
        vec![keys(rows, HeadScoreRow::score_id)]
    }
}

impl Store {
    /// Registers a head (a re-registration of the same version replaces its row).
    pub async fn put_model(&self, row: &ModelRow) -> Result<WriteResult, StoreError> {
        self.write_rows(std::slice::from_ref(row), Merge::Upsert)
            .await
    }

    /// Every registered head, oldest first.
    pub async fn models(&self) -> Result<Vec<ModelRow>, StoreError> {
        let mut out = self.read_rows::<ModelRow>(None).await?;
        out.sort_by_key(|m| m.created_at);
        Ok(out)
    }

    /// Stores (or replaces) a model's evaluation on an eval set.
    pub async fn put_evaluation(&self, row: &EvaluationRow) -> Result<WriteResult, StoreError> {
        self.write_rows(std::slice::from_ref(row), Merge::Upsert)
            .await
    }

    /// Every evaluation of `model_version`.
    pub async fn evaluations(&self, model_version: &str) -> Result<Vec<EvaluationRow>, StoreError> {
        let filter = format!(
            "{} = '{}'",
            col::MODEL_VERSION,
            model_version.replace('\'', "''")
        );
        self.read_rows(Some(&filter)).await
    }

    /// Writes a run's per-sample scores in one commit.
    pub async fn put_head_scores(&self, rows: &[HeadScoreRow]) -> Result<WriteResult, StoreError> {
        self.write_rows(rows, Merge::Upsert).await
    }

    /// The per-sample scores of one model version.
    pub async fn head_scores(&self, model_version: &str) -> Result<Vec<HeadScoreRow>, StoreError> {
        let filter = format!(
            "{} = '{}'",
            col::MODEL_VERSION,
            model_version.replace('\'', "''")
        );
        self.read_rows(Some(&filter)).await
    }
}
