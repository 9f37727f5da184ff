//! `roadwork bench train`: head training speed on random clustered features of a given size
//! (the "100k × 1024" row of docs/BENCHMARKS.md), per epoch and per sample, with peak memory.

use serde::Serialize;

use crate::testdata::labelled_clusters;
use crate::train::{TrainConfig, TrainError, bench_fit};

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBenchRow {
    pub n: usize,
    pub dim: usize,
    pub hidden: Vec<usize>,
    pub batch_size: usize,
    pub epochs: usize,
    pub device: String,
    pub seconds: f64,
    pub seconds_per_epoch: f64,
    pub samples_per_s: f64,
    pub peak_rss_mib: Option<f64>,
}

/// Times `epochs` epochs of one head fit.
pub fn run(
    cfg: &TrainConfig,
    n: usize,
    dim: usize,
    epochs: usize,
) -> Result<TrainBenchRow, TrainError> {
    let (x, y) = labelled_clusters(n, dim, 64, cfg.seed);
    super::reset_peak_rss();
    let seconds = bench_fit(cfg, &x, &y, dim, epochs)?;
    Ok(TrainBenchRow {
        n,
        dim,
        hidden: cfg.head.hidden.clone(),
        batch_size: cfg.fit.batch_size,
        epochs,
        device: format!("{:?}", cfg.device).to_lowercase(),
        seconds,
        seconds_per_epoch: seconds / epochs.max(1) as f64,
        samples_per_s: (n * epochs) as f64 / seconds.max(1e-9),
        peak_rss_mib: super::peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64),
    })
}

/// The docs/BENCHMARKS.md table.
pub fn markdown(rows: &[TrainBenchRow]) -> String {
    let mut s = String::from(
        "| n × dim | head | batch | device | epochs | s/epoch | samples/s | peak RSS |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let head = if r.hidden.is_empty() {
            "linear".to_string()
        } else {
            format!("MLP {:?}", r.hidden)
        };
        s.push_str(&format!(
            "| {} × {} | {} | {} | {} | {} | {:.2} | {:.0} | {} |\n",
            r.n,
            r.dim,
            head,
            r.batch_size,
            r.device,
            r.epochs,
            r.seconds_per_epoch,
            r.samples_per_s,
            r.peak_rss_mib.map_or("–".into(), |m| format!("{m:.0} MiB"))
        ));
    }
    s
}
