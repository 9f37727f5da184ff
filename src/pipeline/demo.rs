//! `roadwork demo`: the whole loop as far as it is built, offline, on the embedded default store.
//!
//! 1. Generates procedural scenes (reused when already there).
//! 2. Ingests them as an image folder (source `synthetic`, labels `synthetic`).
//! 3. Exports a second set as a NATIX-schema parquet shard and ingests it (source `dataset`).
//! 4. Embeds every sample with DINOv3 (random weights unless the config names a weights file).
//! 5. Trains, calibrates and evaluates a head, registers it, and promotes it through the gate;
//!    writes the HTML evaluation report of the champion.
//!    Validator-like traffic (unlabelled night/rain/fog crops) is ingested beside the data, so
//!    mining has a distribution shift to find.
//! 6. Mines the store with the champion's scores: hard cases, clusters, duplicates, drift.
//! 7. Serves the champion: starts the server on a loopback port, sends it `ImageSynapse` requests
//!    signed by a demo validator (listed in a demo metagraph snapshot) built from fresh scenes
//!    plus one corrupt image, reads `/metrics`, stops, and moves the query log into Lance.
//! 8. Prints what the store holds, through the same SQL a person would type.
//!
//! Re-running it adds no data (every ingest is idempotent); it trains a new challenger, which the
//! gate promotes only if it is at least as good as the champion.

use std::path::PathBuf;

use polars::prelude::DataFrame;

use super::PipelineError;
use crate::config::Config;
use crate::ingest::{FolderOptions, IngestSummary, Ingestor, NatixOptions};
use crate::query::{QueryEngine, SAMPLES_BY_SOURCE_AND_LABEL};
use crate::store::manifest::MANIFEST_FILE;
use crate::store::{Label, SampleSource, Store};
use crate::synth::scenes::SynthError;
use crate::synth::scenes::{
    Daytime, GenerateSummary, SceneSpec, Weather, generate_scenes, scene_jpeg, write_natix_shard,
};
use crate::train::{
    GateDecision, Registry, TrainSummary, Trainer, evaluate_version, promote, write_report,
};

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Scenes for the folder ingest; the NATIX shard gets as many (at least 10).
    pub n: usize,
    pub seed: u64,
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            n: 200,
            seed: 7,
            progress: true,
        }
    }
}

/// What the demo did and found.
pub struct DemoReport {
    pub store_uri: String,
    /// `None` when the scenes were already there.
    pub generated: Option<GenerateSummary>,
    pub ingests: Vec<IngestSummary>,
    /// Samples by source and effective label.
    pub by_source_label: DataFrame,
    /// Samples by era and format.
    pub by_era: DataFrame,
    pub total_samples: usize,
    pub embed: crate::embed::EmbedSummary,
    pub train: TrainSummary,
    pub gate: GateDecision,
    /// Hard cases, clusters, duplicates and drift of the champion's data.
    pub mine: crate::mine::MineSummary,
    /// The champion's evaluation report (`index.html`); none without eval samples.
    pub report: Option<PathBuf>,
    /// The serving round trip.
    pub serve: ServeDemo,
}

/// What the served champion answered the demo validator.
pub struct ServeDemo {
    pub url: String,
    pub axon_hotkey: String,
    pub validator_hotkey: String,
    /// `(request, true label when known, prediction)`.
    pub answers: Vec<(String, Option<Label>, f64)>,
    /// The server's `/metrics` without histogram buckets.
    pub metrics: String,
    /// Query-log records moved into Lance when the server stopped.
    pub moved: super::serve::MoveSummary,
}

/// Scenes the demo validator sends (drawn from their own seed: not in the training data).
const SERVE_REQUESTS: u64 = 12;

/// Starts the server for the champion, queries it as a validator would, and stops it.
async fn serve_round_trip(cfg: &Config, seed: u64) -> Result<ServeDemo, PipelineError> {
    use crate::serve::{Dendrite, ProfileConfig};
    use base64::Engine as _;
    let key = |tag: u8| {
        let mut k = [tag; 32];
        k[..8].copy_from_slice(&seed.to_le_bytes());
        Dendrite::from_seed(k).map_err(PipelineError::Task)
    };
    let (axon, validator) = (key(1)?, key(2)?);
    let metagraph = cfg.data.dir.join("demo-metagraph.json");
    let neurons = serde_json::json!([
        {"hotkey": validator.hotkey(), "stake": 10_000.0, "validator_permit": true}
    ]);
    std::fs::write(&metagraph, neurons.to_string())
        .map_err(|e| PipelineError::Task(format!("{}: {e}", metagraph.display())))?;
    let mut sc = cfg.serve.clone();
    sc.axon_hotkey = Some(axon.hotkey().to_string());
    sc.metagraph = Some(metagraph);
    sc.model = None;
    sc.profiles = vec![ProfileConfig {
        name: "speed".into(),
        bind: "127.0.0.1".into(),
        port: 0,
        axon_hotkey: None,
        tier2: false,
    }];
    let (running, mover) = super::serve::start(cfg, &sc).await?;
    let addr = running.addrs[0].1;
    let url = format!("http://{addr}");
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut requests = Vec::new();
    for i in 0..SERVE_REQUESTS {
        let mut spec = SceneSpec::draw(seed + 3, i);
        (spec.width, spec.height) = (512, 384);
        requests.push((
            format!("scene {i:02}"),
            Some(spec.label),
            b64(&scene_jpeg(&spec)?),
        ));
    }
    requests.push((
        "corrupt jpeg".into(),
        None,
        b64(&[0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]),
    ));
    let mut answers = Vec::new();
    let mut failure = None;
    for (name, label, image) in requests {
        match validator
            .query(
                &url,
                axon.hotkey(),
                &image,
                std::time::Duration::from_secs(9),
            )
            .await
        {
            Ok(p) => answers.push((name, label, p)),
            Err(e) => {
                failure = Some(format!("{name}: {e}"));
                break;
            }
        }
    }
    let metrics = match reqwest::get(format!("{url}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => format!("(metrics unavailable: {e})"),
    };
    let metrics = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_bucket{"))
        .collect::<Vec<_>>()
        .join("\n");
    let moved = super::serve::stop(cfg, running, mover).await?;
    if let Some(f) = failure {
        return Err(PipelineError::Task(format!(
            "the served champion did not answer {f}"
        )));
    }
    Ok(ServeDemo {
        url,
        axon_hotkey: axon.hotkey().to_string(),
        validator_hotkey: validator.hotkey().to_string(),
        answers,
        metrics,
        moved,
    })
}

/// Runs the demo on the store and data directory of `cfg`.
pub async fn run(cfg: &Config, opts: &DemoOptions) -> Result<DemoReport, PipelineError> {
    let store = Store::open(&cfg.data.store_uri()).await?;
    let scenes_dir: PathBuf = cfg
        .data
        .dir
        .join(format!("scenes/seed{}-n{}", opts.seed, opts.n));
    let generated = if scenes_dir.join(MANIFEST_FILE).is_file() {
        None
    } else {
        let (dir, n, seed, progress) = (scenes_dir.clone(), opts.n, opts.seed, opts.progress);
        Some(
            tokio::task::spawn_blocking(move || generate_scenes(&dir, n, seed, progress))
                .await
                .map_err(|e| PipelineError::Task(e.to_string()))??,
        )
    };
    let shard = cfg.data.dir.join(format!(
        "natix/demo-seed{}-n{}.parquet",
        opts.seed + 1,
        opts.n
    ));
    if !shard.is_file() {
        let (path, seed) = (shard.clone(), opts.seed + 1);
        let indices: Vec<u64> = (0..opts.n.max(10) as u64).collect();
        tokio::task::spawn_blocking(move || write_natix_shard(&path, seed, &indices))
            .await
            .map_err(|e| PipelineError::Task(e.to_string()))??;
    }
    let mut ingestor = Ingestor::new(store.clone(), cfg.ingest.clone(), cfg.decode);
    if !opts.progress {
        ingestor = ingestor.quiet();
    }
    let traffic_dir = cfg
        .data
        .dir
        .join(format!("traffic/seed{}-n{}", opts.seed + 2, opts.n));
    if !traffic_dir.join(TRAFFIC_DONE).is_file() {
        let (dir, seed, n) = (traffic_dir.clone(), opts.seed + 2, (opts.n / 4).max(20));
        tokio::task::spawn_blocking(move || write_shifted_traffic(&dir, seed, n))
            .await
            .map_err(|e| PipelineError::Task(e.to_string()))??;
    }
    let ingests = vec![
        ingestor
            .ingest_folder(&scenes_dir, &FolderOptions::default())
            .await?,
        ingestor
            .ingest_natix(std::slice::from_ref(&shard), &NatixOptions::default())
            .await?,
        ingestor
            .ingest_folder(
                &traffic_dir,
                &FolderOptions {
                    source: SampleSource::Validator,
                    author: Some("demo-traffic".into()),
                    ..FolderOptions::default()
                },
            )
            .await?,
    ];
    let embed = crate::embed::embed(&store, &cfg.embed, None, cfg.decode, opts.progress).await?;
    let registry = Registry::open(cfg.train.registry_dir(&cfg.data.dir))?;
    let mut trainer = Trainer::new(store.clone(), registry.clone(), cfg.train.clone())?;
    if !opts.progress {
        trainer = trainer.quiet();
    }
    let train = trainer.train(None).await?;
    let t = &cfg.train;
    let version = &train.card.model_version;
    let gate = promote(
        &store, &registry, version, &t.promote, &t.split, t.seed, false,
    )
    .await?;
    let champion = registry
        .champion()?
        .map(|p| p.version)
        .unwrap_or_else(|| version.clone());
    let report = match evaluate_version(
        &store,
        &registry,
        &champion,
        &t.split,
        t.replay_queries,
        t.seed,
    )
    .await
    {
        Ok(evaluation) => {
            let (card, _) = registry.load(&champion)?;
            Some(write_report(
                &cfg.data
                    .dir
                    .join("reports")
                    .join(format!("{champion}-eval")),
                &evaluation,
                Some(&card),
            )?)
        }
        Err(crate::train::TrainError::NotEnoughData(why)) => {
            tracing::warn!("no evaluation report: {why}");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let miner = crate::mine::Miner::new(store.clone(), cfg.mine.clone())?;
    let mine = miner
        .run(
            crate::mine::Compute::<crate::embed::Cpu>::new(Default::default()),
            Some(&champion),
            Some(&cfg.data.dir.join("reports")),
        )
        .await?;
    let serve = serve_round_trip(cfg, opts.seed).await?;
    let q = QueryEngine::new(store.clone());
    let by_source_label = q.execute(SAMPLES_BY_SOURCE_AND_LABEL).await?;
    let by_era = q
        .execute(
            "SELECT era, format, count(*) AS n, round(avg(bytes) / 1024.0, 1) AS avg_kib \
             FROM samples GROUP BY era, format ORDER BY era, format",
        )
        .await?;
    let total_samples = store
        .count_rows(crate::store::tables::SAMPLES, None)
        .await?;
    Ok(DemoReport {
        store_uri: store.uri().to_string(),
        generated,
        ingests,
        by_source_label,
        by_era,
        total_samples,
        embed,
        train,
        gate,
        report,
        mine,
        serve,
    })
}

/// Marks a complete traffic folder.
const TRAFFIC_DONE: &str = ".complete";

/// Unlabelled "validator traffic" whose distribution differs from the training scenes: night-time
/// rain and fog at the 224² validator-crop size. Mining should find the clusters it falls in
/// under-covered and the two-sample test should call it drift.
fn write_shifted_traffic(dir: &std::path::Path, seed: u64, n: usize) -> Result<(), SynthError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| SynthError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for i in 0..n as u64 {
        let mut spec = SceneSpec::draw(seed, i);
        spec.daytime = Daytime::Night;
        spec.weather = if i % 2 == 0 {
            Weather::Rain
        } else {
            Weather::Fog
        };
        (spec.width, spec.height) = (224, 224);
        let path = dir.join(format!("query-{i:05}.jpg"));
        std::fs::write(&path, scene_jpeg(&spec)?).map_err(io(&path))?;
    }
    let done = dir.join(TRAFFIC_DONE);
    std::fs::write(&done, b"").map_err(io(&done))
}
