//! Synthetic gap filling: the stage that fills gaps in the data.
//!
//! `plan` (gaps of a mining run → requests → jobs, and their cost) → `generate` (a [`Backend`]:
//! the offline procedural scene generator, or Amazon Bedrock's Stability models) → `check`
//! (decode, duplicates, leakage, does it land in the gap, per-cluster cap) → `write` (samples,
//! `synthetic` labels, embeddings and the `synth_images` ledger of every job) → the shortcut audit
//! and the report.
//!
//! The procedural street-scene generator ([`scenes`]) is also the data source of the demo and the
//! tests; every image it makes is a pure function of (seed, index), labelled by construction.

pub mod audit;
pub mod backend;
pub mod check;
pub mod config;
pub mod load;
pub mod plan;
mod report;
pub mod run;
pub mod scenes;

pub use backend::{Backend, Bedrock, GenError, Generated, Procedural};
pub use config::{BackendKind, BedrockConfig, BedrockModel, ModelFamily, SynthConfig};
pub use plan::{Gap, GapKind, Job, Plan, PlanInputs, SynthRequest, Task, make_plan};
pub use run::{Budget, GapOutcome, SynthSummary, Synthesizer, default_report_dir, plan};

/// The configured generator: the procedural one, or Bedrock with the standard AWS credential
/// chain and region.
pub async fn open_backend(cfg: &SynthConfig) -> std::sync::Arc<dyn Backend> {
    match cfg.backend {
        BackendKind::Procedural => std::sync::Arc::new(Procedural),
        BackendKind::Bedrock => std::sync::Arc::new(Bedrock::from_env(&cfg.bedrock).await),
    }
}

/// Why the synthesis stage stopped. Per-image problems are not errors: they are recorded as
/// rejected, filtered or failed jobs.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
    #[error("synth config: {0}")]
    Config(String),
    /// The plan needs a mining run that is not there.
    #[error("{0}")]
    NoMiningRun(String),
    /// The encoder does not make the vectors the mining run was made of.
    #[error(
        "the mining run used embeddings {mined}, but the configured encoder makes {encoder}; set [embed] (and --weights) to the encoder that made {mined}"
    )]
    EncoderMismatch { mined: String, encoder: String },
    #[error("store data: {0}")]
    Shape(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("background task failed: {0}")]
    Task(String),
}
