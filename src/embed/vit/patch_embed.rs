//! Patch embedding plus the CLS and register tokens: `[CLS, registers…, patches (row-major)]`.
//! There is no learned position embedding in DINOv3 (RoPE carries position).

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;

use super::DinoV3Config;

/// The 16×16 patch convolution (stride 16) is computed as a matmul over flattened patches: the same
/// arithmetic as the convolution, one GEMM instead of an im2col.
#[derive(Module, Debug)]
pub struct Embeddings<B: Backend> {
    /// `[C·P·P, hidden]`: the conv kernel `[hidden, C, P, P]` flattened and transposed.
    pub(crate) patch: Linear<B>,
    /// `[1, 1, hidden]`.
    pub(crate) cls_token: Param<Tensor<B, 3>>,
    /// `[1, registers, hidden]`.
    pub(crate) register_tokens: Param<Tensor<B, 3>>,
    /// `[1, 1, hidden]`; used only for masked-image training, loaded for completeness.
    pub(crate) mask_token: Param<Tensor<B, 3>>,
    pub(crate) patch_size: usize,
}

impl<B: Backend> Embeddings<B> {
    pub fn init(c: &DinoV3Config, device: &B::Device) -> Self {
        let k = c.num_channels * c.patch_size * c.patch_size;
        Self {
            patch: LinearConfig::new(k, c.hidden_size)
                .with_initializer(Initializer::Zeros)
                .init(device),
            cls_token: Param::from_tensor(Tensor::zeros([1, 1, c.hidden_size], device)),
            register_tokens: Param::from_tensor(Tensor::zeros(
                [1, c.num_register_tokens, c.hidden_size],
                device,
            )),
            mask_token: Param::from_tensor(Tensor::zeros([1, 1, c.hidden_size], device)),
            patch_size: c.patch_size,
        }
    }

    /// # Shapes
    /// - pixels: `[batch, channels, height, width]` (height, width multiples of the patch size)
    /// - output: `[batch, 1 + registers + (height/P)·(width/P), hidden]`
    pub fn forward(&self, pixels: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, ch, h, w] = pixels.dims();
        let p = self.patch_size;
        let (hp, wp) = (h / p, w / p);
        // [b, ch, hp, p, wp, p] → [b, hp, wp, ch, p, p] → [b, hp·wp, ch·p·p]
        let patches = pixels
            .reshape([b, ch, hp, p, wp, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b, hp * wp, ch * p * p]);
        let tokens = super::linear_tokens(&self.patch, patches); // [b, n, hidden]
        let d = tokens.dims()[2];
        let r = self.register_tokens.dims()[1];
        let cls = self.cls_token.val().expand([b, 1, d]);
        let regs = self.register_tokens.val().expand([b, r, d]);
        Tensor::cat(vec![cls, regs, tokens], 1)
    }
}
