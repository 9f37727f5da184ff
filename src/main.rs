//! The `roadwork` command line: parses arguments, loads configuration, sets up logging, calls one
//! library function per subcommand and maps errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use roadwork::config::Config;
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
    /// TOML configuration file (see README "Configuration").
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
    #[command(after_help = "Example:\n  roadwork demo --n 200 --seed 7")]
    Demo {
        /// Scenes to generate and ingest.
        #[arg(long, default_value_t = 200)]
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
    /// Store maintenance: layout, versions and snapshots.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Benchmarks (numbers for the README).
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Subcommand)]
enum IngestCmd {
    /// An image folder; labels from roadwork/ and clean/ sub-folders, a CSV, or manifest.jsonl.
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
    /// A JSONL query log written by `roadwork serve`.
    #[command(
        after_help = "Example:\n  roadwork ingest querylog roadwork-data/querylog/2026-11-25.jsonl"
    )]
    Querylog { file: PathBuf },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Tables, row counts, versions and snapshots.
    #[command(after_help = "Example:\n  roadwork store info")]
    Info,
    /// Tags the current version of every table (e.g. before a training run).
    #[command(after_help = "Example:\n  roadwork store snapshot train/head-20261125")]
    Snapshot { name: String },
}

#[derive(Subcommand)]
enum BenchCmd {
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
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let cfg = load_config(&cli)?;
    match cli.command {
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

async fn demo(cfg: &Config, n: usize, seed: u64) -> Result<()> {
    let opts = roadwork::pipeline::demo::DemoOptions {
        n,
        seed,
        progress: true,
    };
    let r = roadwork::pipeline::demo::run(cfg, &opts).await?;
    println!("store: {}", r.store_uri);
    match &r.generated {
        Some(g) => println!(
            "generated {} scenes ({} roadwork, {} clean) in {:.1} s",
            g.n, g.roadwork, g.clean, g.elapsed_s
        ),
        None => println!("scenes already generated; reusing them"),
    }
    for s in &r.ingests {
        print!("{s}");
    }
    println!("\nsamples by source and effective label:");
    print!("{}", render_table(&r.by_source_label, 100));
    println!("\nsamples by era and format:");
    print!("{}", render_table(&r.by_era, 100));
    println!("\n{} samples in the store", r.total_samples);
    Ok(())
}

async fn ingest(cfg: &Config, cmd: IngestCmd) -> Result<()> {
    let store = Store::open(&cfg.data.store_uri()).await?;
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
        IngestCmd::Querylog { file } => ingestor.ingest_querylog(&file).await?,
    };
    print!("{summary}");
    Ok(())
}

async fn store_cmd(cfg: &Config, cmd: StoreCmd) -> Result<()> {
    let store = Store::open(&cfg.data.store_uri()).await?;
    match cmd {
        StoreCmd::Info => {
            println!("store: {}", store.uri());
            println!("layout version: {}", roadwork::store::SCHEMA_VERSION);
            for (table, version) in store.versions().await? {
                let rows = store.count_rows(&table, None).await?;
                println!("  {table:<20} {rows:>10} rows  version {version}");
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
