//! The store's tables, defined once: names, Arrow schemas, and the typed rows that go in and out.
//!
//! Every persisted column is spelled here and nowhere else. Changing a schema bumps
//! [`SCHEMA_VERSION`]; `tests/store.rs` pins the current layout so a change is a deliberate migration.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, UInt64Array};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::rows::{TableRow, keys, serde_as};
pub use super::runs::RunRow;

use super::ids::{Label, LabelSource, SampleId};

/// Version of the table layout below. Stored in the `roadwork_meta` table; a store written by a newer
/// layout is refused instead of misread.
pub const SCHEMA_VERSION: u32 = 7;

/// Table names.
pub mod tables {
    /// One row per distinct image (content-addressed).
    pub const SAMPLES: &str = "samples";
    /// One row per (sample, label source, author): that author's current opinion.
    pub const LABELS: &str = "labels";
    /// One row per answered request (or offline prediction).
    pub const PREDICTIONS: &str = "predictions";
    /// The ledger of stage runs.
    pub const RUNS: &str = "runs";
    /// Key/value facts about the store itself (schema version).
    pub const META: &str = "roadwork_meta";
    /// The registry of trained heads (since layout 2).
    pub const MODELS: &str = "models";
    /// Evaluation results, one row per (model, eval set).
    pub const EVALUATIONS: &str = "evaluations";
    /// Per-sample scores from a training run: out-of-fold and ensemble probabilities (layout 2).
    pub const HEAD_SCORES: &str = "head_scores";
    /// Per-sample results of a mining run: cluster, hardness and reasons (layout 3).
    pub const MINE_SCORES: &str = "mine_scores";
    /// Per-cluster results of a mining run: size, label mix, error rate, drift.
    pub const MINE_CLUSTERS: &str = "mine_clusters";
    /// Duplicate edges (exact, re-encoded, near) found by a mining run.
    pub const DUPLICATES: &str = "duplicates";
    /// Named selections for labelling.
    pub const SELECTIONS: &str = "selections";
    /// A challenger's shadow scores beside the champion's, per served request (layout 5).
    pub const SHADOW_SCORES: &str = "shadow_scores";
    /// Every image synthesis asked for, with its provenance and fate (layout 6).
    pub const SYNTH_IMAGES: &str = "synth_images";
    /// Image-quality scores and issues of every ingested sample (layout 7).
    pub const IMAGE_QUALITY: &str = "image_quality";
    /// Every table the store creates on open, in a stable order.
    pub const ALL: [&str; 15] = [
        SAMPLES,
        LABELS,
        PREDICTIONS,
        RUNS,
        META,
        MODELS,
        EVALUATIONS,
        HEAD_SCORES,
        MINE_SCORES,
        MINE_CLUSTERS,
        DUPLICATES,
        SELECTIONS,
        SHADOW_SCORES,
        SYNTH_IMAGES,
        IMAGE_QUALITY,
    ];
}

/// Column names.
pub mod col {
    pub const SAMPLE_ID: &str = "sample_id";
    pub const IMAGE: &str = "image";
    pub const WIDTH: &str = "width";
    pub const HEIGHT: &str = "height";
    pub const FORMAT: &str = "format";
    pub const BYTES: &str = "bytes";
    pub const SOURCE: &str = "source";
    pub const SOURCE_REF: &str = "source_ref";
    pub const ERA: &str = "era";
    pub const TAGS: &str = "tags";
    pub const PHASH: &str = "phash";
    pub const RECEIVED_AT: &str = "received_at";
    pub const LABEL_ID: &str = "label_id";
    pub const LABEL: &str = "label";
    pub const CONFIDENCE: &str = "confidence";
    pub const AUTHOR: &str = "author";
    pub const TS: &str = "ts";
    pub const REQUEST_ID: &str = "request_id";
    pub const MODEL_VERSION: &str = "model_version";
    pub const TIER: &str = "tier";
    pub const SCORE_TIER1: &str = "score_tier1";
    pub const SCORE_TIER2: &str = "score_tier2";
    pub const FINAL_SCORE: &str = "final_score";
    pub const LATENCY_MS: &str = "latency_ms";
    pub const VALIDATOR: &str = "validator";
    pub const RUN_ID: &str = "run_id";
    pub const KIND: &str = "kind";
    pub const STARTED_AT: &str = "started_at";
    pub const FINISHED_AT: &str = "finished_at";
    pub const STATUS: &str = "status";
    pub const PARAMS: &str = "params";
    pub const SUMMARY: &str = "summary";
    pub const PARENT_RUN: &str = "parent_run";
    pub const READS: &str = "reads";
    pub const WRITES: &str = "writes";
    pub const KEY: &str = "key";
    pub const VALUE: &str = "value";
    pub const CREATED_AT: &str = "created_at";
    pub const EMBEDDING_MODEL: &str = "embedding_model";
    pub const SNAPSHOT: &str = "snapshot";
    pub const ARTIFACT_DIR: &str = "artifact_dir";
    pub const CARD: &str = "card";
    pub const EVAL_ID: &str = "eval_id";
    pub const EVAL_SET: &str = "eval_set";
    pub const N: &str = "n";
    pub const METRICS: &str = "metrics";
    pub const SLICES: &str = "slices";
    pub const SCORE_ID: &str = "score_id";
    pub const SPLIT: &str = "split";
    pub const OOF_PROB: &str = "oof_prob";
    pub const PROB: &str = "prob";
    pub const ENSEMBLE_MEAN: &str = "ensemble_mean";
    pub const ENSEMBLE_STD: &str = "ensemble_std";
    pub const ENSEMBLE_MI: &str = "ensemble_mi";
    pub const CLUSTER: &str = "cluster";
    pub const HARDNESS: &str = "hardness";
    pub const REASONS: &str = "reasons";
    pub const LABEL_ISSUE: &str = "label_issue";
    pub const OUTLIER: &str = "outlier";
    pub const KNN_MEAN: &str = "knn_mean";
    pub const TYPICALITY: &str = "typicality";
    pub const DUP_GROUP: &str = "dup_group";
    pub const SETS: &str = "sets";
    pub const CLUSTER_ID: &str = "cluster_id";
    pub const SIZE: &str = "size";
    pub const N_LABELLED: &str = "n_labelled";
    pub const POSITIVE_SHARE: &str = "positive_share";
    pub const ERROR_RATE: &str = "error_rate";
    pub const TRAIN_SHARE: &str = "train_share";
    pub const TRAFFIC_SHARE: &str = "traffic_share";
    pub const DRIFT_RATIO: &str = "drift_ratio";
    pub const DRIFT_Z: &str = "drift_z";
    pub const UNDER_COVERED: &str = "under_covered";
    pub const EXEMPLAR: &str = "exemplar";
    pub const PAIR_ID: &str = "pair_id";
    pub const SAMPLE_A: &str = "sample_a";
    pub const SAMPLE_B: &str = "sample_b";
    pub const DISTANCE: &str = "distance";
    pub const SETS_A: &str = "sets_a";
    pub const SETS_B: &str = "sets_b";
    pub const SELECTION_ROW: &str = "selection_row";
    pub const NAME: &str = "name";
    pub const RANK: &str = "rank";
    pub const SCORE: &str = "score";
    pub const STRATEGY: &str = "strategy";
    pub const SHADOW_ID: &str = "shadow_id";
    pub const CHAMPION_VERSION: &str = "champion_version";
    pub const CHAMPION_SCORE: &str = "champion_score";
    pub const CHALLENGER_VERSION: &str = "challenger_version";
    pub const CHALLENGER_SCORE: &str = "challenger_score";
    pub const TIER1_MS: &str = "tier1_ms";
    pub const CHAMPION_HEAD_MS: &str = "champion_head_ms";
    pub const CHALLENGER_HEAD_MS: &str = "challenger_head_ms";
    pub const SYNTH_ID: &str = "synth_id";
    pub const BRIGHTNESS: &str = "brightness";
    pub const SHARPNESS: &str = "sharpness";
    pub const ENTROPY: &str = "entropy";
    pub const COLORFULNESS: &str = "colorfulness";
    pub const ASPECT_RATIO: &str = "aspect_ratio";
    pub const ISSUES: &str = "issues";
    pub const GAP: &str = "gap";
    pub const BACKEND: &str = "backend";
    pub const MODEL_ID: &str = "model_id";
    pub const TASK: &str = "task";
    pub const PROMPT: &str = "prompt";
    pub const NEGATIVE_PROMPT: &str = "negative_prompt";
    pub const SEED: &str = "seed";
    pub const SOURCE_SAMPLE: &str = "source_sample";
    pub const COST_USD: &str = "cost_usd";
    pub const REASON: &str = "reason";
    pub const LAND_LIMIT: &str = "land_limit";
    pub const NEAREST_CLUSTER: &str = "nearest_cluster";
}

pub(crate) fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn tags_field() -> Field {
    Field::new_list(col::TAGS, Field::new("item", DataType::Utf8, true), false)
}

/// `samples`: the images themselves plus what is known about them without a model.
pub fn samples_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::SAMPLE_ID, DataType::Utf8, false),
        Field::new(col::IMAGE, DataType::LargeBinary, false),
        Field::new(col::WIDTH, DataType::UInt32, false),
        Field::new(col::HEIGHT, DataType::UInt32, false),
        Field::new(col::FORMAT, DataType::Utf8, false),
        Field::new(col::BYTES, DataType::UInt64, false),
        Field::new(col::SOURCE, DataType::Utf8, false),
        Field::new(col::SOURCE_REF, DataType::Utf8, false),
        Field::new(col::ERA, DataType::Utf8, false),
        tags_field(),
        Field::new(col::PHASH, DataType::UInt64, false),
        Field::new(col::RECEIVED_AT, ts_type(), false),
    ]))
}

/// `labels`: provenance-carrying labels; see [`super::effective_labels`] for the precedence rule.
pub fn labels_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::LABEL_ID, DataType::Utf8, false),
        Field::new(col::SAMPLE_ID, DataType::Utf8, false),
        Field::new(col::LABEL, DataType::UInt8, false),
        Field::new(col::SOURCE, DataType::Utf8, false),
        Field::new(col::CONFIDENCE, DataType::Float32, false),
        Field::new(col::AUTHOR, DataType::Utf8, false),
        Field::new(col::TS, ts_type(), false),
    ]))
}

/// `predictions`: what a model answered for a sample, and how fast.
pub fn predictions_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::REQUEST_ID, DataType::Utf8, false),
        Field::new(col::SAMPLE_ID, DataType::Utf8, false),
        Field::new(col::MODEL_VERSION, DataType::Utf8, false),
        Field::new(col::TIER, DataType::UInt8, false),
        Field::new(col::SCORE_TIER1, DataType::Float32, true),
        Field::new(col::SCORE_TIER2, DataType::Float32, true),
        Field::new(col::FINAL_SCORE, DataType::Float32, false),
        Field::new(col::LATENCY_MS, DataType::Float32, false),
        Field::new(col::TS, ts_type(), false),
        Field::new(col::VALIDATOR, DataType::Utf8, true),
    ]))
}

/// `runs`: one row per stage run, written when it starts and again when it ends.
/// The columns of [`runs_schema`] that every layout has (readable at any snapshot).
pub const RUNS_BASE_COLUMNS: [&str; 7] = [
    col::RUN_ID,
    col::KIND,
    col::STARTED_AT,
    col::FINISHED_AT,
    col::STATUS,
    col::PARAMS,
    col::SUMMARY,
];

pub fn runs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::RUN_ID, DataType::Utf8, false),
        Field::new(col::KIND, DataType::Utf8, false),
        Field::new(col::STARTED_AT, ts_type(), false),
        Field::new(col::FINISHED_AT, ts_type(), true),
        Field::new(col::STATUS, DataType::Utf8, false),
        Field::new(col::PARAMS, DataType::Utf8, false),
        Field::new(col::SUMMARY, DataType::Utf8, false),
        // Layout 4: the run that started this one and the table versions read and written (JSON
        // objects `{table: version}`). Nullable, so older ledgers are migrated by adding them.
        Field::new(col::PARENT_RUN, DataType::Utf8, true),
        Field::new(col::READS, DataType::Utf8, true),
        Field::new(col::WRITES, DataType::Utf8, true),
    ]))
}

/// `roadwork_meta`: key/value facts about the store.
pub fn meta_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::KEY, DataType::Utf8, false),
        Field::new(col::VALUE, DataType::Utf8, false),
    ]))
}

/// The schema a table of this name must have.
pub fn schema_of(table: &str) -> Option<SchemaRef> {
    match table {
        tables::SAMPLES => Some(samples_schema()),
        tables::LABELS => Some(labels_schema()),
        tables::PREDICTIONS => Some(predictions_schema()),
        tables::RUNS => Some(runs_schema()),
        tables::META => Some(meta_schema()),
        tables::MODELS => Some(super::models::models_schema()),
        tables::EVALUATIONS => Some(super::models::evaluations_schema()),
        tables::HEAD_SCORES => Some(super::models::head_scores_schema()),
        tables::MINE_SCORES => Some(super::mining::mine_scores_schema()),
        tables::MINE_CLUSTERS => Some(super::mining::mine_clusters_schema()),
        tables::DUPLICATES => Some(super::mining::duplicates_schema()),
        tables::SELECTIONS => Some(super::mining::selections_schema()),
        tables::SHADOW_SCORES => Some(super::shadow::shadow_scores_schema()),
        tables::SYNTH_IMAGES => Some(super::synth::synth_images_schema()),
        tables::IMAGE_QUALITY => Some(super::quality::image_quality_schema()),
        _ => None,
    }
}

/// The key columns `merge_insert` joins on, per table.
pub fn key_of(table: &str) -> &'static str {
    if table.starts_with("embeddings_") {
        return col::SAMPLE_ID;
    }
    if table.starts_with(super::AUGMENTED_PREFIX) {
        return super::COPY_ID;
    }
    match table {
        tables::SAMPLES => col::SAMPLE_ID,
        tables::LABELS => col::LABEL_ID,
        tables::PREDICTIONS => col::REQUEST_ID,
        tables::RUNS => col::RUN_ID,
        tables::MODELS => col::MODEL_VERSION,
        tables::EVALUATIONS => col::EVAL_ID,
        tables::HEAD_SCORES => col::SCORE_ID,
        tables::MINE_SCORES => col::SCORE_ID,
        tables::MINE_CLUSTERS => col::CLUSTER_ID,
        tables::DUPLICATES => col::PAIR_ID,
        tables::SELECTIONS => col::SELECTION_ROW,
        tables::SHADOW_SCORES => col::SHADOW_ID,
        tables::SYNTH_IMAGES => col::SYNTH_ID,
        tables::IMAGE_QUALITY => col::SAMPLE_ID,
        _ => col::KEY,
    }
}

/// One distinct image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRow {
    pub sample_id: SampleId,
    #[serde(with = "serde_bytes")]
    pub image: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// Container format as decoded (`jpeg`, `png`, `webp`, `bmp`, `gif`).
    pub format: String,
    /// One of `validator|dataset|synthetic|upload`.
    pub source: String,
    /// Where exactly: validator hotkey, dataset row id, file path, generator + prompt.
    pub source_ref: String,
    /// One of `crop224|letterbox224|fullres|unknown`.
    pub era: String,
    /// `key=value` strings (daytime=night, weather=rain, city=…).
    pub tags: Vec<String>,
    /// 64-bit DCT perceptual hash, for re-encode detection.
    pub phash: u64,
    #[serde(with = "serde_as::micros")]
    pub received_at: DateTime<Utc>,
}

/// One author's label for one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelRow {
    pub sample_id: SampleId,
    #[serde(with = "serde_as::label_u8")]
    pub label: Label,
    pub source: LabelSource,
    /// In [0,1]; 1 for dataset and human labels.
    pub confidence: f32,
    /// Who: dataset name, annotator, generator or teacher model id.
    pub author: String,
    #[serde(with = "serde_as::micros")]
    pub ts: DateTime<Utc>,
}

impl LabelRow {
    /// Stable key: one row per (sample, source, author), so re-ingesting the same labels adds nothing
    /// and a changed opinion replaces the old one (its history stays in Lance versions).
    pub fn label_id(&self) -> String {
        let key = format!(
            "{}|{}|{}",
            self.sample_id,
            self.source.as_str(),
            self.author
        );
        SampleId::of_bytes(key.as_bytes()).to_string()
    }
}

/// What a model answered for one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRow {
    pub request_id: String,
    pub sample_id: SampleId,
    pub model_version: String,
    /// The tier whose answer was sent (1 = head, 2 = VLM).
    pub tier: u8,
    pub score_tier1: Option<f32>,
    pub score_tier2: Option<f32>,
    /// What was sent: in [0,1], or -1 for an image that could not be decoded.
    pub final_score: f32,
    pub latency_ms: f32,
    #[serde(with = "serde_as::micros")]
    pub ts: DateTime<Utc>,
    /// Validator hotkey (ss58), when the request came from one.
    pub validator: Option<String>,
}

impl TableRow for SampleRow {
    const TABLE: &'static str = tables::SAMPLES;
    const DERIVED: &'static [&'static str] = &[col::BYTES];
    fn derived(rows: &[Self]) -> Vec<ArrayRef> {
        vec![Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.image.len() as u64),
        ))]
    }
}

impl TableRow for LabelRow {
    const TABLE: &'static str = tables::LABELS;
    const DERIVED: &'static [&'static str] = &[col::LABEL_ID];
    fn derived(rows: &[Self]) -> Vec<ArrayRef> {
        vec![keys(rows, LabelRow::label_id)]
    }
}

impl TableRow for PredictionRow {
    const TABLE: &'static str = tables::PREDICTIONS;
}

impl TableRow for RunRow {
    const TABLE: &'static str = tables::RUNS;
}

/// One key/value fact of [`meta_schema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetaRow {
    pub key: String,
    pub value: String,
}

impl TableRow for MetaRow {
    const TABLE: &'static str = tables::META;
}

/// Typed access to one column of a batch read back from the store.
pub(crate) fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a T, ArrowError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("column {name:?} missing")))?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| ArrowError::SchemaError(format!("column {name:?} has an unexpected type")))
}
