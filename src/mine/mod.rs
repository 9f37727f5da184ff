//! Mine: what to look at, label, synthesise or drop next. Reads an embeddings table, effective
//! labels, the champion's `head_scores` and the `predictions` log; writes per-run results to Lance
//! (`mine_scores`, `mine_clusters`, `duplicates`, `selections`) and a report.
//!
//! The algorithms are independent of the store and scale without `n × n` memory:
//! - [`knn`]: exact blocked search and an IVF batched search for the whole-table kNN graph;
//! - [`kmeans`]: k-means++ / Lloyd / mini-batch on Burn tensors (CPU or CUDA);
//! - [`dedup`]: exact, re-encoded (pHash multi-index hashing) and near duplicates, leakage;
//! - [`density`]: outliers and typicality;
//! - [`label_issues`]: confident learning on out-of-fold probabilities;
//! - [`drift`]: traffic versus training set, per cluster and as a two-sample test;
//! - [`hardness`]: one hard-case score per sample with its reasons;
//! - [`select`]: budgeted selection strategies.
//!
//! Invariants: no input vector is non-finite (refused with the row named); every output score is
//! finite; a selection never returns a row twice or more rows than its budget.

pub mod compute;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dedup;
pub mod density;
pub mod drift;
pub mod hardness;
pub mod kmeans;
pub mod knn;
pub mod label_issues;
mod run;
pub mod select;
mod vectors;

pub use compute::Compute;
pub use dedup::{
    DuplicateKind, DuplicatePair, Groups, LeakageReport, leakage, near_pairs, near_threshold,
    phash_pairs,
};
pub use density::{Outliers, outliers, typicality};
pub use drift::{ClusterDrift, DriftConfig, Mmd, cluster_drift, mmd_test, under_covered};
pub use hardness::{HardCase, Signals};
pub use kmeans::{KMeans, KMeansConfig, KMeansMode, kmeans, kmeans_plus_plus, lloyd, minibatch};
pub use knn::{KnnConfig, KnnGraph, KnnMethod, exact_neighbors, knn_graph, nearest_in, recall_at};
pub use label_issues::{LabelIssues, find_binary_label_issues, find_label_issues};
pub use run::{
    HardRow, MineConfig, MineSummary, Miner, resolve_embedding_model, write_selection_csv,
};
pub use select::{
    CONTROL_ARM, CompetenceEstimate, Pool, SelectConfig, Selected, Selection, Strategy, select,
};
pub use vectors::{Metric, Vectors, quantile};

use crate::store::StoreError;

/// What went wrong in mining; variants name the input at fault.
#[derive(Debug, thiserror::Error)]
pub enum MineError {
    #[error("bad shape: {0}")]
    Shape(String),
    #[error("vector row {row} has a non-finite value at index {index}")]
    NonFinite { row: usize, index: usize },
    #[error("nothing to mine: {0}")]
    Empty(String),
    #[error("too few {what}: need {need}, have {have}")]
    TooFew {
        what: String,
        need: usize,
        have: usize,
    },
    #[error("only one class is labelled; label issues need both")]
    OneClass,
    #[error("invalid mining configuration: {0}")]
    Config(String),
    #[error("tensor computation failed: {0}")]
    Compute(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
