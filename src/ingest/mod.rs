//! Ingest: brings images and what is known about them into the store.
//!
//! Sources: an image folder (labels from `roadwork/`·`clean/` sub-folders, a `path,label` CSV, or a
//! `manifest.jsonl`), NATIX `roadwork` parquet shards, and the JSONL query log the server writes.
//!
//! Invariants: every item is decoded before it is accepted (a corrupt file is skipped and named in the
//! summary, never stored); writes go out in batches, one Lance commit each, so a crash loses at most
//! the batch in flight and a re-run completes the job; a re-run of the same input inserts nothing.
//! Each run is recorded in the `runs` ledger with its summary.

mod backfill;
mod batch;
mod described;
mod folder;
mod natix;
mod parquet;
mod querylog;
mod shards;
mod summary;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::imaging::{DecodeError, DecodeLimits, QualityScores, decode, phash};
use crate::store::{SampleId, StoreError};

pub use backfill::QualityBackfill;
pub use folder::FolderOptions;
pub use natix::{NatixOptions, REQUIRED_COLUMNS as NATIX_REQUIRED_COLUMNS};
pub use summary::{IngestSummary, Skipped};

/// What can stop an ingest. Per-item problems are not errors: they are [`Skipped`] entries.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// User input: the path given is not a folder.
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    /// User input: a parquet file lacks a column NATIX data must have. Nothing was written.
    #[error("{path}: required column {column:?} is missing (found: {found}); nothing was written")]
    MissingColumn {
        path: PathBuf,
        column: String,
        found: String,
    },
    /// User input: a column exists with a type that cannot hold what it should.
    #[error("{path}: column {column:?} has type {found}, expected {expected}; nothing was written")]
    ColumnType {
        path: PathBuf,
        column: String,
        found: String,
        expected: &'static str,
    },
    #[error("{path}: not a readable parquet file: {detail}")]
    Parquet { path: PathBuf, detail: String },
    /// User input: the label CSV or manifest is malformed.
    #[error("{path} line {line}: {why}")]
    LabelFile {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("background task failed: {0}")]
    Task(String),
}

/// The facts ingest derives from image bytes: identity, size, format, fingerprint.
#[derive(Debug, Clone)]
pub(crate) struct ImageFacts {
    pub sample_id: SampleId,
    pub width: u32,
    pub height: u32,
    pub format: &'static str,
    pub phash: u64,
    pub quality: QualityScores,
    /// A 224×224 image with a validator's letterbox bars (only 224² images are looked at).
    pub letterboxed: bool,
}

/// Decodes once and derives everything; the error is the reason shown in the summary.
pub(crate) fn image_facts(bytes: &[u8], limits: &DecodeLimits) -> Result<ImageFacts, DecodeError> {
    let d = decode(bytes, limits)?;
    Ok(ImageFacts {
        sample_id: SampleId::of_bytes(bytes),
        width: d.image.width(),
        height: d.image.height(),
        format: d.format,
        phash: phash(&d.image),
        quality: crate::imaging::quality_scores(&d.image),
        letterboxed: (d.image.width(), d.image.height()) == (224, 224)
            && crate::imaging::has_letterbox_bars(&d.image),
    })
}

/// Runs ingests against one store with one configuration.
#[derive(Debug, Clone)]
pub struct Ingestor {
    store: crate::store::Store,
    cfg: IngestConfig,
    limits: DecodeLimits,
    progress: bool,
}

impl Ingestor {
    /// The store this ingestor writes to.
    pub fn store(&self) -> &crate::store::Store {
        &self.store
    }

    pub fn new(store: crate::store::Store, cfg: IngestConfig, limits: DecodeLimits) -> Self {
        Self {
            store,
            cfg,
            limits,
            progress: true,
        }
    }

    /// Turns the progress bar off (tests, nested use inside the demo).
    pub fn quiet(mut self) -> Self {
        self.progress = false;
        self
    }

    fn bar(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        if !self.progress {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new(len);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        bar
    }
}

/// How ingest batches its writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Rows per Lance commit. Smaller commits lose less work to a crash; larger ones write faster.
    pub batch_rows: usize,
    /// Image bytes per Lance commit, MiB (whichever of the two limits is reached first).
    pub batch_mib: usize,
    /// Largest image file (folder ingest) or Parquet image cell accepted, MiB; larger ones are
    /// skipped with their size before being read (phone photos are a few MB).
    pub max_file_mib: usize,
    /// Thresholds of the image-quality issues stored with every new sample
    /// (`image_quality` and `quality=` tags).
    pub quality: crate::imaging::QualityThresholds,
}

impl IngestConfig {
    /// [`max_file_mib`](Self::max_file_mib) in bytes.
    pub fn max_file_bytes(&self) -> u64 {
        (self.max_file_mib as u64) << 20
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            batch_rows: 512,
            batch_mib: 256,
            max_file_mib: 64,
            quality: Default::default(),
        }
    }
}
