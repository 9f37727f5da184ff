//! The CUDA encoder: DINOv3 loaded into the Burn module on the CPU (same weights loader, key
//! checks and model id as every other path), taken apart into the fused layout the CPU engine also
//! uses, and uploaded to the GPU once.
//!
//! Why not Burn's CUDA backend: measured on an H200 it ran at 0.10–0.34× PyTorch eager (matmul far
//! from cuBLAS, attention as separate kernels that write `t × t` scores, per-op launch overhead
//! at batch 1). This engine runs every GEMM through cuBLASLt with bias, GELU and the residual add
//! in the epilogue, one flash-style attention kernel with RoPE inside it, one LayerNorm kernel at
//! memory bandwidth, and replays the whole forward as a CUDA graph. Kernels are CUDA C compiled
//! at load time by NVRTC; libcuda, libnvrtc and libcublasLt are loaded at run time, so building
//! needs no CUDA toolkit. The Burn module stays the reference: tests hold this engine to it.

mod engine;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use crate::gpu::CudaError;
pub use engine::CudaVit;

use super::{Cpu, DinoV3Config, EmbedConfig, EmbedError, Embedder, EncoderSpec, ImageEncoder};

/// [`ImageEncoder`] on the CUDA engine.
pub struct CudaEncoder {
    vit: CudaVit,
    spec: EncoderSpec,
}

impl CudaEncoder {
    /// Loads `weights` (or the random stand-in) for `cfg.model` and uploads it to the first GPU.
    pub fn load(cfg: &EmbedConfig, weights: Option<&Path>) -> Result<Self, EmbedError> {
        Self::load_with(cfg, cfg.model.config(), weights)
    }

    /// As [`CudaEncoder::load`] with an explicit architecture (tests use tiny ones).
    pub fn load_with(
        cfg: &EmbedConfig,
        arch: DinoV3Config,
        weights: Option<&Path>,
    ) -> Result<Self, EmbedError> {
        let e = Embedder::<Cpu>::load_with(cfg, arch, weights, &Default::default())?;
        let (model, arch, spec) = e.into_parts();
        Ok(Self {
            vit: CudaVit::pack(model, &arch, 0, cfg.precision)?,
            spec,
        })
    }

    pub fn vit(&self) -> &CudaVit {
        &self.vit
    }
}

impl ImageEncoder for CudaEncoder {
    fn spec(&self) -> &EncoderSpec {
        &self.spec
    }

    fn embed_pixels(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
        let p = self.spec.pre;
        let pooled = self
            .vit
            .pooled(&pixels, n, p.height as usize, p.width as usize)?;
        Ok(self.spec.features_from_pooled(&pooled, n))
    }
}
