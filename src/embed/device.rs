//! Where the encoder runs, chosen at run time: the ndarray CPU backend always, CUDA (f32 or bf16)
//! when built with the `cuda` feature. Each entry point here picks the concrete Burn backend once.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{EmbedConfig, EmbedError, EmbedSummary, Embedder, ImageEncoder, embed_store};
use crate::bench::embed::{EmbedBenchRow, run_burn};
use crate::embed::DinoV3Size;
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

fn unsupported(device: ComputeDevice, precision: Precision) -> EmbedError {
    EmbedError::Unsupported(match (device, precision) {
        (ComputeDevice::Cpu, Precision::Bf16) => "bf16 is supported on CUDA only".into(),
        _ => "this build has no CUDA support; rebuild with `--features cuda`".into(),
    })
}

async fn embed_on<B: burn::prelude::Backend>(
    store: &Store,
    cfg: &EmbedConfig,
    weights: Option<&Path>,
    limits: DecodeLimits,
    progress: bool,
    device: B::Device,
) -> Result<EmbedSummary, EmbedError>
where
    B::Device: Send + Sync,
{
    let e = Arc::new(Embedder::<B>::load(cfg, weights, &device)?);
    embed_store(store, e, cfg, limits, progress).await
}

/// Runs the embed stage on the configured device and precision.
pub async fn embed(
    store: &Store,
    cfg: &EmbedConfig,
    weights: Option<&Path>,
    limits: DecodeLimits,
    progress: bool,
) -> Result<EmbedSummary, EmbedError> {
    match (cfg.device, cfg.precision) {
        (ComputeDevice::Cpu, Precision::F32) => {
            embed_on::<super::Cpu>(store, cfg, weights, limits, progress, Default::default()).await
        }
        #[cfg(feature = "cuda")]
        (ComputeDevice::Cuda, Precision::F32) => {
            embed_on::<burn::backend::Cuda<f32>>(
                store,
                cfg,
                weights,
                limits,
                progress,
                Default::default(),
            )
            .await
        }
        #[cfg(feature = "cuda")]
        (ComputeDevice::Cuda, Precision::Bf16) => {
            embed_on::<burn::backend::Cuda<half::bf16>>(
                store,
                cfg,
                weights,
                limits,
                progress,
                Default::default(),
            )
            .await
        }
        (d, p) => Err(unsupported(d, p)),
    }
}

/// Loads the encoder of `cfg` on its configured device and precision, behind the backend-agnostic
/// [`ImageEncoder`] (the serving path).
pub fn load_encoder(
    cfg: &EmbedConfig,
    weights: Option<&Path>,
) -> Result<Arc<dyn ImageEncoder>, EmbedError> {
    Ok(match (cfg.device, cfg.precision) {
        (ComputeDevice::Cpu, Precision::F32) => Arc::new(Embedder::<super::Cpu>::load(
            cfg,
            weights,
            &Default::default(),
        )?),
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

/// Times the encoder on `device` at each precision in `precisions`.
pub fn bench(
    device: ComputeDevice,
    precisions: &[Precision],
    models: &[DinoV3Size],
    batches: &[usize],
    iters: usize,
    resolution: usize,
) -> Result<Vec<EmbedBenchRow>, EmbedError> {
    let mut rows = Vec::new();
    for &p in precisions {
        let label = p.torch_name();
        rows.extend(match (device, p) {
            (ComputeDevice::Cpu, Precision::F32) => run_burn::<super::Cpu>(
                models,
                batches,
                iters,
                resolution,
                ("burn-ndarray", label),
                &Default::default(),
            ),
            #[cfg(feature = "cuda")]
            (ComputeDevice::Cuda, Precision::F32) => run_burn::<burn::backend::Cuda<f32>>(
                models,
                batches,
                iters,
                resolution,
                ("burn-cuda", label),
                &Default::default(),
            ),
            #[cfg(feature = "cuda")]
            (ComputeDevice::Cuda, Precision::Bf16) => run_burn::<burn::backend::Cuda<half::bf16>>(
                models,
                batches,
                iters,
                resolution,
                ("burn-cuda", label),
                &Default::default(),
            ),
            (d, p) => return Err(unsupported(d, p)),
        });
    }
    Ok(rows)
}
