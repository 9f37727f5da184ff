//! The mining run over the store: reads one embeddings table with the labels, the head's scores and
//! the prediction log, runs every analysis, writes `mine_scores`, `mine_clusters`, `duplicates`, a
//! `runs` ledger row and a Markdown report; and budgeted selections into `selections`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{Array, TimestampMicrosecondArray};
use burn::prelude::Backend;
use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};

use super::MineError;
use super::compute::Compute;
use super::dedup::{
    DuplicateKind, DuplicatePair, Groups, LeakageReport, leakage, near_pairs, near_threshold,
    phash_pairs,
};
use super::density::{outliers, typicality};
use super::drift::{ClusterDrift, DriftConfig, Mmd, cluster_drift, mmd_test, under_covered};
use super::hardness::{HardCase, Signals, score};
use super::kmeans::{KMeansConfig, kmeans};
use super::knn::{KnnConfig, knn_graph, recall_at};
use super::label_issues::find_binary_label_issues;
use super::select::{Pool, SelectConfig, Selection, Strategy, select};
use super::vectors::Vectors;
use crate::store::schema::{col, tables};
use crate::store::{
    DuplicateRow, MineClusterRow, MineScoreRow, RunRow, SelectionRow, Store, VECTOR,
    collect_vectors, embeddings_table,
};

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
        Ok(())
    }
}

/// Everything mining reads, joined by row.
struct Inputs {
    ids: Vec<String>,
    x: Vectors,
    skipped_non_finite: usize,
    source: Vec<String>,
    phash: Vec<Option<u64>>,
    label: Vec<Option<u8>>,
    /// From `head_scores` of the chosen head.
    split: Vec<Option<String>>,
    prob: Vec<Option<f64>>,
    oof: Vec<Option<f64>>,
    mi: Vec<Option<f64>>,
    tier_gap: Vec<Option<f64>>,
    /// Seen in validator traffic within the recent window.
    recent_traffic: Vec<bool>,
    traffic: Vec<bool>,
}

impl Inputs {
    /// Sets each row belongs to, for leakage and drift.
    fn sets(&self, i: usize) -> Vec<String> {
        let mut s = Vec::new();
        match self.split[i].as_deref() {
            Some("train") if self.source[i] == "synthetic" => s.push("synthetic".to_string()),
            Some(sp @ ("train" | "calib" | "eval")) => s.push(sp.to_string()),
            _ if self.source[i] == "synthetic" => s.push("synthetic".into()),
            _ if self.label[i].is_some() => s.push("labelled".into()),
            _ => {}
        }
        if self.traffic[i] {
            s.push("traffic".into());
        }
        if s.is_empty() {
            s.push("unlabelled".into());
        }
        s
    }
}

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
    pub duplicates: HashMap<String, usize>,
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

    async fn load(&self, model: &str, head: Option<&str>) -> Result<Inputs, MineError> {
        let table = embeddings_table(model);
        let batches = self
            .store
            .scan(&table, Some(&[col::SAMPLE_ID, VECTOR]), None, None)
            .await?;
        let rows = collect_vectors(&table, &batches)?;
        let (ids, data, dim, skipped) = (rows.ids, rows.data, rows.dim, rows.non_finite.len());
        if skipped > 0 {
            tracing::warn!(skipped, table, "vectors with non-finite values skipped");
        }
        if ids.is_empty() {
            return Err(MineError::Empty(format!("{table} has no finite vectors")));
        }
        let x = Vectors::new(data, dim)?;
        let index: HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i))
            .collect();
        let n = ids.len();
        let mut inp = Inputs {
            x,
            skipped_non_finite: skipped,
            source: vec![String::new(); n],
            phash: vec![None; n],
            label: vec![None; n],
            split: vec![None; n],
            prob: vec![None; n],
            oof: vec![None; n],
            mi: vec![None; n],
            tier_gap: vec![None; n],
            recent_traffic: vec![false; n],
            traffic: vec![false; n],
            ids: Vec::new(),
        };
        let recent = Utc::now() - Duration::days(self.cfg.drift.recent_days as i64);
        for b in self
            .store
            .scan(
                tables::SAMPLES,
                Some(&[col::SAMPLE_ID, col::SOURCE, col::PHASH, col::RECEIVED_AT]),
                None,
                None,
            )
            .await?
        {
            let (Some(id), Some(src), Some(ph), Some(at)) = (
                b.column_by_name(col::SAMPLE_ID)
                    .and_then(|c| c.as_string_opt::<i32>()),
                b.column_by_name(col::SOURCE)
                    .and_then(|c| c.as_string_opt::<i32>()),
                b.column_by_name(col::PHASH)
                    .and_then(|c| c.as_primitive_opt::<UInt64Type>()),
                b.column_by_name(col::RECEIVED_AT)
                    .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>()),
            ) else {
                return Err(MineError::Shape("samples columns missing".into()));
            };
            for i in 0..b.num_rows() {
                if let Some(&r) = index.get(id.value(i)) {
                    inp.source[r] = src.value(i).to_string();
                    inp.phash[r] = (!ph.is_null(i)).then(|| ph.value(i));
                    if src.value(i) == "validator" {
                        inp.traffic[r] = true;
                        let ts = chrono::DateTime::from_timestamp_micros(at.value(i));
                        inp.recent_traffic[r] = ts.is_some_and(|t| t >= recent);
                    }
                }
            }
        }
        for l in self.store.effective_labels().await? {
            if let Some(&r) = index.get(l.sample_id.to_string().as_str()) {
                inp.label[r] = Some(l.label.as_u8());
            }
        }
        let mut gaps: HashMap<usize, (f64, usize)> = HashMap::new();
        for p in self.store.predictions().await? {
            if let Some(&r) = index.get(p.sample_id.to_string().as_str()) {
                inp.traffic[r] = true;
                if p.ts >= recent {
                    inp.recent_traffic[r] = true;
                }
                if let (Some(a), Some(b)) = (p.score_tier1, p.score_tier2)
                    && a.is_finite()
                    && b.is_finite()
                {
                    let e = gaps.entry(r).or_default();
                    e.0 += (a - b).abs() as f64;
                    e.1 += 1;
                }
            }
        }
        for (r, (s, c)) in gaps {
            inp.tier_gap[r] = Some(s / c as f64);
        }
        if let Some(v) = head {
            for h in self.store.head_scores(v).await? {
                if let Some(&r) = index.get(h.sample_id.to_string().as_str()) {
                    let fin = |x: f32| (x.is_finite()).then_some(x as f64);
                    inp.split[r] = Some(h.split.clone());
                    inp.prob[r] = fin(h.prob);
                    inp.oof[r] = h.oof_prob.and_then(fin);
                    inp.mi[r] = fin(h.ensemble_mi);
                }
            }
        }
        inp.ids = ids;
        Ok(inp)
    }

    /// Runs every analysis and writes the results. `head_version`: whose scores to use (the
    /// champion, usually); without one, label issues and uncertainty are skipped with a note.
    pub async fn run<B: Backend>(
        &self,
        c: &Compute<B>,
        head_version: Option<&str>,
        report_dir: Option<&Path>,
    ) -> Result<MineSummary, MineError> {
        let started = Utc::now();
        let run_id = format!("mine-{}", started.format("%Y%m%dT%H%M%S%.3f"));
        let model =
            resolve_embedding_model(&self.store, self.cfg.embedding_model.as_deref()).await?;
        let inp = self.load(&model, head_version).await?;
        let cfg = &self.cfg;
        let n = inp.ids.len();
        let mut notes = Vec::new();
        if head_version.is_none() {
            notes.push("no head scores: uncertainty, ensemble and label issues skipped".into());
        }
        // Neighbourhoods.
        let graph = knn_graph(c, &inp.x, &cfg.knn)?;
        let recall = if graph.method == "exact" {
            1.0
        } else {
            recall_at(c, &inp.x, &graph, 10, cfg.knn.recall_sample, cfg.knn.seed)?
        };
        // Clusters on the metric's geometry.
        let k = cfg
            .clusters
            .unwrap_or(((n as f64 / 2.0).sqrt().round() as usize).clamp(2, 256))
            .min(n);
        let xm = inp.x.for_metric(cfg.knn.metric);
        let km = kmeans(c, &xm, k, &cfg.kmeans)?;
        // Duplicates and leakage.
        let sets: Vec<Vec<String>> = (0..n).map(|i| inp.sets(i)).collect();
        let hashes: Vec<(usize, u64)> = inp
            .phash
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.map(|h| (i, h)))
            .collect();
        let mut pairs: Vec<DuplicatePair> = phash_pairs(
            &hashes.iter().map(|h| h.1).collect::<Vec<_>>(),
            cfg.phash_max_hamming,
        )
        .into_iter()
        .map(|mut p| {
            (p.a, p.b) = (hashes[p.a].0, hashes[p.b].0);
            p
        })
        .collect();
        let thr = near_threshold(&graph, cfg.near_dup_factor);
        if let Some(t) = thr {
            pairs.extend(near_pairs(&graph, t));
        }
        let leak = leakage(&pairs, &sets);
        let mut groups = Groups::new(n);
        pairs.iter().for_each(|p| groups.union(p.a, p.b));
        let group = groups.labels();
        let mut dup_counts: HashMap<String, usize> = HashMap::new();
        for p in &pairs {
            *dup_counts.entry(p.kind.as_str().into()).or_default() += 1;
        }
        dup_counts.insert(
            DuplicateKind::Exact.as_str().into(),
            leak.exact_cross_set.len(),
        );
        // Density.
        let out = outliers(&graph, cfg.outlier_iqr_factor);
        let typ = typicality(
            c,
            &inp.x,
            cfg.knn.metric,
            &km.assignments,
            cfg.select.typicality_k,
            2048,
            cfg.kmeans.seed,
        )?;
        // Label issues on out-of-fold probabilities.
        let with_oof: Vec<usize> = (0..n)
            .filter(|&i| inp.oof[i].is_some() && inp.label[i].is_some())
            .collect();
        let mut issue_quality: HashMap<usize, f64> = HashMap::new();
        let label_issues = if with_oof.is_empty() {
            if head_version.is_some() {
                notes.push("the head has no out-of-fold scores: label issues skipped".into());
            }
            None
        } else {
            let p: Vec<f64> = with_oof.iter().filter_map(|&i| inp.oof[i]).collect();
            let y: Vec<u8> = with_oof.iter().filter_map(|&i| inp.label[i]).collect();
            match find_binary_label_issues(&p, &y) {
                Ok(li) => {
                    for (j, &i) in with_oof.iter().enumerate() {
                        if li.is_issue[j] {
                            issue_quality.insert(i, li.label_quality[j]);
                        }
                    }
                    Some(li.count())
                }
                Err(MineError::OneClass) => {
                    notes.push("only one class labelled: label issues skipped".into());
                    None
                }
                Err(e) => return Err(e),
            }
        };
        // Hardness.
        let hard: Vec<HardCase> = (0..n)
            .map(|i| {
                score(
                    &Signals {
                        prob: inp.prob[i],
                        ensemble_mi: inp.mi[i],
                        tier_gap: inp.tier_gap[i],
                        label_issue: issue_quality.get(&i).copied(),
                        outlier: out.is_outlier[i].then_some((out.knn_mean[i] as f64, out.fence)),
                    },
                    cfg.reason_min,
                )
            })
            .collect();
        // Drift.
        let train_rows: Vec<usize> = (0..n)
            .filter(|&i| sets[i].iter().any(|s| s == "train" || s == "synthetic"))
            .collect();
        let train_rows = if train_rows.is_empty() {
            (0..n).filter(|&i| inp.label[i].is_some()).collect()
        } else {
            train_rows
        };
        let traffic_rows: Vec<usize> = (0..n).filter(|&i| inp.recent_traffic[i]).collect();
        let drift = cluster_drift(&km.assignments, k, &train_rows, &traffic_rows, &cfg.drift);
        let mmd = if train_rows.len() >= 2 && traffic_rows.len() >= 2 {
            Some(mmd_test(c, &xm, &train_rows, &traffic_rows, &cfg.drift)?)
        } else {
            notes.push(format!(
                "drift test skipped: {} training and {} recent traffic samples",
                train_rows.len(),
                traffic_rows.len()
            ));
            None
        };
        // Cluster rows.
        let mut exemplar = vec![usize::MAX; k];
        for i in 0..n {
            let a = km.assignments[i] as usize;
            if exemplar[a] == usize::MAX || km.sq_distances[i] < km.sq_distances[exemplar[a]] {
                exemplar[a] = i;
            }
        }
        let sizes = km.sizes();
        let cluster_rows: Vec<MineClusterRow> = (0..k)
            .map(|j| {
                let members = (0..n).filter(|&i| km.assignments[i] as usize == j);
                let (mut nl, mut pos, mut scored, mut wrong) = (0u32, 0u32, 0u32, 0u32);
                for i in members {
                    if let Some(y) = inp.label[i] {
                        nl += 1;
                        pos += u32::from(y == 1);
                        if let Some(p) = inp.prob[i] {
                            scored += 1;
                            wrong += u32::from((p > 0.5) != (y == 1));
                        }
                    }
                }
                let d = &drift[j];
                MineClusterRow {
                    run_id: run_id.clone(),
                    cluster: j as u32,
                    size: sizes[j] as u32,
                    n_labelled: nl,
                    positive_share: (nl > 0).then(|| pos as f32 / nl as f32),
                    error_rate: (scored > 0).then(|| wrong as f32 / scored as f32),
                    train_share: d.train_share as f32,
                    traffic_share: d.traffic_share as f32,
                    drift_ratio: d.ratio as f32,
                    drift_z: d.z as f32,
                    under_covered: d.under_covered,
                    exemplar: inp.ids.get(exemplar[j]).cloned().unwrap_or_default(),
                }
            })
            .collect();
        // Write.
        let score_rows: Vec<MineScoreRow> = (0..n)
            .map(|i| MineScoreRow {
                run_id: run_id.clone(),
                sample_id: inp.ids[i].clone(),
                cluster: km.assignments[i],
                hardness: hard[i].hardness as f32,
                reasons: hard[i].reasons.join("; "),
                prob: inp.prob[i].map(|p| p as f32),
                label_issue: issue_quality.contains_key(&i),
                outlier: out.is_outlier[i],
                knn_mean: if out.knn_mean[i].is_finite() {
                    out.knn_mean[i]
                } else {
                    -1.0
                },
                typicality: typ[i],
                dup_group: group[i].map(|g| inp.ids[g].clone()),
                sets: sets[i].join(","),
            })
            .collect();
        let dup_rows: Vec<DuplicateRow> = pairs
            .iter()
            .map(|p| DuplicateRow {
                run_id: run_id.clone(),
                sample_a: inp.ids[p.a].clone(),
                sample_b: inp.ids[p.b].clone(),
                kind: p.kind.as_str().into(),
                distance: p.distance as f32,
                sets_a: sets[p.a].join(","),
                sets_b: sets[p.b].join(","),
            })
            .collect();
        self.store.put_mine_scores(&score_rows).await?;
        self.store.put_mine_clusters(&cluster_rows).await?;
        if !dup_rows.is_empty() {
            self.store.put_duplicates(&dup_rows).await?;
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            hard[b]
                .hardness
                .total_cmp(&hard[a].hardness)
                .then(a.cmp(&b))
        });
        let top_hard: Vec<HardRow> = order
            .iter()
            .take(cfg.top)
            .filter(|&&i| hard[i].hardness > 0.0)
            .map(|&i| HardRow {
                sample_id: inp.ids[i].clone(),
                hardness: hard[i].hardness,
                reasons: hard[i].reasons.clone(),
                label: inp.label[i],
                prob: inp.prob[i],
            })
            .collect();
        let mut summary = MineSummary {
            run_id: run_id.clone(),
            embedding_model: model,
            head_version: head_version.map(str::to_string),
            n,
            skipped_non_finite: inp.skipped_non_finite,
            knn_method: graph.method.clone(),
            knn_recall_at_10: recall,
            clusters: k,
            duplicates: dup_counts,
            near_threshold: thr,
            leakage: leak,
            label_issues,
            outliers: out.is_outlier.iter().filter(|&&b| b).count(),
            drift: mmd,
            under_covered: under_covered(&drift).into_iter().cloned().collect(),
            top_hard,
            notes,
            report: None,
        };
        if let Some(dir) = report_dir {
            let path = dir.join(format!("{run_id}.md"));
            std::fs::create_dir_all(dir)
                .and_then(|_| {
                    std::fs::write(&path, markdown_report(&summary, &cluster_rows, &inp.ids))
                })
                .map_err(|e| MineError::Config(format!("cannot write {}: {e}", path.display())))?;
            summary.report = Some(path);
        }
        let run = RunRow {
            run_id,
            kind: "mine".into(),
            started_at: started,
            finished_at: Some(Utc::now()),
            status: "ok".into(),
            params: serde_json::to_string(cfg).unwrap_or_default(),
            summary: serde_json::to_string(&summary).unwrap_or_default(),
        };
        self.store.record_run(&run).await?;
        Ok(summary)
    }

    /// Chooses up to `budget` unlabelled samples (restricted to `only` when given) and stores them
    /// as selection `name`.
    pub async fn select<B: Backend>(
        &self,
        c: &Compute<B>,
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
        let inp = self.load(&model, head_version).await?;
        let n = inp.ids.len();
        let labelled: Vec<usize> = (0..n).filter(|&i| inp.label[i].is_some()).collect();
        let candidates: Vec<usize> = (0..n)
            .filter(|&i| inp.label[i].is_none())
            .filter(|&i| only.is_none_or(|o| o.contains(&inp.ids[i])))
            .collect();
        // The head's calibrated probabilities, when it scored every row.
        let probs: Option<Vec<f64>> =
            (head_version.is_some() && inp.prob.iter().all(Option::is_some)).then(|| {
                inp.prob
                    .iter()
                    .flat_map(|p| {
                        let p = p.unwrap_or(0.5);
                        [1.0 - p, p]
                    })
                    .collect()
            });
        let pool = Pool {
            x: &inp.x,
            labelled: &labelled,
            candidates: &candidates,
            probs: probs.as_deref(),
            classes: 2,
            metric: self.cfg.knn.metric,
        };
        let sc = SelectConfig {
            strategy,
            ..self.cfg.select.clone()
        };
        let sel = select(c, &pool, budget, &sc)?;
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

/// Writes a selection as CSV for labelling tools: `rank,sample_id,score,strategy,reasons`.
pub fn write_selection_csv(rows: &[SelectionRow], path: &Path) -> Result<(), MineError> {
    let io = |e: std::io::Error| MineError::Config(format!("cannot write {}: {e}", path.display()));
    let mut w = csv::Writer::from_path(path).map_err(|e| MineError::Config(e.to_string()))?;
    w.write_record(["rank", "sample_id", "score", "strategy", "reasons"])
        .map_err(|e| MineError::Config(e.to_string()))?;
    for r in rows {
        w.write_record([
            r.rank.to_string(),
            r.sample_id.clone(),
            format!("{:.6}", r.score),
            r.strategy.clone(),
            r.reasons.clone(),
        ])
        .map_err(|e| MineError::Config(e.to_string()))?;
    }
    w.flush().map_err(io)
}

fn markdown_report(s: &MineSummary, clusters: &[MineClusterRow], _ids: &[String]) -> String {
    let mut r = format!(
        "# Mining run {}\n\n- embeddings: `{}`\n- head: {}\n- samples: {} ({} skipped: non-finite)\n- kNN graph: {} (recall@10 {:.3})\n- clusters: {}\n- outliers: {}\n- label issues: {}\n",
        s.run_id,
        s.embedding_model,
        s.head_version.as_deref().unwrap_or("none"),
        s.n,
        s.skipped_non_finite,
        s.knn_method,
        s.knn_recall_at_10,
        s.clusters,
        s.outliers,
        s.label_issues.map_or("skipped".into(), |v| v.to_string()),
    );
    if let Some(m) = &s.drift {
        r.push_str(&format!(
            "- drift (MMD², traffic vs training): {:.5}, p = {:.3} ({} vs {} samples)\n",
            m.mmd2, m.p_value, m.n_a, m.n_b
        ));
    }
    for n in &s.notes {
        r.push_str(&format!("- note: {n}\n"));
    }
    r.push_str("\n## Top hard cases\n\n| sample | hardness | label | prob | reasons |\n|---|---|---|---|---|\n");
    for h in &s.top_hard {
        r.push_str(&format!(
            "| `{}` | {:.3} | {} | {} | {} |\n",
            &h.sample_id[..h.sample_id.len().min(16)],
            h.hardness,
            h.label.map_or("–".into(), |l| l.to_string()),
            h.prob.map_or("–".into(), |p| format!("{p:.3}")),
            h.reasons.join("; ")
        ));
    }
    r.push_str("\n## Under-covered clusters (traffic share ≫ training share)\n\n| cluster | traffic n | traffic share | train share | ratio | z |\n|---|---|---|---|---|---|\n");
    for d in &s.under_covered {
        r.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} | {:.2} | {:.2} |\n",
            d.cluster, d.traffic_n, d.traffic_share, d.train_share, d.ratio, d.z
        ));
    }
    r.push_str("\n## Duplicates and leakage\n\n");
    let mut kinds: Vec<_> = s.duplicates.iter().collect();
    kinds.sort();
    for (k, v) in kinds {
        r.push_str(&format!("- {k}: {v}\n"));
    }
    r.push_str(&format!(
        "- eval/calibration samples with a twin in training or synthetic data: {}\n\n| sets | kind | edges |\n|---|---|---|\n",
        s.leakage.leaked_eval.len()
    ));
    for (k, v) in &s.leakage.counts {
        let mut p = k.splitn(3, '|');
        let (a, b, kind) = (
            p.next().unwrap_or(""),
            p.next().unwrap_or(""),
            p.next().unwrap_or(""),
        );
        r.push_str(&format!("| {a} ↔ {b} | {kind} | {v} |\n"));
    }
    r.push_str("\n## Clusters\n\n| cluster | size | labelled | roadwork share | error rate | train share | traffic share | exemplar |\n|---|---|---|---|---|---|---|---|\n");
    let f = |v: Option<f32>| v.map_or("–".into(), |v| format!("{v:.2}"));
    for c in clusters {
        r.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} | `{}` |\n",
            c.cluster,
            c.size,
            c.n_labelled,
            f(c.positive_share),
            f(c.error_rate),
            c.train_share,
            c.traffic_share,
            &c.exemplar[..c.exemplar.len().min(16)]
        ));
    }
    r
}
