//! Multi-head self-attention with separate q/k/v/o projections and RoPE on q and k.

use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::rope::apply_rope;
use super::{DinoV3Config, linear_tokens};

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub(crate) q_proj: Linear<B>,
    pub(crate) k_proj: Linear<B>,
    pub(crate) v_proj: Linear<B>,
    pub(crate) o_proj: Linear<B>,
    pub(crate) num_heads: usize,
}

impl<B: Backend> Attention<B> {
    pub fn init(c: &DinoV3Config, device: &B::Device) -> Self {
        let d = c.hidden_size;
        let lin = |bias: bool| {
            LinearConfig::new(d, d)
                .with_bias(bias)
                .with_initializer(Initializer::Zeros)
                .init(device)
        };
        Self {
            q_proj: lin(c.query_bias),
            k_proj: lin(c.key_bias),
            v_proj: lin(c.value_bias),
            o_proj: lin(c.proj_bias),
            num_heads: c.num_attention_heads,
        }
    }

    /// # Shapes
    /// - x: `[batch, tokens, hidden]`
    /// - cos, sin: `[tokens, head_dim]`
    /// - output: `[batch, tokens, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>, cos: Tensor<B, 2>, sin: Tensor<B, 2>) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let (h, hd) = (self.num_heads, d / self.num_heads);
        // [b, t, d] → [b, t, h, hd] → [b, h, t, hd]
        let heads = |y: Tensor<B, 3>| y.reshape([b, t, h, hd]).swap_dims(1, 2);
        let q = heads(linear_tokens(&self.q_proj, x.clone()));
        let k = heads(linear_tokens(&self.k_proj, x.clone()));
        let v = heads(linear_tokens(&self.v_proj, x));
        let q = apply_rope(q, cos.clone(), sin.clone());
        let k = apply_rope(k, cos, sin);
        // softmax(q kᵀ / √hd) v, fused where the backend has a kernel for it.
        let o = attention(q, k, v, None, None, AttentionModuleOptions::default()); // [b, h, t, hd]
        let o = o.swap_dims(1, 2).reshape([b, t, d]);
        linear_tokens(&self.o_proj, o)
    }
}
