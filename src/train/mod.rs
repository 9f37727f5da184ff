//! Train: the classification head on stored DINOv3 features, its calibration, its evaluation and its
//! registry. Reads `embeddings_<model>`, `labels` and `samples` at a snapshot; writes an artifact
//! directory per head, `models`, `evaluations` and `head_scores` rows, and the champion pointer.
//!
//! One training run:
//! 1. pins its inputs: a snapshot `train/<model_version>` tags every table (or a named snapshot is
//!    reused), and everything is read at those versions;
//! 2. splits real samples by id into train / calibration / a frozen eval set (synthetic data only
//!    trains), and refuses to start on one class, too few labels or non-finite features;
//! 3. trains K fold heads with early stopping on held-out MCC — their held-out probabilities are
//!    the out-of-fold scores mining uses for label issues, and together they are the ensemble whose
//!    disagreement marks uncertain samples — then the final head on all training data for the
//!    median best epoch count;
//! 4. fits a temperature on the calibration split, evaluates on the eval split (metrics, slices,
//!    the subnet reward replay), and registers the head atomically.
//!
//! Promotion is separate (`roadwork models promote`): a challenger must beat the champion on the
//! eval set both can score, by a margin, without regressing any slice beyond a tolerance.

mod calibrate;
mod data;
mod eval;
mod fit;
mod head;
mod metrics;
mod model;
mod registry;
mod report;
mod reward;
mod shadow;
mod trainer;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use calibrate::{Temperature, UNDECIDED};
pub use data::{
    Augmented, Dataset, Placement, Split, SplitConfig, SplitFacts, Splits, fold_of, fold_of_group,
    read_links, read_splits, slice_run, split_of,
};
pub use eval::{
    AugmentedEval, Evaluation, GateDecision, GateMetric, PromoteConfig, SliceMetrics, evaluate,
    evaluate_version, judge, promote,
};
pub use fit::{EpochLog, FitConfig, Fitted, Xy, fit, lr_at};
pub use head::{Head, HeadConfig};
pub use metrics::{
    Confusion, Curve, Metrics, Reliability, average_precision, decide, pr_curve, reliability,
    roc_auc, roc_curve,
};
pub use model::{CalibrationReport, ModelCard, TrainedHead, decode_head, encode_head, head_values};
pub use registry::{
    CHALLENGER_FILE, CHAMPION_FILE, ChallengerPointer, ChampionPointer, Registry, read_challenger,
    read_pointer,
};
pub use report::write_report;
pub use reward::{Replay, ValidatorTracker, numpy_round, replay};
pub use shadow::{Millis, ShadowStats, flips};
pub use trainer::{TrainSummary, Trainer, bench_fit};

use crate::backend::ComputeDevice;

/// Configuration of the training stage (`[train]` in the TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The embeddings to train on (`embeddings_<id>`); default: the only embeddings table.
    pub embedding_model: Option<String>,
    /// Where artifacts and the champion pointer live; default `<data.dir>/models`.
    pub registry_dir: Option<PathBuf>,
    pub head: HeadConfig,
    pub fit: FitConfig,
    pub split: SplitConfig,
    /// Cross-validation folds (≥ 2): out-of-fold scores, ensemble, and the final epoch count.
    pub folds: usize,
    pub seed: u64,
    /// Minimum training samples per class; fewer is an error before training starts.
    pub min_per_class: usize,
    /// Minimum calibration samples (both classes present) to fit a temperature; below it T = 1.
    pub min_calibration: usize,
    /// Validator queries in the reward replay.
    pub replay_queries: usize,
    /// Bootstrap resamples of the eval set behind the replayed reward's 95 % interval (0: none).
    pub reward_resamples: usize,
    /// Moves the calibrated probability from the calibration data's class prior to the
    /// validators' 50/50 (see [`Temperature::shifted_to_balanced`]).
    pub prior_correction: bool,
    /// Trains on the validator-augmented copies of the training samples too, when the store has
    /// them (`embed.augment.copies` > 0): the head then learns from the images validators sent
    /// before 2026-05-03 as well as from the full-resolution ones they send now. Calibration and
    /// the clean metrics never see a copy.
    pub augmented: bool,
    pub device: ComputeDevice,
    pub promote: PromoteConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            embedding_model: None,
            registry_dir: None,
            head: HeadConfig::default(),
            fit: FitConfig::default(),
            split: SplitConfig::default(),
            folds: 5,
            seed: 0,
            min_per_class: 10,
            min_calibration: 20,
            replay_queries: 2000,
            reward_resamples: 200,
            prior_correction: true,
            augmented: true,
            device: ComputeDevice::Cpu,
            promote: PromoteConfig::default(),
        }
    }
}

impl TrainConfig {
    /// The registry directory in force.
    pub fn registry_dir(&self, data_dir: &std::path::Path) -> PathBuf {
        self.registry_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("models"))
    }

    /// Range checks serde cannot do.
    pub fn validate(&self) -> Result<(), String> {
        let f = &self.fit;
        let checks: [(bool, &str); 9] = [
            (self.folds >= 2, "train.folds must be at least 2"),
            (f.max_epochs >= 1, "train.fit.max_epochs must be at least 1"),
            (f.batch_size >= 1, "train.fit.batch_size must be at least 1"),
            (
                f.learning_rate > 0.0 && f.learning_rate.is_finite(),
                "train.fit.learning_rate must be positive",
            ),
            (
                (0.0..1.0).contains(&self.head.dropout),
                "train.head.dropout must be in [0, 1)",
            ),
            (
                self.head.hidden.iter().all(|&w| w > 0),
                "train.head.hidden widths must be positive",
            ),
            (
                self.split.eval_share >= 0.0
                    && self.split.calib_share >= 0.0
                    && self.split.eval_share + self.split.calib_share < 0.9,
                "train.split shares must be ≥ 0 and leave at least 10% for training",
            ),
            (
                (0.0..1.0).contains(&f.warmup_share),
                "train.fit.warmup_share must be in [0, 1)",
            ),
            (
                self.min_per_class >= 2,
                "train.min_per_class must be at least 2",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(why.to_string()),
            None => self.split.validate(),
        }
    }
}

/// Why training, evaluation or promotion cannot proceed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// User input: no such embeddings.
    #[error(
        "no embeddings for model {model:?} in the store (available: {available:?}); run `roadwork embed` first"
    )]
    NoEmbeddings {
        model: String,
        available: Vec<String>,
    },
    /// User input: several embedding models and none chosen.
    #[error("the store has embeddings from several models {0:?}; set train.embedding_model")]
    AmbiguousEmbeddings(Vec<String>),
    /// User input: the snapshot was taken before these embeddings existed.
    #[error(
        "snapshot {snapshot} has no embeddings for model {model:?} (it was taken for another embedding model or before embedding)"
    )]
    SnapshotLacksModel { snapshot: String, model: String },
    /// User input: the data cannot train a classifier.
    #[error("not enough labelled data to train: {0}")]
    NotEnoughData(String),
    /// Data error: a stored vector is not finite.
    #[error("sample {sample_id} has a non-finite feature at index {index}")]
    NonFinite { sample_id: String, index: usize },
    #[error("table {table} cannot be read: {why}")]
    BadTable { table: String, why: String },
    /// User input: features of the wrong width for a head.
    #[error("features have {got} values, not a multiple of the head's dimension {expected}")]
    DimMismatch { expected: usize, got: usize },
    #[error("head weights: {0}")]
    Weights(String),
    #[error("model card: {0}")]
    Card(String),
    #[error("model {version} is corrupt: {why}")]
    Corrupt { version: String, why: String },
    /// User input.
    #[error("no model version {0:?} in the registry")]
    UnknownVersion(String),
    /// User input: a version name that is not a plain registry file name.
    #[error(
        "model version {0:?} is not a valid name (letters, digits, '.', '_', '-'; not starting with '.')"
    )]
    BadVersion(String),
    #[error("model version {0} is already registered")]
    VersionExists(String),
    /// User input: rollback or eval of the champion before any promotion.
    #[error("no champion has been promoted yet")]
    NoChampion,
    #[error("the champion has no predecessor to roll back to")]
    NothingToRollBack,
    /// User input: a configuration value out of range.
    #[error("invalid training config: {0}")]
    Config(String),
    /// User input: a device this build cannot use.
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("report: {0}")]
    Report(String),
    #[error("background task failed: {0}")]
    Task(String),
}
