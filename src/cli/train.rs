//! `roadwork train`, `roadwork eval`, `roadwork models …` and `roadwork bench train`: argument
//! handling and printing only; the work is in `roadwork::train`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use roadwork::config::Config;
use roadwork::embed::ComputeDevice;
use roadwork::store::{SnapshotName, Store};
use roadwork::train::{
    Evaluation, GateDecision, Metrics, ModelCard, Registry, ShadowStats, TrainSummary, Trainer,
    evaluate_version, promote, write_report,
};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Train on this existing snapshot instead of pinning the current state as train/<version>.
    #[arg(long)]
    snapshot: Option<String>,
    /// Embeddings to train on (default: config, else the only embeddings table).
    #[arg(long)]
    embedding_model: Option<String>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, value_enum)]
    device: Option<ComputeDevice>,
    /// Hidden layer widths, e.g. `256` or `512,128`; `0` for a linear head.
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// Where to write the HTML report (default <data>/reports/<version>).
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Model version (default: the champion).
    #[arg(long)]
    model: Option<String>,
    /// Write the HTML report here (default <data>/reports/<version>-eval).
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ModelsCmd {
    /// Every registered head with its eval metrics; the champion is marked.
    #[command(after_help = "Example:\n  roadwork models list")]
    List,
    /// One head's model card (JSON).
    #[command(after_help = "Example:\n  roadwork models show head-20261125T101530-3fa2c1")]
    Show { version: String },
    /// Makes a head champion if it beats the current one on the eval set (see [train.promote]).
    #[command(
        after_help = "Examples:\n  roadwork models promote head-20261125T101530-3fa2c1\n  roadwork models promote head-20261125T101530-3fa2c1 --force"
    )]
    Promote {
        version: String,
        /// Skip the gate (the decision and its reasons are still printed).
        #[arg(long)]
        force: bool,
    },
    /// Restores the previous champion.
    #[command(
        after_help = "The server following CHAMPION.json hot-loads the restored head.\n\nExample:\n  roadwork models rollback"
    )]
    Rollback,
    /// Prints the champion pointer.
    #[command(after_help = "Example:\n  roadwork models champion")]
    Champion,
    /// Names the head servers score in shadow beside the champion (CHALLENGER.json), clears it,
    /// or, with no argument, prints it and its shadow agreement so far.
    #[command(
        after_help = "A running `roadwork serve` picks the pointer up within serve.watch_ms and logs the\nchallenger's score after each answer; the answer itself never changes.\n\nExamples:\n  roadwork models challenger head-20261125T101530-3fa2c1\n  roadwork models challenger\n  roadwork models challenger --clear"
    )]
    Challenger {
        version: Option<String>,
        /// Stop shadow scoring.
        #[arg(long, conflicts_with = "version")]
        clear: bool,
    },
}

#[derive(clap::Args)]
pub struct BenchTrain {
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    #[arg(long, default_value_t = 1024)]
    dim: usize,
    /// Timed epochs.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Head shapes to time: `256` = one hidden layer, `0` = linear; several separated by `;`.
    #[arg(long, default_value = "0;256")]
    heads: String,
    #[arg(long, value_enum, default_value = "cpu")]
    device: ComputeDevice,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_hidden(v: &[usize]) -> Vec<usize> {
    v.iter().copied().filter(|&w| w > 0).collect()
}

fn registry(cfg: &Config) -> Result<Registry> {
    Ok(Registry::open(cfg.train.registry_dir(&cfg.data.dir))?)
}

/// One line of the headline metrics.
pub fn metrics_line(m: &Metrics) -> String {
    let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.3}"));
    format!(
        "n={} acc={:.3} MCC={:.3} F1={:.3} ROC-AUC={} PR-AUC={} ECE={:.3}",
        m.n,
        m.accuracy,
        m.mcc,
        m.f1,
        f(m.roc_auc),
        f(m.pr_auc),
        m.ece
    )
}

/// Prints what a training run did.
pub fn print_summary(s: &TrainSummary) {
    let c = &s.card;
    println!("trained {} in {:.1} s", c.model_version, s.elapsed_s);
    println!(
        "  embeddings {}  dim {}  snapshot {}",
        c.embedding_model, c.dim, c.snapshot
    );
    println!("  data {:?}", c.data);
    println!(
        "  fold best epochs {:?} → final head {} epochs",
        c.fold_best_epochs, c.final_epochs
    );
    let cal = &c.calibration;
    match &cal.skipped {
        Some(why) => println!("  calibration skipped: {why}"),
        None => println!(
            "  temperature {:.3} (on {} samples): ECE {:.4} → {:.4}",
            cal.temperature.t, cal.temperature.fitted_on, cal.ece_before, cal.ece_after
        ),
    }
    match &c.metrics {
        Some(m) => println!("  eval: {}", metrics_line(m)),
        None => println!("  eval: no eval-split samples"),
    }
    if let Some(r) = &c.replay {
        println!(
            "  reward replay: {:.4} per query, validator EMA {:.4} ({} queries)",
            r.mean_reward, r.final_ema, r.queries
        );
    }
    println!(
        "  artifact {}  ({} samples scored)",
        s.artifact_dir.display(),
        s.scored
    );
}

/// Prints a gate decision.
pub fn print_decision(d: &GateDecision) {
    let champ = d.champion.as_deref().unwrap_or("(none)");
    let vs = d
        .champion_score
        .map_or(String::new(), |c| format!(" vs champion {champ} {c:.4}"));
    println!(
        "{} {}: {:?} {:.4}{vs} on {} shared eval samples",
        if d.promoted { "promoted" } else { "refused" },
        d.challenger,
        d.metric,
        d.challenger_score,
        d.n
    );
    for r in &d.reasons {
        println!("  - {r}");
    }
}

pub async fn train(mut cfg: Config, a: TrainArgs) -> Result<()> {
    if let Some(m) = a.embedding_model {
        cfg.train.embedding_model = Some(m);
    }
    if let Some(s) = a.seed {
        cfg.train.seed = s;
    }
    if let Some(d) = a.device {
        cfg.train.device = d;
    }
    if let Some(h) = a.hidden {
        cfg.train.head.hidden = parse_hidden(&h);
    }
    cfg.validate()?;
    let snapshot = a.snapshot.as_deref().map(SnapshotName::parse).transpose()?;
    let store = Store::open(&cfg.data.store_uri()).await?;
    let _lock = super::labels::writer_lock(&cfg, "roadwork train")?;
    let reg = registry(&cfg)?;
    let trainer = Trainer::new(store.clone(), reg.clone(), cfg.train.clone())?;
    let s = trainer.train(snapshot).await?;
    print_summary(&s);
    let dir = a
        .report
        .unwrap_or_else(|| cfg.data.dir.join("reports").join(&s.card.model_version));
    let e = evaluate_version(
        &store,
        &reg,
        &s.card.model_version,
        &cfg.train.split,
        cfg.train.replay_queries,
        cfg.train.seed,
    )
    .await;
    match e {
        Ok(e) => report(&dir, &e, Some(&s.card))?,
        Err(err) => println!("  no report: {err}"),
    }
    Ok(())
}

fn report(dir: &std::path::Path, e: &Evaluation, card: Option<&ModelCard>) -> Result<()> {
    let index = write_report(dir, e, card)?;
    println!("  report {}", index.display());
    Ok(())
}

pub async fn eval(cfg: Config, a: EvalArgs) -> Result<()> {
    let store = Store::open(&cfg.data.store_uri()).await?;
    let reg = registry(&cfg)?;
    let version = match a.model {
        Some(v) => v,
        None => reg
            .champion()?
            .map(|c| c.version)
            .context("no --model given and no champion promoted yet")?,
    };
    let e = evaluate_version(
        &store,
        &reg,
        &version,
        &cfg.train.split,
        cfg.train.replay_queries,
        cfg.train.seed,
    )
    .await?;
    println!(
        "{version} on eval set {}: {}",
        e.eval_set,
        metrics_line(&e.metrics)
    );
    if let Some(r) = &e.replay {
        println!(
            "  reward replay: {:.4} per query, validator EMA {:.4}",
            r.mean_reward, r.final_ema
        );
    }
    let (card, _) = reg.load(&version)?;
    let dir = a
        .report
        .unwrap_or_else(|| cfg.data.dir.join("reports").join(format!("{version}-eval")));
    report(&dir, &e, Some(&card))
}

pub async fn models(cfg: Config, cmd: ModelsCmd) -> Result<()> {
    let reg = registry(&cfg)?;
    match cmd {
        ModelsCmd::List => {
            let champ = reg.champion()?.map(|c| c.version);
            let challenger = reg.challenger()?.map(|c| c.version);
            for c in reg.list()? {
                let v = Some(c.model_version.as_str());
                let mark = if champ.as_deref() == v {
                    "*"
                } else if challenger.as_deref() == v {
                    "~"
                } else {
                    " "
                };
                let m = c.metrics.as_ref().map_or("no eval".into(), metrics_line);
                println!(
                    "{mark} {}  {}  {m}",
                    c.model_version,
                    c.created_at.format("%Y-%m-%d %H:%M")
                );
            }
        }
        ModelsCmd::Show { version } => {
            let (card, _) = reg.load(&version)?;
            println!("{}", serde_json::to_string_pretty(&card)?);
        }
        ModelsCmd::Promote { version, force } => {
            let store = Store::open(&cfg.data.store_uri()).await?;
            let _lock = super::labels::writer_lock(&cfg, "roadwork models promote")?;
            let d = promote(
                &store,
                &reg,
                &version,
                &cfg.train.promote,
                &cfg.train.split,
                cfg.train.seed,
                force,
            )
            .await?;
            print_decision(&d);
            if !d.promoted {
                anyhow::bail!("promotion refused");
            }
        }
        ModelsCmd::Rollback => {
            let p = reg.rollback()?;
            println!(
                "champion is now {} (pointer {})",
                p.version,
                reg.champion_path().display()
            );
        }
        ModelsCmd::Champion => match reg.champion()? {
            Some(p) => println!("{}", serde_json::to_string_pretty(&p)?),
            None => println!("no champion promoted yet"),
        },
        ModelsCmd::Challenger { clear: true, .. } => match reg.clear_challenger()? {
            Some(c) => println!("shadow scoring of {} stopped", c.version),
            None => println!("no challenger was named"),
        },
        ModelsCmd::Challenger {
            version: Some(v), ..
        } => {
            let c = reg.set_challenger(&v, "manual (roadwork models challenger)")?;
            println!(
                "{} is the challenger (pointer {}); servers score it in shadow",
                c.version,
                reg.challenger_path().display()
            );
        }
        ModelsCmd::Challenger { version: None, .. } => match reg.challenger()? {
            Some(c) => {
                println!("{}", serde_json::to_string_pretty(&c)?);
                let champion = reg.champion()?.map(|p| p.version);
                let store = Store::open(&cfg.data.store_uri()).await?;
                let rows = store
                    .shadow_scores(Some(&c.version), champion.as_deref())
                    .await?;
                match ShadowStats::of(&rows) {
                    Some(s) => println!("against {}: {}", s.champion, s.summary()),
                    None => println!("no shadow answers in the store yet"),
                }
            }
            None => println!("no challenger named"),
        },
    }
    Ok(())
}

pub fn bench_train(cfg: &Config, b: BenchTrain) -> Result<()> {
    let mut rows = Vec::new();
    for head in b.heads.split(';') {
        let widths: Vec<usize> = head
            .split(',')
            .map(|w| w.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("--heads: {head:?} is not a list of widths"))?;
        let mut t = cfg.train.clone();
        t.head.hidden = parse_hidden(&widths);
        t.device = b.device;
        rows.push(roadwork::bench::train::run(&t, b.n, b.dim, b.epochs)?);
    }
    print!("{}", roadwork::bench::train::markdown(&rows));
    if let Some(p) = b.json {
        std::fs::write(&p, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
