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
    /// On the CPU, also time the generic Burn module on burn-ndarray (the reference path).
    pub burn_cpu: bool,
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

/// Runs the PyTorch reference script (`--device cpu|cuda`) and returns its eager rows, or why not.
pub fn run_torch(
    script: &Path,
    device: &str,
    models: &[DinoV3Size],
    batches: &[usize],
    dtypes: &[&str],
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
        .filter(|r| r.mode == "eager")
        .collect())
}

/// Attaches the matching PyTorch numbers to each Burn row.
pub fn join_torch(rows: &mut [EmbedBenchRow], torch: &[TorchRow]) {
    for r in rows {
        if let Some(t) = torch
            .iter()
            .find(|t| t.model == r.model && t.batch == r.batch && t.dtype == r.dtype)
        {
            r.torch_ms = Some(t.ms);
            r.torch_img_s = Some(t.img_s);
        }
        if r.dtype != "float32" {
            r.torch_f32_ms = torch
                .iter()
                .find(|t| t.model == r.model && t.batch == r.batch && t.dtype == "float32")
                .map(|t| t.ms);
        }
    }
}

/// The docs/BENCHMARKS.md table.
pub fn markdown(rows: &[EmbedBenchRow]) -> String {
    let mut s = String::from(
        "| backend | model | dtype | batch | ms/batch | img/s | PyTorch eager ms | PyTorch img/s | ours ÷ PyTorch speed | ÷ PyTorch f32 |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "–".into());
    for r in rows {
        let ratio = r
            .torch_ms
            .map(|t| format!("{:.2}×", t / r.ms))
            .unwrap_or_else(|| "–".into());
        let vs_f32 = r
            .torch_f32_ms
            .map(|t| format!("{:.2}×", t / r.ms))
            .unwrap_or_else(|| "–".into());
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {vs_f32} |\n",
            r.backend,
            r.model,
            r.dtype,
            r.batch,
            r.ms,
            r.img_s,
            opt(r.torch_ms),
            opt(r.torch_img_s),
            ratio
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
                if plan.burn_cpu {
                    let labels = ("burn-ndarray", label);
                    rows.extend(run_burn::<Cpu>(plan, labels, &Default::default()));
                }
            }
            #[cfg(feature = "cuda")]
            (ComputeDevice::Cuda, Precision::F32) => {
                rows.extend(run_burn::<burn::backend::Cuda<f32>>(
                    plan,
                    ("burn-cuda", label),
                    &Default::default(),
                ))
            }
            #[cfg(feature = "cuda")]
            (ComputeDevice::Cuda, Precision::Bf16) => {
                rows.extend(run_burn::<burn::backend::Cuda<half::bf16>>(
                    plan,
                    ("burn-cuda", label),
                    &Default::default(),
                ))
            }
            #[cfg(not(feature = "cuda"))]
            (d, p) => return Err(crate::embed::device::unsupported(d, p)),
        }
    }
    Ok(rows)
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
