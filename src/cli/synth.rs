//! `roadwork synth plan|run|report`: fill the gaps of a mining run with generated images.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use roadwork::config::Config;
use roadwork::embed::load_encoder;
use roadwork::store::{RunKind, RunStatus, Store};
use roadwork::synth::{
    BackendKind, SynthSummary, Synthesizer, default_report_dir, open_backend, plan,
};

use super::labels::writer_lock;

/// Settings a command line may override.
#[derive(clap::Args, Clone)]
pub struct SynthOverrides {
    /// `procedural` (offline, free) or `bedrock` (default from config: procedural).
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,
    /// The mining run whose gaps are filled (default: the latest successful one).
    #[arg(long)]
    mine_run: Option<String>,
    #[arg(long)]
    seed: Option<u64>,
    /// Hard budget: images per run.
    #[arg(long)]
    max_images: Option<usize>,
    /// Hard budget: dollars per run at the configured prices.
    #[arg(long)]
    max_usd: Option<f64>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BackendArg {
    Procedural,
    Bedrock,
}

#[derive(Subcommand)]
pub enum SynthCmd {
    /// Prints the gaps, the requests and what they would cost; generates nothing.
    #[command(after_help = "Examples:
  roadwork synth plan
  roadwork synth plan --backend bedrock --max-usd 10 --json")]
    Plan {
        #[command(flatten)]
        o: SynthOverrides,
        /// The whole plan as JSON (every job with its prompt, seed, model and price).
        #[arg(long)]
        json: bool,
    },
    /// Generates, checks and stores images for the planned gaps (within the budget).
    #[command(after_help = "Examples:
  roadwork synth run
  roadwork synth run --backend bedrock --max-images 100 --max-usd 8
  roadwork synth run --weights dinov3_vits16.safetensors --mine-run mine-20261201T030000.000-1a2b")]
    Run {
        #[command(flatten)]
        o: SynthOverrides,
        /// DINOv3 weights of the encoder that made the mining run's embeddings (default:
        /// embed.weights).
        #[arg(long)]
        weights: Option<PathBuf>,
    },
    /// Prints a synthesis run's summary and where its report is (default: the latest run).
    #[command(after_help = "Examples:
  roadwork synth report
  roadwork synth report synth-20261201T031500.000-9f3c")]
    Report { run: Option<String> },
}

fn apply(cfg: &mut Config, o: &SynthOverrides) {
    let s = &mut cfg.synth;
    if let Some(b) = o.backend {
        s.backend = match b {
            BackendArg::Procedural => BackendKind::Procedural,
            BackendArg::Bedrock => BackendKind::Bedrock,
        };
    }
    if let Some(r) = &o.mine_run {
        s.mine_run = Some(r.clone());
    }
    if let Some(v) = o.seed {
        s.seed = v;
    }
    if let Some(v) = o.max_images {
        s.max_images = v;
    }
    if let Some(v) = o.max_usd {
        s.max_usd = v;
    }
}

pub async fn synth(mut cfg: Config, cmd: SynthCmd) -> Result<()> {
    let store = Store::open(&cfg.data.store_uri()).await?;
    match cmd {
        SynthCmd::Plan { o, json } => {
            apply(&mut cfg, &o);
            let plan = plan(&store, &cfg.synth, &cfg.train.split).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{plan}");
            }
            Ok(())
        }
        SynthCmd::Run { o, weights } => {
            apply(&mut cfg, &o);
            cfg.synth.validate().map_err(anyhow::Error::msg)?;
            let _lock = writer_lock(&cfg, "roadwork synth run")?;
            let embed = cfg.embed.clone();
            let weights = weights.or_else(|| cfg.embed.weights.clone());
            let encoder =
                tokio::task::spawn_blocking(move || load_encoder(&embed, weights.as_deref()))
                    .await??;
            let backend = open_backend(&cfg.synth).await;
            let dir = cfg
                .synth
                .report_dir
                .clone()
                .unwrap_or_else(|| default_report_dir(&cfg.data.dir));
            let s = Synthesizer::new(
                store,
                cfg.synth.clone(),
                cfg.train.split.clone(),
                backend,
                encoder,
            )?
            .with_report_dir(dir)
            .with_progress(true);
            print!("{}", s.run().await?);
            Ok(())
        }
        SynthCmd::Report { run } => {
            let runs = store.runs().await?;
            let row = match &run {
                Some(id) => runs.iter().find(|r| r.run_id.as_str() == id),
                None => runs.iter().rev().find(|r| r.kind == RunKind::Synth),
            }
            .context("no synthesis run in the ledger; run `roadwork synth run` first")?;
            if row.kind != RunKind::Synth {
                anyhow::bail!(
                    "run {} is a {} run, not a synthesis run",
                    row.run_id,
                    row.kind
                );
            }
            if row.status != RunStatus::Ok {
                println!(
                    "run {} is {}: {}",
                    row.run_id,
                    row.status.as_str(),
                    row.summary
                );
                return Ok(());
            }
            let s: SynthSummary = serde_json::from_str(&row.summary)
                .with_context(|| format!("run {} has an unreadable summary", row.run_id))?;
            print!("{s}");
            let jobs = store.synth_images(Some(row.run_id.as_str())).await?;
            println!(
                "  {} jobs recorded in synth_images for this run",
                jobs.len()
            );
            Ok(())
        }
    }
}
