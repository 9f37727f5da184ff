//! Where the encoder runs, chosen at run time: the ndarray CPU backend always, CUDA (f32 or bf16)
//! when built with the `cuda` feature. Each entry point here picks the concrete Burn backend once.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[cfg(feature = "cuda")]
use super::Embedder;
use super::{CpuEncoder, EmbedConfig, EmbedError, EmbedSummary, ImageEncoder, embed_store};
use crate::imaging::DecodeLimits;
use crate::store::Store;

/// Compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDevice {
    #[default]
    Cpu,
    /// The first NVIDIA GPU (needs the `cuda` build feature).
    Cuda,
}

/// Floating-point precision of the encoder's weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bfloat16 (CUDA only).
    Bf16,
}

impl Precision {
    /// The PyTorch dtype name, for side-by-side benchmarks.
    pub fn torch_name(self) -> &'static str {
        match self {
            Precision::F32 => "float32",
            Precision::Bf16 => "bfloat16",
        }
    }
}

/// The error for a device/precision pair this build cannot run.
pub fn unsupported(device: ComputeDevice, precision: Precision) -> EmbedError {
    EmbedError::Unsupported(match (device, precision) {
        (ComputeDevice::Cpu, Precision::Bf16) => "bf16 is supported on CUDA only".into(),
        _ => "this build has no CUDA support; rebuild with `--features cuda`".into(),
    })
}

/// Runs the embed stage on the configured device and precision.
pub async fn embed(
    store: &Store,
    cfg: &EmbedConfig,
    weights: Option<&Path>,
    limits: DecodeLimits,
    progress: bool,
) -> Result<EmbedSummary, EmbedError> {
    let encoder = load_encoder(cfg, weights)?;
    embed_store(store, encoder, cfg, limits, progress).await
}

/// Loads the encoder of `cfg` on its configured device and precision, behind the device-agnostic
/// [`ImageEncoder`]: the CPU engine, or the Burn module on CUDA.
pub fn load_encoder(
    cfg: &EmbedConfig,
    weights: Option<&Path>,
) -> Result<Arc<dyn ImageEncoder>, EmbedError> {
    Ok(match (cfg.device, cfg.precision) {
        (ComputeDevice::Cpu, Precision::F32) => Arc::new(CpuEncoder::load(cfg, weights)?),
        #[cfg(feature = "cuda")]
        (ComputeDevice::Cuda, Precision::F32) => Arc::new(
            Embedder::<burn::backend::Cuda<f32>>::load(cfg, weights, &Default::default())?,
        ),
        #[cfg(feature = "cuda")]
        (ComputeDevice::Cuda, Precision::Bf16) => Arc::new(Embedder::<
            burn::backend::Cuda<half::bf16>,
        >::load(
            cfg, weights, &Default::default()
        )?),
        (d, p) => return Err(unsupported(d, p)),
    })
}
