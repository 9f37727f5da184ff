//! Serve: the miner's answer path. Validators send one street image per request and score
//! P(roadwork); this stage verifies who is asking, decodes the image and answers.
//!
//! Built so far: [`auth`] (bittensor axon request verification: body hash, sr25519 signature,
//! axon hotkey, nonce rules) and [`payload`] (base64 image fields in every spelling). The HTTP
//! server, cascade, durable query log and hot-load follow (issue 6).

pub mod auth;
pub mod payload;

pub use auth::{AuthError, NonceTracker, SignedRequest, body_hash, parse_nonce, ss58_public_key};
pub use payload::{PayloadError, decode_base64_image};
