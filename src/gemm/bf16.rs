//! bf16 products with f32 accumulation on CPUs with AVX512_BF16 (`vdpbf16ps`: 32 bf16
//! multiply-adds per instruction, twice the f32 FMA rate), for the CPU encoder's optional bf16
//! path.
//!
//! The right-hand matrix (a layer's weights) is converted and packed once, at load: panels of 32
//! columns where each 32-bit lane holds the bf16 pair `(b[2p][j], b[2p+1][j])`, the operand layout
//! of `vdpbf16ps`. The left-hand matrix (activations) is rounded to bf16 pairs per product. The
//! micro-kernel keeps an 8 × 32 tile of f32 accumulators in 16 registers; tasks are
//! (64-row block × 128-column group) tiles of the output on the current rayon pool.
//!
//! Rounding is to nearest even, as PyTorch's `float → bfloat16` conversion.

use rayon::prelude::*;

/// Columns per packed panel (two 16-lane registers).
const NR: usize = 32;
/// Rows per micro-tile.
const MR: usize = 8;
/// Rows per task.
const MC: usize = 64;
/// Panels per task.
const PANELS_PER_TASK: usize = 4;

/// Whether this CPU runs the bf16 kernels.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x` rounded to the nearest bf16 (ties to even); NaN stays NaN.
pub(crate) fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 value of bf16 bits.
#[cfg(test)]
fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | ((to_bf16(hi) as u32) << 16)
}

/// A `[k, n]` row-major matrix in the kernel's layout. Exists only where [`available`] holds, so
/// holding one proves the kernels can run.
pub(crate) struct PackedB {
    k: usize,
    n: usize,
    /// `k / 2` rounded up.
    kp: usize,
    /// `panels × kp × NR` pairs; columns past `n` and the row past an odd `k` are zero.
    data: Vec<u32>,
}

impl PackedB {
    /// Packs `w` (`[k, n]`, row-major); `None` on a CPU without AVX512_BF16.
    pub(crate) fn pack(w: &[f32], k: usize, n: usize) -> Option<Self> {
        if !available() || w.len() != k * n {
            return None;
        }
        let kp = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; panels * kp * NR];
        data.par_chunks_mut(kp * NR)
            .enumerate()
            .for_each(|(pi, panel)| {
                for p in 0..kp {
                    for c in 0..NR {
                        let j = pi * NR + c;
                        if j >= n {
                            break;
                        }
                        let lo = w[2 * p * n + j];
                        let hi = if 2 * p + 1 < k {
                            w[(2 * p + 1) * n + j]
                        } else {
                            0.0
                        };
                        panel[p * NR + c] = pair(lo, hi);
                    }
                }
            });
        Some(Self { k, n, kp, data })
    }
}

/// `out = a · b` (or `out += a · b` with `accumulate`) for `a` row-major `[m, b.k]`, `out`
/// row-major with rows `out_stride` apart. Runs on the current rayon pool when `parallel`.
///
/// # Panics
/// When `a` or `out` is too short for the shape, or `out_stride < b.n`: shapes come from the
/// engine's own layout, so that is a bug, never bad input.
pub(crate) fn matmul(
    out: &mut [f32],
    out_stride: usize,
    a: &[f32],
    m: usize,
    b: &PackedB,
    accumulate: bool,
    parallel: bool,
) {
    let (k, n, kp) = (b.k, b.n, b.kp);
    assert!(a.len() >= m * k, "left matrix too short");
    assert!(out_stride >= n && (m == 0 || out.len() >= (m - 1) * out_stride + n));
    if m == 0 || n == 0 {
        return;
    }
    // The left matrix as bf16 pairs, `[m, kp]`, padded with zero rows to whole micro-tiles so the
    // kernel has one shape.
    let mut ap = vec![0u32; m.div_ceil(MR) * MR * kp];
    ap[..m * kp]
        .par_chunks_mut(kp)
        .enumerate()
        .for_each(|(i, row)| {
            let src = &a[i * k..(i + 1) * k];
            for (p, v) in row.iter_mut().enumerate() {
                *v = pair(src[2 * p], src.get(2 * p + 1).copied().unwrap_or(0.0));
            }
        });
    let panels = n.div_ceil(NR);
    let groups = panels.div_ceil(PANELS_PER_TASK);
    // Tasks own disjoint row blocks of `out`; within one, column groups run in turn.
    let run_block = |(bi, rows): (usize, &mut [f32])| {
        let r0 = bi * MC;
        let mrows = (m - r0).min(MC);
        for g in 0..groups {
            let panels_here = g * PANELS_PER_TASK..((g + 1) * PANELS_PER_TASK).min(panels);
            // Row tiles outside, panels inside: each tile's output rows are written left to right
            // (adjacent lines, which the prefetcher follows), and the group's panels stay in L2.
            for t0 in (0..mrows).step_by(MR) {
                let tr = MR.min(mrows - t0);
                let a_tile = &ap[(r0 + t0) * kp..(r0 + t0 + MR) * kp];
                for pi in panels_here.clone() {
                    let cols = NR.min(n - pi * NR);
                    let panel = &b.data[pi * kp * NR..(pi + 1) * kp * NR];
                    let o = &mut rows[t0 * out_stride + pi * NR..];
                    // SAFETY: `PackedB` exists only where `available()` holds (AVX-512F and
                    // AVX512_BF16, the kernel's target features); the tile reads
                    // `MR` rows of `kp` pairs from `a_tile` and `kp × NR` pairs from `panel`,
                    // and writes `tr` rows of `cols` values `out_stride` apart into `o`, all
                    // inside the slices (checked by the asserts above and the slicing here).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        x86::tile8(a_tile, kp, tr, panel, o, out_stride, cols, accumulate)
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    {
                        let _ = (a_tile, tr, panel, o, cols, accumulate);
                        unreachable!("PackedB is never built off x86-64");
                    }
                }
            }
        }
    };
    // Row blocks of `out`: the last one may be shorter than `MC × out_stride`.
    let block_len = MC * out_stride;
    let used = (m - 1) * out_stride + n;
    let out = &mut out[..used];
    if parallel {
        out.par_chunks_mut(block_len)
            .enumerate()
            .for_each(run_block);
    } else {
        out.chunks_mut(block_len).enumerate().for_each(run_block);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// One micro-tile: `MR` (8) rows of `a` (zero rows past the matrix; the first `tr` are
    /// written) × up to 32 columns, accumulated over `kp` bf16 pairs in 16 named registers (an
    /// array of accumulators spilled to the stack in the dev profile's code).
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile8(
        a: &[u32],
        kp: usize,
        tr: usize,
        panel: &[u32],
        out: &mut [f32],
        out_stride: usize,
        cols: usize,
        accumulate: bool,
    ) {
        debug_assert!(MR == 8 && a.len() >= MR * kp && panel.len() >= kp * NR);
        debug_assert!((1..=MR).contains(&tr) && out.len() >= (tr - 1) * out_stride + cols);
        let z = _mm512_setzero_ps();
        let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21, mut c30, mut c31) =
            (z, z, z, z, z, z, z, z);
        let (mut c40, mut c41, mut c50, mut c51, mut c60, mut c61, mut c70, mut c71) =
            (z, z, z, z, z, z, z, z);
        // Pointers move by `wrapping_add`: the dev profile's overflow and UB checks on indexed
        // arithmetic cost more than the arithmetic in this loop.
        let row = |r: usize| a.as_ptr().wrapping_add(r * kp);
        let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
        let (r4, r5, r6, r7) = (row(4), row(5), row(6), row(7));
        let mut bp = panel.as_ptr();
        for p in 0..kp {
            // SAFETY: kp steps of NR pairs stay inside `panel` (kp × NR long), and row r reads
            // `a[r·kp + p]` for p < kp inside `a` (MR × kp long), as the caller checked.
            unsafe {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.cast()));
                let b1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(bp.wrapping_add(16).cast()));
                macro_rules! step {
                    ($r:expr, $x:ident, $y:ident) => {
                        let av: __m512bh =
                            std::mem::transmute(_mm512_set1_epi32(*$r.wrapping_add(p) as i32));
                        $x = _mm512_dpbf16_ps($x, av, b0);
                        $y = _mm512_dpbf16_ps($y, av, b1);
                    };
                }
                step!(r0, c00, c01);
                step!(r1, c10, c11);
                step!(r2, c20, c21);
                step!(r3, c30, c31);
                step!(r4, c40, c41);
                step!(r5, c50, c51);
                step!(r6, c60, c61);
                step!(r7, c70, c71);
            }
            bp = bp.wrapping_add(NR);
        }
        let acc = [
            [c00, c01],
            [c10, c11],
            [c20, c21],
            [c30, c31],
            [c40, c41],
            [c50, c51],
            [c60, c61],
            [c70, c71],
        ];
        let lanes = |c: usize| -> __mmask16 {
            if c >= 16 {
                0xffff
            } else {
                ((1u32 << c) - 1) as __mmask16
            }
        };
        let masks = [lanes(cols), lanes(cols.saturating_sub(16))];
        let op = out.as_mut_ptr();
        for (r, acc) in acc.iter().enumerate().take(tr) {
            for h in 0..2 {
                if masks[h] == 0 {
                    continue;
                }
                // SAFETY: the unmasked lanes are columns below `cols` of row r, inside `out`.
                unsafe {
                    let dst = op.wrapping_add(r * out_stride + h * 16);
                    let v = if accumulate {
                        _mm512_add_ps(acc[h], _mm512_maskz_loadu_ps(masks[h], dst))
                    } else {
                        acc[h]
                    };
                    _mm512_mask_storeu_ps(dst, masks[h], v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties to the even mantissa (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2⁻⁸ is halfway between 1 + 2⁻⁷ and 1 + 2⁻⁶: ties up to even.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// The product of the bf16-rounded inputs in f64: what the kernel must reproduce up to f32
    /// accumulation order.
    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let r = |x: f32| from_bf16(to_bf16(x)) as f64;
        (0..m * n)
            .map(|e| {
                let (i, j) = (e / n, e % n);
                (0..k)
                    .map(|p| r(a[i * k + p]) * r(b[p * n + j]))
                    .sum::<f64>() as f32
            })
            .collect()
    }

    #[test]
    fn matches_the_rounded_product_on_ragged_shapes_with_and_without_accumulation() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        }
        for &(m, k, n) in &[
            (1, 1, 1),
            (8, 2, 32),
            (13, 37, 45),
            (70, 64, 129),
            (129, 385, 70),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) / 9.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 19) as f32 - 9.0) / 7.0)
                .collect();
            let want = reference(&a, &b, m, k, n);
            let packed = PackedB::pack(&b, k, n).unwrap();
            for parallel in [false, true] {
                // A wider destination: columns past n must stay untouched.
                let stride = n + 3;
                let mut out = vec![0.5f32; m * stride];
                matmul(&mut out, stride, &a, m, &packed, true, parallel);
                for i in 0..m {
                    for j in 0..stride {
                        let got = out[i * stride + j];
                        if j < n {
                            let w = want[i * n + j] + 0.5;
                            assert!(
                                (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                                "{m}×{k}×{n} ({i},{j}): {got} vs {w}"
                            );
                        } else {
                            assert_eq!(got, 0.5, "column {j} past n was written");
                        }
                    }
                }
                let mut fresh = vec![9.0f32; m * n];
                matmul(&mut fresh, n, &a, m, &packed, false, parallel);
                for (g, w) in fresh.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()));
                }
            }
        }
    }
}
