//! Embed: DINOv3 ViT features for every sample, computed in Burn (ndarray CPU by default, CUDA with
//! the `cuda` cargo feature), written to `embeddings_<model id>`.
//!
//! The model id is `dinov3-<size>-<sha256 of weights, 12 hex>-r<resolution>-<features>[-l2][-lb]`, so
//! vectors from different weights, input sizes or feature kinds never mix. Without weights the stage
//! runs a small-seeded random model (and says so): the pipeline runs, the features mean nothing.
//!
//! Invariants: the stage is resumable (it embeds only samples without a vector for the model id, one
//! commit per chunk); an image that cannot be decoded is skipped with its reason and the rest of the
//! chunk still lands; no non-finite vector is ever stored.

mod baseline;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub(crate) mod packed;
mod preprocess;
mod stage;
pub mod vit;
pub mod weights;

use std::path::Path;

use burn::prelude::*;
use image::DynamicImage;
use serde::{Deserialize, Serialize};

pub use baseline::{BASELINE_DIM, BaselineEncoder};
pub use cpu::{CpuEncoder, CpuVit};
#[cfg(feature = "cuda")]
pub use cuda::{CudaEncoder, CudaVit};
pub use device::{ComputeDevice, Precision, augment, embed, load_encoder};
pub use preprocess::{IMAGENET_MEAN, IMAGENET_STD, Preprocess, ResizeMode, resize_bilinear_aa};
pub use stage::{AugmentSummary, EmbedSummary, augment_store, embed_store};
pub use vit::{Activation, DinoV3, DinoV3Config, DinoV3Output, DinoV3Size};
pub use weights::{TensorMap, WeightsError};

pub use crate::backend::Cpu;

/// Which vector represents an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// The normed CLS token (`pooler_output`).
    #[default]
    Cls,
    /// The mean of the patch tokens.
    MeanPatch,
    /// CLS and mean patch, concatenated (2 × hidden).
    ClsMeanPatch,
}

impl FeatureKind {
    fn tag(self) -> &'static str {
        match self {
            FeatureKind::Cls => "cls",
            FeatureKind::MeanPatch => "mean",
            FeatureKind::ClsMeanPatch => "clsmean",
        }
    }
}

/// Which encoder computes the vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    /// DINOv3 (`embed.model`), with the weights file given, or random weights without one.
    #[default]
    Dinov3,
    /// The weight-free colour + gradient histogram baseline ([`BaselineEncoder`]).
    Baseline,
}

/// Configuration of the embed stage (`[embed]` in the TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbedConfig {
    /// `dinov3` (production) or `baseline` (colour + gradient histograms: no weights, some signal;
    /// for offline demos and tests).
    pub encoder: EncoderKind,
    pub model: DinoV3Size,
    /// Input side, pixels (a multiple of 16).
    pub resolution: u32,
    pub features: FeatureKind,
    /// Unit-length vectors (cosine search and k-means want them).
    pub l2_normalize: bool,
    pub resize: ResizeMode,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Rows before an ANN index is built; below it, search is exact.
    pub index_min_rows: usize,
    /// Seed of the random model used when no weights file is given.
    pub random_seed: u64,
    pub device: ComputeDevice,
    pub precision: Precision,
    /// Threads of the CPU encoder (0: one per core).
    pub cpu_threads: usize,
    /// DINOv3 weights (safetensors) for jobs that embed without a `--weights` flag (the nightly
    /// job); without either, the random model runs and says so.
    pub weights: Option<std::path::PathBuf>,
    /// Validator-augmented copies of the labelled samples (`[embed.augment]`).
    pub augment: AugmentConfig,
}

/// Distorted copies of every labelled sample, made as validators distorted their challenges
/// before 2026-05-03 (levels 0–3, `crate::imaging::augment`, sent as JPEG quality 75) and embedded
/// into `augmented_<model id>`: training learns from them and evaluation reports metrics per
/// level and distortion on them. Unlabelled traffic is never augmented (nothing trains on it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Copies per labelled sample (0: none, the library default; the shipped pipelines use 2).
    /// Copy `c` of a sample gets level `(s + c) mod 4` for
    /// a per-sample offset `s`, so 4 copies cover every level once and fewer spread the levels
    /// evenly over the samples.
    pub copies: u32,
    /// Share of level-0 copies letterboxed instead of centre-cropped (validators letterboxed
    /// from 2026-04-06 on).
    pub letterbox_share: f64,
    /// Seed of the draws (rotation, crop, strengths); part of each copy's key, so another seed
    /// makes new copies beside the cached ones.
    pub seed: u64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            copies: 0,
            letterbox_share: 0.5,
            seed: 0,
        }
    }
}

impl AugmentConfig {
    /// Range checks serde cannot do.
    pub fn validate(&self) -> Result<(), String> {
        if self.copies > 16 {
            return Err(format!(
                "embed.augment.copies = {} is more than 16 per sample",
                self.copies
            ));
        }
        if !(0.0..=1.0).contains(&self.letterbox_share) {
            return Err(format!(
                "embed.augment.letterbox_share = {} is not in [0, 1]",
                self.letterbox_share
            ));
        }
        Ok(())
    }
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self {
            encoder: EncoderKind::Dinov3,
            model: DinoV3Size::Vits16,
            resolution: 224,
            features: FeatureKind::Cls,
            l2_normalize: true,
            resize: ResizeMode::Stretch,
            batch_size: 16,
            index_min_rows: 20_000,
            random_seed: 0,
            device: ComputeDevice::Cpu,
            precision: Precision::F32,
            cpu_threads: 0,
            weights: None,
            augment: AugmentConfig::default(),
        }
    }
}

/// Why embedding cannot proceed.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// User input: a resolution the patch grid cannot take.
    #[error("resolution {0} is not a positive multiple of 16")]
    Resolution(u32),
    #[error("background task failed: {0}")]
    Task(String),
    /// User input: a device/precision this build cannot run.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An engine (CPU or CUDA) could not start or was handed inconsistent shapes.
    #[error("encoder: {0}")]
    Engine(String),
    /// The CUDA engine: the driver, NVRTC, cuBLASLt or a kernel failed.
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(#[from] cuda::CudaError),
}

/// A loaded encoder whatever computes it (the CPU engine, or Burn on a GPU): the embed stage and
/// the serving path hold one of these, so the device is chosen at run time.
pub trait ImageEncoder: Send + Sync {
    /// Identity, preprocessing and feature settings.
    fn spec(&self) -> &EncoderSpec;

    /// Feature vectors for `n` preprocessed images (`[n, 3, h, w]` values from
    /// [`Preprocess::append_pixels`]), one forward pass.
    fn embed_pixels(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>, EmbedError>;

    /// See [`EncoderSpec::model_id`].
    fn model_id(&self) -> &str {
        &self.spec().model_id
    }

    /// Length of the feature vectors.
    fn dim(&self) -> usize {
        self.spec().dim
    }

    /// Whether this is the random stand-in model (no weights given).
    fn is_random(&self) -> bool {
        self.spec().random
    }

    /// How images are turned into pixels for this encoder.
    fn preprocess(&self) -> Preprocess {
        self.spec().pre
    }

    /// Feature vectors for `images`, one forward pass.
    fn embed_images(&self, images: &[DynamicImage]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let pre = self.preprocess();
        let mut px = Vec::new();
        for img in images {
            pre.append_pixels(img, &mut px);
        }
        self.embed_pixels(px, images.len())
    }
}

/// What turns an encoder's output into stored vectors, and the id they are stored under.
#[derive(Debug, Clone)]
pub struct EncoderSpec {
    pre: Preprocess,
    features: FeatureKind,
    l2: bool,
    /// `dinov3-<size>-<sha12>-r<res>-<features>…`: vectors of different weights, input sizes or
    /// feature kinds never share a table.
    model_id: String,
    dim: usize,
    random: bool,
    /// CLS + registers: the tokens before the patches.
    prefix: usize,
    hidden: usize,
}

impl EncoderSpec {
    fn new(cfg: &EmbedConfig, arch: &DinoV3Config, sha256: &str, random: bool) -> Self {
        let d = arch.hidden_size;
        let model_id = format!(
            "dinov3-{}-{}-r{}-{}{}{}",
            cfg.model.name(),
            &sha256[..12.min(sha256.len())],
            cfg.resolution,
            cfg.features.tag(),
            if cfg.l2_normalize { "-l2" } else { "" },
            if cfg.resize == ResizeMode::Letterbox {
                "-lb"
            } else {
                ""
            },
        );
        Self {
            pre: Preprocess {
                height: cfg.resolution,
                width: cfg.resolution,
                mode: cfg.resize,
            },
            features: cfg.features,
            l2: cfg.l2_normalize,
            model_id,
            dim: if cfg.features == FeatureKind::ClsMeanPatch {
                2 * d
            } else {
                d
            },
            random,
            prefix: arch.num_prefix_tokens(),
            hidden: d,
        }
    }

    /// The stored vectors' model id.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The configured features of `n` images from their `last_hidden_state` values
    /// `[n, tokens, hidden]`.
    pub fn features_from_hidden(&self, hidden: &[f32], n: usize) -> Vec<Vec<f32>> {
        let d = self.hidden;
        let t = hidden.len() / (n * d).max(1);
        if t <= self.prefix {
            return Vec::new();
        }
        hidden
            .chunks_exact(t * d)
            .take(n)
            .map(|img| {
                let mean = || {
                    let patches = &img[self.prefix * d..];
                    let count = (t - self.prefix).max(1) as f32;
                    let mut m = vec![0f32; d];
                    for row in patches.chunks_exact(d) {
                        m.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                    }
                    m.iter_mut().for_each(|a| *a /= count);
                    m
                };
                self.pick(&img[..d], mean)
            })
            .collect()
    }

    /// The configured features of `n` images from `[n, 2, hidden]` values: each image's CLS
    /// row then its mean patch row (what a GPU engine reduces to before reading back).
    pub fn features_from_pooled(&self, pooled: &[f32], n: usize) -> Vec<Vec<f32>> {
        let d = self.hidden;
        pooled
            .chunks_exact(2 * d)
            .take(n)
            .map(|img| self.pick(&img[..d], || img[d..].to_vec()))
            .collect()
    }

    /// The configured feature of one image from its CLS row and its mean patch row.
    fn pick(&self, cls: &[f32], mean: impl FnOnce() -> Vec<f32>) -> Vec<f32> {
        let v = match self.features {
            FeatureKind::Cls => cls.to_vec(),
            FeatureKind::MeanPatch => mean(),
            FeatureKind::ClsMeanPatch => [cls.to_vec(), mean()].concat(),
        };
        self.finish(v)
    }

    /// Applies the configured L2 normalisation.
    fn finish(&self, mut v: Vec<f32>) -> Vec<f32> {
        if self.l2 {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if n > 0.0 && n.is_finite() {
                v.iter_mut().for_each(|x| *x /= n);
            }
        }
        v
    }
}

impl<B: Backend> ImageEncoder for Embedder<B>
where
    Embedder<B>: Send + Sync,
{
    fn spec(&self) -> &EncoderSpec {
        &self.spec
    }

    fn embed_pixels(&self, pixels: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (h, w) = (self.spec.pre.height as usize, self.spec.pre.width as usize);
        if n == 0 || pixels.len() != n * 3 * h * w {
            return Err(EmbedError::Engine(format!(
                "{} pixel values for {n} images of 3×{h}×{w}",
                pixels.len()
            )));
        }
        Ok(self.features_of(self.forward_pixels(pixels, n)))
    }
}

/// The encoder as a Burn module on backend `B`: the reference implementation, and the GPU path.
pub struct Embedder<B: Backend> {
    model: DinoV3<B>,
    arch: DinoV3Config,
    spec: EncoderSpec,
    device: B::Device,
}

impl<B: Backend> Embedder<B> {
    /// Loads `weights` (a safetensors file) for `cfg.model`, or a random model when `None`.
    pub fn load(
        cfg: &EmbedConfig,
        weights: Option<&Path>,
        device: &B::Device,
    ) -> Result<Self, EmbedError> {
        Self::load_with(cfg, cfg.model.config(), weights, device)
    }

    /// As [`Embedder::load`] with an explicit architecture (tests use tiny ones).
    pub fn load_with(
        cfg: &EmbedConfig,
        arch: DinoV3Config,
        weights: Option<&Path>,
        device: &B::Device,
    ) -> Result<Self, EmbedError> {
        if cfg.resolution == 0 || !cfg.resolution.is_multiple_of(arch.patch_size as u32) {
            return Err(EmbedError::Resolution(cfg.resolution));
        }
        let (map, random) = match weights {
            Some(p) => (weights::read_safetensors(p)?, false),
            None => (weights::random_weights(&arch, cfg.random_seed), true),
        };
        let model = weights::load::<B>(&arch, &map, device)?;
        let spec = EncoderSpec::new(cfg, &arch, &map.sha256, random);
        Ok(Self {
            model,
            arch,
            spec,
            device: device.clone(),
        })
    }

    /// The encoder itself.
    pub fn model(&self) -> &DinoV3<B> {
        &self.model
    }

    /// The module, its architecture and the output spec (the CPU engine packs the module).
    pub fn into_parts(self) -> (DinoV3<B>, DinoV3Config, EncoderSpec) {
        (self.model, self.arch, self.spec)
    }

    /// Runs the encoder on already-normalised pixels `[n, 3, h, w]` (flattened).
    pub fn forward_pixels(&self, pixels: Vec<f32>, n: usize) -> DinoV3Output<B> {
        let (h, w) = (self.spec.pre.height as usize, self.spec.pre.width as usize);
        let x = Tensor::<B, 4>::from_data(TensorData::new(pixels, [n, 3, h, w]), &self.device);
        self.model.forward(x)
    }

    /// Picks and normalises the configured feature from the encoder output (on the device: only
    /// `[batch, dim]` comes back to the host).
    pub fn features_of(&self, out: DinoV3Output<B>) -> Vec<Vec<f32>> {
        let prefix = self.spec.prefix;
        let [b, t, d] = out.last_hidden_state.dims();
        let mean = || {
            out.last_hidden_state
                .clone()
                .slice([0..b, prefix..t, 0..d])
                .mean_dim(1)
                .reshape([b, d])
        };
        let feats: Tensor<B, 2> = match self.spec.features {
            FeatureKind::Cls => out.pooler_output.clone(),
            FeatureKind::MeanPatch => mean(),
            FeatureKind::ClsMeanPatch => Tensor::cat(vec![out.pooler_output.clone(), mean()], 1),
        };
        let dim = feats.dims()[1];
        let flat: Vec<f32> = feats
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap_or_default();
        flat.chunks(dim.max(1))
            .map(|v| self.spec.finish(v.to_vec()))
            .collect()
    }
}
