//! DINOv3 ViT as transformers' `DINOv3ViTModel` computes it, generic over the Burn backend.

mod attention;
mod block;
mod config;
mod mlp;
mod patch_embed;
pub(crate) mod rope;

use burn::nn::{LayerNorm, LayerNormConfig};
use burn::prelude::*;

pub use block::Block;
pub use config::{Activation, DinoV3Config, DinoV3Size};
pub use patch_embed::Embeddings;

/// A linear layer on `[batch, tokens, d]` as one `[batch·tokens, d]` GEMM: one large matrix product
/// (which a BLAS spreads over every core) instead of `batch` small ones.
pub(crate) fn linear_tokens<B: Backend>(
    lin: &burn::nn::Linear<B>,
    x: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let [b, t, d] = x.dims();
    let y = lin.forward(x.reshape([b * t, d]));
    let o = y.dims()[1];
    y.reshape([b, t, o])
}

/// The encoder's outputs.
#[derive(Debug, Clone)]
pub struct DinoV3Output<B: Backend> {
    /// `[batch, 1 + registers + patches, hidden]`, after the final norm.
    pub last_hidden_state: Tensor<B, 3>,
    /// `[batch, hidden]`: the normed CLS token.
    pub pooler_output: Tensor<B, 2>,
}

#[derive(Module, Debug)]
pub struct DinoV3<B: Backend> {
    pub(crate) embeddings: Embeddings<B>,
    pub(crate) layers: Vec<Block<B>>,
    pub(crate) norm: LayerNorm<B>,
    pub(crate) num_prefix_tokens: usize,
    pub(crate) head_dim: usize,
    pub(crate) rope_theta: f64,
}

impl DinoV3Config {
    /// A model with placeholder parameters (zeros/ones and burn's default init); real values come
    /// from [`crate::embed::weights`].
    pub fn init<B: Backend>(&self, device: &B::Device) -> DinoV3<B> {
        DinoV3 {
            embeddings: Embeddings::init(self, device),
            layers: (0..self.num_hidden_layers)
                .map(|_| Block::init(self, device))
                .collect(),
            norm: LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            num_prefix_tokens: self.num_prefix_tokens(),
            head_dim: self.head_dim(),
            rope_theta: self.rope_theta,
        }
    }
}

impl<B: Backend> DinoV3<B> {
    /// # Shapes
    /// - pixels: `[batch, 3, height, width]`, normalised; height and width multiples of 16
    pub fn forward(&self, pixels: Tensor<B, 4>) -> DinoV3Output<B> {
        let [_, _, h, w] = pixels.dims();
        let p = self.embeddings.patch_size;
        let device = pixels.device();
        let (cos, sin) = rope::rope_tables::<B>(
            h / p,
            w / p,
            self.num_prefix_tokens,
            self.head_dim,
            self.rope_theta,
            &device,
        );
        let mut x = self.embeddings.forward(pixels); // [b, t, d]
        for layer in &self.layers {
            x = layer.forward(x, cos.clone(), sin.clone());
        }
        let x = self.norm.forward(x);
        let [b, _, d] = x.dims();
        let pooler_output = x.clone().slice([0..b, 0..1, 0..d]).reshape([b, d]);
        DinoV3Output {
            last_hidden_state: x,
            pooler_output,
        }
    }

    /// Tokens before the patch tokens (CLS + registers).
    pub fn num_prefix_tokens(&self) -> usize {
        self.num_prefix_tokens
    }
}
