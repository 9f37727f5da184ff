//! `roadwork bench train`: head training speed on random clustered features of a given size
//! (the README's "100k × 1024" row), per epoch and per sample, with peak memory.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

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

/// `n` vectors around `centres` random centres; the label is a fixed function of the centre with
/// 10 % flipped, so the head has something to learn and cannot reach 100 %.
pub fn clustered(n: usize, dim: usize, centres: usize, seed: u64) -> (Vec<f32>, Vec<u8>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..centres.max(1))
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
        .collect();
    let mut x = Vec::with_capacity(n * dim);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let c = rng.random_range(0..centres.len());
        x.extend(
            centres[c]
                .iter()
                .map(|v| v + rng.random_range(-0.5f32..0.5)),
        );
        let label = (c % 2) as u8;
        y.push(if rng.random_bool(0.1) {
            1 - label
        } else {
            label
        });
    }
    (x, y)
}

/// Times `epochs` epochs of one head fit.
pub fn run(
    cfg: &TrainConfig,
    n: usize,
    dim: usize,
    epochs: usize,
) -> Result<TrainBenchRow, TrainError> {
    let (x, y) = clustered(n, dim, 64, cfg.seed);
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

/// The README table.
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
