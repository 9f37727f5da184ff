//! Element-wise kernels of the CPU engine: LayerNorm, GELU (erf), SiLU, softmax, RoPE, bias adds.
//!
//! Each is a plain loop the compiler vectorises; [`multiversion!`] compiles it for AVX-512, for
//! AVX2+FMA and for the baseline target and picks the best the CPU has at run time, so one binary
//! runs everywhere and is fast where it can be. Reductions keep 16 partial sums (the vectoriser
//! will not reorder a single float sum), and `exp` is a branch-free polynomial (libm's scalar call
//! would stop vectorisation).

use crate::embed::Activation;

/// Instruction sets the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512,
    Avx2Fma,
    Baseline,
}

impl Isa {
    /// The best one this CPU runs (the detection is cached by std).
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512vl") && has!("avx512dq") {
                return Isa::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Baseline
    }

    /// Every variant this CPU can run, best first (tests hold each to the reference).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Self> {
        let all = [Isa::Avx512, Isa::Avx2Fma, Isa::Baseline];
        let best = all.iter().position(|&i| i == Isa::detect()).unwrap_or(2);
        all[best..].to_vec()
    }
}

/// Defines `NAME(args)`, running `body` compiled for the best instruction set of this CPU, and
/// `NAME_ON(isa, args)` for a chosen one (never one the CPU lacks: that falls back to baseline).
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident / $on:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            $on(Isa::detect(), $($arg),*)
        }

        /// As the function above, compiled for `isa`.
        $vis fn $on(isa: Isa, $($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                fn v4($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) {
                    body($($arg),*)
                }
                let best = Isa::detect();
                if isa == Isa::Avx512 && best == Isa::Avx512 {
                    // SAFETY: the CPU has every feature `v4` was compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if isa == Isa::Avx2Fma && best != Isa::Baseline {
                    // SAFETY: as above, for `v3` (every AVX-512 CPU here also has AVX2 + FMA).
                    return unsafe { v3($($arg),*) };
                }
            }
            let _ = isa;
            body($($arg),*)
        }
    };
}

const LANES: usize = 16;

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[inline(always)]
fn sum_sq_dev(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += (v - mean) * (v - mean);
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.max(*v);
        }
    }
    let m = acc.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    chunks.remainder().iter().fold(m, |m, v| m.max(*v))
}

/// `eˣ`, relative error < 2·10⁻⁷ over the f32 range: `x = n·ln2 + r`, `|r| ≤ ln2/2`, a degree-7
/// Taylor polynomial for `eʳ`, `2ⁿ` built in the exponent bits. Inputs are clamped to
/// [−87.3, 88.0] (so the result is a normal float or, below, tends to 0 like `eˣ` does).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so `n·LN2_HI` is exact (Cody–Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer without a branch.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n ∈ [−126, 127], so the biased exponent n + 127 is in [1, 254]: a normal float.
    let scale = f32::from_bits(((n + 127.0) as u32) << 23);
    p * scale
}

/// `erf(x)` by Abramowitz & Stegun 7.1.26 (error 1.5·10⁻⁷), under 10⁻⁶ after f32 rounding.
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

multiversion! {
    /// LayerNorm of every row of `x` (rows of `gamma.len()`) into `out` (biased variance, as
    /// PyTorch).
    pub(crate) fn layer_norm / layer_norm_on(x: &[f32], out: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let d = gamma.len();
        for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let mean = sum(row) / d as f32;
            let inv = 1.0 / (sum_sq_dev(row, mean) / d as f32 + eps).sqrt();
            for (((o, v), g), b) in o.iter_mut().zip(row).zip(gamma).zip(beta) {
                *o = (v - mean) * inv * g + b;
            }
        }
    }
}

multiversion! {
    /// `x ← act(x)` in place.
    pub(crate) fn activate / activate_on(x: &mut [f32], act: Activation) {
        match act {
            Activation::Gelu => x.iter_mut().for_each(|v| *v = gelu(*v)),
            Activation::Silu => x.iter_mut().for_each(|v| *v = silu(*v)),
        }
    }
}

multiversion! {
    /// Gated MLP: rows of `h` are `[gate | up]` (2 × `width`); rows of `out` get `act(gate) · up`.
    pub(crate) fn gated / gated_on(h: &[f32], out: &mut [f32], width: usize, act: Activation) {
        for (row, o) in h.chunks_exact(2 * width).zip(out.chunks_exact_mut(width)) {
            let (gate, up) = row.split_at(width);
            match act {
                Activation::Gelu => {
                    for ((o, g), u) in o.iter_mut().zip(gate).zip(up) {
                        *o = gelu(*g) * u;
                    }
                }
                Activation::Silu => {
                    for ((o, g), u) in o.iter_mut().zip(gate).zip(up) {
                        *o = silu(*g) * u;
                    }
                }
            }
        }
    }
}

multiversion! {
    /// Softmax of every row (`cols` wide) in place.
    pub(crate) fn softmax_rows / softmax_rows_on(s: &mut [f32], cols: usize) {
        for row in s.chunks_exact_mut(cols) {
            let m = max(row);
            row.iter_mut().for_each(|v| *v = exp(*v - m));
            let inv = 1.0 / sum(row);
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
}

multiversion! {
    /// Adds `bias` to every row of `x`.
    pub(crate) fn add_rows / add_rows_on(x: &mut [f32], bias: &[f32]) {
        for row in x.chunks_exact_mut(bias.len()) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

multiversion! {
    /// Rotary embedding of every `head_dim` segment of `x` with one token's `cos`/`sin` rows:
    /// `x·cos + [−x₂, x₁]·sin`.
    pub(crate) fn rope / rope_on(x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let hd = cos.len();
        let half = hd / 2;
        let (c1, c2) = cos.split_at(half);
        let (s1, s2) = sin.split_at(half);
        for seg in x.chunks_exact_mut(hd) {
            let (x1, x2) = seg.split_at_mut(half);
            for (((((a, b), c1), c2), s1), s2) in
                x1.iter_mut().zip(x2.iter_mut()).zip(c1).zip(c2).zip(s1).zip(s2)
            {
                let (u, v) = (*a, *b);
                *a = u * c1 - v * s1;
                *b = v * c2 + u * s2;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_libm() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -20_000..=20_000 {
            let x = i as f32 * 4.4e-3; // −88 … 88
            let want = (x as f64).exp();
            if want > 1e-37 && want < 1e38 {
                worst_exp = worst_exp.max(((exp(x) as f64 - want) / want).abs());
            }
            let y = i as f32 * 3e-4; // −6 … 6
            worst_erf = worst_erf.max((erf(y) as f64 - libm_erf(y as f64)).abs());
        }
        assert!(worst_exp < 4e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 1e-6, "erf absolute error {worst_erf}");
        assert!((0.0..2e-38).contains(&exp(-1000.0)));
        assert!(exp(1000.0).is_finite());
    }

    /// erf by its Taylor series (small |x|) or continued fraction (large |x|), in f64.
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let v = if a < 2.5 {
            let (mut term, mut s, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -a * a / n;
                s += term / (2.0 * n + 1.0);
            }
            s * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(a) = e^{−a²}/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + …))))
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
        };
        v.copysign(x)
    }

    #[test]
    fn layer_norm_softmax_and_activations_match_their_definitions_on_every_isa() {
        let d = 37;
        let x: Vec<f32> = (0..3 * d)
            .map(|i| ((i * 17 % 23) as f32 - 11.0) / 3.0)
            .collect();
        let gamma: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 / d as f32).collect();
        let beta: Vec<f32> = (0..d).map(|i| i as f32 * 0.01).collect();
        let isas = Isa::available();
        assert_eq!(isas.last(), Some(&Isa::Baseline));
        for isa in isas {
            let mut out = vec![0f32; 3 * d];
            layer_norm_on(isa, &x, &mut out, &gamma, &beta, 1e-5);
            for (row, o) in x.chunks(d).zip(out.chunks(d)) {
                let m = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
                let var = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / d as f64;
                for i in 0..d {
                    let want = (row[i] as f64 - m) / (var + 1e-5).sqrt() * gamma[i] as f64
                        + beta[i] as f64;
                    assert!((o[i] as f64 - want).abs() < 1e-5, "{isa:?}");
                }
            }
            let mut s = x.clone();
            softmax_rows_on(isa, &mut s, d);
            for (row, p) in x.chunks(d).zip(s.chunks(d)) {
                let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
                for i in 0..d {
                    assert!(
                        (p[i] as f64 - (row[i] as f64).exp() / z).abs() < 1e-6,
                        "{isa:?}"
                    );
                }
            }
            let mut g = x.clone();
            activate_on(isa, &mut g, Activation::Gelu);
            let mut si = x.clone();
            activate_on(isa, &mut si, Activation::Silu);
            for i in 0..x.len() {
                let v = x[i] as f64;
                let gelu = 0.5 * v * (1.0 + libm_erf(v / 2f64.sqrt()));
                assert!((g[i] as f64 - gelu).abs() < 1e-6, "{isa:?}");
                assert!(
                    (si[i] as f64 - v / (1.0 + (-v).exp())).abs() < 1e-6,
                    "{isa:?}"
                );
            }
            let mut o = vec![0f32; d];
            gated_on(isa, &x[..2 * d], &mut o, d, Activation::Silu);
            assert!((o[3] - si[3] * x[d + 3]).abs() < 1e-6, "{isa:?}");
            let mut b = x.clone();
            add_rows_on(isa, &mut b, &beta);
            assert!((b[d + 5] - x[d + 5] - beta[5]).abs() < 1e-7, "{isa:?}");
        }
    }

    #[test]
    fn rope_rotates_pairs_half_a_head_apart() {
        let hd = 8;
        let cos: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.3).cos()).collect();
        let sin: Vec<f32> = (0..hd).map(|i| (i as f32 * 0.3).sin()).collect();
        let x: Vec<f32> = (0..2 * hd).map(|i| i as f32 - 4.0).collect();
        for isa in Isa::available() {
            let mut y = x.clone();
            rope_on(isa, &mut y, &cos, &sin);
            for seg in 0..2 {
                let (xs, ys) = (&x[seg * hd..][..hd], &y[seg * hd..][..hd]);
                for j in 0..hd {
                    let rot = if j < hd / 2 {
                        -xs[j + hd / 2]
                    } else {
                        xs[j - hd / 2]
                    };
                    assert!((ys[j] - (xs[j] * cos[j] + rot * sin[j])).abs() < 1e-6);
                }
            }
        }
    }
}
