//! `roadwork bench serve`: the serving path end to end over loopback HTTP — signed `ImageSynapse`
//! requests from concurrent validators (one dendrite each, as on the subnet), base64 decode,
//! signature check, image decode, tier 1 (random-weight DINOv3 + a random head), the durable
//! query log (append + fdatasync before each reply) — at several concurrency levels and batch
//! limits; and the cost of the durable log per request on its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::SeedableRng;
use serde::Serialize;

use crate::embed::{ComputeDevice, DinoV3Size, EmbedConfig, Precision, load_encoder};
use crate::imaging::DecodeLimits;
use crate::mine::quantile;
use crate::serve::{AppState, Dendrite, Metagraph, QueryLog, Tier1, router, serve_with_peers};
use crate::store::querylog::{QUERY_LOG_VERSION, QueryLogRecord, TierOutput};
use crate::synth::scenes::{SceneSpec, scene_jpeg};
use crate::train::{Head, HeadConfig, ModelCard, TrainedHead, encode_head};

/// What to measure.
#[derive(Debug, Clone)]
pub struct ServeBenchOptions {
    pub model: DinoV3Size,
    pub device: ComputeDevice,
    pub precision: Precision,
    pub resolution: u32,
    /// Timed requests per (batch limit, concurrency) cell.
    pub requests: usize,
    pub concurrency: Vec<usize>,
    /// `serve.max_batch` values to compare (1 = no batching).
    pub max_batch: Vec<usize>,
    /// Size of the scenes sent (validators send full-resolution street images).
    pub image_size: (u32, u32),
}

/// One cell of the table.
#[derive(Debug, Clone, Serialize)]
pub struct ServeBenchRow {
    pub model: String,
    pub device: String,
    pub precision: String,
    pub max_batch: usize,
    pub concurrency: usize,
    pub durable_log: bool,
    pub requests: usize,
    pub req_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

/// The durable log on its own: one append + fdatasync of a typical record.
#[derive(Debug, Clone, Serialize)]
pub struct LogCost {
    pub record_bytes: usize,
    pub appends: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeBenchError {
    #[error("encoder: {0}")]
    Embed(#[from] crate::embed::EmbedError),
    #[error("{0}")]
    Setup(String),
    #[error("request failed: {0}")]
    Request(String),
}

fn setup(e: impl std::fmt::Display) -> ServeBenchError {
    ServeBenchError::Setup(e.to_string())
}

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs every cell; returns the rows and the log cost.
pub async fn run(
    opts: &ServeBenchOptions,
) -> Result<(Vec<ServeBenchRow>, LogCost), ServeBenchError> {
    let scratch = Scratch(std::env::temp_dir().join(format!(
        "roadwork-bench-serve-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    )));
    std::fs::create_dir_all(&scratch.0).map_err(setup)?;
    let embed = EmbedConfig {
        model: opts.model,
        resolution: opts.resolution,
        device: opts.device,
        precision: opts.precision,
        ..Default::default()
    };
    tracing::info!(model = opts.model.name(), "loading a random-weight encoder");
    let encoder = tokio::task::spawn_blocking(move || load_encoder(&embed, None))
        .await
        .map_err(setup)??;
    let dim = encoder.dim();
    let hc = HeadConfig {
        hidden: vec![],
        dropout: 0.0,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let head = Head::<crate::embed::Cpu>::init(
        &hc,
        &vec![0.0; dim],
        &vec![1.0; dim],
        &mut rng,
        &Default::default(),
    );
    let weights = encode_head(&head).map_err(setup)?;
    let card = ModelCard::untrained("bench-head", encoder.model_id(), dim, hc, &weights);
    let images = Arc::new(street_images_b64(2026, 32, opts.image_size).map_err(setup)?);
    let max_c = opts.concurrency.iter().copied().max().unwrap_or(1);
    let validators = validator_keys(max_c, 7).map_err(setup)?;
    let axon = Dendrite::from_seed([42; 32]).map_err(setup)?;
    let metagraph = scratch.0.join("metagraph.json");
    write_allow_list(&metagraph, &validators).map_err(setup)?;

    let mut cells: Vec<(usize, usize, bool)> = Vec::new();
    for &b in &opts.max_batch {
        for &c in &opts.concurrency {
            cells.push((b, c, true));
        }
    }
    // The durable log's share at the lowest load: the first cell again without it.
    if let Some(&(b, c, _)) = cells.first() {
        cells.insert(1, (b, c, false));
    }
    let mut rows = Vec::new();
    for (i, (max_batch, concurrency, durable)) in cells.into_iter().enumerate() {
        let head =
            TrainedHead::from_parts(card.clone(), &weights, &Default::default()).map_err(setup)?;
        let pad = opts.device != ComputeDevice::Cpu;
        let tier1 = Tier1::new(encoder.clone(), head, DecodeLimits::default())
            .map_err(setup)?
            .with_batching(max_batch, 1, pad);
        // As `roadwork serve` does before it listens.
        let tier1 = tokio::task::spawn_blocking(move || {
            let (sizes, secs) = tier1.warm_up();
            tracing::info!(?sizes, secs, "warmed up");
            tier1
        })
        .await
        .map_err(setup)?;
        let log = if durable {
            Some(Arc::new(
                QueryLog::open(
                    &scratch.0.join(format!("querylog-{i}")),
                    1_000_000,
                    Duration::from_secs(3600),
                )
                .map_err(setup)?,
            ))
        } else {
            None
        };
        let state = AppState {
            axon_hotkey: Some(axon.hotkey().to_string()),
            metagraph: Some(Arc::new(Metagraph::open(&metagraph, 0.0))),
            querylog: log,
            max_inflight: 4 * max_c,
            ..AppState::new("bench", Arc::new(tier1))
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(setup)?;
        let url = format!("http://{}", listener.local_addr().map_err(setup)?);
        let server = tokio::spawn(async move {
            let _ =
                serve_with_peers(listener, router(Arc::new(state)), std::future::pending()).await;
        });
        let warm = 2 * concurrency;
        let lat = drive(
            &url,
            axon.hotkey(),
            &validators[..concurrency],
            &images,
            warm,
        )
        .await?;
        drop(lat);
        let t = Instant::now();
        let lat = drive(
            &url,
            axon.hotkey(),
            &validators[..concurrency],
            &images,
            opts.requests,
        )
        .await?;
        let wall = t.elapsed().as_secs_f64();
        server.abort();
        let row = ServeBenchRow {
            model: opts.model.name().to_string(),
            device: format!("{:?}", opts.device).to_lowercase(),
            precision: opts.precision.torch_name().to_string(),
            max_batch,
            concurrency,
            durable_log: durable,
            requests: lat.len(),
            req_per_s: lat.len() as f64 / wall,
            p50_ms: quantile(&lat, 0.5).unwrap_or(f64::NAN),
            p99_ms: quantile(&lat, 0.99).unwrap_or(f64::NAN),
            mean_ms: lat.iter().sum::<f64>() / lat.len().max(1) as f64,
        };
        tracing::info!(
            max_batch,
            concurrency,
            durable,
            req_per_s = row.req_per_s,
            p50_ms = row.p50_ms,
            "cell done"
        );
        rows.push(row);
    }
    let cost = log_cost(&scratch.0.join("logcost"), &images[0], 200).map_err(setup)?;
    Ok((rows, cost))
}

/// `n` street scenes of `size` as base64 JPEGs, as validators send them.
pub(crate) fn street_images_b64(
    seed: u64,
    n: u64,
    size: (u32, u32),
) -> Result<Vec<String>, crate::synth::scenes::SceneError> {
    (0..n)
        .map(|i| {
            let mut s = SceneSpec::draw(seed, i);
            (s.width, s.height) = size;
            scene_jpeg(&s).map(|b| base64::engine::general_purpose::STANDARD.encode(b))
        })
        .collect()
}

/// `n` validator keys, distinct per `tag`.
pub(crate) fn validator_keys(n: usize, tag: u8) -> Result<Vec<Arc<Dendrite>>, String> {
    (0..n)
        .map(|i| {
            let mut seed = [tag; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            Dendrite::from_seed(seed).map(Arc::new)
        })
        .collect()
}

/// A metagraph snapshot allow-listing `validators` (ample stake, validator permit).
pub(crate) fn write_allow_list(path: &Path, validators: &[Arc<Dendrite>]) -> std::io::Result<()> {
    let neurons: Vec<serde_json::Value> = validators
        .iter()
        .map(|d| serde_json::json!({"hotkey": d.hotkey(), "stake": 1e6, "validator_permit": true}))
        .collect();
    std::fs::write(path, serde_json::Value::from(neurons).to_string())
}

/// Sends `n` signed requests from `validators` (one in flight per validator); returns each
/// latency in milliseconds. Any failed request fails the benchmark: a number is only worth
/// reporting if every request was answered.
async fn drive(
    url: &str,
    axon: &str,
    validators: &[Arc<Dendrite>],
    images: &Arc<Vec<String>>,
    n: usize,
) -> Result<Vec<f64>, ServeBenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for d in validators {
        let (d, next, images, url, axon) = (
            d.clone(),
            next.clone(),
            images.clone(),
            url.to_string(),
            axon.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(lat);
                }
                let t = Instant::now();
                let p = d
                    .query(
                        &url,
                        &axon,
                        &images[i % images.len()],
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|e| ServeBenchError::Request(e.to_string()))?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(ServeBenchError::Request(format!("answer {p}")));
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(
            t.await
                .map_err(|e| ServeBenchError::Request(e.to_string()))??,
        );
    }
    Ok(all)
}

/// Times `n` appends of a record carrying `image_b64`, each synced to disk.
fn log_cost(dir: &Path, image_b64: &str, n: usize) -> Result<LogCost, String> {
    let log =
        QueryLog::open(dir, 1_000_000, Duration::from_secs(3600)).map_err(|e| e.to_string())?;
    let now = chrono::Utc::now();
    let mut us = Vec::with_capacity(n);
    let mut bytes = 0;
    for i in 0..n {
        let rec = QueryLogRecord {
            unverified: false,
            v: QUERY_LOG_VERSION,
            request_id: format!("bench-{i}"),
            received_at: now,
            answered_at: now,
            validator_hotkey: Some("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY".into()),
            profile: "bench".into(),
            image_b64: image_b64.to_string(),
            image_sha256: "0".repeat(64),
            image_cut: None,
            image_len: None,
            model_version: "bench-head".into(),
            tiers: vec![TierOutput {
                tier: 1,
                score: Some(0.25),
                latency_ms: 10.0,
                error: None,
            }],
            decided_by: 1,
            final_score: 0.25,
            latency_ms: 10.0,
            decode_error: None,
        };
        bytes = serde_json::to_vec(&rec).map(|v| v.len()).unwrap_or(0);
        let t = Instant::now();
        log.append(&rec).map_err(|e| e.to_string())?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(LogCost {
        record_bytes: bytes,
        appends: n,
        p50_us: quantile(&us, 0.5).unwrap_or(f64::NAN),
        p99_us: quantile(&us, 0.99).unwrap_or(f64::NAN),
        mean_us: us.iter().sum::<f64>() / n.max(1) as f64,
    })
}

/// The docs/BENCHMARKS.md table.
pub fn markdown(rows: &[ServeBenchRow], cost: &LogCost) -> String {
    let mut out = String::from(
        "| model | device | precision | max batch | concurrency | durable log | requests | req/s | p50 ms | p99 ms |\n\
         |---|---|---|---:|---:|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
            r.model,
            r.device,
            r.precision,
            r.max_batch,
            r.concurrency,
            if r.durable_log { "on" } else { "off" },
            r.requests,
            r.req_per_s,
            r.p50_ms,
            r.p99_ms
        ));
    }
    out.push_str(&format!(
        "\nDurable log alone: append + fdatasync of a {:.0} KiB record, p50 {:.0} µs, p99 {:.0} µs, mean {:.0} µs ({} appends).\n",
        cost.record_bytes as f64 / 1024.0,
        cost.p50_us,
        cost.p99_us,
        cost.mean_us,
        cost.appends
    ));
    out
}
