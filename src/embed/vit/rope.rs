//! Axial 2-D rotary position embedding on patch tokens (not stored in the weights: computed).
//!
//! `inv_freq[i] = 1 / θ^(4i/hd)` for `i < hd/4`; patch-centre coordinates `y = 2(r+½)/Hp − 1`,
//! `x = 2(c+½)/Wp − 1`; angles `2π·coord·inv_freq` laid out `[y-freqs | x-freqs]` and tiled twice to
//! `hd`. Prefix tokens (CLS, registers) get the identity rotation (cos 1, sin 0), so the rotation can
//! be applied to the whole sequence in one step.

use burn::prelude::*;

/// `cos` and `sin` tables for a `hp × wp` patch grid, `[tokens, head_dim]`, prefix rows identity.
pub fn rope_tables<B: Backend>(
    hp: usize,
    wp: usize,
    prefix: usize,
    head_dim: usize,
    theta: f64,
    device: &B::Device,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let (cos, sin) = rope_values(hp, wp, prefix, head_dim, theta);
    let shape = [prefix + hp * wp, head_dim];
    (
        Tensor::from_data(TensorData::new(cos, shape), device),
        Tensor::from_data(TensorData::new(sin, shape), device),
    )
}

/// The tables of [`rope_tables`] as row-major `[tokens, head_dim]` values (the CPU engine uses
/// them directly).
pub fn rope_values(
    hp: usize,
    wp: usize,
    prefix: usize,
    head_dim: usize,
    theta: f64,
) -> (Vec<f32>, Vec<f32>) {
    let quarter = head_dim / 4;
    let inv_freq: Vec<f64> = (0..quarter)
        .map(|i| 1.0 / theta.powf(4.0 * i as f64 / head_dim as f64))
        .collect();
    let tokens = prefix + hp * wp;
    let mut cos = vec![1f32; tokens * head_dim];
    let mut sin = vec![0f32; tokens * head_dim];
    for r in 0..hp {
        for c in 0..wp {
            let y = 2.0 * (r as f64 + 0.5) / hp as f64 - 1.0;
            let x = 2.0 * (c as f64 + 0.5) / wp as f64 - 1.0;
            let row = (prefix + r * wp + c) * head_dim;
            // [y-freqs | x-freqs], then the same again.
            for (k, f) in inv_freq.iter().enumerate() {
                let (ay, ax) = (
                    2.0 * std::f64::consts::PI * y * f,
                    2.0 * std::f64::consts::PI * x * f,
                );
                cos[row + k] = ay.cos() as f32;
                sin[row + k] = ay.sin() as f32;
                cos[row + quarter + k] = ax.cos() as f32;
                sin[row + quarter + k] = ax.sin() as f32;
            }
            let half = 2 * quarter;
            cos.copy_within(row..row + half, row + half);
            sin.copy_within(row..row + half, row + half);
        }
    }
    (cos, sin)
}

/// `[−x₂, x₁]` over the last dimension.
pub fn rotate_half<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, t, d] = x.dims();
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..d / 2]);
    let x2 = x.slice([0..b, 0..h, 0..t, d / 2..d]);
    Tensor::cat(vec![x2.neg(), x1], 3)
}

/// `x·cos + rotate_half(x)·sin`.
///
/// # Shapes
/// - x: `[batch, heads, tokens, head_dim]`
/// - cos, sin: `[tokens, head_dim]`
pub fn apply_rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
) -> Tensor<B, 4> {
    let cos = cos.unsqueeze::<4>();
    let sin = sin.unsqueeze::<4>();
    x.clone() * cos + rotate_half(x) * sin
}
