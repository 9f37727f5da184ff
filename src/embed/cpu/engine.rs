//! The DINOv3 forward pass on the CPU over packed parameters of a loaded [`DinoV3`] module.
//!
//! Same arithmetic as the Burn module (and transformers), arranged for two cores: one GEMM per
//! linear layer over every token of the batch (q, k and v fused into one), bias written into the
//! output before the product and LayerScale folded into the weights so the residual add happens
//! inside the GEMM, the 1/√d attention scale folded into the query weights, attention per
//! (image, head) in parallel, and every element-wise step a vectorised pass over row blocks.

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::kernels;
pub use crate::backend::CPU_BF16_UNSUPPORTED as BF16_UNSUPPORTED;
use crate::backend::Precision;
use crate::embed::vit::rope::rope_values;
use crate::embed::{Cpu, DinoV3, DinoV3Config, EmbedError};
use crate::gemm::bf16::{self, PackedB};
use crate::gemm::{View, matmul};

/// A linear layer as `y = x·w + b` with `w` row-major `[k, n]` (the layout the GEMM streams
/// fastest, and Burn's own).
struct Dense {
    /// Empty once packed to bf16.
    w: Vec<f32>,
    b: Vec<f32>,
    k: usize,
    n: usize,
    /// The weights for the bf16 kernels, on the bf16 path.
    bf16: Option<PackedB>,
}

impl Dense {
    /// `out = x·w + b` for `rows` rows.
    fn forward(&self, x: &[f32], rows: usize, out: &mut [f32], threads: usize) {
        let out = &mut out[..rows * self.n];
        out.par_chunks_mut(self.n * 64).for_each(|c| {
            c.chunks_exact_mut(self.n)
                .for_each(|r| r.copy_from_slice(&self.b))
        });
        self.product(x, rows, out, threads);
    }

    /// `out += x·w + b`: the residual connection.
    fn forward_add(&self, x: &[f32], rows: usize, out: &mut [f32], threads: usize) {
        let out = &mut out[..rows * self.n];
        out.par_chunks_mut(self.n * 64)
            .for_each(|c| kernels::add_rows(c, &self.b));
        self.product(x, rows, out, threads);
    }

    fn product(&self, x: &[f32], rows: usize, out: &mut [f32], threads: usize) {
        if let Some(p) = &self.bf16 {
            return bf16::matmul(out, self.n, x, rows, p, true, threads > 1);
        }
        matmul(
            out,
            self.n,
            View::dense(x, rows, self.k),
            View::dense(&self.w, self.k, self.n),
            true,
            threads,
        );
    }
}

use crate::embed::packed::{self, Norm, Shape};

impl Dense {
    fn from_linear(l: packed::Linear) -> Self {
        Dense {
            w: l.w,
            b: l.b,
            k: l.k,
            n: l.n,
            bf16: None,
        }
    }

    /// Moves the weights to the bf16 kernels' layout (the f32 copy is dropped).
    fn into_bf16(mut self) -> Result<Self, EmbedError> {
        let p = PackedB::pack(&self.w, self.k, self.n)
            .ok_or_else(|| EmbedError::Unsupported(BF16_UNSUPPORTED.into()))?;
        self.w = Vec::new();
        self.bf16 = Some(p);
        Ok(self)
    }
}

struct PackedBlock {
    norm1: Norm,
    /// `[d, 3d]`: q (pre-scaled by 1/√head_dim) | k | v.
    qkv: Dense,
    /// `[d, d]`, LayerScale 1 folded in.
    o: Dense,
    norm2: Norm,
    /// `[d, i]`, or `[d, 2i]` = gate | up for gated MLPs.
    up: Dense,
    /// `[i, d]`, LayerScale 2 folded in.
    down: Dense,
}

/// DINOv3 packed for the CPU, with its own thread pool.
pub struct CpuVit {
    shape: Shape,
    patch_embed: Dense,
    /// CLS then the register tokens, `[prefix, d]`.
    prefix_tokens: Vec<f32>,
    blocks: Vec<PackedBlock>,
    norm: Norm,
    threads: usize,
    pool: rayon::ThreadPool,
    /// RoPE `cos`/`sin` of the last patch grid seen (an encoder sees one input size).
    rope: Mutex<Option<Arc<RopeTables>>>,
}

/// `cos` and `sin`, `[patches, head_dim]`, of one `hp × wp` grid.
struct RopeTables {
    grid: (usize, usize),
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Rows per parallel task: about four tasks per thread, never below 16 rows.
fn rows_per_task(rows: usize, threads: usize) -> usize {
    rows.div_ceil(4 * threads.max(1)).max(16)
}

impl CpuVit {
    /// Packs `model` (architecture `arch`) to run on `threads` threads (0: one per core). The
    /// module is consumed layer by layer, so packing needs about one layer of extra memory, not a
    /// second copy of the model.
    pub fn pack(
        model: DinoV3<Cpu>,
        arch: &DinoV3Config,
        threads: usize,
    ) -> Result<Self, EmbedError> {
        Self::pack_as(model, arch, threads, Precision::F32)
    }

    /// Whether this CPU runs the bf16 path (AVX-512 with AVX512_BF16).
    pub fn bf16_supported() -> bool {
        bf16::available()
    }

    /// As [`CpuVit::pack`] at `precision`: with bf16, every linear layer's product runs on the
    /// AVX512_BF16 kernels (bf16 inputs, f32 accumulation); LayerNorm, softmax, RoPE, GELU and
    /// the attention products stay f32. An error on a CPU without AVX512_BF16.
    pub fn pack_as(
        model: DinoV3<Cpu>,
        arch: &DinoV3Config,
        threads: usize,
        precision: Precision,
    ) -> Result<Self, EmbedError> {
        let low = precision == Precision::Bf16;
        if low && !bf16::available() {
            return Err(EmbedError::Unsupported(BF16_UNSUPPORTED.into()));
        }
        let cast = |d: Dense| if low { d.into_bf16() } else { Ok(d) };
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("roadwork-cpu-{i}"))
            .build()
            .map_err(|e| EmbedError::Engine(format!("starting {threads} threads: {e}")))?;
        let v = packed::Vit::from_model(model, arch)?;
        let blocks = v
            .blocks
            .into_iter()
            .map(|b| {
                Ok(PackedBlock {
                    norm1: b.norm1,
                    qkv: cast(Dense::from_linear(b.qkv))?,
                    o: cast(Dense::from_linear(b.o))?,
                    norm2: b.norm2,
                    up: cast(Dense::from_linear(b.up))?,
                    down: cast(Dense::from_linear(b.down))?,
                })
            })
            .collect::<Result<Vec<_>, EmbedError>>()?;
        Ok(Self {
            shape: v.shape,
            patch_embed: Dense::from_linear(v.patch_embed),
            prefix_tokens: v.prefix_tokens,
            blocks,
            norm: v.norm,
            threads,
            pool,
            rope: Mutex::new(None),
        })
    }

    /// `last_hidden_state`, `[n, tokens, hidden]` row-major, for normalised pixels `[n, C, h, w]`.
    pub fn forward(
        &self,
        pixels: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, EmbedError> {
        packed::check_input(&self.shape, pixels.len(), n, h, w)?;
        Ok(self.pool.install(|| self.run(pixels, n, h, w)))
    }

    fn run(&self, pixels: &[f32], n: usize, h: usize, w: usize) -> Vec<f32> {
        let (d, th, prefix) = (self.shape.d, self.threads, self.shape.prefix);
        let (hp, wp) = (h / self.shape.patch, w / self.shape.patch);
        let t = prefix + hp * wp;
        let rows = n * t;
        let rpt = rows_per_task(rows, th);

        let mut x = self.embed_patches(pixels, n, h, w);
        let hd = self.shape.head_dim();
        let rope = self.rope_tables(hp, wp, hd);
        let (cos, sin) = (&rope.cos, &rope.sin);
        let mid = self.shape.mid();
        let mut y = vec![0f32; rows * d];
        let mut qkv = vec![0f32; rows * 3 * d];
        let mut heads = vec![0f32; rows * d];
        let mut hidden = vec![0f32; rows * mid];
        let mut gated = vec![
            0f32;
            if self.shape.gated {
                rows * self.shape.inter
            } else {
                0
            }
        ];
        for b in &self.blocks {
            self.layer_norm(&x, &mut y, &b.norm1, rpt);
            b.qkv.forward(&y, rows, &mut qkv, th);
            self.rope(&mut qkv, t, cos, sin);
            self.attention(&qkv, n, t, &mut heads);
            self.merge_heads(&heads, t, &mut y);
            b.o.forward_add(&y, rows, &mut x, th);
            self.layer_norm(&x, &mut y, &b.norm2, rpt);
            b.up.forward(&y, rows, &mut hidden, th);
            let act = self.shape.act;
            let input = if self.shape.gated {
                let inter = self.shape.inter;
                gated
                    .par_chunks_mut(rpt * inter)
                    .zip(hidden.par_chunks(rpt * mid))
                    .for_each(|(o, h)| kernels::gated(h, o, inter, act));
                &gated
            } else {
                hidden
                    .par_chunks_mut(rpt * mid)
                    .for_each(|c| kernels::activate(c, act));
                &hidden
            };
            b.down.forward_add(input, rows, &mut x, th);
        }
        self.layer_norm(&x, &mut y, &self.norm, rpt);
        y
    }

    /// The RoPE tables of a `hp × wp` grid, computed once per grid size.
    fn rope_tables(&self, hp: usize, wp: usize, hd: usize) -> Arc<RopeTables> {
        let make = || {
            let (cos, sin) = rope_values(hp, wp, 0, hd, self.shape.rope_theta);
            Arc::new(RopeTables {
                grid: (hp, wp),
                cos,
                sin,
            })
        };
        let Ok(mut slot) = self.rope.lock() else {
            return make();
        };
        match slot.as_ref() {
            Some(t) if t.grid == (hp, wp) => t.clone(),
            _ => {
                let t = make();
                *slot = Some(t.clone());
                t
            }
        }
    }

    /// `[n·tokens, d]`: CLS, registers, then the patch projections of each image.
    fn embed_patches(&self, pixels: &[f32], n: usize, h: usize, w: usize) -> Vec<f32> {
        let (p, c, d, prefix) = (
            self.shape.patch,
            self.shape.channels,
            self.shape.d,
            self.shape.prefix,
        );
        let (hp, wp) = (h / p, w / p);
        let (np, k) = (hp * wp, c * p * p);
        // [n, C, h, w] → [n, hp·wp, C·p·p]: the conv's receptive fields as rows.
        let mut patches = vec![0f32; n * np * k];
        patches
            .par_chunks_mut(np * k)
            .zip(pixels.par_chunks(c * h * w))
            .for_each(|(out, img)| {
                for (idx, row) in out.chunks_exact_mut(k).enumerate() {
                    let (py, px) = (idx / wp, idx % wp);
                    for ch in 0..c {
                        for ky in 0..p {
                            let src = ch * h * w + (py * p + ky) * w + px * p;
                            row[(ch * p + ky) * p..][..p].copy_from_slice(&img[src..src + p]);
                        }
                    }
                }
            });
        let t = prefix + np;
        let mut x = vec![0f32; n * t * d];
        for (xb, pb) in x.chunks_exact_mut(t * d).zip(patches.chunks_exact(np * k)) {
            xb[..prefix * d].copy_from_slice(&self.prefix_tokens);
            self.patch_embed
                .forward(pb, np, &mut xb[prefix * d..], self.threads);
        }
        x
    }

    fn layer_norm(&self, x: &[f32], out: &mut [f32], n: &Norm, rpt: usize) {
        let (d, eps) = (self.shape.d, self.shape.eps);
        out.par_chunks_mut(rpt * d)
            .zip(x.par_chunks(rpt * d))
            .for_each(|(o, x)| kernels::layer_norm(x, o, &n.gamma, &n.beta, eps));
    }

    /// Rotates q and k of every patch token (prefix tokens keep theirs).
    fn rope(&self, qkv: &mut [f32], t: usize, cos: &[f32], sin: &[f32]) {
        let (d, prefix) = (self.shape.d, self.shape.prefix);
        let hd = self.shape.head_dim();
        qkv.par_chunks_mut(t * 3 * d).for_each(|img| {
            for (i, row) in img.chunks_exact_mut(3 * d).enumerate().skip(prefix) {
                let j = (i - prefix) * hd;
                kernels::rope(&mut row[..2 * d], &cos[j..j + hd], &sin[j..j + hd]);
            }
        });
    }

    /// `softmax(q·kᵀ)·v` for every (image, head) in parallel into `out` = `[n, heads, t, hd]`.
    fn attention(&self, qkv: &[f32], n: usize, t: usize, out: &mut [f32]) {
        let (d, heads) = (self.shape.d, self.shape.heads);
        let hd = d / heads;
        out[..n * t * d]
            .par_chunks_mut(t * hd)
            .enumerate()
            .for_each_init(
                || vec![0f32; t * t],
                |s, (task, o)| {
                    let (img, head) = (task / heads, task % heads);
                    let at = |part: usize| {
                        View::rows(&qkv[img * t * 3 * d + part * d + head * hd..], t, hd, 3 * d)
                    };
                    matmul(s, t, at(0), at(1).t(), false, 1);
                    kernels::softmax_rows(s, t);
                    matmul(o, hd, View::dense(s, t, t), at(2), false, 1);
                },
            );
    }

    /// `[n, heads, t, hd]` → `[n·t, d]`.
    fn merge_heads(&self, heads: &[f32], t: usize, out: &mut [f32]) {
        let (d, nh) = (self.shape.d, self.shape.heads);
        let hd = d / nh;
        out.par_chunks_mut(t * d)
            .zip(heads.par_chunks(t * d))
            .for_each(|(o, src)| {
                for (tok, row) in o.chunks_exact_mut(d).enumerate() {
                    for (head, seg) in row.chunks_exact_mut(hd).enumerate() {
                        seg.copy_from_slice(&src[(head * t + tok) * hd..][..hd]);
                    }
                }
            });
    }
}
