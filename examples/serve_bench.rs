//! The serving benchmark as a small standalone binary, for the lent GPU machines (the full `roadwork`
//! binary is too large to ship there). Same code path as `roadwork bench serve`:
//!
//! ```sh
//! CUDARC_CUDA_VERSION=13000 cargo build --features cuda --example serve_bench
//! serve_bench cuda bf16 vits16,vitl16 1,16,64 1,16,64 [requests]
//! ```

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use roadwork::bench::serve::{ServeBenchOptions, markdown, run};
use roadwork::embed::{ComputeDevice, DinoV3Size, Precision};

fn ints(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|x| x.parse().context("lists of integers"))
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        bail!(
            "usage: serve_bench cpu|cuda f32|bf16 vits16[,vitl16…] CONCURRENCY,… MAX_BATCH,… [requests]"
        );
    }
    let device = ComputeDevice::from_str(&args[0], true).map_err(anyhow::Error::msg)?;
    let precision = Precision::from_str(&args[1], true).map_err(anyhow::Error::msg)?;
    let requests = args.get(5).map(|r| r.parse()).transpose()?.unwrap_or(256);
    for m in args[2].split(',') {
        let model = DinoV3Size::from_str(m, true).map_err(anyhow::Error::msg)?;
        let opts = ServeBenchOptions {
            model,
            device,
            precision,
            resolution: 224,
            requests,
            concurrency: ints(&args[3])?,
            max_batch: ints(&args[4])?,
            image_size: (1280, 720),
        };
        let (rows, cost) = run(&opts).await?;
        print!("{}", markdown(&rows, &cost));
    }
    Ok(())
}
