//! The mining run over the store: reads one embeddings table with the labels, the head's scores and
//! the prediction log, runs every analysis, writes `mine_scores`, `mine_clusters`, `duplicates`, a
//! `runs` ledger row and a Markdown report; and budgeted selections into `selections`.

mod analyse;
mod load;
mod report;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use burn::prelude::Backend;
use chrono::Utc;
use serde::{Deserialize, Serialize};

pub use report::write_selection_csv;

use super::MineError;
use super::compute::Compute;
use super::dedup::LeakageReport;
use super::drift::{ClusterDrift, DriftConfig, Mmd};
use super::kmeans::KMeansConfig;
use super::knn::KnnConfig;
use super::select::{Pool, SelectConfig, Selection, Strategy, select};
use crate::store::schema::tables;
use crate::store::{RunKind, RunLedger, SelectionRow, Store};

/// Mining settings (`[mine]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MineConfig {
    /// Embeddings to mine (default: the only embeddings table).
    pub embedding_model: Option<String>,
    /// Clusters; default `clamp(√(n/2), 2, 256)`.
    pub clusters: Option<usize>,
    pub knn: KnnConfig,
    pub kmeans: KMeansConfig,
    /// Near duplicates: kNN distance below this × the median nearest-neighbour distance.
    pub near_dup_factor: f64,
    /// Re-encoded duplicates: perceptual hashes within this many bits.
    pub phash_max_hamming: u32,
    /// Outliers: mean kNN distance above Q3 + this × IQR.
    pub outlier_iqr_factor: f64,
    /// Signals at or above this are listed as reasons.
    pub reason_min: f64,
    /// Hard cases printed and put in the report.
    pub top: usize,
    pub drift: DriftConfig,
    pub select: SelectConfig,
}

impl Default for MineConfig {
    fn default() -> Self {
        Self {
            embedding_model: None,
            clusters: None,
            knn: KnnConfig::default(),
            kmeans: KMeansConfig::default(),
            near_dup_factor: 0.13,
            phash_max_hamming: 4,
            outlier_iqr_factor: 1.7,
            reason_min: 0.5,
            top: 20,
            drift: DriftConfig::default(),
            select: SelectConfig::default(),
        }
    }
}

impl MineConfig {
    /// Range checks serde cannot do.
    pub fn validate(&self) -> Result<(), MineError> {
        let bad = |m: &str| Err(MineError::Config(m.into()));
        if self.knn.k == 0 {
            return bad("mine.knn.k must be at least 1");
        }
        if self.clusters == Some(0) {
            return bad("mine.clusters must be at least 1");
        }
        if !(self.near_dup_factor >= 0.0 && self.outlier_iqr_factor >= 0.0) {
            return bad("mine.near_dup_factor and mine.outlier_iqr_factor must be ≥ 0");
        }
        if self.phash_max_hamming > 32 {
            return bad("mine.phash_max_hamming above 32 bits matches unrelated images");
        }
        self.select.validate().map_err(MineError::Config)
    }
}

/// Fewer out-of-fold scored labels than this give no competence estimate (the budget rule
/// decides `auto`'s regime instead).
const MIN_COMPETENCE_ROWS: usize = 20;

/// One hard case for printing.
#[derive(Debug, Clone, Serialize)]
pub struct HardRow {
    pub sample_id: String,
    pub hardness: f64,
    pub reasons: Vec<String>,
    pub label: Option<u8>,
    pub prob: Option<f64>,
}

/// What a mining run did.
#[derive(Debug, Clone, Serialize)]
pub struct MineSummary {
    pub run_id: String,
    pub embedding_model: String,
    pub head_version: Option<String>,
    pub n: usize,
    pub skipped_non_finite: usize,
    pub knn_method: String,
    /// Recall@10 of the approximate graph on a sample (1 for exact).
    pub knn_recall_at_10: f64,
    pub clusters: usize,
    pub duplicates: std::collections::HashMap<String, usize>,
    pub near_threshold: Option<f64>,
    pub leakage: LeakageReport,
    pub label_issues: Option<usize>,
    pub outliers: usize,
    pub drift: Option<Mmd>,
    pub under_covered: Vec<ClusterDrift>,
    pub top_hard: Vec<HardRow>,
    pub notes: Vec<String>,
    pub report: Option<PathBuf>,
}

/// The mining stage on a store.
pub struct Miner {
    store: Store,
    cfg: MineConfig,
}

/// Resolves the embeddings table: configured, or the only one in the store.
pub async fn resolve_embedding_model(
    store: &Store,
    configured: Option<&str>,
) -> Result<String, MineError> {
    let models = store.embedding_models().await?;
    match configured {
        Some(m) if models.iter().any(|x| x == m) => Ok(m.to_string()),
        Some(m) => Err(MineError::Config(format!(
            "no embeddings for model {m}; the store has: {}",
            models.join(", ")
        ))),
        None if models.len() == 1 => Ok(models[0].clone()),
        None if models.is_empty() => Err(MineError::Empty(
            "the store has no embeddings; run `roadwork embed` first".into(),
        )),
        None => Err(MineError::Config(format!(
            "several embedding models ({}); set mine.embedding_model",
            models.join(", ")
        ))),
    }
}

impl Miner {
    pub fn new(store: Store, cfg: MineConfig) -> Result<Self, MineError> {
        cfg.validate()?;
        Ok(Self { store, cfg })
    }

    /// The mining stage: `load` (async reads of one embeddings table and everything joined to it)
    /// → `analyse` (blocking, on a blocking thread: kNN graph, k-means, duplicates, density,
    /// label issues, hardness, drift) → `write` (one commit per output table) → the Markdown report
    /// and the run's ledger row with the table versions read and written. `head_version`: whose
    /// scores to use (the champion, usually); without one, label issues and uncertainty are
    /// skipped with a note.
    pub async fn run<B: Backend>(
        &self,
        c: Compute<B>,
        head_version: Option<&str>,
        report_dir: Option<&Path>,
    ) -> Result<MineSummary, MineError> {
        let params = serde_json::json!({ "head_version": head_version, "config": self.cfg });
        let mut run = RunLedger::start(&self.store, RunKind::Mine, params).await?;
        let result = self.run_stage(c, head_version, report_dir, &mut run).await;
        run.close(result).await
    }

    async fn run_stage<B: Backend>(
        &self,
        c: Compute<B>,
        head_version: Option<&str>,
        report_dir: Option<&Path>,
        run: &mut RunLedger,
    ) -> Result<MineSummary, MineError> {
        let model =
            resolve_embedding_model(&self.store, self.cfg.embedding_model.as_deref()).await?;
        run.read_all(&self.store.versions().await?);
        let inp = load::load(&self.store, &self.cfg, &model, head_version).await?;
        let (cfg, run_id, head) = (
            self.cfg.clone(),
            run.id().clone(),
            head_version.map(str::to_string),
        );
        let a = tokio::task::spawn_blocking(move || {
            analyse::analyse(&c, &inp, &cfg, &run_id, &model, head.as_deref()).map(|a| (a, inp.ids))
        })
        .await
        .map_err(|e| MineError::Compute(format!("mining task: {e}")))?;
        let (a, ids) = a?;
        let w = self.store.put_mine_scores(&a.scores).await?;
        run.wrote(tables::MINE_SCORES, &w);
        let w = self.store.put_mine_clusters(&a.clusters).await?;
        run.wrote(tables::MINE_CLUSTERS, &w);
        if !a.duplicates.is_empty() {
            let w = self.store.put_duplicates(&a.duplicates).await?;
            run.wrote(tables::DUPLICATES, &w);
        }
        let mut summary = a.summary;
        if let Some(dir) = report_dir {
            let path = dir.join(format!("{}.md", summary.run_id));
            let text = report::markdown_report(&summary, &a.clusters, &ids);
            tokio::fs::create_dir_all(dir)
                .await
                .and(tokio::fs::write(&path, text).await)
                .map_err(|e| MineError::Config(format!("cannot write {}: {e}", path.display())))?;
            summary.report = Some(path);
        }
        Ok(summary)
    }

    /// Chooses up to `budget` unlabelled samples (restricted to `only` when given) and stores them
    /// as selection `name`.
    /// Same shape as [`Miner::run`]: load → select on a blocking thread → one commit.
    pub async fn select<B: Backend>(
        &self,
        c: Compute<B>,
        head_version: Option<&str>,
        name: &str,
        budget: usize,
        strategy: Strategy,
        only: Option<&HashSet<String>>,
    ) -> Result<(Selection, Vec<SelectionRow>), MineError> {
        if name.is_empty() || name.contains('/') {
            return Err(MineError::Config(format!(
                "selection name {name:?} must be non-empty and without '/'"
            )));
        }
        let model =
            resolve_embedding_model(&self.store, self.cfg.embedding_model.as_deref()).await?;
        let inp = load::load(&self.store, &self.cfg, &model, head_version).await?;
        let sc = SelectConfig {
            strategy,
            ..self.cfg.select.clone()
        };
        let (metric, scored) = (self.cfg.knn.metric, head_version.is_some());
        let only = only.cloned();
        let (sel, inp) = tokio::task::spawn_blocking(move || {
            let n = inp.ids.len();
            let labelled: Vec<usize> = (0..n).filter(|&i| inp.label[i].is_some()).collect();
            let candidates: Vec<usize> = (0..n)
                .filter(|&i| inp.label[i].is_none())
                .filter(|&i| only.as_ref().is_none_or(|o| o.contains(&inp.ids[i])))
                .collect();
            // The head's calibrated probabilities, when it scored every row.
            let probs: Option<Vec<f64>> =
                (scored && inp.prob.iter().all(Option::is_some)).then(|| {
                    inp.prob
                        .iter()
                        .flat_map(|p| {
                            let p = p.unwrap_or(0.5);
                            [1.0 - p, p]
                        })
                        .collect()
                });
            // The head's competence: accuracy of its out-of-fold scores on the labelled rows
            // (the K-fold of training), when enough rows have one.
            let oof: Vec<(f64, u8)> = labelled
                .iter()
                .filter_map(|&i| Some((inp.oof[i]?, inp.label[i]?)))
                .collect();
            let competence = (oof.len() >= MIN_COMPETENCE_ROWS).then(|| {
                oof.iter().filter(|&&(p, y)| (p > 0.5) == (y == 1)).count() as f64
                    / oof.len() as f64
            });
            let pool = Pool {
                x: &inp.x,
                labelled: &labelled,
                candidates: &candidates,
                probs: probs.as_deref(),
                classes: 2,
                metric,
                competence: competence.filter(|_| scored),
            };
            select(&c, &pool, budget, &sc).map(|sel| (sel, inp))
        })
        .await
        .map_err(|e| MineError::Compute(format!("selection task: {e}")))??;
        let now = Utc::now();
        let rows: Vec<SelectionRow> = sel
            .items
            .iter()
            .map(|it| SelectionRow {
                name: name.to_string(),
                created_at: now,
                sample_id: inp.ids[it.row].clone(),
                rank: it.rank as u32,
                score: if it.score.is_finite() {
                    it.score as f32
                } else {
                    0.0
                },
                strategy: sel.used.as_str().into(),
                reasons: it.reasons.join("; "),
            })
            .collect();
        if !rows.is_empty() {
            self.store.put_selection(&rows).await?;
        }
        Ok((sel, rows))
    }
}
