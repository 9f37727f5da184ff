//! `[pipeline]`: which stages the nightly job runs and the settings only the job has (its data
//! sources, the labelling budget, the export, notification and housekeeping). Each stage's own
//! settings stay in its section (`[embed]`, `[mine]`, `[train]`, `[teach]`, …), so `roadwork
//! train` by hand and the nightly train stage read the same values.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::mine::Strategy;
use crate::store::SampleSource;

/// A stage of the nightly job, in loop order.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The configured dataset sources and sealed query-log segments.
    Ingest,
    /// Embeddings for every sample that lacks one.
    Embed,
    /// Hard cases, clusters, duplicates, drift (with the champion's scores).
    Mine,
    /// The night's selection for labelling, exported for people.
    Select,
    /// The VLM teacher labels the selection (when `[serve.tier2]` is configured).
    Teach,
    /// Synthetic gap filling (not built yet: skipped with a note).
    Synth,
    /// A challenger head on the current data.
    Train,
    /// The challenger's evaluation report.
    Eval,
    /// The gate: challenger against champion on the challenger's frozen eval set.
    Promote,
    /// Tell the server (it follows the champion pointer; optionally wait until it serves it).
    Notify,
    /// Compaction and cleanup of old Lance versions (tagged versions are kept).
    Housekeeping,
}

impl Stage {
    /// Every stage, in loop order.
    pub const ALL: [Stage; 11] = [
        Stage::Ingest,
        Stage::Embed,
        Stage::Mine,
        Stage::Select,
        Stage::Teach,
        Stage::Synth,
        Stage::Train,
        Stage::Eval,
        Stage::Promote,
        Stage::Notify,
        Stage::Housekeeping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Embed => "embed",
            Stage::Mine => "mine",
            Stage::Select => "select",
            Stage::Teach => "teach",
            Stage::Synth => "synth",
            Stage::Train => "train",
            Stage::Eval => "eval",
            Stage::Promote => "promote",
            Stage::Notify => "notify",
            Stage::Housekeeping => "housekeeping",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!("no stage {s:?}; stages are {}", all.join(", "))
            })
    }
}

/// What kind of dataset a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// An image folder (labels from sub-folders, a CSV or `manifest.jsonl`; see `ingest folder`).
    Folder,
    /// NATIX `roadwork` parquet shards: one file, or every `*.parquet` in a directory.
    Natix,
}

/// One dataset the ingest stage reads every night (idempotently: only new images are added).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// A relative path is relative to `data.dir`.
    pub path: PathBuf,
    /// Sample source recorded for a folder (default `upload`).
    #[serde(default)]
    pub source: Option<SampleSource>,
    /// Author of a folder's labels (default: the folder's name).
    #[serde(default)]
    pub author: Option<String>,
    /// A folder's `path,label` CSV.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Dataset name recorded for NATIX shards.
    #[serde(default)]
    pub dataset_name: Option<String>,
}

/// `[pipeline.select]`: the night's selection for labelling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectStageConfig {
    /// Samples to select per night.
    pub budget: usize,
    pub strategy: Strategy,
    /// Only samples of the training split are chosen (labels bought to train on; the eval set
    /// stays the frozen, id-drawn one).
    pub train_split_only: bool,
    /// Export the selection for labelling (`labels export`) under `export_dir/<selection>/`.
    pub export: bool,
    /// Default `<data.dir>/labelling`.
    pub export_dir: Option<PathBuf>,
}

impl Default for SelectStageConfig {
    fn default() -> Self {
        Self {
            budget: 200,
            strategy: Strategy::Auto,
            train_split_only: true,
            export: true,
            export_dir: None,
        }
    }
}

/// `[pipeline.notify]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// A running server's base URL (`http://127.0.0.1:8091`): after a promotion the stage waits
    /// until its `/healthz` reports the new champion. Without it the stage only checks the pointer.
    pub url: Option<String>,
    /// How long to wait for the server, seconds.
    pub timeout_s: u64,
}

/// `[pipeline.housekeeping]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HousekeepingConfig {
    /// Compact small fragments and deleted rows (Lance `optimize`).
    pub compact: bool,
    /// Untagged versions older than this many days are removed (tagged ones never are).
    pub keep_versions_days: u32,
    /// Query-log segments in `done/` (already in Lance, durably) older than this many days are
    /// deleted; 0 keeps them forever.
    pub querylog_done_days: u32,
}

impl Default for HousekeepingConfig {
    fn default() -> Self {
        Self {
            compact: true,
            keep_versions_days: 7,
            querylog_done_days: 14,
        }
    }
}

/// `[pipeline]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Stages to run; they always run in loop order (default: all).
    pub stages: Vec<Stage>,
    /// Datasets the ingest stage reads.
    pub sources: Vec<SourceConfig>,
    /// Ingest sealed query-log segments of `serve.querylog_dir` when no server owns the directory
    /// (while one runs, its mover does).
    pub querylog: bool,
    /// Teach the `hard` hardest unlabelled samples of the night's mining run instead of the
    /// night's selection (0: the selection).
    pub teach_hard: usize,
    /// With N > 0 a head that passes the gate is first named the challenger, scored in shadow by
    /// the server, and promoted on a later night once the store holds N of its shadow answers
    /// (0: promote on the gate alone). Keep it below one day's traffic.
    pub min_shadow: usize,
    pub select: SelectStageConfig,
    pub notify: NotifyConfig,
    pub housekeeping: HousekeepingConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            stages: Stage::ALL.to_vec(),
            sources: Vec::new(),
            querylog: true,
            teach_hard: 0,
            min_shadow: 0,
            select: SelectStageConfig::default(),
            notify: NotifyConfig {
                url: None,
                timeout_s: 60,
            },
            housekeeping: HousekeepingConfig::default(),
        }
    }
}

impl PipelineConfig {
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for s in &self.stages {
            if !seen.insert(*s) {
                return Err(format!("pipeline.stages lists {s} twice"));
            }
        }
        if self.stages.contains(&Stage::Select) && self.select.budget == 0 {
            return Err("pipeline.select.budget must be at least 1".into());
        }
        for s in &self.sources {
            if s.path.as_os_str().is_empty() {
                return Err("a pipeline source has an empty path".into());
            }
            if s.kind == SourceKind::Natix && (s.labels.is_some() || s.source.is_some()) {
                return Err(format!(
                    "pipeline source {}: labels and source apply to folders only",
                    s.path.display()
                ));
            }
        }
        if let Some(u) = &self.notify.url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(format!("pipeline.notify.url {u:?} is not an http(s) URL"));
        }
        Ok(())
    }

    /// The configured stages in loop order.
    pub fn ordered_stages(&self) -> Vec<Stage> {
        Stage::ALL
            .into_iter()
            .filter(|s| self.stages.contains(s))
            .collect()
    }
}
