//! `roadwork bench embed`: DINOv3 forward speed in Burn (random weights, 224²), next to PyTorch +
//! transformers on the same machine in the same run when `python3 -c 'import torch'` works.
//!
//! Timings: median wall time of `iters` forward passes after two warm-ups. Burn rows read the pooled
//! output back to the host each time (which also synchronises a GPU); the CPU engine's rows
//! (`roadwork-cpu`, what `embed` and `serve` run on the CPU) return the whole `last_hidden_state`.

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::embed::{ComputeDevice, Cpu, CpuVit, DinoV3Size, EmbedError, Precision, weights};

/// What `roadwork bench embed` measures.
#[derive(Debug, Clone)]
pub struct EmbedBenchPlan {
    pub models: Vec<DinoV3Size>,
    pub batches: Vec<usize>,
    /// Timed passes per case (the median is reported).
    pub iters: usize,
    pub resolution: usize,
    /// Threads of the CPU engine (0: one per core).
    pub cpu_threads: usize,
    /// Also time the generic Burn module (burn-ndarray or burn-cuda: the reference path).
    pub burn: bool,
    /// On CUDA, also time the engine without its CUDA graph (every launch enqueued per pass).
    pub cuda_eager: bool,
}

/// One measured case.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedBenchRow {
    /// `burn-ndarray`, `burn-cuda`, …
    pub backend: String,
    pub model: String,
    /// `float32` or `bfloat16`.
    pub dtype: String,
    pub batch: usize,
    /// Median milliseconds per forward pass.
    pub ms: f64,
    pub img_s: f64,
    /// PyTorch eager on the same machine, same case, when measured.
    pub torch_ms: Option<f64>,
    pub torch_img_s: Option<f64>,
    /// PyTorch eager f32 on the same case, for the rows of another dtype (a bf16 path is judged
    /// against f32 too).
    pub torch_f32_ms: Option<f64>,
    /// `torch.compile` on the same case, when asked for.
    pub torch_compiled_ms: Option<f64>,
    /// For GPU engines, where `ms` is device time with the inputs resident (as PyTorch's timer):
    /// wall time from host pixels to host features, upload and read-back included.
    pub e2e_ms: Option<f64>,
}

/// One line of the PyTorch reference script's JSON output.
#[derive(Debug, Clone, Deserialize)]
pub struct TorchRow {
    pub model: String,
    pub dtype: String,
    pub mode: String,
    pub batch: usize,
    pub ms: f64,
    pub img_s: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median milliseconds of `iters` calls of `f` after two warm-ups.
fn time_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    let mut once = || {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1e3
    };
    once();
    once();
    median((0..iters.max(1)).map(|_| once()).collect())
}

/// Deterministic pixel values in [−1, 1) for `batch` images.
fn pixels(batch: usize, resolution: usize) -> Vec<f32> {
    (0..batch * 3 * resolution * resolution)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn row(backend: &str, model: DinoV3Size, dtype: &str, batch: usize, ms: f64) -> EmbedBenchRow {
    tracing::info!(backend, model = model.name(), batch, ms, "forward");
    EmbedBenchRow {
        backend: backend.into(),
        model: model.name().into(),
        dtype: dtype.into(),
        batch,
        ms,
        img_s: batch as f64 * 1e3 / ms,
        torch_ms: None,
        torch_img_s: None,
        torch_f32_ms: None,
        torch_compiled_ms: None,
        e2e_ms: None,
    }
}

/// Times the CPU engine ([`CpuVit`]) at `precision` for every (model, batch) of `plan`.
pub fn run_cpu_engine(
    plan: &EmbedBenchPlan,
    precision: Precision,
) -> Result<Vec<EmbedBenchRow>, EmbedError> {
    let (iters, resolution) = (plan.iters, plan.resolution);
    let mut rows = Vec::new();
    for &size in &plan.models {
        let cfg = size.config();
        let map = weights::random_weights(&cfg, 0);
        let model = weights::load::<Cpu>(&cfg, &map, &Default::default())?;
        drop(map);
        let vit = CpuVit::pack_as(model, &cfg, plan.cpu_threads, precision)?;
        for &batch in &plan.batches {
            let px = pixels(batch, resolution);
            let mut failed = None;
            let ms = time_ms(iters, || {
                if let Err(e) = vit.forward(&px, batch, resolution, resolution) {
                    failed = Some(e);
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            rows.push(row("roadwork-cpu", size, precision.torch_name(), batch, ms));
        }
    }
    Ok(rows)
}

/// Times the CUDA engine ([`crate::embed::CudaVit`]) at `precision` for every (model, batch) of
/// `plan`: device time with inputs resident (the row's `ms`) and end-to-end wall time.
#[cfg(feature = "cuda")]
pub fn run_cuda_engine(
    plan: &EmbedBenchPlan,
    precision: Precision,
    graphs: bool,
) -> Result<Vec<EmbedBenchRow>, EmbedError> {
    let (iters, resolution) = (plan.iters, plan.resolution);
    let label = if graphs {
        "roadwork-cuda"
    } else {
        "roadwork-cuda-eager"
    };
    let mut rows = Vec::new();
    for &size in &plan.models {
        let cfg = size.config();
        let map = weights::random_weights(&cfg, 0);
        let model = weights::load::<Cpu>(&cfg, &map, &Default::default())?;
        drop(map);
        let mut vit = crate::embed::CudaVit::pack(model, &cfg, 0, precision)?;
        if !graphs {
            vit = vit.without_graphs();
        }
        for &batch in &plan.batches {
            let px = pixels(batch, resolution);
            let device_ms = vit.time_forward(&px, batch, resolution, resolution, iters.max(20))?;
            let mut failed = None;
            let e2e = time_ms(iters, || {
                if let Err(e) = vit.pooled(&px, batch, resolution, resolution) {
                    failed = Some(e);
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            let mut r = row(label, size, precision.torch_name(), batch, device_ms);
            r.e2e_ms = Some(e2e);
            rows.push(r);
        }
    }
    Ok(rows)
}

/// Times the Burn model on backend `B` for every (model, batch) of `plan`.
pub fn run_burn<B: Backend>(
    plan: &EmbedBenchPlan,
    labels: (&str, &str),
    device: &B::Device,
) -> Vec<EmbedBenchRow> {
    let (iters, resolution) = (plan.iters, plan.resolution);
    let mut rows = Vec::new();
    for &size in &plan.models {
        let cfg = size.config();
        let map = weights::random_weights(&cfg, 0);
        let Ok(model) = weights::load::<B>(&cfg, &map, device) else {
            continue;
        };
        drop(map);
        for &batch in &plan.batches {
            let x = Tensor::<B, 4>::from_data(
                TensorData::new(
                    pixels(batch, resolution),
                    [batch, 3, resolution, resolution],
                ),
                device,
            );
            let ms = time_ms(iters, || {
                let _ = model.forward(x.clone()).pooler_output.into_data();
            });
            rows.push(row(labels.0, size, labels.1, batch, ms));
        }
    }
    rows
}

/// Runs the PyTorch reference script (`--device cpu|cuda`, with `--compile` when asked) and
/// returns its rows (eager, and compiled when asked), or why not.
pub fn run_torch(
    script: &Path,
    device: &str,
    models: &[DinoV3Size],
    batches: &[usize],
    dtypes: &[&str],
    compile: bool,
) -> Result<Vec<TorchRow>, String> {
    if !script.is_file() {
        return Err(format!("{} not found", script.display()));
    }
    let join = |v: Vec<String>| v.join(",");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--device", device])
        .args([
            "--models",
            &join(models.iter().map(|m| m.name().to_string()).collect()),
        ])
        .args([
            "--batches",
            &join(batches.iter().map(|b| b.to_string()).collect()),
        ])
        .args(["--dtypes", &dtypes.join(",")])
        .args(if compile { &["--compile"][..] } else { &[][..] })
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("no output");
        return Err(format!("PyTorch reference failed: {last}"));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<TorchRow>(l).ok())
        .collect())
}

/// Attaches the matching PyTorch numbers to each of our rows.
pub fn join_torch(rows: &mut [EmbedBenchRow], torch: &[TorchRow]) {
    for r in rows {
        let find = |dtype: &str, mode: &str| {
            torch.iter().find(|t| {
                t.model == r.model && t.batch == r.batch && t.dtype == dtype && t.mode == mode
            })
        };
        if let Some(t) = find(&r.dtype, "eager") {
            r.torch_ms = Some(t.ms);
            r.torch_img_s = Some(t.img_s);
        }
        r.torch_compiled_ms = find(&r.dtype, "compiled").map(|t| t.ms);
        if r.dtype != "float32" {
            r.torch_f32_ms = find("float32", "eager").map(|t| t.ms);
        }
    }
}

/// The docs/BENCHMARKS.md table.
pub fn markdown(rows: &[EmbedBenchRow]) -> String {
    let mut s = String::from(
        "| backend | model | dtype | batch | ms/batch | img/s | PyTorch eager ms | PyTorch img/s | ours ÷ PyTorch speed | ÷ PyTorch f32 | torch.compile ms | ÷ compiled | end-to-end ms |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "–".into());
    for r in rows {
        let ratio = r
            .torch_ms
            .map(|t| format!("{:.2}×", t / r.ms))
            .unwrap_or_else(|| "–".into());
        let vs = |v: Option<f64>| {
            v.map(|t| format!("{:.2}×", t / r.ms))
                .unwrap_or_else(|| "–".into())
        };
        let (vs_f32, vs_compiled) = (vs(r.torch_f32_ms), vs(r.torch_compiled_ms));
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {vs_f32} | {} | {vs_compiled} | {} |\n",
            r.backend,
            r.model,
            r.dtype,
            r.batch,
            r.ms,
            r.img_s,
            opt(r.torch_ms),
            opt(r.torch_img_s),
            ratio,
            opt(r.torch_compiled_ms),
            opt(r.e2e_ms),
        ));
    }
    s
}

/// Times the encoder on `device` at each precision in `precisions`.
pub fn run_on(
    device: ComputeDevice,
    precisions: &[Precision],
    plan: &EmbedBenchPlan,
) -> Result<Vec<EmbedBenchRow>, EmbedError> {
    let mut rows = Vec::new();
    for &p in precisions {
        let label = p.torch_name();
        match (device, p) {
            (ComputeDevice::Cpu, Precision::Bf16) => rows.extend(run_cpu_engine(plan, p)?),
            (ComputeDevice::Cpu, Precision::F32) => {
                rows.extend(run_cpu_engine(plan, p)?);
                if plan.burn {
                    let labels = ("burn-ndarray", label);
                    rows.extend(run_burn::<Cpu>(plan, labels, &Default::default()));
                }
            }
            #[cfg(feature = "cuda")]
            (ComputeDevice::Cuda, p) => {
                rows.extend(run_cuda_engine(plan, p, true)?);
                if plan.cuda_eager {
                    rows.extend(run_cuda_engine(plan, p, false)?);
                }
                if plan.burn {
                    let labels = ("burn-cuda", label);
                    let dev = Default::default();
                    rows.extend(match p {
                        Precision::F32 => run_burn::<burn::backend::Cuda<f32>>(plan, labels, &dev),
                        Precision::Bf16 => {
                            run_burn::<burn::backend::Cuda<half::bf16>>(plan, labels, &dev)
                        }
                    });
                }
            }
            #[cfg(not(feature = "cuda"))]
            (d, p) => return Err(crate::embed::device::unsupported(d, p)),
        }
    }
    Ok(rows)
}

pub use crate::embed::weights::{NamedTensors, read_f32_tensors};

/// One engine's distance from the references on one full-size random model.
#[derive(Debug, Clone, Serialize)]
pub struct ParityRow {
    pub model: String,
    pub engine: String,
    pub dtype: String,
    /// Max-abs difference of pooled CLS and mean-patch rows from transformers (CPU, f32).
    pub vs_transformers: f32,
    /// Max-abs difference of pooled CLS rows from the Burn f32 module.
    pub vs_burn: f32,
    /// The bar: 1e-3 in f32, 2e-2 in bf16.
    pub bar: f32,
}

#[cfg(feature = "cuda")]
fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(
        if a.len() == b.len() {
            0.0
        } else {
            f32::INFINITY
        },
        f32::max,
    )
}

/// Runs `benches/torch_parity.py` for `models` (full-size random DINOv3, its state dict loaded here
/// through the real weights loader) and holds the CUDA engine at each precision to transformers and
/// to the Burn f32 module on the same inputs.
#[cfg(feature = "cuda")]
pub fn run_cuda_parity(
    script: &Path,
    models: &[DinoV3Size],
    precisions: &[Precision],
) -> Result<Vec<ParityRow>, String> {
    let dir = std::env::temp_dir().join(format!("roadwork-parity-{}", std::process::id()));
    let names: Vec<&str> = models.iter().map(|m| m.name()).collect();
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--models", &names.join(","), "--out"])
        .arg(&dir)
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "transformers reference failed: {}",
            err.lines().last().unwrap_or("no output")
        ));
    }
    let result = parity_rows(&dir, models, precisions);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(feature = "cuda")]
fn parity_rows(
    dir: &Path,
    models: &[DinoV3Size],
    precisions: &[Precision],
) -> Result<Vec<ParityRow>, String> {
    let err = |e: EmbedError| e.to_string();
    let mut rows = Vec::new();
    for &size in models {
        let cfg = size.config();
        let map = weights::read_safetensors(&dir.join(format!("{}.safetensors", size.name())))
            .map_err(|e| e.to_string())?;
        let io = read_f32_tensors(&dir.join(format!("{}.io.safetensors", size.name())))?;
        let get = |k: &str| io.get(k).ok_or_else(|| format!("{k} missing"));
        let (shape, px) = get("pixel_values")?;
        let (n, side) = (shape[0], shape[2]);
        let (want_cls, want_mean) = (&get("pooler_output")?.1, &get("mean_patch")?.1);
        let device = Default::default();
        let burn = weights::load::<Cpu>(&cfg, &map, &device).map_err(|e| e.to_string())?;
        let x =
            Tensor::<Cpu, 4>::from_data(TensorData::new(px.clone(), [n, 3, side, side]), &device);
        let burn_cls: Vec<f32> = burn
            .forward(x)
            .pooler_output
            .into_data()
            .into_vec()
            .map_err(|e| format!("{e:?}"))?;
        let d = cfg.hidden_size;
        if let (Some((_, tc)), Some((_, tm))) =
            (io.get("torch_bf16_pooler"), io.get("torch_bf16_mean"))
        {
            rows.push(ParityRow {
                model: size.name().into(),
                engine: "pytorch-cuda".into(),
                dtype: "bfloat16".into(),
                vs_transformers: max_abs(tc, want_cls).max(max_abs(tm, want_mean)),
                vs_burn: max_abs(tc, &burn_cls),
                bar: 2e-2,
            });
        }
        for &p in precisions {
            let model = weights::load::<Cpu>(&cfg, &map, &device).map_err(|e| e.to_string())?;
            let vit = crate::embed::CudaVit::pack(model, &cfg, 0, p).map_err(err)?;
            let pooled = vit.pooled(px, n, side, side).map_err(err)?;
            let cls: Vec<f32> = pooled.chunks(2 * d).flat_map(|r| r[..d].to_vec()).collect();
            let mean: Vec<f32> = pooled.chunks(2 * d).flat_map(|r| r[d..].to_vec()).collect();
            rows.push(ParityRow {
                model: size.name().into(),
                engine: "roadwork-cuda".into(),
                dtype: p.torch_name().into(),
                vs_transformers: max_abs(&cls, want_cls).max(max_abs(&mean, want_mean)),
                vs_burn: max_abs(&cls, &burn_cls),
                bar: if p == Precision::F32 { 1e-3 } else { 2e-2 },
            });
        }
    }
    Ok(rows)
}

/// The parity table.
pub fn parity_markdown(rows: &[ParityRow]) -> String {
    let mut s = String::from(
        "| model | engine | dtype | max-abs vs transformers | max-abs vs Burn f32 | bar | within |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let ok = r.vs_transformers < r.bar && r.vs_burn < r.bar;
        s.push_str(&format!(
            "| {} | {} | {} | {:.2e} | {:.2e} | {:.0e} | {} |\n",
            r.model,
            r.engine,
            r.dtype,
            r.vs_transformers,
            r.vs_burn,
            r.bar,
            if ok { "yes" } else { "NO" }
        ));
    }
    s
}

/// The transformers parity script committed with the repository (found as
/// [`default_torch_script`]).
pub fn default_parity_script() -> std::path::PathBuf {
    let rel = Path::new("benches").join("torch_parity.py");
    if rel.is_file() {
        return rel;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The PyTorch timer committed with the repository: `benches/torch_dinov3.py` under the current
/// directory when run from a checkout, else under the checkout this binary was built from.
pub fn default_torch_script() -> std::path::PathBuf {
    let rel = Path::new("benches").join("torch_dinov3.py");
    if rel.is_file() {
        return rel;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}
