//! The `roadwork` command line: parses arguments, loads configuration, sets up logging, calls one
//! library function per subcommand and maps errors to exit codes.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use roadwork::config::Config;
use roadwork::embed::{ComputeDevice, DinoV3Size, FeatureKind, Precision, ResizeMode};
use roadwork::ingest::{FolderOptions, Ingestor, NatixOptions};
use roadwork::query::{OutputFormat, QueryEngine, render_table, write_frame};
use roadwork::store::{SampleSource, SnapshotName, Store};

#[derive(Parser)]
#[command(
    name = "roadwork",
    version,
    about = "Data engine and active-learning loop for a roadwork image classifier",
    after_help = "Examples:\n  roadwork demo\n  roadwork ingest folder ./photos\n  roadwork query \"SELECT source, count(*) FROM samples GROUP BY source\""
)]
struct Cli {
    /// Working directory: store, generated scenes, reports.
    #[arg(long, global = true, env = "ROADWORK_DATA")]
    data: Option<PathBuf>,
    /// Store location (a path or a lancedb URI such as s3://bucket/prefix); default <data>/store.
    #[arg(long, global = true, env = "ROADWORK_STORE")]
    store: Option<String>,
    /// TOML configuration file (see docs/CONFIG.md).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log more (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the offline demo of the loop on the embedded store.
    #[command(after_help = "Example:\n  roadwork demo --n 300 --seed 7")]
    Demo {
        /// Unlabelled pool scenes to generate (the labelled shard gets half as many).
        #[arg(long, default_value_t = 300)]
        n: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Writes procedural street scenes (JPEG) with labels and tags.
    #[command(after_help = "Example:\n  roadwork generate-scenes --n 500 --seed 7 --out scenes/")]
    GenerateScenes {
        #[arg(long, default_value_t = 500)]
        n: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Brings images and labels into the store.
    #[command(subcommand)]
    Ingest(IngestCmd),
    /// Writes samples (a selection, a snapshot, a filter) as Parquet, Hugging Face `imagefolder`,
    /// NATIX Parquet or FiftyOne's image-classification layout; `roadwork ingest` reads each back.
    #[command(after_help = "Examples:
  roadwork export --layout parquet --out exports/all
  roadwork export --layout parquet --images inline --snapshot train/head-20261125T101530-3fa2c1 --out exports/train-set
  roadwork export --layout imagefolder --label labelled --out exports/hf
  roadwork export --layout fiftyone --selection select-20261201T0300 --out exports/review
  roadwork export --layout natix --where \"source = 'validator'\" --out exports/natix

Read back with: roadwork ingest parquet exports/all/samples.parquet, roadwork ingest folder
exports/hf (or exports/review), roadwork ingest natix exports/natix/train-00000-of-00001.parquet.")]
    Export(cli::export::ExportArgs),
    /// Computes DINOv3 embeddings for every sample that lacks one (resumable).
    #[command(
        after_help = "Without --weights a random model runs (for demos and tests) and says so; --encoder baseline\nruns the weight-free colour + gradient histogram baseline instead (some signal, offline).\n\nExamples:\n  roadwork embed --model vits16 --weights dinov3-vits16.safetensors\n  roadwork embed --encoder baseline\n  roadwork embed --model vitl16 --weights vitl16.safetensors --device cuda --bf16 --batch 64"
    )]
    Embed(EmbedArgs),
    /// Answers SQL over the store's tables (polars SQL).
    #[command(
        after_help = "Tables: samples, labels, effective_labels, predictions, runs, embeddings_<model>.\n\nExamples:\n  roadwork query \"SELECT source, count(*) FROM samples GROUP BY source\"\n  roadwork query --format csv --out labels.csv \"SELECT * FROM effective_labels\"\n  roadwork query --format parquet --out s.parquet \"SELECT sample_id, width, height, tags FROM samples\""
    )]
    Query {
        sql: String,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Rows shown by the table format.
        #[arg(long, default_value_t = 200)]
        max_rows: usize,
    },
    /// Trains, calibrates, evaluates and registers a classification head on stored embeddings.
    #[command(
        after_help = "Examples:\n  roadwork train\n  roadwork train --hidden 512,128 --seed 3\n  roadwork train --snapshot train/head-20261125T101530-3fa2c1"
    )]
    Train(cli::train::TrainArgs),
    /// Evaluates a registered head on the frozen eval set and writes an HTML report.
    #[command(
        after_help = "Examples:\n  roadwork eval\n  roadwork eval --model head-20261125T101530-3fa2c1 --report reports/h1"
    )]
    Eval(cli::train::EvalArgs),
    /// The head registry: list, show, promote, rollback, champion.
    #[command(subcommand)]
    Models(cli::train::ModelsCmd),
    /// Answers validators (bittensor axon `/ImageSynapse`) and local clients with the champion head;
    /// follows the champion pointer and hot-swaps new heads.
    #[command(
        after_help = "Examples:\n  roadwork serve --config serve.toml\n  roadwork serve --weights dinov3_vits16.safetensors --port 8091"
    )]
    Serve {
        /// Encoder weights (overrides serve.weights).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Serve this head version instead of following the champion.
        #[arg(long)]
        model: Option<String>,
        /// Port of the first profile (overrides its config).
        #[arg(long)]
        port: Option<u16>,
    },
    /// The whole loop as one resumable job: ingest → embed → mine → select → teach → synth → train
    /// → eval → promote → notify → housekeeping, recorded in the run ledger, with an HTML report.
    #[command(
        after_help = "Exit codes: 0 every stage finished; 1 a stage failed (--resume continues); 2 bad arguments or
configuration (nothing ran); 75 another job holds the store's writer lock (nothing ran).

Examples:
  roadwork nightly --pipeline pipelines/nightly.toml
  roadwork nightly --pipeline pipelines/nightly.toml --resume
  roadwork nightly --pipeline pipelines/nightly.toml --from train --until promote
  roadwork nightly --pipeline pipelines/nightly.toml --dry-run"
    )]
    Nightly(cli::labels::NightlyArgs),
    /// Labels out (a selection as files, a sheet and Label Studio tasks) and in (human labels).
    #[command(subcommand)]
    Labels(cli::labels::LabelsCmd),
    /// The VLM of [serve.tier2] labels a selection or the hardest samples (teacher labels).
    #[command(after_help = "Examples:
  roadwork teach --selection select-20261201T0300
  roadwork teach --hard 200 --budget 100")]
    Teach(cli::labels::TeachArgs),
    /// Hard cases, clusters, duplicates, drift; budgeted selection for labelling.
    #[command(subcommand)]
    Mine(cli::mine::MineCmd),
    /// Fills the gaps mining found with generated images (procedural offline, or Amazon Bedrock).
    #[command(subcommand)]
    Synth(cli::synth::SynthCmd),
    /// Nearest stored samples to a sample (or an image file in the store), through the ANN index.
    #[command(
        after_help = "Examples:\n  roadwork similar 3fa2…(64 hex) -k 20\n  roadwork similar photo.jpg -k 10 --where \"source = 'validator'\"\n  roadwork similar 3fa2… --recall 200"
    )]
    Similar(cli::mine::SimilarArgs),
    /// Store maintenance: layout, versions and snapshots.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Benchmarks (numbers for docs/BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(clap::Args)]
struct EmbedArgs {
    /// `dinov3` or the weight-free `baseline` (default from config: dinov3).
    #[arg(long, value_enum)]
    encoder: Option<roadwork::embed::EncoderKind>,
    /// Model size (default from config: vits16).
    #[arg(long, value_enum)]
    model: Option<DinoV3Size>,
    /// Local safetensors file (Hugging Face or Meta names; f32, bf16 or f16).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long)]
    batch: Option<usize>,
    /// Input side in pixels (multiple of 16).
    #[arg(long)]
    resolution: Option<u32>,
    #[arg(long, value_enum)]
    features: Option<FeatureKind>,
    /// Keep the aspect ratio and pad instead of stretching.
    #[arg(long)]
    letterbox: bool,
    #[arg(long, value_enum)]
    device: Option<ComputeDevice>,
    /// bfloat16 weights and activations (CUDA).
    #[arg(long)]
    bf16: bool,
}

#[derive(Subcommand)]
enum IngestCmd {
    /// An image folder; labels from metadata.jsonl (Hugging Face imagefolder), labels.json beside
    /// data/ (FiftyOne), manifest.jsonl, a CSV, or roadwork/ and clean/ sub-folders.
    #[command(
        after_help = "Examples:\n  roadwork ingest folder ./photos\n  roadwork ingest folder ./photos --labels labels.csv --source dataset"
    )]
    Folder {
        dir: PathBuf,
        /// `path,label` CSV (default: labels.csv in the folder, if present).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Source recorded for the images: upload, dataset, synthetic or validator.
        #[arg(long, default_value = "upload")]
        source: SampleSource,
        /// Author recorded with folder/CSV labels (default: the folder's name).
        #[arg(long)]
        author: Option<String>,
    },
    /// NATIX `roadwork` parquet shards.
    #[command(after_help = "Example:\n  roadwork ingest natix data/train-00000-of-00004.parquet")]
    Natix {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, default_value = "natix-roadwork")]
        dataset_name: String,
    },
    /// `samples.parquet` tables written by `roadwork export --layout parquet`.
    #[command(after_help = "Example:\n  roadwork ingest parquet exports/all/samples.parquet")]
    Parquet {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// A JSONL query log written by `roadwork serve`.
    #[command(
        after_help = "Example:\n  roadwork ingest querylog roadwork-data/querylog/2026-11-25.jsonl"
    )]
    Querylog { file: PathBuf },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Tables, row counts, versions, column types and snapshots.
    #[command(after_help = "Examples:\n  roadwork store info\n  roadwork store info --json")]
    Info {
        /// One JSON document (tables → rows, version, columns with types) for programs.
        #[arg(long)]
        json: bool,
    },
    /// Tags the current version of every table (e.g. before a training run).
    #[command(after_help = "Example:\n  roadwork store snapshot train/head-20261125")]
    Snapshot { name: String },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// DINOv3 forward speed in Burn, next to PyTorch eager when torch is importable.
    #[command(
        after_help = "Examples:\n  roadwork bench embed --models vits16,vitb16 --batches 1,16\n  roadwork bench embed --device cuda --precisions f32,bf16 --models vits16,vitb16,vitl16 --batches 1,64"
    )]
    Embed(BenchEmbed),
    /// Folder-ingest throughput and peak memory on full-HD JPEGs.
    #[command(after_help = "Example:\n  roadwork bench ingest --n 200")]
    Ingest {
        #[arg(long, default_value_t = 200)]
        n: usize,
        #[arg(long, default_value_t = 1920)]
        width: u32,
        #[arg(long, default_value_t = 1080)]
        height: u32,
        /// Also write the result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Head training speed on random clustered features.
    #[command(
        after_help = "Examples:\n  roadwork bench train --n 100000 --dim 1024 --epochs 3\n  roadwork bench train --heads '0;256;512,128' --device cuda"
    )]
    Train(cli::train::BenchTrain),
    /// Active-learning strategies on the committed digits data, 10 to 500 labels.
    #[command(
        after_help = "Examples:\n  roadwork bench al\n  roadwork bench al --seeds 3 --strategies auto,random\n  roadwork --config nightly.toml bench al --strategies auto,margin   # with its [mine.select]"
    )]
    Al(cli::mine::BenchAl),
    /// kNN graph, k-means and duplicate search at scale, with peak memory.
    #[command(after_help = "Example:\n  roadwork bench mine --n 100000,1000000 --dim 384")]
    Mine(cli::mine::BenchMine),
    /// The serving path over loopback HTTP: signed requests, req/s and p50/p99 latency by
    /// concurrency and batch limit, and the durable log's cost per request.
    #[command(
        after_help = "Examples:\n  roadwork bench serve\n  roadwork bench serve --model vitl16 --device cuda --precision bf16 --concurrency 1,16,64 --max-batch 1,16,64"
    )]
    Serve(BenchServe),
    /// The real server process under signed traffic at saturation, with hot-swaps every few
    /// seconds and one kill -9 + restart: answered, shed, failed, p50/p99, and acknowledged
    /// answers missing from the store (must be 0).
    #[command(
        after_help = "Examples:\n  roadwork bench soak\n  roadwork bench soak --seconds 120 --concurrency 32 --swap-every-s 3 --kill-at-s 60"
    )]
    Soak(BenchSoak),
}

#[derive(clap::Args)]
struct BenchSoak {
    #[arg(long, value_enum, default_value = "vits16")]
    model: DinoV3Size,
    #[arg(long, default_value_t = 112)]
    resolution: u32,
    /// How long traffic lasts, seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Validators sending at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Champion hot-swap period, seconds (0: none).
    #[arg(long, default_value_t = 5)]
    swap_every_s: u64,
    /// kill -9 the server this far in and restart it (0: never; default: half-way).
    #[arg(long)]
    kill_at_s: Option<u64>,
    /// Size of the street images sent, WIDTHxHEIGHT.
    #[arg(long, default_value = "640x480")]
    image: String,
    /// Keep the server's data, config and log here instead of a removed scratch directory.
    #[arg(long)]
    keep: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BenchServe {
    #[arg(long, value_enum, default_value = "vits16")]
    model: DinoV3Size,
    #[arg(long, value_enum, default_value = "cpu")]
    device: ComputeDevice,
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    #[arg(long, default_value_t = 224)]
    resolution: u32,
    /// Timed requests per cell.
    #[arg(long, default_value_t = 64)]
    requests: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    concurrency: Vec<usize>,
    /// serve.max_batch values to compare (1 = no batching).
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    max_batch: Vec<usize>,
    /// Size of the street images sent, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x720")]
    image: String,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `WIDTHxHEIGHT`.
fn parse_size(s: &str) -> anyhow::Result<(u32, u32)> {
    s.split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .filter(|&(w, h)| w > 0 && h > 0 && w <= 16_384 && h <= 16_384)
        .ok_or_else(|| anyhow::anyhow!("--image wants WIDTHxHEIGHT (1..=16384 each), got {s}"))
}

/// Waits for `s`, or forever when its handler could not be installed.
#[cfg(unix)]
async fn wait_signal(s: Option<&mut tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Installs the SIGINT/SIGTERM handlers now (so a signal that arrives while the server starts is
/// not fatal) and returns the future that completes on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).ok();
        let mut term = signal(SignalKind::terminate()).ok();
        async move {
            tokio::select! {
                _ = wait_signal(int.as_mut()) => {}
                _ = wait_signal(term.as_mut()) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "roadwork=info,warn",
        1 => "roadwork=debug,info",
        _ => "roadwork=trace,debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(cli: &Cli) -> Result<Config> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(d) = &cli.data {
        cfg.data.dir = d.clone();
    }
    if let Some(s) = &cli.store {
        cfg.data.store_uri = Some(s.clone());
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code(&e)
        }
    }
}

/// The documented exit code of an error (`roadwork nightly --help`): a held writer lock is 75,
/// bad arguments or configuration 2, anything else 1.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    use roadwork::pipeline::{PipelineError, exit};
    if let Some(p) = e.downcast_ref::<PipelineError>() {
        return ExitCode::from(p.exit_code());
    }
    if e.downcast_ref::<roadwork::store::lock::LockError>()
        .is_some_and(|l| matches!(l, roadwork::store::lock::LockError::Held { .. }))
    {
        return ExitCode::from(exit::LOCKED);
    }
    if e.downcast_ref::<roadwork::config::ConfigError>().is_some() {
        return ExitCode::from(exit::USAGE);
    }
    ExitCode::FAILURE
}

async fn run(mut cli: Cli) -> Result<()> {
    if let Command::Nightly(a) = &cli.command
        && let Some(p) = &a.pipeline
    {
        cli.config = Some(p.clone());
    }
    let cfg = load_config(&cli)?;
    match cli.command {
        Command::Nightly(a) => cli::labels::nightly(cfg, a).await,
        Command::Labels(cmd) => cli::labels::labels(cfg, cmd).await,
        Command::Teach(a) => cli::labels::teach(cfg, a).await,
        Command::Synth(cmd) => cli::synth::synth(cfg, cmd).await,
        Command::Demo { n, seed } => demo(&cfg, n, seed).await,
        Command::GenerateScenes { n, seed, out } => {
            let s = tokio::task::spawn_blocking(move || {
                roadwork::synth::scenes::generate_scenes(&out, n, seed, true)
            })
            .await??;
            println!(
                "wrote {} scenes ({} roadwork, {} clean, {:.1} MiB) to {} in {:.1} s",
                s.n,
                s.roadwork,
                s.clean,
                s.bytes as f64 / (1 << 20) as f64,
                s.out_dir.display(),
                s.elapsed_s
            );
            Ok(())
        }
        Command::Ingest(cmd) => ingest(&cfg, cmd).await,
        Command::Export(args) => cli::export::run(&cfg, args).await,
        Command::Embed(args) => embed(cfg, args).await,
        Command::Query {
            sql,
            format,
            out,
            max_rows,
        } => {
            let store = Store::open(&cfg.data.store_uri()).await?;
            let df = QueryEngine::new(store).execute(&sql).await?;
            write_frame(&df, format, out.as_deref(), max_rows)?;
            Ok(())
        }
        Command::Store(cmd) => store_cmd(&cfg, cmd).await,
        Command::Train(a) => cli::train::train(cfg, a).await,
        Command::Eval(a) => cli::train::eval(cfg, a).await,
        Command::Models(cmd) => cli::train::models(cfg, cmd).await,
        Command::Mine(cmd) => cli::mine::mine(cfg, cmd).await,
        Command::Serve {
            weights,
            model,
            port,
        } => {
            let mut sc = cfg.serve.clone();
            sc.weights = weights.or(sc.weights);
            sc.model = model.or(sc.model);
            if let (Some(p), Some(first)) = (port, sc.profiles.first_mut()) {
                first.port = p;
            }
            let stop = shutdown_signal();
            let (running, mover) = roadwork::pipeline::serve::start(&cfg, &sc).await?;
            for (name, addr) in &running.addrs {
                println!(
                    "profile {name}: http://{addr} (model {})",
                    running.tier1.model_version()
                );
            }
            stop.await;
            let moved = roadwork::pipeline::serve::stop(&cfg, running, mover).await?;
            println!(
                "stopped; moved {} logged requests ({} segments) into the store",
                moved.records, moved.segments
            );
            Ok(())
        }
        Command::Similar(a) => cli::mine::similar(cfg, a).await,
        Command::Bench(BenchCmd::Embed(b)) => bench_embed(b),
        Command::Bench(BenchCmd::Train(b)) => cli::train::bench_train(&cfg, b),
        Command::Bench(BenchCmd::Mine(b)) => {
            let b = std::sync::Arc::new(b);
            let bb = b.clone();
            tokio::task::spawn_blocking(move || cli::mine::bench_mine(&bb)).await??;
            cli::mine::bench_lance(&cfg, &b).await
        }
        Command::Bench(BenchCmd::Serve(b)) => {
            let (w, h) = parse_size(&b.image)?;
            let opts = roadwork::bench::serve::ServeBenchOptions {
                model: b.model,
                device: b.device,
                precision: b.precision,
                resolution: b.resolution,
                requests: b.requests,
                concurrency: b.concurrency,
                max_batch: b.max_batch,
                image_size: (w, h),
            };
            let (rows, cost) = roadwork::bench::serve::run(&opts).await?;
            print!("{}", roadwork::bench::serve::markdown(&rows, &cost));
            if let Some(p) = b.json {
                let v = serde_json::json!({"rows": rows, "log_cost": cost});
                std::fs::write(&p, serde_json::to_string_pretty(&v)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            Ok(())
        }
        Command::Bench(BenchCmd::Soak(b)) => {
            let image_size = parse_size(&b.image)?;
            let opts = roadwork::bench::soak::SoakOptions {
                model: b.model,
                resolution: b.resolution,
                seconds: b.seconds,
                concurrency: b.concurrency,
                swap_every_s: b.swap_every_s,
                kill_at_s: b.kill_at_s.unwrap_or(b.seconds / 2),
                image_size,
                work_dir: b.keep,
            };
            let r = roadwork::bench::soak::run(&opts).await?;
            print!("{}", r.markdown(&opts));
            if let Some(p) = b.json {
                std::fs::write(&p, serde_json::to_string_pretty(&r)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            let problems = r.problems();
            if !problems.is_empty() {
                anyhow::bail!("soak failed: {}", problems.join("; "));
            }
            Ok(())
        }
        Command::Bench(BenchCmd::Al(b)) => {
            let select = cfg.mine.select.clone();
            tokio::task::spawn_blocking(move || cli::mine::bench_al(b, select)).await?
        }
        Command::Bench(BenchCmd::Ingest {
            n,
            width,
            height,
            json,
        }) => {
            let work = cfg.data.dir.join("bench/ingest");
            let r = roadwork::bench::ingest::run(&cfg, &work, n, width, height).await?;
            print!("{}", r.markdown());
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_string_pretty(&r)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            Ok(())
        }
    }
}

async fn embed(mut cfg: Config, a: EmbedArgs) -> Result<()> {
    let e = &mut cfg.embed;
    if let Some(k) = a.encoder {
        e.encoder = k;
    }
    if let Some(m) = a.model {
        e.model = m;
    }
    if let Some(b) = a.batch {
        e.batch_size = b;
    }
    if let Some(r) = a.resolution {
        e.resolution = r;
    }
    if let Some(f) = a.features {
        e.features = f;
    }
    if a.letterbox {
        e.resize = ResizeMode::Letterbox;
    }
    if let Some(d) = a.device {
        e.device = d;
    }
    if a.bf16 {
        e.precision = Precision::Bf16;
    }
    cfg.validate()?;
    let store = Store::open(&cfg.data.store_uri()).await?;
    let _lock = cli::labels::writer_lock(&cfg, "roadwork embed")?;
    let s =
        roadwork::embed::embed(&store, &cfg.embed, a.weights.as_deref(), cfg.decode, true).await?;
    print!("{s}");
    Ok(())
}

#[derive(clap::Args)]
struct BenchEmbed {
    #[arg(long, value_delimiter = ',', default_value = "vits16,vitb16")]
    models: Vec<DinoV3Size>,
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    batches: Vec<usize>,
    /// Timed passes per case (median reported).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    #[arg(long, value_enum, default_value = "cpu")]
    device: ComputeDevice,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "f32")]
    precisions: Vec<Precision>,
    /// PyTorch reference script (default: the repository's benches/torch_dinov3.py).
    #[arg(long)]
    torch_script: Option<PathBuf>,
    /// Skip the PyTorch side.
    #[arg(long)]
    no_torch: bool,
    /// Threads of the CPU engine (0: one per core).
    #[arg(long, default_value_t = 0)]
    cpu_threads: usize,
    /// Also time the generic Burn module (burn-ndarray on the CPU, burn-cuda on a GPU): the
    /// reference path; slow.
    #[arg(long, alias = "burn-cpu")]
    burn: bool,
    /// On CUDA, also time the engine without its CUDA graph.
    #[arg(long)]
    cuda_eager: bool,
    /// Also time `torch.compile` on the PyTorch side (minutes of compilation per case).
    #[arg(long)]
    torch_compile: bool,
    /// On CUDA, also hold the engine to transformers and the Burn f32 module on full-size random
    /// models (benches/torch_parity.py writes the weights and reference outputs).
    #[arg(long)]
    parity: bool,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn bench_embed(b: BenchEmbed) -> Result<()> {
    use roadwork::bench::embed::{join_torch, markdown, run_torch};
    let plan = roadwork::bench::embed::EmbedBenchPlan {
        models: b.models.clone(),
        batches: b.batches.clone(),
        iters: b.iters,
        resolution: 224,
        cpu_threads: b.cpu_threads,
        burn: b.burn,
        cuda_eager: b.cuda_eager,
    };
    let mut rows = roadwork::bench::embed::run_on(b.device, &b.precisions, &plan)?;
    if !b.no_torch {
        let script = b
            .torch_script
            .unwrap_or_else(roadwork::bench::embed::default_torch_script);
        let dev = match b.device {
            ComputeDevice::Cpu => "cpu",
            ComputeDevice::Cuda => "cuda",
        };
        let dtypes: Vec<&str> = b.precisions.iter().map(|p| p.torch_name()).collect();
        match run_torch(
            &script,
            dev,
            &b.models,
            &b.batches,
            &dtypes,
            b.torch_compile,
        ) {
            Ok(t) => join_torch(&mut rows, &t),
            Err(e) => eprintln!("PyTorch side skipped: {e}"),
        }
    }
    print!("{}", markdown(&rows));
    if b.parity {
        #[cfg(feature = "cuda")]
        {
            let script = roadwork::bench::embed::default_parity_script();
            match roadwork::bench::embed::run_cuda_parity(&script, &b.models, &b.precisions) {
                Ok(p) => print!("\n{}", roadwork::bench::embed::parity_markdown(&p)),
                Err(e) => eprintln!("parity check failed: {e}"),
            }
        }
        #[cfg(not(feature = "cuda"))]
        eprintln!("--parity checks the CUDA engine; this build has no CUDA support");
    }
    if let Some(p) = b.json {
        std::fs::write(&p, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

async fn demo(cfg: &Config, n: usize, seed: u64) -> Result<()> {
    let opts = roadwork::pipeline::demo::DemoOptions {
        n,
        seed,
        progress: true,
    };
    let r = roadwork::pipeline::demo::run(cfg, &opts).await?;
    println!("store: {}", r.store_uri);
    let d = &r.data;
    println!(
        "{} demo data in {}: {} labelled (NATIX shard), {} unlabelled pool scenes, {} validator-like crops",
        if d.generated { "generated" } else { "reusing" },
        d.dir.display(),
        d.labelled,
        d.pool,
        d.traffic
    );
    for (i, night) in r.nights.iter().enumerate() {
        println!("\n== night {} ==", i + 1);
        cli::labels::print_nightly(night);
        if i == 0
            && let Some(a) = &r.answered
        {
            println!("\nthe demo annotator answered the selection from the ground truth:");
            print!("{a}");
        }
    }
    if !r.evals.is_empty() {
        println!("\nheads on the frozen eval set:");
        for (i, e) in r.evals.iter().enumerate() {
            let m = &e.eval.metrics;
            println!(
                "  night {} {}  n {}  accuracy {:.4}  MCC {:.4}  ROC-AUC {}  eval set {}",
                i + 1,
                e.version,
                m.n,
                m.accuracy,
                m.mcc,
                m.roc_auc.map_or("–".into(), |v| format!("{v:.4}")),
                &e.eval.eval_set[..12.min(e.eval.eval_set.len())]
            );
        }
    }
    let sv = &r.serve;
    println!(
        "\nserved the champion at {} as axon {}; signed requests from validator {}:",
        sv.url, sv.axon_hotkey, sv.validator_hotkey
    );
    for (name, label, p) in &sv.answers {
        let label = label.map_or("-".to_string(), |l| format!("{l:?}").to_lowercase());
        println!("  {name:<14} label {label:<9} prediction {p:.4}");
    }
    println!("metrics:\n{}", sv.metrics);
    println!(
        "query log: {} answers moved into Lance ({} segments)",
        sv.moved.records, sv.moved.segments
    );
    println!("\nsamples by source and effective label:");
    print!("{}", render_table(&r.by_source_label, 100));
    println!("\nsamples by era and format:");
    print!("{}", render_table(&r.by_era, 100));
    println!("\n{} samples in the store", r.total_samples);
    Ok(())
}

async fn ingest(cfg: &Config, cmd: IngestCmd) -> Result<()> {
    let store = Store::open(&cfg.data.store_uri()).await?;
    let _lock = cli::labels::writer_lock(cfg, "roadwork ingest")?;
    let ingestor = Ingestor::new(store, cfg.ingest.clone(), cfg.decode);
    let summary = match cmd {
        IngestCmd::Folder {
            dir,
            labels,
            source,
            author,
        } => {
            let opts = FolderOptions {
                labels_csv: labels,
                source,
                author,
            };
            ingestor.ingest_folder(&dir, &opts).await?
        }
        IngestCmd::Natix {
            files,
            dataset_name,
        } => {
            ingestor
                .ingest_natix(&files, &NatixOptions { dataset_name })
                .await?
        }
        IngestCmd::Parquet { files } => ingestor.ingest_parquet(&files).await?,
        IngestCmd::Querylog { file } => ingestor.ingest_querylog(&file).await?,
    };
    print!("{summary}");
    Ok(())
}

async fn store_cmd(cfg: &Config, cmd: StoreCmd) -> Result<()> {
    let store = Store::open(&cfg.data.store_uri()).await?;
    match cmd {
        StoreCmd::Info { json } => {
            let info = cli::store_info(&store).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
                return Ok(());
            }
            println!("store: {}", store.uri());
            println!("layout version: {}", info.layout_version);
            for t in &info.tables {
                println!(
                    "  {:<20} {:>10} rows  version {}",
                    t.name, t.rows, t.version
                );
                let cols: Vec<String> = t
                    .columns
                    .iter()
                    .map(|c| {
                        format!(
                            "{}: {}{}",
                            c.name,
                            c.r#type,
                            if c.nullable { "?" } else { "" }
                        )
                    })
                    .collect();
                println!("      {}", cols.join(", "));
            }
            for s in store.snapshots().await? {
                let v: Vec<String> = s.versions.iter().map(|(t, v)| format!("{t}@{v}")).collect();
                println!("snapshot {}: {}", s.name, v.join(", "));
            }
        }
        StoreCmd::Snapshot { name } => {
            let name = SnapshotName::parse(&name)?;
            let s = store.snapshot(&name).await?;
            println!("snapshot {} pins {} tables", s.name, s.versions.len());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every leaf command of the real parser, by its path (`["models", "list"]`).
    fn leaves(cmd: &clap::Command, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
        let subs: Vec<&clap::Command> = cmd
            .get_subcommands()
            .filter(|s| s.get_name() != "help")
            .collect();
        if subs.is_empty() {
            let help = cmd.clone().render_long_help().to_string();
            out.push((path.clone(), help));
            return;
        }
        for s in subs {
            path.push(s.get_name().to_string());
            leaves(s, path, out);
            path.pop();
        }
    }

    #[test]
    fn every_subcommand_help_ends_with_an_example() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut found = Vec::new();
        leaves(&cmd, &mut Vec::new(), &mut found);
        assert!(found.len() > 20, "only {} commands found", found.len());
        let missing: Vec<String> = found
            .iter()
            .filter(|(_, help)| !help.contains("Example"))
            .map(|(p, _)| p.join(" "))
            .collect();
        assert!(missing.is_empty(), "no example in --help of: {missing:?}");
        // The walk reaches the nested groups too.
        assert!(found.iter().any(|(p, _)| p == &["models", "rollback"]));
    }
}
