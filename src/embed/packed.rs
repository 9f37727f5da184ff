//! DINOv3 taken apart into plain f32 buffers, arranged for a fused forward pass: q, k and v as
//! one layer, the 1/√head_dim attention scale folded into the query weights, LayerScale folded into
//! the output projections (so the residual add is the GEMM's accumulate), gate | up side by side.
//!
//! Both hand-written engines start here: the CPU engine packs these buffers for its kernels, the
//! CUDA engine uploads them. One place decides how a Burn [`DinoV3`] maps to the fused layout, so
//! the two engines cannot drift apart.

use burn::prelude::*;

use crate::embed::{Activation, Cpu, DinoV3, DinoV3Config, EmbedError};

/// A linear layer as `y = x·w + b` with `w` row-major `[k, n]` (Burn's own layout).
pub(crate) struct Linear {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub k: usize,
    pub n: usize,
}

impl Linear {
    #[cfg(feature = "cuda")]
    /// `w` transposed to `[n, k]` (PyTorch's layout; what a column-major BLAS reads as "Aᵀ").
    pub fn transposed(&self) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        let mut t = vec![0f32; k * n];
        for (r, row) in self.w.chunks_exact(n).enumerate() {
            for (c, v) in row.iter().enumerate() {
                t[c * k + r] = *v;
            }
        }
        t
    }
}

pub(crate) struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

pub(crate) struct Block {
    pub norm1: Norm,
    /// `[d, 3d]`: q (pre-scaled by 1/√head_dim) | k | v.
    pub qkv: Linear,
    /// `[d, d]`, LayerScale 1 folded in.
    pub o: Linear,
    pub norm2: Norm,
    /// `[d, i]`, or `[d, 2i]` = gate | up for gated MLPs.
    pub up: Linear,
    /// `[i, d]`, LayerScale 2 folded in.
    pub down: Linear,
}

/// The architecture numbers a forward pass needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub d: usize,
    pub heads: usize,
    pub inter: usize,
    pub patch: usize,
    pub channels: usize,
    /// CLS + registers.
    pub prefix: usize,
    pub gated: bool,
    pub act: Activation,
    pub eps: f32,
    pub rope_theta: f64,
}

impl Shape {
    pub fn head_dim(&self) -> usize {
        self.d / self.heads
    }

    /// Width of the MLP's first product (gate | up for gated MLPs).
    pub fn mid(&self) -> usize {
        if self.gated {
            2 * self.inter
        } else {
            self.inter
        }
    }
}

/// A whole model in the fused layout.
pub(crate) struct Vit {
    pub shape: Shape,
    pub patch_embed: Linear,
    /// CLS then the register tokens, `[prefix, d]`.
    pub prefix_tokens: Vec<f32>,
    pub blocks: Vec<Block>,
    pub norm: Norm,
}

fn values<const D: usize>(t: Tensor<Cpu, D>) -> Result<Vec<f32>, EmbedError> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| EmbedError::Engine(format!("reading a parameter: {e:?}")))
}

/// Takes the layer apart (its parameters are moved, not copied, where nothing else holds them),
/// scaling output column `j` of weights and bias by `col_scale[j]`.
fn linear(lin: burn::nn::Linear<Cpu>, col_scale: Option<&[f32]>) -> Result<Linear, EmbedError> {
    let [k, n] = lin.weight.dims();
    let mut w = values(lin.weight.into_value())?;
    let mut b = match lin.bias {
        Some(b) => values(b.into_value())?,
        None => vec![0.0; n],
    };
    if let Some(s) = col_scale {
        w.chunks_exact_mut(n)
            .for_each(|r| r.iter_mut().zip(s).for_each(|(v, s)| *v *= s));
        b.iter_mut().zip(s).for_each(|(v, s)| *v *= s);
    }
    Ok(Linear { w, b, k, n })
}

/// Side-by-side concatenation `[k, n₁ + n₂ + …]` of layers with the same input.
fn concat(parts: Vec<Linear>) -> Linear {
    let k = parts.first().map_or(0, |p| p.k);
    let n: usize = parts.iter().map(|p| p.n).sum();
    let mut w = Vec::with_capacity(k * n);
    for r in 0..k {
        for p in &parts {
            w.extend_from_slice(&p.w[r * p.n..(r + 1) * p.n]);
        }
    }
    let b = parts.iter().flat_map(|p| p.b.iter().copied()).collect();
    Linear { w, b, k, n }
}

fn norm(n: burn::nn::LayerNorm<Cpu>) -> Result<Norm, EmbedError> {
    let gamma = values(n.gamma.into_value())?;
    let beta = match n.beta {
        Some(b) => values(b.into_value())?,
        None => vec![0.0; gamma.len()],
    };
    Ok(Norm { gamma, beta })
}

impl Vit {
    /// Takes `model` (architecture `arch`) apart layer by layer, so this needs about one layer of
    /// extra memory, not a second copy of the model.
    pub fn from_model(model: DinoV3<Cpu>, arch: &DinoV3Config) -> Result<Self, EmbedError> {
        let scale = 1.0 / (arch.head_dim() as f32).sqrt();
        let d = arch.hidden_size;
        let q_scale = vec![scale; d];
        let DinoV3 {
            embeddings,
            layers,
            norm: final_norm,
            ..
        } = model;
        let blocks = layers
            .into_iter()
            .map(|l| {
                let a = l.attention;
                let ls1 = values(l.layer_scale1.into_value())?;
                let ls2 = values(l.layer_scale2.into_value())?;
                let up = match l.mlp.gate_proj {
                    Some(g) => concat(vec![linear(g, None)?, linear(l.mlp.up_proj, None)?]),
                    None => linear(l.mlp.up_proj, None)?,
                };
                Ok(Block {
                    norm1: norm(l.norm1)?,
                    qkv: concat(vec![
                        linear(a.q_proj, Some(&q_scale))?,
                        linear(a.k_proj, None)?,
                        linear(a.v_proj, None)?,
                    ]),
                    o: linear(a.o_proj, Some(&ls1))?,
                    norm2: norm(l.norm2)?,
                    up,
                    down: linear(l.mlp.down_proj, Some(&ls2))?,
                })
            })
            .collect::<Result<Vec<_>, EmbedError>>()?;
        let mut prefix_tokens = values(embeddings.cls_token.into_value())?;
        prefix_tokens.extend(values(embeddings.register_tokens.into_value())?);
        Ok(Self {
            shape: Shape {
                d,
                heads: arch.num_attention_heads,
                inter: arch.intermediate_size,
                patch: arch.patch_size,
                channels: arch.num_channels,
                prefix: arch.num_prefix_tokens(),
                gated: arch.use_gated_mlp,
                act: arch.hidden_act,
                eps: arch.layer_norm_eps as f32,
                rope_theta: arch.rope_theta,
            },
            patch_embed: linear(embeddings.patch, None)?,
            prefix_tokens,
            blocks,
            norm: norm(final_norm)?,
        })
    }
}

/// Checks `n` images of `h × w` against `pixels.len()` for a model of `shape`: the same rule for
/// every engine.
pub(crate) fn check_input(
    shape: &Shape,
    pixels: usize,
    n: usize,
    h: usize,
    w: usize,
) -> Result<(), EmbedError> {
    let p = shape.patch;
    if n == 0 || h == 0 || w == 0 || !h.is_multiple_of(p) || !w.is_multiple_of(p) {
        return Err(EmbedError::Engine(format!(
            "{n} images of {h}×{w}: need at least one image, sides positive multiples of {p}"
        )));
    }
    if pixels != n * shape.channels * h * w {
        return Err(EmbedError::Engine(format!(
            "{pixels} pixel values for {n}×{}×{h}×{w}",
            shape.channels
        )));
    }
    Ok(())
}
