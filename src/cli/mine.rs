//! `roadwork bench al`, `roadwork bench mine`: argument handling and printing; the work is in
//! `roadwork::bench::{al, mine}`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use roadwork::backend::ComputeDevice;
use roadwork::bench::al::{AlConfig, load_digits, markdown, run};
use roadwork::embed::Cpu;
use roadwork::mine::{Compute, SelectConfig, Strategy};

#[derive(clap::Args)]
pub struct BenchAl {
    /// The digits CSV (label, p0..p63).
    #[arg(long, default_value = "datasets/digits/digits.csv")]
    data: PathBuf,
    #[arg(long, default_value_t = 10)]
    seeds: usize,
    /// Cumulative label budgets.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,20,30,40,50,75,100,150,200,300,400,500"
    )]
    budgets: Vec<usize>,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "auto,typiclust,coreset,margin,probcover,random"
    )]
    strategies: Vec<Strategy>,
    /// `auto` stays in the low-budget regime while labelled + budget ≤ this × classes.
    #[arg(long)]
    low_budget_per_class: Option<f64>,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs the active-learning benchmark with the selection settings of `[mine.select]` (so a
/// config's thresholds and weights can be tried before a nightly run uses them) and prints its
/// table.
pub fn bench_al(b: BenchAl, select: SelectConfig) -> Result<()> {
    let data = load_digits(&b.data).with_context(|| "run from the checkout, or pass --data")?;
    let mut cfg = AlConfig {
        budgets: b.budgets,
        seeds: b.seeds,
        strategies: b.strategies,
        select,
        ..AlConfig::default()
    };
    if let Some(v) = b.low_budget_per_class {
        cfg.select.low_budget_per_class = v;
    }
    let bar = ProgressBar::new((cfg.seeds * cfg.strategies.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = std::time::Instant::now();
    let rows = run(&Compute::<Cpu>::host(), &data, &cfg, |m| {
        bar.set_message(m.to_string());
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    println!(
        "digits: {} images, {} seeds, test {} per seed, accuracy % (mean ± s.e.), {:.0} s",
        data.y.len(),
        cfg.seeds,
        cfg.test_size,
        start.elapsed().as_secs_f64()
    );
    print!("{}", markdown(&rows));
    if let Some(p) = b.json {
        std::fs::write(&p, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct BenchMine {
    /// Vector counts, e.g. `100000,1000000`.
    #[arg(long, value_delimiter = ',', default_value = "100000")]
    n: Vec<usize>,
    #[arg(long, default_value_t = 384)]
    dim: usize,
    #[arg(long, default_value_t = 256)]
    kmeans_k: usize,
    /// Build the exact kNN graph at every n (default: IVF above 20,000 vectors); also times
    /// scikit-learn's brute-force search on the same vectors.
    #[arg(long)]
    exact: bool,
    /// Where the mining products run: the host `gemm` kernels, or the GPU (`--features cuda`).
    #[arg(long, value_enum, default_value = "cpu")]
    device: ComputeDevice,
    /// Python with scikit-learn for the side-by-side run.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Reference script (default: the repository's benches/sklearn_mine.py; benches/torch_mine.py
    /// speaks the same protocol for a PyTorch-on-GPU side).
    #[arg(long)]
    sklearn_script: Option<PathBuf>,
    /// Skip the scikit-learn side.
    #[arg(long)]
    no_sklearn: bool,
    /// With `--device cuda`, skip the host engine's rows (by default both run in the same call).
    #[arg(long)]
    no_host: bool,
    /// Also measure the Lance ANN index (`similar`) against exact search on this many vectors
    /// written to a scratch store under <data>/bench/lance (0 = skip).
    #[arg(long, default_value_t = 0)]
    lance_n: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Measures recall@10 of the Lance ANN path against exact search.
pub async fn bench_lance(cfg: &Config, b: &BenchMine) -> Result<()> {
    if b.lance_n == 0 {
        return Ok(());
    }
    let dir = cfg.data.dir.join("bench/lance");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let store = Store::open(&dir.to_string_lossy()).await?;
    let r = roadwork::bench::mine::lance_recall(&store, b.lance_n, b.dim, 200).await?;
    println!(
        "\nLance ANN (IVF-HNSW-SQ, cosine) on {} × {}: index built in {:.1} s; recall@10 vs exact {:.3} over {} queries; {:.1} ms/query ANN, {:.1} ms/query exact",
        r.n,
        r.dim,
        r.index_build_s,
        r.recall_at_10,
        r.queries,
        r.ann_ms_per_query,
        r.exact_ms_per_query
    );
    Ok(())
}

/// Runs the mining scale benchmark and prints its tables: on `--device cuda` the GPU engine and
/// the host engine in the same call (unless `--no-host`), the reference next to the first.
pub fn bench_mine(b: &BenchMine) -> Result<()> {
    use roadwork::bench::mine::{
        MinePlan, SklearnRef, default_sklearn_script, engines_markdown, markdown, run_engines,
    };
    let mut engines = Vec::new();
    match b.device {
        ComputeDevice::Cpu => engines.push(Compute::<Cpu>::host()),
        #[cfg(feature = "cuda")]
        ComputeDevice::Cuda => {
            engines.push(Compute::<Cpu>::cuda(0)?);
            if !b.no_host {
                engines.push(Compute::<Cpu>::host());
            }
        }
        #[cfg(not(feature = "cuda"))]
        ComputeDevice::Cuda => anyhow::bail!(roadwork::backend::unsupported(
            ComputeDevice::Cuda,
            roadwork::backend::Precision::F32
        )),
    }
    let plan = MinePlan {
        n: 0,
        dim: b.dim,
        kmeans_k: b.kmeans_k,
        seed: 0,
        exact: b.exact,
        sklearn: (!b.no_sklearn).then(|| SklearnRef {
            python: b.python.clone(),
            script: b
                .sklearn_script
                .clone()
                .unwrap_or_else(default_sklearn_script),
        }),
    };
    let rows = run_engines(&engines, &b.n, &plan, |r| {
        print!("{}", markdown(std::slice::from_ref(r)))
    })?;
    println!();
    print!("{}{}", markdown(&rows), engines_markdown(&rows));
    if let Some(p) = &b.json {
        std::fs::write(p, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

use std::collections::HashSet;

use roadwork::config::Config;
use roadwork::mine::{Miner, write_selection_csv};
use roadwork::store::{SampleId, Store, tables};
use roadwork::train::Registry;

#[derive(clap::Subcommand)]
pub enum MineCmd {
    /// kNN graph, clusters, duplicates and leakage, hard cases, label issues, drift; writes
    /// mine_scores, mine_clusters, duplicates and a Markdown report.
    #[command(
        after_help = "Example:\n  roadwork mine run\n  roadwork mine run --model head-20261125T101530-3fa2c1"
    )]
    Run {
        /// Head whose scores to use (default: the champion).
        #[arg(long)]
        model: Option<String>,
        /// Report directory (default <data>/reports).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Where the kNN graph, k-means and the other products run (`cuda`: `--features cuda`).
        #[arg(long, value_enum, default_value = "cpu")]
        device: ComputeDevice,
    },
    /// Chooses unlabelled samples to label under a budget; stores them as a named selection.
    #[command(
        after_help = "Examples:\n  roadwork mine select --budget 200 --name nightly-1125 --out to_label.csv\n  roadwork mine select --budget 50 --strategy typiclust --where \"source = 'validator'\""
    )]
    Select {
        #[arg(long)]
        budget: usize,
        #[arg(long, value_enum, default_value = "auto")]
        strategy: Strategy,
        /// Selection name (default: select-<time>).
        #[arg(long)]
        name: Option<String>,
        /// Only samples matching this SQL filter on `samples` are candidates.
        #[arg(long = "where")]
        filter: Option<String>,
        /// Head whose probabilities to use (default: the champion).
        #[arg(long)]
        model: Option<String>,
        /// Also write the selection as CSV here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "cpu")]
        device: ComputeDevice,
    },
}

/// The named head, else the champion.
pub fn champion(cfg: &Config, model: Option<String>) -> Result<Option<String>> {
    if model.is_some() {
        return Ok(model);
    }
    let reg = Registry::open(cfg.train.registry_dir(&cfg.data.dir))?;
    Ok(reg.champion()?.map(|p| p.version))
}

/// `roadwork mine …`.
pub async fn mine(cfg: Config, cmd: MineCmd) -> Result<()> {
    let store = Store::open(&cfg.data.store_uri()).await?;
    let _lock = super::labels::writer_lock(&cfg, "roadwork mine")?;
    let miner = Miner::new(store.clone(), cfg.mine.clone())?;
    let device = match &cmd {
        MineCmd::Run { device, .. } | MineCmd::Select { device, .. } => *device,
    };
    match device {
        ComputeDevice::Cpu => mine_on(&cfg, &store, &miner, Compute::<Cpu>::host(), cmd).await,
        #[cfg(feature = "cuda")]
        ComputeDevice::Cuda => {
            let c = Compute::<Cpu>::cuda(0)?;
            mine_on(&cfg, &store, &miner, c, cmd).await
        }
        #[cfg(not(feature = "cuda"))]
        ComputeDevice::Cuda => anyhow::bail!(roadwork::backend::unsupported(
            ComputeDevice::Cuda,
            roadwork::backend::Precision::F32
        )),
    }
}

async fn mine_on<B: burn::prelude::Backend>(
    cfg: &Config,
    store: &Store,
    miner: &Miner,
    c: Compute<B>,
    cmd: MineCmd,
) -> Result<()> {
    match cmd {
        MineCmd::Run { model, report, .. } => {
            let head = champion(cfg, model)?;
            let dir = report.unwrap_or_else(|| cfg.data.dir.join("reports"));
            let s = miner.run(c, head.as_deref(), Some(&dir)).await?;
            print_mine_summary(&s);
        }
        MineCmd::Select {
            budget,
            strategy,
            name,
            filter,
            model,
            out,
            ..
        } => {
            let head = champion(cfg, model)?;
            let name = name.unwrap_or_else(|| {
                format!("select-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S"))
            });
            let only = match &filter {
                Some(f) => Some(sample_ids_where(store, f).await?),
                None => None,
            };
            let (sel, rows) = miner
                .select(c, head.as_deref(), &name, budget, strategy, only.as_ref())
                .await?;
            println!(
                "selection {name}: {} samples, strategy {} (asked {}{}){}",
                rows.len(),
                sel.used.as_str(),
                sel.requested.as_str(),
                if sel.regime.is_empty() {
                    String::new()
                } else {
                    format!(", {}", sel.regime)
                },
                sel.clamped
                    .as_deref()
                    .map_or(String::new(), |c| format!("; {c}"))
            );
            for r in rows.iter().take(20) {
                println!(
                    "{:>4}  {}  {:.3}  {}",
                    r.rank,
                    &r.sample_id[..16],
                    r.score,
                    r.reasons
                );
            }
            if let Some(p) = out {
                write_selection_csv(&rows, &p)?;
                println!("wrote {}", p.display());
            }
        }
    }
    Ok(())
}

async fn sample_ids_where(store: &Store, filter: &str) -> Result<HashSet<String>> {
    let batches = store
        .scan(tables::SAMPLES, Some(&["sample_id"]), Some(filter), None)
        .await
        .with_context(|| format!("filter {filter:?} on samples"))?;
    let mut out = HashSet::new();
    for b in &batches {
        if let Some(c) = b
            .column_by_name("sample_id")
            .and_then(|c| c.as_any().downcast_ref::<arrow_array::StringArray>())
        {
            out.extend(c.iter().flatten().map(str::to_string));
        }
    }
    Ok(out)
}

/// Prints a mining run: counts, top hard cases, under-covered clusters.
pub fn print_mine_summary(s: &roadwork::mine::MineSummary) {
    println!(
        "mining {}: {} samples, {} clusters, kNN {} (recall@10 {:.3}), outliers {}, label issues {}",
        s.run_id,
        s.n,
        s.clusters,
        s.knn_method,
        s.knn_recall_at_10,
        s.outliers,
        s.label_issues.map_or("skipped".into(), |v| v.to_string())
    );
    let mut d: Vec<_> = s.duplicates.iter().collect();
    d.sort();
    println!(
        "duplicates: {}; eval samples with a training twin: {}",
        d.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        s.leakage.leaked_eval.len()
    );
    if let Some(m) = &s.drift {
        println!("drift: MMD² {:.5}, p = {:.3}", m.mmd2, m.p_value);
    }
    for n in &s.notes {
        println!("note: {n}");
    }
    println!("top hard cases:");
    for h in s.top_hard.iter().take(10) {
        println!(
            "  {}  {:.3}  label {}  p {}  {}",
            &h.sample_id[..16],
            h.hardness,
            h.label.map_or("–".into(), |l| l.to_string()),
            h.prob.map_or("–".into(), |p| format!("{p:.3}")),
            h.reasons.join("; ")
        );
    }
    if s.under_covered.is_empty() {
        println!(
            "under-covered clusters: none (no cluster gets ≥ 1.5× its training share of recent traffic)"
        );
    } else {
        println!("under-covered clusters (traffic share vs training share):");
        for u in s.under_covered.iter().take(10) {
            println!(
                "  cluster {:>3}: {} queries, {:.1} % of traffic vs {:.1} % of training (z {:.1})",
                u.cluster,
                u.traffic_n,
                100.0 * u.traffic_share,
                100.0 * u.train_share,
                u.z
            );
        }
    }
    if let Some(p) = &s.report {
        println!("mining report: {}", p.display());
    }
}

#[derive(clap::Args)]
pub struct SimilarArgs {
    /// A sample id (64 hex) or an image file already in the store.
    query: String,
    #[arg(short, long, default_value_t = 20)]
    k: usize,
    /// Only samples matching this SQL filter on `samples`.
    #[arg(long = "where")]
    filter: Option<String>,
    /// Flat scan instead of the ANN index.
    #[arg(long)]
    exact: bool,
    /// Also measure recall@10 of the ANN path against exact search on this many random samples.
    #[arg(long)]
    recall: Option<usize>,
    /// Weights (safetensors) to embed an image file that is not in the store; without it the
    /// configured random model is used, which only matches a store embedded the same way.
    #[arg(long)]
    weights: Option<PathBuf>,
}

/// Embeds an image that is not in the store with the configured encoder, if that encoder is the
/// one the stored vectors came from.
fn embed_file(
    cfg: &Config,
    bytes: &[u8],
    weights: Option<&std::path::Path>,
    model: &str,
) -> Result<Vec<f32>> {
    let mut ec = cfg.embed.clone();
    // A store embedded with the weight-free baseline is matched without any flag.
    if weights.is_none() && model.starts_with("baseline-") {
        ec.encoder = roadwork::embed::EncoderKind::Baseline;
    }
    let e = roadwork::embed::load_encoder(&ec, weights)?;
    anyhow::ensure!(
        e.model_id() == model,
        "the stored vectors are {model}, but the configured encoder is {}; pass the same --weights \
         (and [embed] settings) the store was embedded with",
        e.model_id()
    );
    let img = roadwork::imaging::decode(bytes, &cfg.decode)?;
    e.embed_images(std::slice::from_ref(&img.image))?
        .pop()
        .context("the encoder returned no vector")
}

/// `roadwork similar`.
pub async fn similar(cfg: Config, a: SimilarArgs) -> Result<()> {
    let store = Store::open(&cfg.data.store_uri()).await?;
    let model =
        roadwork::mine::resolve_embedding_model(&store, cfg.mine.embedding_model.as_deref())
            .await?;
    let (id, file) = match a.query.parse::<SampleId>() {
        Ok(id) => (id, None),
        Err(_) => {
            let bytes = std::fs::read(&a.query).with_context(|| {
                format!("{} is neither a sample id nor a readable file", a.query)
            })?;
            (SampleId::of_bytes(&bytes), Some(bytes))
        }
    };
    let v = match (store.vector_of(&model, &id).await?, file) {
        (Some(v), _) => v,
        (None, Some(bytes)) => {
            let (cfg2, w, m) = (cfg.clone(), a.weights.clone(), model.clone());
            tokio::task::spawn_blocking(move || embed_file(&cfg2, &bytes, w.as_deref(), &m))
                .await??
        }
        (None, None) => anyhow::bail!(
            "sample {id} has no {model} embedding; ingest it and run `roadwork embed` first"
        ),
    };
    let only = match &a.filter {
        Some(f) => Some(sample_ids_where(&store, f).await?),
        None => None,
    };
    // Small candidate sets go to Lance as a prefilter; large ones are post-filtered.
    let (prefilter, fetch) = match &only {
        Some(s) if s.len() <= 5000 => (
            Some(format!(
                "sample_id IN ({})",
                s.iter()
                    .map(|x| format!("'{x}'"))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            a.k + 1,
        ),
        Some(_) => (None, (a.k + 1) * 20),
        None => (None, a.k + 1),
    };
    let hits = store
        .nearest(&model, &v, fetch, prefilter.as_deref(), a.exact)
        .await?;
    println!("rank  sample_id                                                         distance");
    let mut rank = 0;
    for (sid, d) in hits {
        let s = sid.to_string();
        if s == id.to_string() || only.as_ref().is_some_and(|o| !o.contains(&s)) {
            continue;
        }
        rank += 1;
        println!("{rank:>4}  {s}  {d:.4}");
        if rank == a.k {
            break;
        }
    }
    if let Some(nq) = a.recall {
        let ids: Vec<String> = store
            .embedded_ids(&model)
            .await?
            .into_iter()
            .take(nq)
            .collect();
        let (mut hit, mut total) = (0usize, 0usize);
        for q in &ids {
            let Ok(qid) = q.parse::<SampleId>() else {
                continue;
            };
            let Some(qv) = store.vector_of(&model, &qid).await? else {
                continue;
            };
            let ann = store.nearest(&model, &qv, 10, None, false).await?;
            let exact = store.nearest(&model, &qv, 10, None, true).await?;
            let e: HashSet<String> = exact.iter().map(|x| x.0.to_string()).collect();
            hit += ann.iter().filter(|x| e.contains(&x.0.to_string())).count();
            total += exact.len();
        }
        println!(
            "recall@10 of the ANN path vs exact search over {} queries: {:.3}",
            ids.len(),
            hit as f64 / total.max(1) as f64
        );
    }
    Ok(())
}
