//! Generators behind one trait: a job in, image bytes (or why not) out.
//!
//! - [`Procedural`]: the offline scene generator, driven by the job's attributes; edits redraw a
//!   procedural source scene with the other label.
//! - [`Bedrock`]: Amazon Bedrock `InvokeModel` through `aws-sdk-bedrockruntime`, for the
//!   Stability families (text-to-image, image-to-image, search-and-replace, inpaint) and the
//!   Nova Canvas / Titan schema.

mod bedrock;
mod procedural;

use futures::future::BoxFuture;

pub use bedrock::{Bedrock, request_body};
pub use procedural::{Procedural, scene_for};

use super::plan::Job;

/// What came back for one job.
#[derive(Debug, Clone)]
pub struct Generated {
    pub bytes: Vec<u8>,
    /// The model that made it (for provenance).
    pub model_id: String,
}

/// Why a job produced no image. `billed()` says whether the call counts against the budget.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenError {
    /// The content filter answered (input or output). An output filter is billed.
    #[error("filtered: {reason}")]
    Filtered { reason: String, billed: bool },
    /// Throttled (or the model not ready) past every retry.
    #[error("throttled: {0}")]
    Throttled(String),
    #[error("timeout: {0}")]
    Timeout(String),
    /// A 5xx or an inference error on the service's side.
    #[error("server error: {0}")]
    Server(String),
    /// An answer that is not the documented shape (billed: the call succeeded).
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// Access denied, unknown model, a request the service refuses: no retry will help.
    #[error("refused: {0}")]
    Refused(String),
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The generator itself failed (a local error).
    #[error("generator: {0}")]
    Local(String),
}

impl GenError {
    /// Whether the call is charged (the model ran and answered).
    pub fn billed(&self) -> bool {
        match self {
            GenError::Filtered { billed, .. } => *billed,
            GenError::Malformed(_) => true,
            _ => false,
        }
    }

    /// A short name for counts and the `reason` column.
    pub fn kind(&self) -> &'static str {
        match self {
            GenError::Filtered { .. } => "filtered",
            GenError::Throttled(_) => "throttled",
            GenError::Timeout(_) => "timeout",
            GenError::Server(_) => "server_error",
            GenError::Malformed(_) => "malformed",
            GenError::Refused(_) => "refused",
            GenError::Unreachable(_) => "unreachable",
            GenError::Local(_) => "generator",
        }
    }

    /// Refusals that will repeat for every job of the model (stop sending to it).
    pub fn stops_model(&self) -> bool {
        matches!(self, GenError::Refused(_))
    }
}

/// An image generator. `source` holds the bytes of `job.source` when the job starts from a real
/// frame.
pub trait Backend: Send + Sync {
    /// `procedural` or `bedrock`.
    fn name(&self) -> &'static str;

    fn generate<'a>(
        &'a self,
        job: &'a Job,
        source: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Generated, GenError>>;
}
