//! One pre-norm transformer block with LayerScale:
//! `h += ls1 · attn(norm1 h)`, `h += ls2 · mlp(norm2 h)`.

use burn::module::Param;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::prelude::*;

use super::DinoV3Config;
use super::attention::Attention;
use super::mlp::Mlp;

#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub(crate) norm1: LayerNorm<B>,
    pub(crate) attention: Attention<B>,
    /// LayerScale `lambda1`, `[hidden]`.
    pub(crate) layer_scale1: Param<Tensor<B, 1>>,
    pub(crate) norm2: LayerNorm<B>,
    pub(crate) mlp: Mlp<B>,
    pub(crate) layer_scale2: Param<Tensor<B, 1>>,
}

impl<B: Backend> Block<B> {
    pub fn init(c: &DinoV3Config, device: &B::Device) -> Self {
        let norm = || {
            LayerNormConfig::new(c.hidden_size)
                .with_epsilon(c.layer_norm_eps)
                .init(device)
        };
        Self {
            norm1: norm(),
            attention: Attention::init(c, device),
            layer_scale1: Param::from_tensor(Tensor::ones([c.hidden_size], device)),
            norm2: norm(),
            mlp: Mlp::init(c, device),
            layer_scale2: Param::from_tensor(Tensor::ones([c.hidden_size], device)),
        }
    }

    /// # Shapes
    /// - x, output: `[batch, tokens, hidden]`; cos, sin: `[tokens, head_dim]`
    pub fn forward(&self, x: Tensor<B, 3>, cos: Tensor<B, 2>, sin: Tensor<B, 2>) -> Tensor<B, 3> {
        let a = self
            .attention
            .forward(self.norm1.forward(x.clone()), cos, sin);
        let x = x + a * self.layer_scale1.val().unsqueeze::<3>();
        let m = self.mlp.forward(self.norm2.forward(x.clone()));
        x + m * self.layer_scale2.val().unsqueeze::<3>()
    }
}
