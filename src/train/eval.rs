//! Evaluation on the frozen eval set and the promotion gate.
//!
//! The eval set is the `eval` split (a pure function of sample id, real data only) of the labelled
//! samples that the model's embeddings cover. Two heads are compared only on the samples both can
//! score, and the comparison is stored as one `evaluations` row per head with the same digest.

use std::collections::{BTreeMap, HashSet};

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::TrainError;
use super::calibrate::Temperature;
use super::data::{self, Dataset, Split, SplitConfig};
use super::metrics::{Curve, Metrics, Reliability, pr_curve, reliability, roc_curve};
use super::model::{TrainedHead, sha256_hex};
use super::registry::{ChampionPointer, Registry};
use super::reward::{Replay, replay, reward_interval};
use crate::store::{EvaluationRow, RunId, SnapshotName, Store};

/// Metrics of one slice (e.g. `weather=rain`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceMetrics {
    pub slice: String,
    pub n: u64,
    pub positives: u64,
    pub accuracy: f64,
    pub mcc: f64,
    pub f1: f64,
    pub roc_auc: Option<f64>,
}

/// A head on the validator-augmented copies of its eval set: the images validators sent before
/// 2026-05-03 (224² JPEGs at levels 0–3), measured apart from the clean eval set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentedEval {
    /// Copies of eval samples measured here.
    pub n: u64,
    /// Copies of training samples the head was trained on (0: trained on clean images only).
    pub trained_on: u64,
    pub metrics: Metrics,
    /// The reward replay (with its bootstrap interval) on the copies.
    pub replay: Option<Replay>,
    /// `level=0` … `level=3`.
    pub levels: Vec<SliceMetrics>,
    /// `distortion=<code>` for each family that ran on a copy (any strength), and
    /// `distortion=none` for copies without one (levels 0 and 1, and unlucky draws).
    pub distortions: Vec<SliceMetrics>,
}

impl AugmentedEval {
    /// Splits an evaluation of the copies (sliced by `level=` and `distortion=`) into the report.
    pub fn of(e: Evaluation, trained_on: u64) -> Self {
        let (levels, distortions): (Vec<_>, Vec<_>) = e
            .slices
            .into_iter()
            .filter(|s| s.slice.starts_with("level=") || s.slice.starts_with("distortion="))
            .partition(|s| s.slice.starts_with("level="));
        Self {
            n: e.metrics.n,
            trained_on,
            metrics: e.metrics,
            replay: e.replay,
            levels,
            distortions,
        }
    }

    /// The slices of one copy: its level and every distortion family that ran on it.
    pub fn slices_of(level: u8, distortions: &[String]) -> Vec<String> {
        let mut out = vec![format!("level={level}")];
        let mut families: Vec<&str> = distortions
            .iter()
            .map(|d| d.split_once('=').map_or(d.as_str(), |(c, _)| c))
            .collect();
        families.dedup();
        if families.is_empty() {
            out.push("distortion=none".into());
        }
        out.extend(families.into_iter().map(|c| format!("distortion={c}")));
        out
    }
}

/// One model on one eval set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub model_version: String,
    /// Digest of the sorted sample ids: evaluations are comparable when it matches.
    pub eval_set: String,
    pub metrics: Metrics,
    /// The same, before temperature scaling.
    pub uncalibrated: Metrics,
    pub slices: Vec<SliceMetrics>,
    pub replay: Option<Replay>,
    pub roc: Curve,
    pub pr: Curve,
    pub reliability: Reliability,
    pub reliability_uncalibrated: Reliability,
    pub temperature: Temperature,
    /// The same head on the validator-augmented copies of the eval set, when the store has them.
    #[serde(default)]
    pub augmented: Option<AugmentedEval>,
}

impl Evaluation {
    /// The `evaluations` row.
    pub fn to_row(&self) -> Result<EvaluationRow, TrainError> {
        let metrics = serde_json::json!({
            "metrics": self.metrics,
            "uncalibrated": self.uncalibrated,
            "replay": self.replay,
            "temperature": self.temperature,
            "augmented": self.augmented,
        });
        Ok(EvaluationRow {
            model_version: self.model_version.clone(),
            ts: Utc::now(),
            eval_set: self.eval_set.clone(),
            n: self.metrics.n as u32,
            metrics: metrics.to_string(),
            slices: serde_json::to_string(&self.slices)
                .map_err(|e| TrainError::Card(e.to_string()))?,
        })
    }
}

/// Digest of a set of sample ids.
pub fn eval_set_digest(ids: &[&str]) -> String {
    let mut v: Vec<&str> = ids.to_vec();
    v.sort_unstable();
    sha256_hex(v.join("\n").as_bytes())[..16].to_string()
}

/// Slice memberships of the given dataset rows.
pub fn slices_of(ds: &Dataset, rows: &[usize]) -> Vec<Vec<String>> {
    rows.iter().map(|&i| ds.slices[i].clone()).collect()
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Evaluates logits against labels: calibrated metrics, curves, slices and the reward replay.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model_version: &str,
    ids: &[&str],
    logits: &[f32],
    labels: &[u8],
    slices: &[Vec<String>],
    t: Temperature,
    replay_queries: usize,
    resamples: usize,
    seed: u64,
) -> Evaluation {
    let probs: Vec<f32> = logits.iter().map(|&z| t.served(z)).collect();
    let raw: Vec<f32> = logits.iter().map(|&z| sigmoid(z)).collect();
    let mut by_slice: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in slices.iter().enumerate() {
        for name in s {
            by_slice.entry(name.as_str()).or_default().push(i);
        }
    }
    let slices = by_slice
        .into_iter()
        .map(|(name, rows)| {
            let p: Vec<f32> = rows.iter().map(|&i| probs[i]).collect();
            let y: Vec<u8> = rows.iter().map(|&i| labels[i]).collect();
            let m = Metrics::compute(&p, &y);
            SliceMetrics {
                slice: name.to_string(),
                n: m.n,
                positives: m.positives,
                accuracy: m.accuracy,
                mcc: m.mcc,
                f1: m.f1,
                roc_auc: m.roc_auc,
            }
        })
        .collect();
    Evaluation {
        model_version: model_version.to_string(),
        eval_set: eval_set_digest(ids),
        metrics: Metrics::compute(&probs, labels),
        uncalibrated: Metrics::compute(&raw, labels),
        slices,
        replay: replay(&probs, labels, replay_queries, seed).map(|r| Replay {
            interval: reward_interval(&probs, labels, replay_queries, seed, resamples, 0.95),
            ..r
        }),
        roc: roc_curve(&probs, labels),
        pr: pr_curve(&probs, labels),
        reliability: reliability(&probs, labels, super::metrics::ECE_BINS),
        reliability_uncalibrated: reliability(&raw, labels, super::metrics::ECE_BINS),
        temperature: t,
        augmented: None,
    }
}

/// The head on augmented copies `copies` of `ds` (indices into `ds.aug`; `logits[j]` is copy
/// `j`'s logit), sliced by level and distortion family; `None` without copies. `replay` is
/// (queries, bootstrap resamples, seed).
pub fn evaluate_copies(
    model_version: &str,
    ds: &Dataset,
    copies: &[usize],
    logits: &[f32],
    t: Temperature,
    replay: (usize, usize, u64),
    trained_on: u64,
) -> Option<AugmentedEval> {
    if copies.is_empty() {
        return None;
    }
    let z: Vec<f32> = copies.iter().map(|&j| logits[j]).collect();
    let y: Vec<u8> = copies.iter().map(|&j| ds.y[ds.aug.of[j]]).collect();
    let slices: Vec<Vec<String>> = copies
        .iter()
        .map(|&j| AugmentedEval::slices_of(ds.aug.level[j], &ds.aug.distortions[j]))
        .collect();
    // A copy's id in the set digest: its sample and its index among the copies.
    let keys: Vec<String> = copies
        .iter()
        .map(|&j| format!("{}#{j}", ds.ids[ds.aug.of[j]]))
        .collect();
    let ids: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (queries, resamples, seed) = replay;
    let e = evaluate(
        model_version,
        &ids,
        &z,
        &y,
        &slices,
        t,
        queries,
        resamples,
        seed,
    );
    Some(AugmentedEval::of(e, trained_on))
}

/// Loads a registered head for CPU inference.
pub fn load_head(
    registry: &Registry,
    version: &str,
) -> Result<TrainedHead<crate::backend::Cpu>, TrainError> {
    let (card, weights) = registry.load(version)?;
    TrainedHead::from_parts(card, &weights, &Default::default())
}

/// The eval set of an embedding model at `at` (now when `None`): eval-split labelled samples,
/// sliced by the clusters of mining run `slices_from`.
async fn eval_set(
    store: &Store,
    at: Option<&SnapshotName>,
    embedding_model: &str,
    split: &SplitConfig,
    slices_from: Option<&RunId>,
) -> Result<Dataset, TrainError> {
    let ds = data::load(store, at, embedding_model, split, slices_from).await?;
    let mut out = Dataset {
        dim: ds.dim,
        ..Default::default()
    };
    let mut row_of = vec![None; ds.len()];
    for (i, slot) in row_of.iter_mut().enumerate() {
        if ds.split[i] == Split::Eval {
            *slot = Some(out.ids.len());
            out.ids.push(ds.ids[i].clone());
            out.x.extend_from_slice(ds.row(i));
            out.y.push(ds.y[i]);
            out.split.push(Split::Eval);
            out.group.push(ds.group[i].clone());
            out.slices.push(ds.slices[i].clone());
        }
    }
    // The eval rows' augmented copies come along, re-pointed at their new rows.
    for j in 0..ds.aug.len() {
        if let Some(r) = row_of[ds.aug.of[j]] {
            out.aug.of.push(r);
            out.aug.x.extend_from_slice(ds.aug.row(j, ds.dim));
            out.aug.level.push(ds.aug.level[j]);
            out.aug.distortions.push(ds.aug.distortions[j].clone());
        }
    }
    Ok(out)
}

fn restrict(ds: &Dataset, keep: &HashSet<String>) -> Dataset {
    let rows: Vec<usize> = (0..ds.len())
        .filter(|&i| keep.contains(ds.ids[i].as_str()))
        .collect();
    let part = ds.part(|i| keep.contains(ds.ids[i].as_str()));
    Dataset {
        ids: rows.iter().map(|&i| ds.ids[i].clone()).collect(),
        x: part.x,
        dim: ds.dim,
        y: part.y,
        split: vec![Split::Eval; rows.len()],
        group: rows.iter().map(|&i| ds.group[i].clone()).collect(),
        slices: slices_of(ds, &rows),
        pool_ids: vec![],
        pool_x: vec![],
        aug: Default::default(),
    }
}

fn run_eval(
    head: &TrainedHead<crate::backend::Cpu>,
    ds: &Dataset,
    queries: usize,
    resamples: usize,
    seed: u64,
) -> Result<Evaluation, TrainError> {
    if ds.is_empty() {
        return Err(TrainError::NotEnoughData(format!(
            "no labelled eval-split samples with embeddings {} in the store",
            head.card.embedding_model
        )));
    }
    let z = head.logits(&ds.x)?;
    let ids: Vec<&str> = ds.ids.iter().map(|i| i.as_str()).collect();
    let t = head.card.calibration.temperature;
    let mut e = evaluate(
        &head.card.model_version,
        &ids,
        &z,
        &ds.y,
        &ds.slices,
        t,
        queries,
        resamples,
        seed,
    );
    if !ds.aug.is_empty() {
        let za = head.logits(&ds.aug.x)?;
        let copies: Vec<usize> = (0..ds.aug.len()).collect();
        let trained_on = head
            .card
            .metrics_augmented
            .as_ref()
            .map_or(0, |a| a.trained_on);
        e.augmented = evaluate_copies(
            &head.card.model_version,
            ds,
            &copies,
            &za,
            t,
            (queries, resamples, seed),
            trained_on,
        );
    }
    Ok(e)
}

/// The mining run a head's card names for its slices.
fn slice_run_of(card: &super::ModelCard) -> Option<RunId> {
    card.slice_run.as_deref().and_then(|r| RunId::parse(r).ok())
}

/// Evaluates a registered head on the store's current eval set (sliced by the mining run its card
/// names) and stores the result.
pub async fn evaluate_version(
    store: &Store,
    registry: &Registry,
    version: &str,
    split: &SplitConfig,
    replay_queries: usize,
    seed: u64,
) -> Result<Evaluation, TrainError> {
    let head = load_head(registry, version)?;
    let slices = slice_run_of(&head.card);
    let ds = eval_set(
        store,
        None,
        &head.card.embedding_model,
        split,
        slices.as_ref(),
    )
    .await?;
    let e = tokio::task::spawn_blocking(move || {
        run_eval(&head, &ds, replay_queries, GATE_RESAMPLES, seed)
    })
    .await
    .map_err(|e| TrainError::Task(e.to_string()))??;
    store.put_evaluation(&e.to_row()?).await?;
    Ok(e)
}

/// Which number the gate compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum GateMetric {
    /// Matthews correlation at 0.5 (what the subnet's 100-query window rewards).
    #[default]
    Mcc,
    /// Mean reward of the validator replay.
    Reward,
    /// The lower end of the replayed reward's 95 % bootstrap interval, against the champion's
    /// point estimate: a challenger is promoted only when even its pessimistic reward beats the
    /// champion's, so one lucky eval draw does not replace a champion.
    RewardLcb,
    /// MCC on the eval set reweighted to 50/50 labels, as validators draw them.
    BalancedMcc,
    RocAuc,
    Accuracy,
}

impl GateMetric {
    /// The challenger's score under this metric.
    fn of(self, e: &Evaluation) -> f64 {
        match self {
            GateMetric::Mcc => e.metrics.mcc,
            GateMetric::Reward => e.replay.as_ref().map_or(0.0, |r| r.mean_reward),
            GateMetric::RewardLcb => e
                .replay
                .as_ref()
                .map_or(0.0, |r| r.interval.map_or(r.mean_reward, |i| i.lo)),
            GateMetric::BalancedMcc => e.metrics.balanced_mcc,
            GateMetric::RocAuc => e.metrics.roc_auc.unwrap_or(0.0),
            GateMetric::Accuracy => e.metrics.accuracy,
        }
    }

    /// The champion's score it is compared with (its point estimate for `reward_lcb`).
    fn of_champion(self, e: &Evaluation) -> f64 {
        match self {
            GateMetric::RewardLcb => GateMetric::Reward.of(e),
            m => m.of(e),
        }
    }
}

/// Bootstrap resamples of the gate's reward intervals.
const GATE_RESAMPLES: usize = 200;

/// Why a challenger's evaluation `ce` does not replace the champion's `ke` (both on the same
/// eval set): the gate metric's gain, then every large-enough slice's accuracy. Empty: promote.
pub fn gate_reasons(cfg: &PromoteConfig, ce: &Evaluation, ke: &Evaluation) -> Vec<String> {
    let mut reasons = Vec::new();
    let (score, champ) = (cfg.metric.of(ce), cfg.metric.of_champion(ke));
    if score < champ + cfg.min_gain {
        reasons.push(format!(
            "{:?} {score:.4} does not beat the champion's {champ:.4} by {}",
            cfg.metric, cfg.min_gain
        ));
    }
    for s in &ce.slices {
        let Some(k) = ke.slices.iter().find(|k| k.slice == s.slice) else {
            continue;
        };
        if s.n >= cfg.min_slice_n && s.accuracy < k.accuracy - cfg.slice_tolerance {
            reasons.push(format!(
                "slice {} regresses: accuracy {:.3} vs {:.3} (n = {})",
                s.slice, s.accuracy, k.accuracy, s.n
            ));
        }
    }
    reasons
}

/// The promotion gate (`[train.promote]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromoteConfig {
    pub metric: GateMetric,
    /// The challenger must beat the champion by at least this much on `metric`.
    pub min_gain: f64,
    /// No slice's accuracy may drop by more than this.
    pub slice_tolerance: f64,
    /// Slices smaller than this (in the shared eval set) are not gated: too noisy.
    pub min_slice_n: u64,
}

impl Default for PromoteConfig {
    fn default() -> Self {
        Self {
            metric: GateMetric::Mcc,
            min_gain: 0.0,
            slice_tolerance: 0.05,
            min_slice_n: 30,
        }
    }
}

/// What the gate decided and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    pub challenger: String,
    pub champion: Option<String>,
    pub promoted: bool,
    pub metric: GateMetric,
    pub challenger_score: f64,
    pub champion_score: Option<f64>,
    /// Shared eval samples the comparison used.
    pub n: u64,
    /// Why it was refused (empty when promoted).
    pub reasons: Vec<String>,
    pub pointer: Option<ChampionPointer>,
}

/// Promotes `version` if it beats the champion (or there is none). `force` skips the gate.
///
/// Deterministic: both heads are judged on the eval split of the challenger's training snapshot,
/// sliced by the mining run its card names, so the same head on the same snapshot always gets the
/// same decision however the store has changed since (new samples, new mining runs). A champion
/// whose embeddings are not in that snapshot is scored on the current store, on the same ids.
pub async fn promote(
    store: &Store,
    registry: &Registry,
    version: &str,
    cfg: &PromoteConfig,
    split: &SplitConfig,
    seed: u64,
    force: bool,
) -> Result<GateDecision, TrainError> {
    let mut d = judge(store, registry, version, cfg, split, seed).await?;
    d.promoted = force || d.promoted;
    if d.promoted {
        let (registry, v) = (registry.clone(), version.to_string());
        d.pointer = Some(
            tokio::task::spawn_blocking(move || registry.set_champion(&v))
                .await
                .map_err(|e| TrainError::Task(e.to_string()))??,
        );
    }
    Ok(d)
}

/// The gate alone: whether `version` beats the champion, as [`promote`] decides it, without
/// changing the champion (`pointer` is `None`; `promoted` says whether it passed). The nightly job
/// uses it to name a challenger for shadow scoring.
pub async fn judge(
    store: &Store,
    registry: &Registry,
    version: &str,
    cfg: &PromoteConfig,
    split: &SplitConfig,
    seed: u64,
) -> Result<GateDecision, TrainError> {
    let challenger = load_head(registry, version)?;
    let champion = match registry.champion()? {
        Some(p) if p.version != version => Some(load_head(registry, &p.version)?),
        _ => None,
    };
    let at = SnapshotName::parse(&challenger.card.snapshot).ok();
    let slices = slice_run_of(&challenger.card);
    let c_set = eval_set(
        store,
        at.as_ref(),
        &challenger.card.embedding_model,
        split,
        slices.as_ref(),
    )
    .await?;
    let (c_set, k_set) = match &champion {
        Some(k) => {
            let model = &k.card.embedding_model;
            let k_set = match eval_set(store, at.as_ref(), model, split, slices.as_ref()).await {
                Err(TrainError::SnapshotLacksModel { .. }) => {
                    eval_set(store, None, model, split, slices.as_ref()).await?
                }
                r => r?,
            };
            let theirs: HashSet<&str> = k_set.ids.iter().map(|i| i.as_str()).collect();
            let both: HashSet<String> = c_set
                .ids
                .iter()
                .filter(|i| theirs.contains(i.as_str()))
                .map(|i| i.to_string())
                .collect();
            (restrict(&c_set, &both), Some(restrict(&k_set, &both)))
        }
        None => (c_set, None),
    };
    let queries = 2000;
    // Both evaluations (head forward passes and the reward replays) on a blocking thread.
    let (ce, ke, champion) = tokio::task::spawn_blocking(move || {
        let ce = run_eval(&challenger, &c_set, queries, GATE_RESAMPLES, seed);
        let ke = match (&champion, &k_set, &ce) {
            (Some(k), Some(s), Ok(_)) => Some(run_eval(k, s, queries, GATE_RESAMPLES, seed)),
            _ => None,
        };
        (ce, ke, champion)
    })
    .await
    .map_err(|e| TrainError::Task(e.to_string()))?;
    let mut reasons = Vec::new();
    let ce = match ce {
        Ok(e) => {
            store.put_evaluation(&e.to_row()?).await?;
            Some(e)
        }
        Err(TrainError::NotEnoughData(why)) => {
            reasons.push(why);
            None
        }
        Err(e) => return Err(e),
    };
    let ke = match ke {
        Some(e) => {
            let e = e?;
            store.put_evaluation(&e.to_row()?).await?;
            Some(e)
        }
        None => None,
    };
    let score = ce.as_ref().map_or(f64::NAN, |e| cfg.metric.of(e));
    if let (Some(ce), Some(ke)) = (&ce, &ke) {
        reasons.extend(gate_reasons(cfg, ce, ke));
    }
    // Without an eval set there is nothing to compare: a first head may still serve (anything beats
    // no head), a challenger may not replace a champion.
    if ce.is_none() && champion.is_none() {
        reasons.clear();
    }
    Ok(GateDecision {
        challenger: version.to_string(),
        champion: champion.map(|k| k.card.model_version),
        promoted: reasons.is_empty(),
        metric: cfg.metric,
        challenger_score: score,
        champion_score: ke.as_ref().map(|e| cfg.metric.of_champion(e)),
        n: ce.as_ref().map_or(0, |e| e.metrics.n),
        reasons,
        pointer: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An evaluation of a head that answers `right` of every 100 samples correctly, on `n`
    /// label-alternating samples.
    fn head_with(n: usize, right: usize) -> Evaluation {
        let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
        let logits: Vec<f32> = (0..n)
            .map(|i| {
                let ok = (i * 37) % 100 < right;
                if (labels[i] == 1) == ok { 3.0 } else { -3.0 }
            })
            .collect();
        let ids: Vec<String> = (0..n).map(|i| format!("s{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        evaluate(
            "h",
            &ids,
            &logits,
            &labels,
            &vec![vec![]; n],
            Temperature::default(),
            2000,
            200,
            7,
        )
    }

    #[test]
    fn the_lower_bound_gate_refuses_a_lucky_challenger_and_takes_a_clear_winner() {
        let champion = head_with(100, 80);
        let lucky = head_with(100, 82);
        let clear = head_with(100, 97);
        let point = PromoteConfig {
            metric: GateMetric::Reward,
            ..Default::default()
        };
        let lcb = PromoteConfig {
            metric: GateMetric::RewardLcb,
            ..Default::default()
        };
        // On the point estimate the 82 % head wins; its interval reaches below the champion.
        assert!(gate_reasons(&point, &lucky, &champion).is_empty());
        let i = lucky.replay.as_ref().and_then(|r| r.interval).unwrap();
        let champ = champion.replay.as_ref().unwrap().mean_reward;
        assert!(i.lo < champ && champ < i.hi, "{i:?} vs {champ}");
        let refused = gate_reasons(&lcb, &lucky, &champion);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].starts_with("RewardLcb"), "{refused:?}");
        assert!(gate_reasons(&lcb, &clear, &champion).is_empty());
        // Balanced MCC equals plain MCC on a 50/50 set.
        assert!((clear.metrics.balanced_mcc - clear.metrics.mcc).abs() < 1e-12);
    }
}
