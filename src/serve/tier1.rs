//! Tier 1 of the cascade: DINOv3 features and the champion head, in process. The encoder is loaded
//! once and shared by every profile; the head can be swapped while requests are in flight (a
//! request keeps the `Arc` of the head it started with).

use std::sync::{Arc, RwLock};

use crate::embed::{Cpu, Embedder};
use crate::imaging::{DecodeLimits, decode};
use crate::train::{TrainedHead, UNDECIDED};

use super::ServeError;

/// One tier-1 answer.
#[derive(Debug, Clone)]
pub struct Tier1Answer {
    /// Calibrated, finite, in [0, 1], never exactly 0.5.
    pub prob: f32,
    pub model_version: String,
}

/// Why an image got no tier-1 answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Tier1Error {
    #[error("image cannot be decoded: {0}")]
    Undecodable(String),
}

/// The encoder and the current head.
pub struct Tier1 {
    embedder: Arc<Embedder<Cpu>>,
    head: RwLock<Arc<TrainedHead<Cpu>>>,
    limits: DecodeLimits,
}

fn check_pair(embedder: &Embedder<Cpu>, head: &TrainedHead<Cpu>) -> Result<(), ServeError> {
    if head.card.embedding_model != embedder.model_id() || head.card.dim != embedder.dim() {
        return Err(ServeError::HeadMismatch {
            version: head.card.model_version.clone(),
            head: format!("{} (dim {})", head.card.embedding_model, head.card.dim),
            encoder: format!("{} (dim {})", embedder.model_id(), embedder.dim()),
        });
    }
    Ok(())
}

impl Tier1 {
    /// Refuses a head trained on another encoder's features.
    pub fn new(
        embedder: Arc<Embedder<Cpu>>,
        head: TrainedHead<Cpu>,
        limits: DecodeLimits,
    ) -> Result<Self, ServeError> {
        check_pair(&embedder, &head)?;
        Ok(Self {
            embedder,
            head: RwLock::new(Arc::new(head)),
            limits,
        })
    }

    /// The head answering now.
    pub fn head(&self) -> Arc<TrainedHead<Cpu>> {
        self.head
            .read()
            .map(|h| h.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn model_version(&self) -> String {
        self.head().card.model_version.clone()
    }

    /// Installs a new head (refused, leaving the old one serving, if it does not fit the encoder).
    pub fn swap_head(&self, head: TrainedHead<Cpu>) -> Result<String, ServeError> {
        check_pair(&self.embedder, &head)?;
        let version = head.card.model_version.clone();
        let mut slot = self.head.write().unwrap_or_else(|p| p.into_inner());
        *slot = Arc::new(head);
        Ok(version)
    }

    /// Decodes and scores one image. CPU-bound: call from a blocking thread.
    pub fn predict(&self, bytes: &[u8]) -> Result<Tier1Answer, Tier1Error> {
        let img =
            decode(bytes, &self.limits).map_err(|e| Tier1Error::Undecodable(e.to_string()))?;
        let head = self.head();
        let features = self
            .embedder
            .embed_images(std::slice::from_ref(&img.image))
            .pop()
            .unwrap_or_default();
        let prob = head
            .predict(&features)
            .ok()
            .and_then(|p| p.first().copied())
            .filter(|p| p.is_finite() && (0.0..=1.0).contains(p))
            .unwrap_or_else(|| {
                tracing::error!(
                    version = %head.card.model_version,
                    "head produced no finite probability; answering undecided"
                );
                UNDECIDED
            });
        Ok(Tier1Answer {
            prob: if prob == 0.5 { UNDECIDED } else { prob },
            model_version: head.card.model_version.clone(),
        })
    }
}
