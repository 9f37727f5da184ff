//! The DINOv3 speed benchmark as a small standalone binary, for machines the full `roadwork` binary
//! is too large to ship to (the lent GPU machines take a 64 MiB working tree). Same code path as
//! `roadwork bench embed`:
//!
//! ```sh
//! CUDARC_CUDA_VERSION=13000 cargo build --features cuda --example embed_bench
//! embed_bench cuda f32,bf16 vits16,vitb16,vitl16 1,64 [torch_script.py] [--compile] [--eager] [--parity]
//! ```
//!
//! `--compile` adds `torch.compile` rows, `--eager` the CUDA engine without its graph, `--parity`
//! the transformers / Burn parity table (benches/torch_parity.py).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use roadwork::bench::embed::{join_torch, markdown, run_torch};
use roadwork::embed::{ComputeDevice, DinoV3Size, Precision};

fn parse_list<T: ValueEnum>(s: &str) -> Result<Vec<T>> {
    s.split(',')
        .map(|x| T::from_str(x, true).map_err(|e| anyhow::anyhow!("{x}: {e}")))
        .collect()
}

fn main() -> Result<()> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| all.iter().any(|a| a == f);
    let args: Vec<String> = all
        .iter()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .collect();
    if args.len() < 4 {
        bail!(
            "usage: embed_bench cpu|cuda f32[,bf16] vits16[,vitb16…] 1[,64] [torch_script.py] [--compile] [--eager] [--parity]"
        );
    }
    let device = ComputeDevice::from_str(&args[0], true).map_err(anyhow::Error::msg)?;
    let precisions: Vec<Precision> = parse_list(&args[1])?;
    let models: Vec<DinoV3Size> = parse_list(&args[2])?;
    let batches: Vec<usize> = args[3]
        .split(',')
        .map(|b| b.parse().context("batch sizes are integers"))
        .collect::<Result<_>>()?;
    let iters = if device == ComputeDevice::Cuda { 20 } else { 3 };
    let plan = roadwork::bench::embed::EmbedBenchPlan {
        models: models.clone(),
        batches: batches.clone(),
        iters,
        resolution: 224,
        cpu_threads: 0,
        burn: false,
        cuda_eager: flag("--eager"),
    };
    let mut rows = roadwork::bench::embed::run_on(device, &precisions, &plan)?;
    if let Some(script) = args.get(4) {
        let dev = if device == ComputeDevice::Cuda {
            "cuda"
        } else {
            "cpu"
        };
        let dtypes: Vec<&str> = precisions.iter().map(|p| p.torch_name()).collect();
        match run_torch(
            &PathBuf::from(script),
            dev,
            &models,
            &batches,
            &dtypes,
            false,
        ) {
            Ok(t) => join_torch(&mut rows, &t),
            Err(e) => eprintln!("PyTorch side skipped: {e}"),
        }
    }
    print!("{}", markdown(&rows));
    if flag("--parity") {
        #[cfg(feature = "cuda")]
        {
            use roadwork::bench::embed::{default_parity_script, parity_markdown, run_cuda_parity};
            match run_cuda_parity(&default_parity_script(), &models, &precisions) {
                Ok(p) => print!("\n{}", parity_markdown(&p)),
                Err(e) => eprintln!("parity check failed: {e}"),
            }
        }
        #[cfg(not(feature = "cuda"))]
        eprintln!("--parity checks the CUDA engine; this build has no CUDA support");
    }
    Ok(())
}
