//! The classification head: standardised DINOv3 features → (hidden layers) → one logit.
//!
//! Weights are initialised from our own seeded generator (not the backend's global RNG) and dropout
//! masks come from the same generator, so a seed gives the same head on every run and in parallel
//! tests. The input standardisation (training-set mean and std per feature) is part of the head, so
//! the served model needs nothing but its safetensors file.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::gelu;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Shape of the head (`[train.head]` in the TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadConfig {
    /// Hidden layer widths; empty = a linear head (logistic regression on the features).
    pub hidden: Vec<usize>,
    /// Dropout probability after each hidden layer, training only.
    pub dropout: f64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            hidden: vec![256],
            dropout: 0.2,
        }
    }
}

/// One fully connected layer, `y = x W + b` with `W: [d_in, d_out]`.
#[derive(Module, Debug)]
pub struct Dense<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> Dense<B> {
    /// Uniform(±1/√d_in) weights (the usual fan-in initialisation), zero bias.
    fn init(d_in: usize, d_out: usize, rng: &mut ChaCha8Rng, device: &B::Device) -> Self {
        let bound = 1.0 / (d_in as f32).sqrt();
        let w: Vec<f32> = (0..d_in * d_out)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        Self::from_values(&w, &vec![0.0; d_out], d_in, d_out, device)
    }

    /// Builds a layer from row-major `[d_in, d_out]` weights and `[d_out]` bias.
    pub fn from_values(
        w: &[f32],
        b: &[f32],
        d_in: usize,
        d_out: usize,
        device: &B::Device,
    ) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::from_data(
                TensorData::new(w.to_vec(), [d_in, d_out]),
                device,
            )),
            bias: Param::from_tensor(Tensor::from_data(
                TensorData::new(b.to_vec(), [d_out]),
                device,
            )),
        }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.weight.val()) + self.bias.val().unsqueeze_dim(0)
    }
}

/// The head. `mean`/`std` standardise the input and are not trained.
#[derive(Module, Debug)]
pub struct Head<B: Backend> {
    pub mean: Param<Tensor<B, 1>>,
    pub inv_std: Param<Tensor<B, 1>>,
    pub hidden: Vec<Dense<B>>,
    pub out: Dense<B>,
}

/// Dropout masks for one training step, drawn on the host from the run's generator.
pub struct DropoutMasks<B: Backend> {
    masks: Vec<Tensor<B, 2>>,
}

impl<B: Backend> DropoutMasks<B> {
    /// Inverted-dropout masks (kept units scaled by 1/(1−p)) for a batch of `rows`.
    pub fn draw(
        cfg: &HeadConfig,
        rows: usize,
        rng: &mut ChaCha8Rng,
        device: &B::Device,
    ) -> Option<Self> {
        if cfg.dropout <= 0.0 || cfg.hidden.is_empty() {
            return None;
        }
        let keep = 1.0 - cfg.dropout;
        let scale = (1.0 / keep) as f32;
        let masks = cfg
            .hidden
            .iter()
            .map(|&w| {
                let m: Vec<f32> = (0..rows * w)
                    .map(|_| if rng.random_bool(keep) { scale } else { 0.0 })
                    .collect();
                Tensor::from_data(TensorData::new(m, [rows, w]), device)
            })
            .collect();
        Some(Self { masks })
    }
}

impl<B: Backend> Head<B> {
    /// A freshly initialised head for `dim` features standardised with `mean`/`std`.
    pub fn init(
        cfg: &HeadConfig,
        mean: &[f32],
        std: &[f32],
        rng: &mut ChaCha8Rng,
        device: &B::Device,
    ) -> Self {
        let dim = mean.len();
        let mut d_in = dim;
        let mut hidden = Vec::with_capacity(cfg.hidden.len());
        for &w in &cfg.hidden {
            hidden.push(Dense::init(d_in, w, rng, device));
            d_in = w;
        }
        let out = Dense::init(d_in, 1, rng, device);
        let inv: Vec<f32> = std.iter().map(|s| 1.0 / s.max(1e-6)).collect();
        Self {
            mean: Param::from_tensor(Tensor::from_data(
                TensorData::new(mean.to_vec(), [dim]),
                device,
            ))
            .set_require_grad(false),
            inv_std: Param::from_tensor(Tensor::from_data(TensorData::new(inv, [dim]), device))
                .set_require_grad(false),
            hidden,
            out,
        }
    }

    /// Input width.
    pub fn dim(&self) -> usize {
        self.mean.dims()[0]
    }

    /// Logits.
    ///
    /// # Shapes
    /// - `x`: `[batch, dim]` raw features → `[batch]`.
    pub fn forward(&self, x: Tensor<B, 2>, dropout: Option<&DropoutMasks<B>>) -> Tensor<B, 1> {
        // [batch, dim] standardised
        let mut h = (x - self.mean.val().unsqueeze_dim(0)) * self.inv_std.val().unsqueeze_dim(0);
        for (i, layer) in self.hidden.iter().enumerate() {
            // [batch, width_i]
            h = gelu(layer.forward(h));
            if let Some(m) = dropout {
                h = h * m.masks[i].clone();
            }
        }
        // [batch, 1] → [batch]
        self.out.forward(h).squeeze_dim(1)
    }
}

/// Per-feature mean and standard deviation of row-major `x` (`n × dim`), in f64 for stability.
pub fn feature_stats(x: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (x.len() / dim.max(1)).max(1);
    let mut sum = vec![0f64; dim];
    let mut sq = vec![0f64; dim];
    for row in x.chunks_exact(dim) {
        for (j, &v) in row.iter().enumerate() {
            sum[j] += v as f64;
            sq[j] += (v as f64) * (v as f64);
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(s, m)| ((s / n as f64 - m * m).max(0.0).sqrt()) as f32)
        .collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}
