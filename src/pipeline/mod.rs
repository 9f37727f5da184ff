//! Composes the stages. Only this module calls more than one stage; stages share row types from
//! `store`, never each other's internals.
//!
//! - [`nightly`]: the whole loop as one resumable job (`roadwork nightly`), with its run report
//!   ([`report`]).
//! - [`demo`]: the nightly job on generated data, two nights, offline.
//! - [`serve`]: the server with its query-log mover.

pub mod demo;
pub mod nightly;
pub mod report;
pub mod serve;

use crate::ingest::IngestError;
use crate::query::QueryError;
use crate::store::StoreError;
use crate::synth::scenes::SceneError;

/// Why a pipeline stopped; each variant is the stage that failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Scenes(#[from] SceneError),
    #[error(transparent)]
    Synth(#[from] crate::synth::SynthError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    #[error(transparent)]
    Mine(#[from] crate::mine::MineError),
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
    #[error(transparent)]
    Labels(#[from] crate::labels::LabelsError),
    #[error("background task failed: {0}")]
    Task(String),
    /// The command line or pipeline asks for something impossible (nothing was done).
    #[error("{0}")]
    Usage(String),
    /// Another job holds the store's writer lock (nothing was done).
    #[error(transparent)]
    Locked(crate::store::lock::LockError),
    /// A stage of a nightly job failed; `roadwork nightly --resume` continues from it.
    #[error("stage {stage} of {run_id} failed: {source}")]
    Stage {
        stage: crate::config::Stage,
        run_id: String,
        #[source]
        source: Box<PipelineError>,
    },
}

/// Exit codes of `roadwork nightly` (documented in docs/CLI.md) a scheduler can alert on.
pub mod exit {
    /// Every stage finished (whether or not the challenger was promoted).
    pub const OK: u8 = 0;
    /// A stage failed; `--resume` continues from it.
    pub const STAGE_FAILED: u8 = 1;
    /// Bad command line or configuration; nothing ran.
    pub const USAGE: u8 = 2;
    /// Another job holds the store's writer lock; nothing ran (EX_TEMPFAIL).
    pub const LOCKED: u8 = 75;
}

impl PipelineError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            PipelineError::Usage(_) => exit::USAGE,
            PipelineError::Locked(_) => exit::LOCKED,
            _ => exit::STAGE_FAILED,
        }
    }
}
