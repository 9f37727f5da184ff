//! `roadwork demo`: the nightly job, offline, for two nights on generated data.
//!
//! 1. Generates the demo's data under `<data>/demo/` (reused when already there): a labelled
//!    NATIX-schema parquet shard (source `dataset`), an unlabelled pool of street scenes (source
//!    `upload`) whose true labels only the demo knows, and unlabelled night/rain/fog validator-size
//!    crops (source `validator`), so mining has a distribution shift to find.
//! 2. **Night one** runs `pipelines/demo.toml`'s nightly job: ingest, embed (the weight-free
//!    baseline encoder unless DINOv3 weights are named), mine, select and export a selection for
//!    labelling, train on the labelled shard, evaluate, promote, housekeeping; writes the run report.
//! 3. The demo plays the annotator: it fills the exported sheet from the procedural ground truth
//!    and imports it as `human` labels (author `demo-annotator`), as a person would.
//! 4. **Night two** trains on those labels too; the gate compares the new head with night one's
//!    on the same frozen eval set, and the report shows what changed.
//! 5. Serves the champion: signed `ImageSynapse` requests from a demo validator (listed in a demo
//!    metagraph snapshot), one corrupt image, `/metrics`, and the query log moved into Lance.
//!
//! Re-running it adds no data (every ingest is idempotent) and runs two more nights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use polars::prelude::DataFrame;

use super::PipelineError;
use super::nightly::{NightlyOptions, NightlyReport};
use crate::config::{Config, SourceConfig, SourceKind};
use crate::labels::{ImportOptions, ImportSummary, import_labels};
use crate::query::{QueryEngine, SAMPLES_BY_SOURCE_AND_LABEL};
use crate::store::{Label, SampleId, SampleSource, Store};
use crate::synth::scenes::SceneError;
use crate::synth::scenes::{Daytime, SceneSpec, Weather, scene_jpeg, write_natix_shard};
use crate::train::{Evaluation, Registry, evaluate_version};

/// What the demo does.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Scenes in the unlabelled pool; the labelled shard gets half as many (at least 60).
    pub n: usize,
    pub seed: u64,
    pub progress: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            n: 300,
            seed: 7,
            progress: true,
        }
    }
}

/// The demo's generated inputs.
#[derive(Debug, Clone)]
pub struct DemoData {
    pub dir: PathBuf,
    /// False when an earlier run's data was reused.
    pub generated: bool,
    pub labelled: usize,
    pub pool: usize,
    pub traffic: usize,
    /// The pool's true labels, by sample id (what the demo's annotator knows).
    pub truth: HashMap<String, Label>,
}

/// One head's metrics on the frozen eval set.
#[derive(Debug, Clone)]
pub struct NightEval {
    pub version: String,
    pub eval: Evaluation,
}

/// What the demo did and found.
pub struct DemoReport {
    pub store_uri: String,
    pub data: DemoData,
    pub nights: Vec<NightlyReport>,
    /// The demo annotator's labels for night one's selection.
    pub answered: Option<ImportSummary>,
    /// The heads of both nights on the same eval set (when both trained).
    pub evals: Vec<NightEval>,
    /// Samples by source and effective label.
    pub by_source_label: DataFrame,
    /// Samples by era and format.
    pub by_era: DataFrame,
    pub total_samples: usize,
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

/// The data directory's demo inputs, relative to `data.dir` (also what `pipelines/demo.toml` lists).
pub const DEMO_NATIX: &str = "demo/natix.parquet";
pub const DEMO_POOL: &str = "demo/pool";
pub const DEMO_TRAFFIC: &str = "demo/traffic";
const DEMO_TRUTH: &str = "demo/pool-truth.csv";
const DEMO_PARAMS: &str = "demo/PARAMS";

/// The pipeline sources of the demo's data.
pub fn demo_sources() -> Vec<SourceConfig> {
    let src = |kind, path: &str, source: Option<SampleSource>, author: Option<&str>| SourceConfig {
        kind,
        path: path.into(),
        source,
        author: author.map(str::to_string),
        labels: None,
        dataset_name: (kind == SourceKind::Natix).then(|| "natix-roadwork-demo".to_string()),
    };
    vec![
        src(SourceKind::Natix, DEMO_NATIX, None, None),
        src(
            SourceKind::Folder,
            DEMO_POOL,
            Some(SampleSource::Upload),
            None,
        ),
        src(
            SourceKind::Folder,
            DEMO_TRAFFIC,
            Some(SampleSource::Validator),
            Some("demo-traffic"),
        ),
    ]
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SceneError + '_ {
    move |source| SceneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the demo's inputs (blocking), or reuses them when the same `n` and `seed` made them.
fn prepare_data(data_dir: &Path, n: usize, seed: u64) -> Result<DemoData, SceneError> {
    let dir = data_dir.join("demo");
    let params = format!("n={n} seed={seed} v=2\n");
    let params_path = data_dir.join(DEMO_PARAMS);
    let labelled = (n / 3).max(60);
    let traffic = (n / 6).max(20);
    let truth_path = data_dir.join(DEMO_TRUTH);
    let reuse = std::fs::read_to_string(&params_path).is_ok_and(|p| p == params);
    if !reuse {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let pool_dir = data_dir.join(DEMO_POOL);
        std::fs::create_dir_all(&pool_dir).map_err(io_err(&pool_dir))?;
        let indices: Vec<u64> = (0..labelled as u64).collect();
        write_natix_shard(&data_dir.join(DEMO_NATIX), seed + 1, &indices)?;
        let mut truth = String::from("sample_id,label\n");
        for i in 0..n as u64 {
            let spec = SceneSpec::draw(seed, i);
            let jpg = scene_jpeg(&spec)?;
            let path = pool_dir.join(format!("scene-{i:05}.jpg"));
            std::fs::write(&path, &jpg).map_err(io_err(&path))?;
            truth.push_str(&format!(
                "{},{}\n",
                SampleId::of_bytes(&jpg),
                spec.label.as_u8()
            ));
        }
        std::fs::write(&truth_path, truth).map_err(io_err(&truth_path))?;
        write_shifted_traffic(&data_dir.join(DEMO_TRAFFIC), seed + 2, traffic)?;
        std::fs::write(&params_path, &params).map_err(io_err(&params_path))?;
    }
    let text = std::fs::read_to_string(&truth_path).map_err(io_err(&truth_path))?;
    let truth = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (id, label) = l.split_once(',')?;
            Some((id.to_string(), Label::parse_loose(label)?))
        })
        .collect::<HashMap<_, _>>();
    Ok(DemoData {
        dir,
        generated: !reuse,
        labelled,
        pool: truth.len(),
        traffic,
        truth,
    })
}

/// The demo's annotator: fills the exported sheet from the ground truth and imports it.
async fn answer_selection(
    store: &Store,
    night: &NightlyReport,
    truth: &HashMap<String, Label>,
) -> Result<Option<ImportSummary>, PipelineError> {
    use crate::config::Stage;
    let Some(sheet) = night
        .progress
        .output(Stage::Select, "sheet")
        .and_then(|v| v.as_str())
        .map(PathBuf::from)
    else {
        return Ok(None);
    };
    let text = tokio::fs::read_to_string(&sheet)
        .await
        .map_err(|e| PipelineError::Task(format!("{}: {e}", sheet.display())))?;
    let mut out = String::from("sample_id,file,label,author\n");
    for line in text.lines().skip(1) {
        let mut cols = line.split(',');
        let (Some(id), Some(file)) = (cols.next(), cols.next()) else {
            continue;
        };
        if let Some(l) = truth.get(id) {
            out.push_str(&format!("{id},{file},{},demo-annotator\n", l.as_u8()));
        }
    }
    let answers = sheet.with_file_name("answers.csv");
    tokio::fs::write(&answers, out)
        .await
        .map_err(|e| PipelineError::Task(format!("{}: {e}", answers.display())))?;
    Ok(Some(
        import_labels(store, &answers, &ImportOptions::default()).await?,
    ))
}

/// Runs the demo on the store and data directory of `cfg`.
pub async fn run(cfg: &Config, opts: &DemoOptions) -> Result<DemoReport, PipelineError> {
    let mut cfg = cfg.clone();
    if cfg.pipeline.sources.is_empty() {
        cfg.pipeline.sources = demo_sources();
    }
    if cfg.embed.encoder == crate::embed::EncoderKind::Dinov3 && cfg.embed.weights.is_none() {
        tracing::warn!(
            "no DINOv3 weights named: the demo embeds with the baseline encoder (random DINOv3 features carry no signal)"
        );
        cfg.embed.encoder = crate::embed::EncoderKind::Baseline;
    }
    let (dir, n, seed) = (cfg.data.dir.clone(), opts.n, opts.seed);
    let data = tokio::task::spawn_blocking(move || prepare_data(&dir, n, seed))
        .await
        .map_err(|e| PipelineError::Task(e.to_string()))??;
    let night_opts = NightlyOptions {
        progress: opts.progress,
        ..NightlyOptions::default()
    };
    let first = super::nightly::run(&cfg, &night_opts).await?;
    let store = Store::open(&cfg.data.store_uri()).await?;
    let answered = answer_selection(&store, &first, &data.truth).await?;
    let second = super::nightly::run(&cfg, &night_opts).await?;
    let registry = Registry::open(cfg.train.registry_dir(&cfg.data.dir))?;
    let mut evals = Vec::new();
    for night in [&first, &second] {
        if let Some(v) = night
            .progress
            .output(crate::config::Stage::Train, "version")
            .and_then(|v| v.as_str())
            && !evals.iter().any(|e: &NightEval| e.version == v)
        {
            let t = &cfg.train;
            let eval =
                evaluate_version(&store, &registry, v, &t.split, t.replay_queries, t.seed).await?;
            evals.push(NightEval {
                version: v.to_string(),
                eval,
            });
        }
    }
    let serve = serve_round_trip(&cfg, opts.seed).await?;
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
        data,
        nights: vec![first, second],
        answered,
        evals,
        by_source_label,
        by_era,
        total_samples,
        serve,
    })
}

/// Marks a complete traffic folder.
const TRAFFIC_DONE: &str = ".complete";

/// Unlabelled "validator traffic" whose distribution differs from the training scenes: night-time
/// rain and fog at the 224² validator-crop size. Mining should find the clusters it falls in
/// under-covered and the two-sample test should call it drift.
fn write_shifted_traffic(dir: &std::path::Path, seed: u64, n: usize) -> Result<(), SceneError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| SceneError::Io { path, source }
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
