//! Serve: the miner's answer path. Validators send one street image per request and score
//! P(roadwork); this stage verifies who is asking, decodes the image and answers with tier 1 (the
//! DINOv3 encoder and the champion head, in process), escalating unsure images to a VLM (tier 2).
//!
//! - [`auth`]: bittensor axon request verification (body hash, sr25519 signature, axon hotkey,
//!   nonce rules);
//! - [`metagraph`]: which validators may ask (a snapshot file, reloaded when it changes);
//! - [`payload`]: base64 image fields in every spelling;
//! - [`tier1`]: encoder + head, with an atomic head swap;
//! - [`server`]: a profile's state and axum router; its routes (`routes.rs`), the cascade each
//!   image runs (`cascade.rs`), `/metrics` through prometheus-client (`metrics.rs`) and the one
//!   refusal type `ApiError` (`error.rs`).
//!
//! Invariants: every answer is a finite float in [0, 1] and never exactly 0.5, or -1 for an image
//! that cannot be decoded; a head trained on another encoder's features is refused.
//!
//! - [`start`]: `roadwork serve` — one listener per profile sharing one encoder and head, and the
//!   champion pointer followed (poll + SIGHUP) with atomic hot-swaps.
//!
//! - [`dendrite`]: the validator side (signed requests), for the demo, the benchmark and a miner's
//!   own end-to-end check.
//!
//! - [`querylog`]: every answer appended and fsync'd before its reply; sealed segments are moved
//!   into Lance by `pipeline::serve`.
//!
//! - [`Shadow`]: the registry's challenger scored after each answer on the champion's features,
//!   logged beside it (never sent, dropped first under load).
//!
//! - [`tier2`]: a VLM over an OpenAI-compatible chat-completions endpoint, asked only when tier 1
//!   is unsure and only within the deadline.

pub mod auth;
mod cascade;
mod config;
pub mod dendrite;
mod error;
pub mod metagraph;
mod metrics;
pub mod payload;
pub mod querylog;
mod routes;
mod run;
pub mod server;
mod shadow;
pub mod tier1;
pub mod tier2;

pub use auth::{AuthError, NonceTracker, SignedRequest, body_hash, parse_nonce, ss58_public_key};
pub use config::{ProfileConfig, ServeConfig};
pub use dendrite::{Dendrite, DendriteError, ss58_encode};
pub use error::ApiError;
pub use metagraph::{Metagraph, Neuron, Refusal};
pub use metrics::Metrics;
pub use payload::{PayloadError, decode_base64_image};
pub use querylog::{LogStatus, Pruned, QueryLog, prune_done};
pub use run::{Running, start};
pub use server::{AppState, Clock, ConnLimits, router, serve_with_limits, serve_with_peers};
pub use shadow::Shadow;
pub use tier1::{Tier1, Tier1Answer, Tier1Error};
pub use tier2::{Tier2, Tier2Answer, Tier2Config, Tier2Error};

/// What can stop the server from serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid serve configuration: {0}")]
    Config(String),
    #[error("cannot load the head: {0}")]
    Head(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("head {version} reads {head} features but the encoder makes {encoder}")]
    HeadMismatch {
        version: String,
        head: String,
        encoder: String,
    },
}
