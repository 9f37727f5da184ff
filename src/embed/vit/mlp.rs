//! The feed-forward part of a block: plain `down(act(up x))` or gated `down(act(gate x) · up x)`.

use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, silu};

use super::{Activation, DinoV3Config, linear_tokens};

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub(crate) up_proj: Linear<B>,
    pub(crate) down_proj: Linear<B>,
    /// Present in gated (SwiGLU) models only.
    pub(crate) gate_proj: Option<Linear<B>>,
    pub(crate) act: Activation,
}

impl<B: Backend> Mlp<B> {
    pub fn init(c: &DinoV3Config, device: &B::Device) -> Self {
        let (d, i) = (c.hidden_size, c.intermediate_size);
        let lin = |a, b| {
            LinearConfig::new(a, b)
                .with_bias(c.mlp_bias)
                .with_initializer(Initializer::Zeros)
                .init(device)
        };
        Self {
            up_proj: lin(d, i),
            down_proj: lin(i, d),
            gate_proj: c.use_gated_mlp.then(|| lin(d, i)),
            act: c.hidden_act,
        }
    }

    fn act(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        match self.act {
            Activation::Gelu => gelu(x),
            Activation::Silu => silu(x),
        }
    }

    /// # Shapes
    /// - x, output: `[batch, tokens, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = match &self.gate_proj {
            None => self.act(linear_tokens(&self.up_proj, x)),
            Some(gate) => {
                self.act(linear_tokens(gate, x.clone())) * linear_tokens(&self.up_proj, x)
            }
        };
        linear_tokens(&self.down_proj, hidden)
    }
}
