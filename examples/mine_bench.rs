//! The mining scale benchmark as a small standalone binary, for machines the full `roadwork` binary
//! is too large to ship to (the lent GPU machines take a 64 MiB working tree). Same code path as
//! `roadwork bench mine`:
//!
//! ```sh
//! CUDARC_CUDA_VERSION=13000 cargo build --features cuda --example mine_bench
//! mine_bench cpu|cuda 100000[,1000000] [--exact] [--no-host] [--dim 384] [--kmeans-k 256] \
//!     [--reference benches/torch_mine.py] [--python python3]
//! ```
//!
//! On `cuda` the GPU engine and the host engine run in the same call (unless `--no-host`); the
//! reference script (scikit-learn's by default) runs next to the first engine.

use anyhow::{Context, Result, bail};
use roadwork::backend::Cpu;
use roadwork::bench::mine::{
    MinePlan, SklearnRef, default_sklearn_script, engines_markdown, markdown, run_engines,
};
use roadwork::mine::Compute;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let flag = |f: &str| args.iter().any(|a| a == f);
    if args.len() < 2 {
        bail!(
            "usage: mine_bench cpu|cuda N[,N…] [--exact] [--no-host] [--dim D] [--kmeans-k K] [--reference script.py] [--python P]"
        );
    }
    let ns: Vec<usize> = args[1]
        .split(',')
        .map(|n| n.parse().context("vector counts are integers"))
        .collect::<Result<_>>()?;
    let number = |f: &str, default: usize| -> Result<usize> {
        value(f).map_or(Ok(default), |v| {
            v.parse().with_context(|| format!("{f} takes an integer"))
        })
    };
    let mut engines = Vec::new();
    match args[0].as_str() {
        "cpu" => engines.push(Compute::<Cpu>::host()),
        #[cfg(feature = "cuda")]
        "cuda" => {
            engines.push(Compute::<Cpu>::cuda(0)?);
            if !flag("--no-host") {
                engines.push(Compute::<Cpu>::host());
            }
        }
        other => bail!("device {other}: cpu, or cuda with --features cuda"),
    }
    let plan = MinePlan {
        n: 0,
        dim: number("--dim", 384)?,
        kmeans_k: number("--kmeans-k", 256)?,
        seed: 0,
        exact: flag("--exact"),
        sklearn: Some(SklearnRef {
            python: value("--python").unwrap_or_else(|| "python3".into()),
            script: value("--reference").map_or_else(default_sklearn_script, Into::into),
        }),
    };
    let rows = run_engines(&engines, &ns, &plan, |r| {
        eprint!("{}", markdown(std::slice::from_ref(r)))
    })?;
    print!("{}{}", markdown(&rows), engines_markdown(&rows));
    Ok(())
}
