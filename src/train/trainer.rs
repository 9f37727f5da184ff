//! One training run, end to end: pin → load → validate → K-fold + final fit → calibrate → evaluate
//! → register. Compute runs on a blocking thread; only the store and registry edges are async.

use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};

use super::calibrate::Temperature;
use super::data::{self, Dataset, Split};
use super::eval::{evaluate, evaluate_copies, slices_of};
use super::fit::{EpochLog, Xy, fit, logits};
use super::metrics::reliability;
use super::model::{CalibrationReport, ModelCard, encode_head, sha256_hex};
use super::registry::Registry;
use super::{TrainConfig, TrainError};
use crate::backend::ComputeDevice;
use crate::store::schema::tables;
use crate::store::{HeadScoreRow, ModelRow, RunId, RunKind, RunLedger, SnapshotName, Store};

/// What a training run produced.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_id: String,
    pub card: ModelCard,
    pub artifact_dir: std::path::PathBuf,
    /// Rows written to `head_scores`.
    pub scored: usize,
    pub elapsed_s: f64,
}

/// Trains heads into a registry from a store.
pub struct Trainer {
    store: Store,
    registry: Registry,
    cfg: TrainConfig,
    progress: bool,
}

/// Everything the compute phase returns (host vectors; no tensors leave it).
struct Computed {
    weights: Vec<u8>,
    /// Final-head logits of every dataset row, then of every pool row.
    logits: Vec<f32>,
    pool_logits: Vec<f32>,
    /// Per fold head: probabilities of every dataset row, then pool row.
    fold_probs: Vec<Vec<f32>>,
    fold_pool_probs: Vec<Vec<f32>>,
    /// Final-head logits of every augmented copy (`ds.aug`).
    aug_logits: Vec<f32>,
    /// Copies trained on by the final head.
    aug_trained: usize,
    /// Held-out logit of each train row (None for other splits).
    oof: Vec<Option<f32>>,
    fold_best: Vec<usize>,
    final_epochs: usize,
    history: Vec<EpochLog>,
    fold_histories: Vec<Vec<EpochLog>>,
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Binary entropy in nats.
fn entropy(p: f64) -> f64 {
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    -(p * p.ln() + (1.0 - p) * (1.0 - p).ln())
}

/// Mean, standard deviation and BALD mutual information of the members' probabilities.
fn ensemble_stats(ps: &[f32]) -> (f32, f32, f32) {
    let k = ps.len().max(1) as f64;
    let mean = ps.iter().map(|&p| p as f64).sum::<f64>() / k;
    let var = ps.iter().map(|&p| (p as f64 - mean).powi(2)).sum::<f64>() / k;
    let mi = entropy(mean) - ps.iter().map(|&p| entropy(p as f64)).sum::<f64>() / k;
    (mean as f32, var.sqrt() as f32, mi.max(0.0) as f32)
}

fn median(v: &[usize]) -> usize {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).copied().unwrap_or(1).max(1)
}

/// A fresh, sortable, unique model version.
fn new_version() -> String {
    let now = Utc::now();
    let salt = sha256_hex(
        format!(
            "{}-{}",
            now.timestamp_nanos_opt().unwrap_or(0),
            std::process::id()
        )
        .as_bytes(),
    );
    format!("head-{}-{}", now.format("%Y%m%dT%H%M%S"), &salt[..6])
}

/// The features and labels of `part` followed by those of the augmented copies of its rows
/// (when `with_copies`): what a fit trains on. Returns the number of copies added.
fn with_copies(
    ds: &Dataset,
    part: super::data::Part,
    with_copies: bool,
) -> (Vec<f32>, Vec<u8>, usize) {
    let (mut x, mut y) = (part.x, part.y);
    if !with_copies || ds.aug.is_empty() {
        return (x, y, 0);
    }
    let mut keep = vec![false; ds.len()];
    part.rows.iter().for_each(|&r| keep[r] = true);
    let copies = ds.aug.rows(|r| keep[r]);
    for &j in &copies {
        x.extend_from_slice(ds.aug.row(j, ds.dim));
        y.push(ds.y[ds.aug.of[j]]);
    }
    (x, y, copies.len())
}

fn compute<B: AutodiffBackend>(
    ds: &Dataset,
    cfg: &TrainConfig,
    device: &B::Device,
    bar: &ProgressBar,
) -> Result<Computed, TrainError> {
    let k = cfg.folds;
    let train_rows: Vec<usize> = (0..ds.len())
        .filter(|&i| ds.split[i] == Split::Train)
        .collect();
    let fold: Vec<usize> = (0..ds.len()).map(|i| ds.fold(i, k)).collect();
    let mut oof = vec![None; ds.len()];
    let (mut fold_probs, mut fold_pool_probs) = (Vec::new(), Vec::new());
    let (mut fold_best, mut fold_histories) = (Vec::new(), Vec::new());
    for f in 0..k {
        let tr = ds.part(|i| ds.split[i] == Split::Train && fold[i] != f);
        let va = ds.part(|i| ds.split[i] == Split::Train && fold[i] == f);
        if va.rows.is_empty() || tr.rows.is_empty() {
            tracing::warn!(fold = f, "fold is empty; skipped");
            bar.inc(1);
            continue;
        }
        bar.set_message(format!("fold {}/{k}", f + 1));
        // Copies of this fold's training rows train too; its validation rows stay clean.
        let (tr_x, tr_y, _) = with_copies(ds, tr, cfg.augmented);
        let fitted = fit::<B>(
            &cfg.head,
            &cfg.fit,
            Xy {
                x: &tr_x,
                y: &tr_y,
                dim: ds.dim,
            },
            Some(Xy {
                x: &va.x,
                y: &va.y,
                dim: ds.dim,
            }),
            cfg.fit.max_epochs,
            cfg.seed
                .wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(f as u64 + 1)),
            device,
        );
        let z = logits(&fitted.head, &ds.x, ds.dim, device);
        for &r in &va.rows {
            oof[r] = Some(z[r]);
        }
        fold_probs.push(z.into_iter().map(sigmoid).collect());
        fold_pool_probs.push(
            logits(&fitted.head, &ds.pool_x, ds.dim, device)
                .into_iter()
                .map(sigmoid)
                .collect(),
        );
        fold_best.push(fitted.best_epoch);
        fold_histories.push(fitted.history);
        bar.inc(1);
    }
    if fold_best.is_empty() {
        return Err(TrainError::NotEnoughData(
            "every cross-validation fold is empty".into(),
        ));
    }
    let final_epochs = median(&fold_best);
    bar.set_message(format!("final head, {final_epochs} epochs"));
    let all = ds.part(|i| ds.split[i] == Split::Train);
    debug_assert_eq!(all.rows, train_rows);
    let (all_x, all_y, aug_trained) = with_copies(ds, all, cfg.augmented);
    let fitted = fit::<B>(
        &cfg.head,
        &cfg.fit,
        Xy {
            x: &all_x,
            y: &all_y,
            dim: ds.dim,
        },
        None,
        final_epochs,
        cfg.seed,
        device,
    );
    bar.inc(1);
    let head = fitted.head;
    Ok(Computed {
        weights: encode_head(&head)?,
        logits: logits(&head, &ds.x, ds.dim, device),
        pool_logits: logits(&head, &ds.pool_x, ds.dim, device),
        aug_logits: if ds.aug.is_empty() {
            Vec::new()
        } else {
            logits(&head, &ds.aug.x, ds.dim, device)
        },
        aug_trained,
        fold_probs,
        fold_pool_probs,
        oof,
        fold_best,
        final_epochs,
        history: fitted.history,
        fold_histories,
    })
}

/// Runs the compute phase on the configured device.
fn compute_on_device(
    ds: &Dataset,
    cfg: &TrainConfig,
    bar: &ProgressBar,
) -> Result<Computed, TrainError> {
    match cfg.device {
        ComputeDevice::Cpu => {
            compute::<Autodiff<crate::backend::Cpu>>(ds, cfg, &Default::default(), bar)
        }
        #[cfg(feature = "cuda")]
        ComputeDevice::Cuda => {
            compute::<Autodiff<burn::backend::Cuda<f32>>>(ds, cfg, &Default::default(), bar)
        }
        #[cfg(not(feature = "cuda"))]
        ComputeDevice::Cuda => Err(TrainError::Unsupported(
            "this build has no CUDA support; rebuild with `--features cuda`".into(),
        )),
    }
}

/// Refuses data that cannot train: a missing class, too few labels per class, too few rows.
pub fn check_trainable(ds: &Dataset, min_per_class: usize) -> Result<(), TrainError> {
    let train: Vec<u8> = (0..ds.len())
        .filter(|&i| ds.split[i] == Split::Train)
        .map(|i| ds.y[i])
        .collect();
    let pos = train.iter().filter(|&&y| y == 1).count();
    let neg = train.len() - pos;
    if pos == 0 || neg == 0 {
        return Err(TrainError::NotEnoughData(format!(
            "the training split has only one class ({pos} roadwork, {neg} clean)"
        )));
    }
    if pos < min_per_class || neg < min_per_class {
        return Err(TrainError::NotEnoughData(format!(
            "{pos} roadwork and {neg} clean training samples; at least {min_per_class} of each are needed (train.min_per_class)"
        )));
    }
    Ok(())
}

/// The embedding model to train on: the configured one, or the only one in the store.
pub async fn resolve_embedding_model(
    store: &Store,
    cfg: &TrainConfig,
) -> Result<String, TrainError> {
    if let Some(m) = &cfg.embedding_model {
        return Ok(m.clone());
    }
    let models = store.embedding_models().await?;
    match models.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(TrainError::NoEmbeddings {
            model: "(any)".into(),
            available: vec![],
        }),
        _ => Err(TrainError::AmbiguousEmbeddings(models)),
    }
}

impl Trainer {
    /// Checks the configuration (before any data is read).
    pub fn new(store: Store, registry: Registry, cfg: TrainConfig) -> Result<Self, TrainError> {
        cfg.validate().map_err(TrainError::Config)?;
        Ok(Self {
            store,
            registry,
            cfg,
            progress: true,
        })
    }

    /// No progress bar (tests, embedding in other stages).
    pub fn quiet(mut self) -> Self {
        self.progress = false;
        self
    }

    /// Trains, calibrates, evaluates and registers one head. With `snapshot`, reads exactly that
    /// snapshot; otherwise pins the store's current state as `train/<model_version>` first.
    ///
    /// The stage shape: `load` (async reads at the snapshot) → `compute` (one blocking task: the
    /// K-fold and final fits, calibration, evaluation with the reward replay, the artifact written
    /// and fsynced into the registry) → `write` (`head_scores`, `evaluations`, `models`, one
    /// commit each) → the ledger row with the versions read and written.
    pub async fn train(&self, snapshot: Option<SnapshotName>) -> Result<TrainSummary, TrainError> {
        let started = Instant::now();
        let cfg = &self.cfg;
        let embedding_model = resolve_embedding_model(&self.store, cfg).await?;
        let version = new_version();
        // Read first (at the current state or the given snapshot), so bad data never leaves a tag.
        let ds = data::load(
            &self.store,
            snapshot.as_ref(),
            &embedding_model,
            &cfg.split,
            None,
        )
        .await?;
        check_trainable(&ds, cfg.min_per_class)?;
        let snap = match snapshot {
            Some(s) => s,
            None => SnapshotName::parse(&format!("train/{version}"))?,
        };
        let pinned = match self.store.snapshot(&snap).await {
            Ok(s) => s.versions,
            Err(crate::store::StoreError::SnapshotExists { .. }) => self
                .store
                .snapshots()
                .await?
                .into_iter()
                .find(|s| s.name == snap)
                .map(|s| s.versions)
                .unwrap_or_default(),
            Err(e) => return Err(e.into()),
        };
        // The snapshot may be newer than what was read when we pinned it ourselves; re-read at the
        // tag so the card's versions are exactly the data trained on, with the slices of the
        // mining run the snapshot's ledger names.
        let slice_run = data::slice_run(&self.store, Some(&snap)).await?;
        let ds = data::load(
            &self.store,
            Some(&snap),
            &embedding_model,
            &cfg.split,
            slice_run.as_ref(),
        )
        .await?;
        check_trainable(&ds, cfg.min_per_class)?;
        let params = serde_json::json!({ "model_version": version, "snapshot": snap.to_string(), "config": cfg });
        let mut run = RunLedger::start(&self.store, RunKind::Train, params).await?;
        run.read_all(&pinned);
        let plan = Plan {
            version,
            embedding_model,
            snapshot: snap,
            pinned,
            slice_run,
            parent: self.registry.champion()?.map(|c| c.version),
        };
        match self.compute_and_write(plan, ds, &mut run).await {
            Ok(mut s) => {
                s.run_id = run.id().to_string();
                s.elapsed_s = started.elapsed().as_secs_f64();
                run.finish(&serde_json::json!({
                    "model_version": s.card.model_version,
                    "metrics": s.card.metrics,
                    "temperature": s.card.calibration.temperature,
                    "scored": s.scored,
                    "slice_run": s.card.slice_run,
                }))
                .await?;
                Ok(s)
            }
            Err(e) => {
                run.fail(&e).await;
                Err(e)
            }
        }
    }

    async fn compute_and_write(
        &self,
        plan: Plan,
        ds: Dataset,
        run: &mut RunLedger,
    ) -> Result<TrainSummary, TrainError> {
        let bar = if self.progress {
            ProgressBar::new(self.cfg.folds as u64 + 1)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} fits {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix("train");
        tracing::info!(version = %plan.version, model = %plan.embedding_model, rows = ds.len(), pool = ds.pool_ids.len(), "training");
        let (cfg, registry, task_bar) = (self.cfg.clone(), self.registry.clone(), bar.clone());
        let out = tokio::task::spawn_blocking(move || {
            compute_card(&ds, &cfg, &plan, &task_bar).and_then(|(card, c, evaluation)| {
                let artifact_dir = registry.register(&card, &c.weights)?;
                let scores = score_rows(&ds, &c, card.calibration.temperature, &card.model_version);
                Ok((card, evaluation, artifact_dir, scores))
            })
        })
        .await
        .map_err(|e| TrainError::Task(e.to_string()))?;
        bar.finish_and_clear();
        let (card, evaluation, artifact_dir, scores) = out?;
        let card_json =
            serde_json::to_string(&card).map_err(|e| TrainError::Card(e.to_string()))?;
        let scored = scores.len();
        let w = self.store.put_head_scores(&scores).await?;
        run.wrote(tables::HEAD_SCORES, &w);
        if let Some(e) = &evaluation {
            let w = self.store.put_evaluation(&e.to_row()?).await?;
            run.wrote(tables::EVALUATIONS, &w);
        }
        let w = self
            .store
            .put_model(&ModelRow {
                model_version: card.model_version.clone(),
                created_at: card.created_at,
                embedding_model: card.embedding_model.clone(),
                snapshot: card.snapshot.clone(),
                artifact_dir: artifact_dir.to_string_lossy().into_owned(),
                card: card_json,
            })
            .await?;
        run.wrote(tables::MODELS, &w);
        Ok(TrainSummary {
            run_id: String::new(),
            card,
            artifact_dir,
            scored,
            elapsed_s: 0.0,
        })
    }
}

/// What a training run is about to produce, fixed before any compute.
struct Plan {
    version: String,
    embedding_model: String,
    snapshot: SnapshotName,
    pinned: std::collections::BTreeMap<String, u64>,
    slice_run: Option<RunId>,
    parent: Option<String>,
}

/// The blocking part of a run: fits, calibration, evaluation and the card (a pure function of the
/// dataset, the config and the plan, but for the card's timestamp).
fn compute_card(
    ds: &Dataset,
    cfg: &TrainConfig,
    plan: &Plan,
    bar: &ProgressBar,
) -> Result<(ModelCard, Computed, Option<super::eval::Evaluation>), TrainError> {
    let c = compute_on_device(ds, cfg, bar)?;
    let calibration = calibrate(ds, &c.logits, cfg.min_calibration, cfg.prior_correction);
    let t = calibration.temperature;
    let eval_rows: Vec<usize> = (0..ds.len())
        .filter(|&i| ds.split[i] == Split::Eval)
        .collect();
    let evaluation = (!eval_rows.is_empty()).then(|| {
        let z: Vec<f32> = eval_rows.iter().map(|&i| c.logits[i]).collect();
        let y: Vec<u8> = eval_rows.iter().map(|&i| ds.y[i]).collect();
        let slices = slices_of(ds, &eval_rows);
        let ids: Vec<&str> = eval_rows.iter().map(|&i| ds.ids[i].as_str()).collect();
        let mut e = evaluate(
            &plan.version,
            &ids,
            &z,
            &y,
            &slices,
            t,
            cfg.replay_queries,
            cfg.reward_resamples,
            cfg.seed,
        );
        e.augmented = evaluate_copies(
            &plan.version,
            ds,
            &ds.aug.rows(|r| ds.split[r] == Split::Eval),
            &c.aug_logits,
            t,
            (cfg.replay_queries, cfg.reward_resamples, cfg.seed),
            c.aug_trained as u64,
        );
        e
    });
    // The held-out synthetic images, measured apart from the real eval set.
    let synthetic_rows: Vec<usize> = (0..ds.len())
        .filter(|&i| ds.split[i] == Split::EvalSynthetic)
        .collect();
    let metrics_synthetic = (!synthetic_rows.is_empty()).then(|| {
        let p: Vec<f32> = synthetic_rows
            .iter()
            .map(|&i| t.served(c.logits[i]))
            .collect();
        let y: Vec<u8> = synthetic_rows.iter().map(|&i| ds.y[i]).collect();
        super::metrics::Metrics::compute(&p, &y)
    });
    let card = ModelCard {
        format: super::model::CARD_FORMAT,
        model_version: plan.version.clone(),
        created_at: Utc::now(),
        embedding_model: plan.embedding_model.clone(),
        dim: ds.dim,
        head: cfg.head.clone(),
        calibration,
        snapshot: plan.snapshot.to_string(),
        table_versions: plan.pinned.clone(),
        slice_run: plan.slice_run.as_ref().map(|r| r.to_string()),
        recipe: serde_json::to_value(cfg).map_err(|e| TrainError::Card(e.to_string()))?,
        seed: cfg.seed,
        data: ds.counts(),
        fold_best_epochs: c.fold_best.clone(),
        final_epochs: c.final_epochs,
        history: c.history.clone(),
        fold_histories: c.fold_histories.clone(),
        metrics: evaluation.as_ref().map(|e| e.metrics.clone()),
        metrics_synthetic,
        metrics_augmented: evaluation.as_ref().and_then(|e| e.augmented.clone()),
        replay: evaluation.as_ref().and_then(|e| e.replay.clone()),
        weights_sha256: sha256_hex(&c.weights),
        parent: plan.parent.clone(),
        roadwork_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    Ok((card, c, evaluation))
}

/// Fits Platt scaling on the calibration split (real data only), if it is usable, and with
/// `prior_correction` moves its prior (the split's positive share) to the validators' ½. The
/// reliability after calibration is measured before the shift: on this split's own prior, that is
/// what calibration can be judged by.
fn calibrate(
    ds: &Dataset,
    z_all: &[f32],
    min_calibration: usize,
    prior_correction: bool,
) -> CalibrationReport {
    let rows: Vec<usize> = (0..ds.len())
        .filter(|&i| ds.split[i] == Split::Calib)
        .collect();
    let z: Vec<f32> = rows.iter().map(|&i| z_all[i]).collect();
    let y: Vec<u8> = rows.iter().map(|&i| ds.y[i]).collect();
    let raw: Vec<f32> = z.iter().map(|&z| sigmoid(z)).collect();
    let ece_before = reliability(&raw, &y, super::metrics::ECE_BINS).ece;
    let skipped = if rows.len() < min_calibration {
        Some(format!(
            "{} calibration samples, fewer than train.min_calibration = {min_calibration}",
            rows.len(),
        ))
    } else if !y.contains(&0) || !y.contains(&1) {
        Some("the calibration split has one class only".into())
    } else {
        None
    };
    let temperature = if skipped.is_some() {
        Temperature::default()
    } else {
        let fitted = Temperature::fit_with_bias(&z, &y);
        let prior = y.iter().filter(|&&v| v == 1).count() as f64 / y.len().max(1) as f64;
        if prior_correction {
            fitted.shifted_to_balanced(prior)
        } else {
            fitted
        }
    };
    let cal: Vec<f32> = z
        .iter()
        .map(|&z| temperature.probability_unshifted(z) as f32)
        .collect();
    CalibrationReport {
        temperature,
        ece_before,
        ece_after: reliability(&cal, &y, super::metrics::ECE_BINS).ece,
        skipped,
    }
}

/// Per-sample scores for mining: every labelled and every pool sample.
fn score_rows(ds: &Dataset, c: &Computed, t: Temperature, version: &str) -> Vec<HeadScoreRow> {
    let now = Utc::now();
    let members =
        |probs: &[Vec<f32>], i: usize| -> Vec<f32> { probs.iter().map(|p| p[i]).collect() };
    let mut out = Vec::with_capacity(ds.len() + ds.pool_ids.len());
    for i in 0..ds.len() {
        let (mean, std, mi) = ensemble_stats(&members(&c.fold_probs, i));
        out.push(HeadScoreRow {
            model_version: version.to_string(),
            sample_id: ds.ids[i].clone(),
            split: ds.split[i].as_str().to_string(),
            label: Some(ds.y[i]),
            oof_prob: c.oof[i].map(sigmoid),
            prob: t.served(c.logits[i]),
            ensemble_mean: mean,
            ensemble_std: std,
            ensemble_mi: mi,
            ts: now,
        });
    }
    for (i, id) in ds.pool_ids.iter().enumerate() {
        let (mean, std, mi) = ensemble_stats(&members(&c.fold_pool_probs, i));
        out.push(HeadScoreRow {
            model_version: version.to_string(),
            sample_id: id.clone(),
            split: "unlabelled".into(),
            label: None,
            oof_prob: None,
            prob: t.served(c.pool_logits[i]),
            ensemble_mean: mean,
            ensemble_std: std,
            ensemble_mi: mi,
            ts: now,
        });
    }
    out
}

/// Times `epochs` epochs of one head fit on `n × dim` random clustered features (for
/// `roadwork bench train`); returns seconds.
pub fn bench_fit(
    cfg: &TrainConfig,
    x: &[f32],
    y: &[u8],
    dim: usize,
    epochs: usize,
) -> Result<f64, TrainError> {
    let started = Instant::now();
    let xy = Xy { x, y, dim };
    match cfg.device {
        ComputeDevice::Cpu => {
            fit::<Autodiff<crate::backend::Cpu>>(
                &cfg.head,
                &cfg.fit,
                xy,
                None,
                epochs,
                cfg.seed,
                &Default::default(),
            );
        }
        #[cfg(feature = "cuda")]
        ComputeDevice::Cuda => {
            fit::<Autodiff<burn::backend::Cuda<f32>>>(
                &cfg.head,
                &cfg.fit,
                xy,
                None,
                epochs,
                cfg.seed,
                &Default::default(),
            );
        }
        #[cfg(not(feature = "cuda"))]
        ComputeDevice::Cuda => {
            return Err(TrainError::Unsupported(
                "this build has no CUDA support; rebuild with `--features cuda`".into(),
            ));
        }
    }
    Ok(started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensemble_agreement_has_no_mutual_information() {
        let (m, s, mi) = ensemble_stats(&[0.8, 0.8, 0.8]);
        assert!((m - 0.8).abs() < 1e-6 && s < 1e-6 && mi < 1e-6);
        let (m, s, mi) = ensemble_stats(&[0.01, 0.99]);
        assert!((m - 0.5).abs() < 1e-6 && s > 0.45 && mi > 0.5);
    }
}
