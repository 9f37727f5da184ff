//! Composes the stages. Only this module calls more than one stage; stages share row types from
//! `store`, never each other's internals.
//!
//! Today: [`demo`], the offline run of everything built so far, on generated data. It grows with
//! each stage until it is the whole nightly loop.

pub mod demo;
pub mod serve;

use crate::ingest::IngestError;
use crate::query::QueryError;
use crate::store::StoreError;
use crate::synth::scenes::SynthError;

/// Why a pipeline stopped; each variant is the stage that failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Synth(#[from] SynthError),
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
    #[error("background task failed: {0}")]
    Task(String),
}
