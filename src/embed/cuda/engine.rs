//! The DINOv3 forward pass on one NVIDIA GPU over the fused layout of [`packed::Vit`].
//!
//! Per block: LayerNorm (f32 residual stream in, GEMM input type out) → one q|k|v GEMM with its
//! bias in the epilogue → one attention kernel (RoPE applied to q and k as they are loaded, the
//! prefix tokens left unrotated; flash-style on tensor cores in bf16) → the output projection with
//! LayerScale folded into its weights, accumulated onto the residual stream by the GEMM (β = 1)
//! → LayerNorm → the MLP's first GEMM (bias and, in bf16, GELU in the epilogue) → the second GEMM
//! accumulated onto the residual stream. The final LayerNorm and the pooling (CLS | mean patch)
//! run on the GPU, so a batch reads back `2·d` floats per image, not every token.
//!
//! Every buffer of a batch shape is allocated once and the whole forward is captured into a CUDA
//! graph on first use: later calls of that shape are one upload, one graph launch and one download.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaModule, CudaStream, LaunchConfig, PinnedHostSlice,
};

use crate::backend::Precision;
use crate::embed::packed::{self, Shape};
use crate::embed::vit::rope::rope_values;
use crate::embed::{Activation, Cpu, DinoV3, DinoV3Config, EmbedError};
use crate::gpu::lt::{Dt, Epilogue, Lt, Plan, Shape as GemmShape};
use crate::gpu::{self, Buf, CudaError, Dev, drv, elementwise, launch};

const SOURCE: &str = include_str!("kernels.cu");

/// Head sizes the attention kernels are built for.
const HEAD_DIMS: [usize; 3] = [16, 32, 64];

/// A linear layer on the device: weights `[n, k]` in the GEMM input type, bias in `bias_dt`.
struct Linear {
    w: Buf,
    b: Buf,
    k: usize,
    n: usize,
}

impl Linear {
    fn upload(
        stream: &Arc<CudaStream>,
        l: &packed::Linear,
        input: Dt,
        bias: Dt,
    ) -> Result<Self, CudaError> {
        Ok(Self {
            w: Buf::upload(stream, &l.transposed(), input)?,
            b: Buf::upload(stream, &l.b, bias)?,
            k: l.k,
            n: l.n,
        })
    }
}

struct Norm {
    gamma: Buf,
    beta: Buf,
}

impl Norm {
    fn upload(stream: &Arc<CudaStream>, n: &packed::Norm) -> Result<Self, CudaError> {
        Ok(Self {
            gamma: Buf::upload(stream, &n.gamma, Dt::F32)?,
            beta: Buf::upload(stream, &n.beta, Dt::F32)?,
        })
    }
}

struct Block {
    norm1: Norm,
    qkv: Linear,
    o: Linear,
    norm2: Norm,
    up: Linear,
    down: Linear,
}

/// The compiled kernels, picked for one precision, head size and width.
pub(super) struct Kernels {
    _module: Arc<CudaModule>,
    pub(super) im2col: CudaFunction,
    pub(super) assemble: CudaFunction,
    pub(super) layer_norm: CudaFunction,
    pub(super) layer_norm_f32: CudaFunction,
    pub(super) activate: CudaFunction,
    pub(super) gated: CudaFunction,
    pub(super) pool: CudaFunction,
    pub(super) attention: CudaFunction,
    /// Queries per attention block (and threads per block).
    pub(super) attention_rows: usize,
    pub(super) attention_threads: usize,
}

/// LayerNorm kernel width: values per lane of the warp that holds one row.
fn ln_width(d: usize) -> Result<usize, CudaError> {
    [8, 16, 32, 64]
        .into_iter()
        .find(|w| w * 32 >= d)
        .ok_or_else(|| CudaError(format!("hidden size {d} above the LayerNorm kernel's 2048")))
}

impl Kernels {
    pub(super) fn load(
        ctx: &Arc<CudaContext>,
        precision: Precision,
        hd: usize,
        d: usize,
    ) -> Result<Self, CudaError> {
        let ptx = compile(Some(gpu::capability(ctx)?))?;
        let module = ctx.load_module(ptx).map_err(drv("loading the kernels"))?;
        let t = match precision {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        };
        let f = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| CudaError(format!("kernel {name}: {e}")))
        };
        let w = ln_width(d)?;
        let (attention_rows, attention_threads) = match precision {
            Precision::F32 => (64, 64),
            Precision::Bf16 => (64, 128),
        };
        Ok(Self {
            im2col: f(&format!("im2col_{t}"))?,
            assemble: f("assemble")?,
            layer_norm: f(&format!("layer_norm_{t}_w{w}"))?,
            layer_norm_f32: f(&format!("layer_norm_f32_w{w}"))?,
            activate: f(&format!("activate_{t}"))?,
            gated: f(&format!("gated_{t}"))?,
            pool: f("pool")?,
            attention: f(&format!("attention_{t}_hd{hd}"))?,
            attention_rows,
            attention_threads,
            _module: module,
        })
    }
}

/// Compiles the encoder's kernels to PTX for compute capability `cc` (or NVRTC's default).
pub(crate) fn compile(cc: Option<(i32, i32)>) -> Result<cudarc::nvrtc::Ptx, CudaError> {
    gpu::compile(SOURCE, cc)
}

/// The buffers, GEMM plans and graph of one batch shape.
struct Batch {
    n: usize,
    h: usize,
    w: usize,
    t: usize,
    /// Normalised pixels, uploaded from `staging`.
    px: Dev<f32>,
    staging: PinnedHostSlice<f32>,
    patches: Buf,
    patch_out: Buf,
    /// The residual stream, f32 `[n·t, d]`.
    x: Buf,
    /// LayerNorm output, GEMM input type.
    y: Buf,
    qkv: Buf,
    heads: Buf,
    hidden: Buf,
    gated: Buf,
    /// Final LayerNorm output, f32 `[n·t, d]`.
    last: Dev<f32>,
    pooled: Dev<f32>,
    pooled_host: PinnedHostSlice<f32>,
    cos: Buf,
    sin: Buf,
    plans: Plans,
    graph: Option<Graph>,
}

/// A captured forward pass. cudarc leaves graphs `!Send` (CUDA does not synchronise access to
/// one); the engine only touches a graph under its batch lock, one thread at a time.
struct Graph(CudaGraph);

unsafe impl Send for Graph {}

struct Plans {
    patch: Plan,
    qkv: Plan,
    o: Plan,
    up: Plan,
    down: Plan,
}

/// What a forward pass hands back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// `[n, 2, d]`: each image's CLS row, then its mean patch row (final LayerNorm applied).
    Pooled,
    /// `last_hidden_state`, `[n, t, d]`.
    Hidden,
}

/// DINOv3 on one GPU.
pub struct CudaVit {
    shape: Shape,
    precision: Precision,
    /// GELU in the first MLP GEMM's epilogue (cuBLASLt's tanh form) instead of the exact erf
    /// GELU kernel after it: off by default, since transformers' DINOv3 uses the erf form.
    fuse_gelu: bool,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    lt: Lt,
    kernels: Kernels,
    patch_embed: Linear,
    prefix_tokens: Buf,
    blocks: Vec<Block>,
    norm: Norm,
    /// One forward at a time: buffers and graphs are per batch shape and reused.
    batches: Mutex<HashMap<(usize, usize, usize), Batch>>,
    /// Whether to capture graphs (off only to measure what they save).
    graphs: bool,
}

impl CudaVit {
    /// Packs `model` onto GPU `ordinal` at `precision`: f32 (exact f32 products) or bf16 (bf16
    /// weights and activations, f32 accumulation, f32 residual stream and LayerNorm statistics).
    pub fn pack(
        model: DinoV3<Cpu>,
        arch: &DinoV3Config,
        ordinal: usize,
        precision: Precision,
    ) -> Result<Self, EmbedError> {
        let v = packed::Vit::from_model(model, arch)?;
        Ok(Self::upload(&v, ordinal, precision)?)
    }

    fn upload(v: &packed::Vit, ordinal: usize, precision: Precision) -> Result<Self, CudaError> {
        let sh = v.shape;
        let hd = sh.head_dim();
        if !HEAD_DIMS.contains(&hd) || !sh.d.is_multiple_of(sh.heads) {
            return Err(CudaError(format!(
                "head size {hd}: the CUDA engine's attention is built for {HEAD_DIMS:?}"
            )));
        }
        let (ctx, stream) = gpu::open(ordinal)?;
        let kernels = Kernels::load(&ctx, precision, hd, sh.d)?;
        let lt = Lt::new(&stream)?;
        let input = match precision {
            Precision::F32 => Dt::F32,
            Precision::Bf16 => Dt::Bf16,
        };
        let lin = |l: &packed::Linear, bias| Linear::upload(&stream, l, input, bias);
        let blocks = v
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    norm1: Norm::upload(&stream, &b.norm1)?,
                    qkv: lin(&b.qkv, input)?,
                    o: lin(&b.o, Dt::F32)?,
                    norm2: Norm::upload(&stream, &b.norm2)?,
                    up: lin(&b.up, input)?,
                    down: lin(&b.down, Dt::F32)?,
                })
            })
            .collect::<Result<Vec<_>, CudaError>>()?;
        Ok(Self {
            shape: sh,
            precision,
            fuse_gelu: false,
            patch_embed: lin(&v.patch_embed, Dt::F32)?,
            prefix_tokens: Buf::upload(&stream, &v.prefix_tokens, Dt::F32)?,
            blocks,
            norm: Norm::upload(&stream, &v.norm)?,
            kernels,
            lt,
            stream,
            ctx,
            batches: Mutex::new(HashMap::new()),
            graphs: true,
        })
    }

    /// The GPU's name, for reports.
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    /// Runs the MLP's GELU in the first GEMM's epilogue (cuBLASLt's tanh approximation: one
    /// pass over the hidden activations less, a small systematic difference from transformers'
    /// erf GELU). Only for plain GELU MLPs; a no-op for gated ones. Drops cached batch plans.
    pub fn with_fused_gelu(mut self) -> Self {
        self.fuse_gelu = !self.shape.gated && self.shape.act == Activation::Gelu;
        if let Ok(b) = self.batches.get_mut() {
            b.clear();
        }
        self
    }

    /// Turns graph capture off (each forward enqueues every launch): for measuring graphs.
    pub fn without_graphs(mut self) -> Self {
        self.graphs = false;
        self
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// `[n, 2, d]` (CLS | mean patch, final LayerNorm applied) for normalised pixels `[n, C, h, w]`.
    pub fn pooled(
        &self,
        pixels: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, EmbedError> {
        self.forward(pixels, n, h, w, Output::Pooled)
    }

    /// `last_hidden_state`, `[n, t, d]`, for normalised pixels `[n, C, h, w]`.
    pub fn hidden_states(
        &self,
        pixels: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, EmbedError> {
        self.forward(pixels, n, h, w, Output::Hidden)
    }

    fn forward(
        &self,
        pixels: &[f32],
        n: usize,
        h: usize,
        w: usize,
        out: Output,
    ) -> Result<Vec<f32>, EmbedError> {
        packed::check_input(&self.shape, pixels.len(), n, h, w)?;
        // cuBLASLt runs on whatever context the calling thread has current.
        self.ctx
            .bind_to_thread()
            .map_err(drv("binding the GPU to this thread"))?;
        let mut batches = self
            .batches
            .lock()
            .map_err(|_| CudaError("an earlier forward pass panicked".into()))?;
        let key = (n, h, w);
        let b = match batches.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.batch(n, h, w)?),
        };
        Ok(self.run(b, pixels, out)?)
    }

    /// Times the forward pass of `n` images of `h × w` as PyTorch's timers do: inputs already on
    /// the GPU, CUDA events around `iters` passes (after two warm-ups that also capture the
    /// graph). Returns the median milliseconds per pass.
    pub fn time_forward(
        &self,
        pixels: &[f32],
        n: usize,
        h: usize,
        w: usize,
        iters: usize,
    ) -> Result<f64, EmbedError> {
        self.forward(pixels, n, h, w, Output::Pooled)?;
        self.forward(pixels, n, h, w, Output::Pooled)?;
        let mut batches = self
            .batches
            .lock()
            .map_err(|_| CudaError("an earlier forward pass panicked".into()))?;
        let Some(b) = batches.get_mut(&(n, h, w)) else {
            return Err(CudaError("batch buffers vanished".into()).into());
        };
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let s = &self.stream;
        let mut ms = Vec::with_capacity(iters.max(1));
        for _ in 0..iters.max(1) {
            let start = s.record_event(timing).map_err(drv("recording an event"))?;
            match &b.graph {
                Some(g) => g.0.launch().map_err(drv("launching the graph"))?,
                None => self.enqueue(b)?,
            }
            let end = s.record_event(timing).map_err(drv("recording an event"))?;
            end.synchronize().map_err(drv("forward pass"))?;
            ms.push(start.elapsed_ms(&end).map_err(drv("reading an event"))? as f64);
        }
        ms.sort_by(f64::total_cmp);
        Ok(ms[ms.len() / 2])
    }

    fn batch(&self, n: usize, h: usize, w: usize) -> Result<Batch, CudaError> {
        let sh = &self.shape;
        let s = &self.stream;
        let (hp, wp) = (h / sh.patch, w / sh.patch);
        let np = hp * wp;
        let t = sh.prefix + np;
        let rows = n * t;
        let (d, mid, inter) = (sh.d, sh.mid(), sh.inter);
        let kp = sh.channels * sh.patch * sh.patch;
        let a = match self.precision {
            Precision::F32 => Dt::F32,
            Precision::Bf16 => Dt::Bf16,
        };
        let e = a.bytes();
        let (cos, sin) = rope_values(hp, wp, 0, sh.head_dim(), sh.rope_theta);
        let pinned =
            |len: usize| unsafe { self.ctx.alloc_pinned::<f32>(len) }.map_err(drv("pinned memory"));
        let gemm = |rows, n, k, input, output, epilogue, accumulate| {
            self.lt.plan(GemmShape {
                rows,
                n,
                k,
                input,
                output,
                epilogue,
                accumulate,
            })
        };
        let up_epi = if self.fuse_gelu {
            Epilogue::GeluBias
        } else {
            Epilogue::Bias
        };
        let plans = Plans {
            patch: gemm(n * np, d, kp, a, Dt::F32, Epilogue::Bias, false)?,
            qkv: gemm(rows, 3 * d, d, a, a, Epilogue::Bias, false)?,
            o: gemm(rows, d, d, a, Dt::F32, Epilogue::Bias, true)?,
            up: gemm(rows, mid, d, a, a, up_epi, false)?,
            down: gemm(rows, d, inter, a, Dt::F32, Epilogue::Bias, true)?,
        };
        Ok(Batch {
            n,
            h,
            w,
            t,
            px: Dev::zeros(s, n * sh.channels * h * w)?,
            staging: pinned(n * sh.channels * h * w)?,
            patches: Buf::zeros(s, n * np * kp * e)?,
            patch_out: Buf::zeros(s, n * np * d * 4)?,
            x: Buf::zeros(s, rows * d * 4)?,
            y: Buf::zeros(s, rows * d * e)?,
            qkv: Buf::zeros(s, rows * 3 * d * e)?,
            heads: Buf::zeros(s, rows * d * e)?,
            hidden: Buf::zeros(s, rows * mid * e)?,
            gated: Buf::zeros(s, if sh.gated { rows * inter * e } else { 0 })?,
            last: Dev::zeros(s, rows * d)?,
            pooled: Dev::zeros(s, n * 2 * d)?,
            pooled_host: pinned(n * 2 * d)?,
            cos: Buf::upload(s, &cos, Dt::F32)?,
            sin: Buf::upload(s, &sin, Dt::F32)?,
            plans,
            graph: None,
        })
    }

    fn run(&self, b: &mut Batch, pixels: &[f32], out: Output) -> Result<Vec<f32>, CudaError> {
        let s = &self.stream;
        b.staging
            .as_mut_slice()
            .map_err(drv("pinned memory"))?
            .copy_from_slice(pixels);
        s.memcpy_htod(&b.staging, &mut b.px.mem)
            .map_err(drv("uploading pixels"))?;
        if self.graphs && b.graph.is_none() {
            // The first pass runs eagerly (errors surface with their launch), then is captured.
            self.enqueue(b)?;
            s.synchronize().map_err(drv("forward pass"))?;
            s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .map_err(drv("starting graph capture"))?;
            let captured = self.enqueue(b);
            let graph = s.end_capture(CUgraphInstantiate_flags(0));
            captured?;
            b.graph = graph.map_err(drv("instantiating the graph"))?.map(Graph);
        } else if let Some(g) = &b.graph {
            g.0.launch().map_err(drv("launching the graph"))?;
        } else {
            self.enqueue(b)?;
        }
        let values = match out {
            Output::Pooled => {
                s.memcpy_dtoh(&b.pooled.mem, &mut b.pooled_host)
                    .map_err(drv("reading back"))?;
                s.synchronize().map_err(drv("forward pass"))?;
                b.pooled_host
                    .as_slice()
                    .map_err(drv("pinned memory"))?
                    .to_vec()
            }
            Output::Hidden => {
                let mut host = vec![0f32; b.last.mem.len()];
                s.memcpy_dtoh(&b.last.mem, &mut host)
                    .map_err(drv("reading back"))?;
                s.synchronize().map_err(drv("forward pass"))?;
                host
            }
        };
        if values.iter().any(|v| !v.is_finite()) {
            return Err(CudaError(
                "the forward pass produced a non-finite value".into(),
            ));
        }
        Ok(values)
    }

    /// Every launch of one forward pass, in order, on the engine's stream.
    fn enqueue(&self, b: &Batch) -> Result<(), CudaError> {
        let sh = &self.shape;
        let k = &self.kernels;
        let (n, t) = (b.n, b.t);
        let np = t - sh.prefix;
        let rows = n * t;
        let (d, inter) = (sh.d, sh.inter);
        let (h, w) = (b.h, b.w);
        let (ni, ci, hi, wi, pi) = (
            n as i32,
            sh.channels as i32,
            h as i32,
            w as i32,
            sh.patch as i32,
        );
        let total = (n * np * sh.channels * sh.patch * sh.patch) as u64;
        launch!(
            self.stream,
            &k.im2col,
            elementwise(total),
            &b.px.ptr,
            &b.patches.ptr,
            &ni,
            &ci,
            &hi,
            &wi,
            &pi
        )?;
        self.gemm(
            &b.plans.patch,
            &self.patch_embed,
            b.patches.ptr,
            b.patch_out.ptr,
        )?;
        let (npi, prefix, di) = (np as i32, sh.prefix as i32, d as i32);
        launch!(
            self.stream,
            &k.assemble,
            elementwise((rows * d) as u64),
            &b.patch_out.ptr,
            &self.prefix_tokens.ptr,
            &b.x.ptr,
            &ni,
            &npi,
            &prefix,
            &di
        )?;
        let heads = sh.heads as u32;
        let ti = t as i32;
        let attention = LaunchConfig {
            grid_dim: (t.div_ceil(k.attention_rows) as u32, heads, n as u32),
            block_dim: (k.attention_threads as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        for blk in &self.blocks {
            self.layer_norm(&k.layer_norm, b.x.ptr, &blk.norm1, b.y.ptr, rows)?;
            self.gemm(&b.plans.qkv, &blk.qkv, b.y.ptr, b.qkv.ptr)?;
            launch!(
                self.stream,
                &k.attention,
                attention,
                &b.qkv.ptr,
                &b.cos.ptr,
                &b.sin.ptr,
                &b.heads.ptr,
                &ti,
                &di,
                &prefix
            )?;
            self.gemm(&b.plans.o, &blk.o, b.heads.ptr, b.x.ptr)?;
            self.layer_norm(&k.layer_norm, b.x.ptr, &blk.norm2, b.y.ptr, rows)?;
            self.gemm(&b.plans.up, &blk.up, b.y.ptr, b.hidden.ptr)?;
            let kind: i32 = match sh.act {
                Activation::Gelu => 0,
                Activation::Silu => 1,
            };
            let down_in = if sh.gated {
                let (r, ii) = (rows as i64, inter as i32);
                launch!(
                    self.stream,
                    &k.gated,
                    elementwise((rows * inter) as u64),
                    &b.hidden.ptr,
                    &b.gated.ptr,
                    &r,
                    &ii,
                    &kind
                )?;
                b.gated.ptr
            } else {
                if !self.fuse_gelu {
                    let count = (rows * inter) as i64;
                    launch!(
                        self.stream,
                        &k.activate,
                        elementwise(count as u64),
                        &b.hidden.ptr,
                        &count,
                        &kind
                    )?;
                }
                b.hidden.ptr
            };
            debug_assert_eq!(blk.down.k, inter);
            debug_assert_eq!(blk.up.n, sh.mid());
            debug_assert_eq!(blk.qkv.n, 3 * d);
            debug_assert_eq!(blk.o.k, d);
            self.gemm(&b.plans.down, &blk.down, down_in, b.x.ptr)?;
        }
        self.layer_norm(&k.layer_norm_f32, b.x.ptr, &self.norm, b.last.ptr, rows)?;
        let pool = LaunchConfig {
            grid_dim: (n as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self.stream,
            &k.pool,
            pool,
            &b.last.ptr,
            &b.pooled.ptr,
            &ti,
            &prefix,
            &di
        )?;
        Ok(())
    }

    /// `out (+)= x·wᵀ + b` for layer `l` with plan `p`.
    fn gemm(&self, p: &Plan, l: &Linear, x: u64, out: u64) -> Result<(), CudaError> {
        self.lt.run(p, x, l.w.ptr, l.b.ptr, out)
    }

    fn layer_norm(
        &self,
        f: &CudaFunction,
        x: u64,
        n: &Norm,
        out: u64,
        rows: usize,
    ) -> Result<(), CudaError> {
        let (r, d, eps) = (rows as i32, self.shape.d as i32, self.shape.eps);
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(8) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(
            self.stream,
            f,
            cfg,
            &x,
            &n.gamma.ptr,
            &n.beta.ptr,
            &out,
            &r,
            &d,
            &eps
        )
    }
}
