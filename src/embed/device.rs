//! Where the encoder runs, chosen at run time: the ndarray CPU backend always, CUDA (f32 or bf16)
//! when built with the `cuda` feature. Each entry point here picks the concrete Burn backend once.

use std::path::Path;
use std::sync::Arc;

use super::{
    AugmentSummary, CpuEncoder, EmbedConfig, EmbedError, EmbedSummary, ImageEncoder, augment_store,
    embed_store,
};
pub use crate::backend::{ComputeDevice, Precision};
use crate::imaging::DecodeLimits;
use crate::store::Store;

/// The error for a device/precision pair this build cannot run.
pub fn unsupported(device: ComputeDevice, precision: Precision) -> EmbedError {
    EmbedError::Unsupported(crate::backend::unsupported(device, precision).into())
}

/// Runs the embed stage on the configured device and precision.
pub async fn embed(
    store: &Store,
    cfg: &EmbedConfig,
    weights: Option<&Path>,
    limits: DecodeLimits,
    progress: bool,
) -> Result<EmbedSummary, EmbedError> {
    let encoder = encoder_off_the_workers(cfg, weights).await?;
    embed_store(store, encoder, cfg, limits, progress).await
}

/// Embeds the missing validator-augmented copies of the labelled samples on the configured
/// device (the encoder loaded as [`embed`] loads it).
pub async fn augment(
    store: &Store,
    cfg: &EmbedConfig,
    weights: Option<&Path>,
    limits: DecodeLimits,
    progress: bool,
) -> Result<AugmentSummary, EmbedError> {
    let encoder = encoder_off_the_workers(cfg, weights).await?;
    augment_store(store, encoder, cfg, limits, progress).await
}

/// The encoder of `cfg` (weights from the flag, else from the config): reading and converting
/// weights is blocking work, so it runs off the async workers.
async fn encoder_off_the_workers(
    cfg: &EmbedConfig,
    weights: Option<&Path>,
) -> Result<Arc<dyn ImageEncoder>, EmbedError> {
    let weights = weights.or(cfg.weights.as_deref()).map(Path::to_path_buf);
    let c = cfg.clone();
    tokio::task::spawn_blocking(move || load_encoder(&c, weights.as_deref()))
        .await
        .map_err(|e| EmbedError::Task(e.to_string()))?
}

/// Loads the encoder of `cfg` on its configured device and precision, behind the device-agnostic
/// [`ImageEncoder`]: the CPU engine, or the CUDA engine (the Burn module stays the reference both
/// engines are tested against).
pub fn load_encoder(
    cfg: &EmbedConfig,
    weights: Option<&Path>,
) -> Result<Arc<dyn ImageEncoder>, EmbedError> {
    if cfg.encoder == super::EncoderKind::Baseline {
        if weights.is_some() {
            return Err(EmbedError::Unsupported(
                "the baseline encoder has no weights; drop --weights or set embed.encoder = \"dinov3\"".into(),
            ));
        }
        return Ok(Arc::new(super::BaselineEncoder::new(cfg)?));
    }
    Ok(match (cfg.device, cfg.precision) {
        (ComputeDevice::Cpu, Precision::F32 | Precision::Bf16) => {
            Arc::new(CpuEncoder::load(cfg, weights)?)
        }
        #[cfg(feature = "cuda")]
        (ComputeDevice::Cuda, Precision::F32 | Precision::Bf16) => {
            Arc::new(super::CudaEncoder::load(cfg, weights)?)
        }
        #[cfg(not(feature = "cuda"))]
        (d, p) => return Err(unsupported(d, p)),
    })
}
