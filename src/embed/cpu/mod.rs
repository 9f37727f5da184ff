//! The CPU encoder: DINOv3 loaded into the Burn module (same weights loader, key checks and model
//! id), then packed into a fused forward pass of plain f32 buffers.
//!
//! Why not Burn's ndarray backend itself: on two cores it ran at 0.23–0.41× PyTorch (a profile put
//! a third of the time in the BLAS and rayon pools waking each other per operation, most of the rest
//! in per-operation allocations and scalar `erf`, and Debian's OpenBLAS runs its AVX2 kernels on
//! AVX-512 CPUs). This engine does one GEMM per linear layer with run-time-selected AVX-512 / AVX2
//! kernels, vectorised LayerNorm/GELU/softmax, and one thread pool for everything. The Burn module
//! stays the reference: tests hold both to transformers' outputs.

mod engine;
mod kernels;

use std::path::Path;

pub use engine::{BF16_UNSUPPORTED, CpuVit};

use super::{
    Cpu, DinoV3Config, EmbedConfig, EmbedError, Embedder, EncoderSpec, ImageEncoder, Precision,
};

/// [`ImageEncoder`] on the CPU engine.
pub struct CpuEncoder {
    vit: CpuVit,
    spec: EncoderSpec,
}

impl CpuEncoder {
    /// Loads `weights` (or the random stand-in) for `cfg.model` and packs it.
    pub fn load(cfg: &EmbedConfig, weights: Option<&Path>) -> Result<Self, EmbedError> {
        Self::load_with(cfg, cfg.model.config(), weights)
    }

    /// As [`CpuEncoder::load`] with an explicit architecture (tests use tiny ones).
    pub fn load_with(
        cfg: &EmbedConfig,
        arch: DinoV3Config,
        weights: Option<&Path>,
    ) -> Result<Self, EmbedError> {
        if cfg.precision == Precision::Bf16 && !crate::gemm::bf16::available() {
            // Before the weights are read: the error is about the CPU, not the file.
            return Err(EmbedError::Unsupported(BF16_UNSUPPORTED.into()));
        }
        let e = Embedder::<Cpu>::load_with(cfg, arch, weights, &Default::default())?;
        Self::from_embedder_as(e, cfg.cpu_threads, cfg.precision)
    }

    /// Packs a loaded Burn encoder (consumed: its parameters move into the engine).
    pub fn from_embedder(e: Embedder<Cpu>, threads: usize) -> Result<Self, EmbedError> {
        Self::from_embedder_as(e, threads, Precision::F32)
    }

    /// As [`CpuEncoder::from_embedder`] at `precision` (bf16 needs AVX512_BF16).
    pub fn from_embedder_as(
        e: Embedder<Cpu>,
        threads: usize,
        precision: Precision,
    ) -> Result<Self, EmbedError> {
        let (model, arch, spec) = e.into_parts();
        Ok(Self {
            vit: CpuVit::pack_as(model, &arch, threads, precision)?,
            spec,
        })
    }

    /// `last_hidden_state` values `[n, tokens, hidden]` for normalised pixels `[n, 3, h, w]`.
    pub fn hidden_states(&self, pixels: &[f32], n: usize) -> Result<Vec<f32>, EmbedError> {
        let p = self.spec.pre;
        self.vit
            .forward(pixels, n, p.height as usize, p.width as usize)
    }
}

impl ImageEncoder for CpuEncoder {
    fn spec(&self) -> &EncoderSpec {
        &self.spec
    }

    fn embed_pixels(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
        let hidden = self.hidden_states(&pixels, n)?;
        Ok(self.spec.features_from_hidden(&hidden, n))
    }
}
