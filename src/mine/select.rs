//! Choosing what to label next under a budget.
//!
//! Strategies (facts from the active-learning literature; the digits benchmark in `bench al`
//! measures them):
//! - `random`: the baseline every strategy must beat.
//! - `margin`: smallest gap between the two most probable classes (calibrated probabilities).
//! - `coreset`: k-center greedy (Sener & Savarese 2018): repeatedly take the candidate farthest
//!   from everything labelled or already taken.
//! - `typiclust` (Hacohen et al. 2022): cluster into |labelled| + budget clusters, then repeatedly
//!   take the most typical candidate of the largest cluster with the fewest labels.
//! - `probcover` (Yehuda et al. 2022): max coverage of δ-balls, δ the largest radius whose balls
//!   stay ≥ `probcover_purity` pure under k-means pseudo-labels (k = classes); greedily take the
//!   candidate whose ball holds the most points not yet covered by a labelled or chosen one.
//! - `auto`: coverage while the model is weak, uncertainty once it is competent (DCoM, Mishal &
//!   Weinshall 2024). With no model it covers (TypiClust). With a model, its competence is its
//!   mean top-class probability on the candidates rescaled from chance (0) to certainty (1)
//!   ([`CompetenceEstimate::Pool`]; the caller's cross-validated accuracy on request): below
//!   `competence` it covers, at or above a greedy that multiplies uncertainty (margin), diversity
//!   (distance to the labelled and chosen set) and class balance, Lightly-style, with the
//!   weights `uncertainty_weight`, `diversity_weight` and `balance_penalty`. The defaults (0.55;
//!   weights 1, 0, 1: plain margin once competent) are what `roadwork bench al` measured best
//!   on the digits: cross-validated accuracy on an actively chosen labelled set falls as the
//!   hard cases come in, so a switch on it flips back and forth. Without any estimate the budget
//!   decides: coverage while labelled + budget ≤ `low_budget_per_class × classes`.
//! - Any strategy can reserve `control_share` of the budget for a uniformly random control arm,
//!   so that what the strategy buys can be compared with what chance buys on the same night.
//!
//! Every chosen item carries its score and the reasons it was chosen.

use burn::prelude::Backend;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::MineError;
use super::compute::Compute;
use super::density::typicality;
use super::kmeans::{KMeansConfig, KMeansMode, kmeans};
use super::knn::{KnnGraph, Prepared, exact_neighbors, nearest_in};
use super::vectors::{Metric, Vectors, distance_from_dot};

/// A selection strategy.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Auto,
    Typiclust,
    Coreset,
    Margin,
    Probcover,
    Random,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Typiclust => "typiclust",
            Strategy::Coreset => "coreset",
            Strategy::Margin => "margin",
            Strategy::Probcover => "probcover",
            Strategy::Random => "random",
        }
    }

    pub const ALL: [Strategy; 6] = [
        Strategy::Auto,
        Strategy::Typiclust,
        Strategy::Coreset,
        Strategy::Margin,
        Strategy::Probcover,
        Strategy::Random,
    ];
}

/// Where `auto`'s competence comes from (`mine.select.competence_estimate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompetenceEstimate {
    /// The model's confidence on the candidates: the mean of its largest class probability,
    /// rescaled so that chance (1 / classes) is 0 and certainty 1. It does not look at the
    /// labelled rows, so labelling the hard cases an uncertainty round chose does not make the
    /// model look weaker and flip the regime back (cross-validated accuracy on an actively
    /// chosen set does exactly that: measured with `roadwork bench al`).
    #[default]
    Pool,
    /// The caller's cross-validated accuracy on the labelled rows ([`Pool::competence`]).
    CrossValidated,
}

/// The reason every control-arm pick carries.
pub const CONTROL_ARM: &str = "control arm: random";

/// Selection settings (`[mine.select]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectConfig {
    pub strategy: Strategy,
    pub seed: u64,
    /// `auto` stays in the low-budget regime while labelled + budget ≤ this × classes.
    pub low_budget_per_class: f64,
    /// TypiClust never makes more clusters than this.
    pub max_clusters: usize,
    /// Neighbours for typicality.
    pub typicality_k: usize,
    /// TypiClust skips clusters smaller than this (too small to have a typical member).
    pub min_cluster_size: usize,
    /// Exponents of uncertainty and diversity in `auto`'s high-budget score.
    pub uncertainty_weight: f64,
    pub diversity_weight: f64,
    /// Score factor for a candidate whose predicted class already has its share; 1 = no balance.
    pub balance_penalty: f64,
    /// `auto` switches from coverage to uncertainty once the model's competence reaches this.
    pub competence: f64,
    /// How competence is estimated.
    pub competence_estimate: CompetenceEstimate,
    /// Neighbours per row ProbCover's balls are drawn from (a ball holds at most this many).
    pub probcover_k: usize,
    /// ProbCover's radius is the largest whose balls are at least this pure.
    pub probcover_purity: f64,
    /// Share of every selection's budget picked uniformly at random as a control arm (0 = none).
    pub control_share: f64,
}

impl Default for SelectConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Auto,
            seed: 0,
            low_budget_per_class: 5.0,
            max_clusters: 500,
            typicality_k: 20,
            min_cluster_size: 5,
            uncertainty_weight: 1.0,
            diversity_weight: 0.0,
            balance_penalty: 1.0,
            competence: 0.55,
            competence_estimate: CompetenceEstimate::Pool,
            probcover_k: 32,
            probcover_purity: 0.95,
            control_share: 0.0,
        }
    }
}

impl SelectConfig {
    /// Range checks serde cannot do.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.control_share) {
            return Err(format!(
                "mine.select.control_share = {} is not in [0, 1)",
                self.control_share
            ));
        }
        if !(0.0..=1.0).contains(&self.probcover_purity) || self.probcover_k == 0 {
            return Err(
                "mine.select.probcover_purity must be in [0, 1] and probcover_k ≥ 1".into(),
            );
        }
        if !self.competence.is_finite() {
            return Err("mine.select.competence must be finite".into());
        }
        Ok(())
    }
}

/// What the strategies choose from.
pub struct Pool<'a> {
    /// Every row: labelled and candidates (other rows are ignored).
    pub x: &'a Vectors,
    pub labelled: &'a [usize],
    pub candidates: &'a [usize],
    /// The current model's probabilities, `x.len() × classes` row-major; `None` before any model.
    pub probs: Option<&'a [f64]>,
    pub classes: usize,
    pub metric: Metric,
    /// The current model's cross-validated accuracy on the labelled rows, when known: `auto`'s
    /// competence under [`CompetenceEstimate::CrossValidated`].
    pub competence: Option<f64>,
}

/// One chosen row.
#[derive(Debug, Clone, Serialize)]
pub struct Selected {
    pub row: usize,
    pub rank: usize,
    pub score: f64,
    pub reasons: Vec<String>,
}

/// The outcome of one selection.
#[derive(Debug, Clone, Serialize)]
pub struct Selection {
    pub requested: Strategy,
    /// The strategy that ran (`auto` resolves to one; `margin` without a model runs `random`).
    pub used: Strategy,
    /// `low-budget`, `high-budget` (by budget) or `weak-model`, `competent-model` (by
    /// competence), or empty when not `auto`.
    pub regime: String,
    /// Items from this index on are the random control arm (`items.len()` when there is none).
    pub control_from: usize,
    pub budget: usize,
    /// Why fewer than `budget` items came back, if so.
    pub clamped: Option<String>,
    pub items: Vec<Selected>,
}

/// Margin uncertainty of a row: 1 − (p₁ − p₂), in [0, 1].
fn uncertainty(probs: &[f64], classes: usize, row: usize) -> f64 {
    let r = &probs[row * classes..(row + 1) * classes];
    let (mut a, mut b) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for &v in r {
        if v > a {
            (a, b) = (v, a);
        } else if v > b {
            b = v;
        }
    }
    (1.0 - (a - b)).clamp(0.0, 1.0)
}

fn predicted(probs: &[f64], classes: usize, row: usize) -> usize {
    let r = &probs[row * classes..(row + 1) * classes];
    (0..classes)
        .max_by(|&a, &b| r[a].total_cmp(&r[b]).then(b.cmp(&a)))
        .unwrap_or(0)
}

/// Chooses up to `budget` candidates.
pub fn select<B: Backend>(
    c: &Compute<B>,
    pool: &Pool,
    budget: usize,
    cfg: &SelectConfig,
) -> Result<Selection, MineError> {
    if budget == 0 {
        return Err(MineError::Config("the budget must be at least 1".into()));
    }
    if pool.candidates.is_empty() {
        return Err(MineError::Empty(
            "no unlabelled candidates to select from".into(),
        ));
    }
    if let Some(p) = pool.probs
        && p.len() != pool.x.len() * pool.classes
    {
        return Err(MineError::Shape(format!(
            "{} probabilities for {} rows × {} classes",
            p.len(),
            pool.x.len(),
            pool.classes
        )));
    }
    let n = budget.min(pool.candidates.len());
    let clamped = (n < budget).then(|| {
        format!(
            "budget {budget} exceeds the {} candidates; all are selected",
            pool.candidates.len()
        )
    });
    let (used, regime) = strategy_of(cfg, pool, n);
    // The control arm: drawn first (seeded), so the strategy never sees those rows.
    let control_n = ((n as f64 * cfg.control_share).round() as usize).min(n);
    let control = random(pool, control_n, cfg.seed ^ 0xc0_47_20_1a);
    let taken: std::collections::HashSet<usize> = control.iter().map(|s| s.row).collect();
    let reduced: Vec<usize> = pool
        .candidates
        .iter()
        .copied()
        .filter(|r| !taken.contains(r))
        .collect();
    let main_n = n - control.len();
    let main_pool = &Pool {
        candidates: &reduced,
        ..*pool
    };
    let mut items = if main_n == 0 || main_pool.candidates.is_empty() {
        Vec::new()
    } else {
        match used {
            Strategy::Random => random(main_pool, main_n, cfg.seed),
            Strategy::Margin => margin(main_pool, main_n),
            Strategy::Coreset => coreset(c, main_pool, main_n, cfg, None)?,
            Strategy::Typiclust => typiclust(c, main_pool, main_n, cfg)?,
            Strategy::Probcover => probcover(c, main_pool, main_n, cfg)?,
            Strategy::Auto => coreset(c, main_pool, main_n, cfg, main_pool.probs)?,
        }
    };
    if cfg.strategy == Strategy::Margin && pool.probs.is_none() {
        items
            .iter_mut()
            .for_each(|i| i.reasons.push("no model yet: random".into()));
    }
    if let Some(comp) = competence_of(cfg, pool).filter(|_| cfg.strategy == Strategy::Auto) {
        let why = format!(
            "model competence {comp:.3} (switch at {:.3})",
            cfg.competence
        );
        items.iter_mut().for_each(|i| i.reasons.push(why.clone()));
    }
    let control_from = items.len();
    items.extend(control.into_iter().map(|mut s| {
        s.reasons = vec![CONTROL_ARM.into()];
        s
    }));
    for (rank, it) in items.iter_mut().enumerate() {
        it.rank = rank + 1;
    }
    Ok(Selection {
        requested: cfg.strategy,
        used,
        regime: regime.into(),
        control_from,
        budget,
        clamped,
        items,
    })
}

/// The model's expected accuracy on `rows`: the mean of its largest class probability.
pub fn expected_accuracy(probs: &[f64], classes: usize, rows: &[usize]) -> Option<f64> {
    if rows.is_empty() || classes == 0 {
        return None;
    }
    let sum: f64 = rows
        .iter()
        .map(|&r| {
            probs[r * classes..(r + 1) * classes]
                .iter()
                .copied()
                .fold(0.0, f64::max)
        })
        .sum();
    Some(sum / rows.len() as f64)
}

/// Confidence `e` rescaled so that chance (1 / classes) is 0 and certainty 1: one threshold then
/// means the same for a binary head and a 10-class model.
fn above_chance(e: f64, classes: usize) -> f64 {
    let chance = 1.0 / classes.max(2) as f64;
    ((e - chance) / (1.0 - chance)).clamp(0.0, 1.0)
}

/// `auto`'s competence estimate for `pool` under `cfg` (`None`: no model, or no estimate).
pub fn competence_of(cfg: &SelectConfig, pool: &Pool) -> Option<f64> {
    match cfg.competence_estimate {
        CompetenceEstimate::Pool => pool
            .probs
            .and_then(|p| expected_accuracy(p, pool.classes, pool.candidates))
            .map(|e| above_chance(e, pool.classes)),
        CompetenceEstimate::CrossValidated => pool.competence,
    }
}

/// The strategy that runs for `cfg.strategy` on `pool` with `n` picks, and `auto`'s regime.
pub fn strategy_of(cfg: &SelectConfig, pool: &Pool, n: usize) -> (Strategy, &'static str) {
    match (cfg.strategy, pool.probs, competence_of(cfg, pool)) {
        (Strategy::Auto, None, _) => (Strategy::Typiclust, "low-budget"),
        (Strategy::Auto, Some(_), Some(comp)) if comp < cfg.competence => {
            (Strategy::Typiclust, "weak-model")
        }
        (Strategy::Auto, Some(_), Some(_)) => (Strategy::Auto, "competent-model"),
        (Strategy::Auto, Some(_), None)
            if (pool.labelled.len() + n) as f64
                <= cfg.low_budget_per_class * pool.classes.max(2) as f64 =>
        {
            (Strategy::Typiclust, "low-budget")
        }
        (Strategy::Auto, Some(_), None) => (Strategy::Auto, "high-budget"),
        (Strategy::Margin, None, _) => (Strategy::Random, ""),
        (s, _, _) => (s, ""),
    }
}

fn random(pool: &Pool, n: usize, seed: u64) -> Vec<Selected> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rows = pool.candidates.to_vec();
    rows.shuffle(&mut rng);
    rows.into_iter()
        .take(n)
        .map(|row| Selected {
            row,
            rank: 0,
            score: 0.0,
            reasons: vec!["random".into()],
        })
        .collect()
}

fn margin(pool: &Pool, n: usize) -> Vec<Selected> {
    let Some(p) = pool.probs else {
        return Vec::new();
    };
    let mut scored: Vec<(f64, usize)> = pool
        .candidates
        .iter()
        .map(|&r| (uncertainty(p, pool.classes, r), r))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored
        .into_iter()
        .take(n)
        .map(|(u, row)| Selected {
            row,
            rank: 0,
            score: u,
            reasons: vec![format!("margin uncertainty {u:.3}")],
        })
        .collect()
}

/// k-center greedy; with `probs`, the distance is weighted by uncertainty and class balance
/// (`auto`'s high-budget regime).
fn coreset<B: Backend>(
    c: &Compute<B>,
    pool: &Pool,
    n: usize,
    cfg: &SelectConfig,
    probs: Option<&[f64]>,
) -> Result<Vec<Selected>, MineError> {
    let p = Prepared::new(pool.x, pool.metric);
    let cand = pool.candidates;
    let mut dist = nearest_in(c, &p, cand, pool.labelled)?;
    let mut taken = vec![false; cand.len()];
    let mut class_count = vec![0f64; pool.classes.max(1)];
    if let Some(pr) = probs {
        for &r in pool.labelled {
            class_count[predicted(pr, pool.classes, r)] += 1.0;
        }
    }
    // Candidates stay on the device; each pick is one matrix-vector product.
    let cand_x = p.x.gather(cand);
    let cand_t = c.resident(cand_x.as_slice(), p.x.dim())?;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let finite_max = dist
            .iter()
            .zip(&taken)
            .filter(|&(d, &t)| !t && d.is_finite())
            .map(|(&d, _)| d)
            .fold(0f32, f32::max)
            .max(1e-12);
        let total: f64 = class_count.iter().sum::<f64>() + 1.0;
        let fair = total / class_count.len() as f64;
        let mut best: Option<(f64, usize, Vec<String>)> = None;
        for (ci, &row) in cand.iter().enumerate() {
            if taken[ci] {
                continue;
            }
            // Nothing labelled yet: every candidate is equally far; diversity = 1.
            let div = if dist[ci].is_finite() {
                (dist[ci] / finite_max) as f64
            } else {
                1.0
            };
            let (score, reasons) = match probs {
                None => (div, vec![format!("coverage: distance {:.3}", dist[ci])]),
                Some(pr) => {
                    let u = uncertainty(pr, pool.classes, row);
                    let k = predicted(pr, pool.classes, row);
                    let bal = if class_count[k] + 1.0 > fair {
                        cfg.balance_penalty
                    } else {
                        1.0
                    };
                    let s = u.powf(cfg.uncertainty_weight) * div.powf(cfg.diversity_weight) * bal;
                    let mut why =
                        vec![format!("uncertainty {u:.3}"), format!("diversity {div:.3}")];
                    if bal == 1.0 && cfg.balance_penalty < 1.0 {
                        why.push(format!("predicted class {k} under-represented"));
                    }
                    (s, why)
                }
            };
            if best.as_ref().is_none_or(|b| score > b.0) {
                best = Some((score, ci, reasons));
            }
        }
        let Some((score, ci, reasons)) = best else {
            break;
        };
        taken[ci] = true;
        let row = cand[ci];
        if let Some(pr) = probs {
            class_count[predicted(pr, pool.classes, row)] += 1.0;
        }
        out.push(Selected {
            row,
            rank: 0,
            score,
            reasons,
        });
        // Distances to the new centre.
        let d = c.dots_against(p.x.row(row), &cand_t)?;
        for (ci, &dot) in d.iter().enumerate() {
            let dd = distance_from_dot(p.metric, dot, p.sq[row], p.sq[cand[ci]]);
            dist[ci] = dist[ci].min(dd);
        }
    }
    Ok(out)
}

/// The labelled rows then the candidates, and their vectors prepared for the pool's metric.
fn pool_rows(pool: &Pool) -> (Vec<usize>, Vectors) {
    let rows: Vec<usize> = pool
        .labelled
        .iter()
        .chain(pool.candidates)
        .copied()
        .collect();
    let x = pool.x.gather(&rows).for_metric(pool.metric);
    (rows, x)
}

/// One seeded Lloyd k-means run (the coverage strategies' clusters).
fn lloyd_once<B: Backend>(
    c: &Compute<B>,
    x: &Vectors,
    k: usize,
    seed: u64,
) -> Result<super::kmeans::KMeans, MineError> {
    kmeans(
        c,
        x,
        k,
        &KMeansConfig {
            mode: KMeansMode::Lloyd,
            restarts: 1,
            seed,
            ..KMeansConfig::default()
        },
    )
}

fn typiclust<B: Backend>(
    c: &Compute<B>,
    pool: &Pool,
    n: usize,
    cfg: &SelectConfig,
) -> Result<Vec<Selected>, MineError> {
    let (rows, x) = pool_rows(pool);
    let k = (pool.labelled.len() + n)
        .min(cfg.max_clusters)
        .clamp(1, rows.len());
    let km = lloyd_once(c, &x, k, cfg.seed)?;
    let typ = typicality(
        c,
        &x,
        pool.metric,
        &km.assignments,
        cfg.typicality_k,
        2048,
        cfg.seed,
    )?;
    let sizes = km.sizes();
    let mut covered = vec![0usize; k];
    for a in &km.assignments[..pool.labelled.len()] {
        covered[*a as usize] += 1;
    }
    // Candidates per cluster, most typical first (local indices into `rows`).
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for local in pool.labelled.len()..rows.len() {
        members[km.assignments[local] as usize].push(local);
    }
    for m in &mut members {
        m.sort_by(|&a, &b| typ[b].total_cmp(&typ[a]).then(a.cmp(&b)));
        m.reverse(); // pop() takes the most typical
    }
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        // The largest cluster among those with the fewest labels; tiny clusters only when nothing
        // else is left.
        let pick = (0..k).filter(|&j| !members[j].is_empty()).min_by_key(|&j| {
            (
                sizes[j] < cfg.min_cluster_size,
                covered[j],
                std::cmp::Reverse(sizes[j]),
                j,
            )
        });
        let Some(j) = pick else {
            break;
        };
        let Some(local) = members[j].pop() else {
            break;
        };
        covered[j] += 1;
        out.push(Selected {
            row: rows[local],
            rank: 0,
            score: typ[local] as f64,
            reasons: vec![
                format!("most typical of cluster {j} (size {})", sizes[j]),
                format!("cluster had {} labels", covered[j] - 1),
            ],
        });
    }
    Ok(out)
}

/// ProbCover's radius: the largest of the candidate radii (quantiles of the distances to each
/// row's `k` nearest neighbours) at which at least `purity` of the balls hold only their centre's
/// pseudo-label, capped at the median distance to the `k`-th neighbour when the lists hold no
/// more than `k` neighbours. Balls read from `k`-neighbour lists would, above that cap, mostly be
/// cut at k + 1 points, every gain would tie and the greedy would degrade to index order; with
/// full lists (small pools) the balls are exact and the cap is not needed.
fn probcover_radius(graph: &KnnGraph, pseudo: &[u32], purity: f64, k: usize) -> f32 {
    let k = k.max(1);
    let mut all: Vec<f32> = (0..graph.len())
        .flat_map(|i| graph.of(i).take(k).map(|(_, d)| d))
        .filter(|d| d.is_finite())
        .collect();
    if all.is_empty() {
        return 0.0;
    }
    all.sort_by(f32::total_cmp);
    let cap = if graph.k <= k {
        let mut kth: Vec<f32> = (0..graph.len())
            .filter_map(|i| graph.of(i).nth(k - 1).map(|(_, d)| d))
            .filter(|d| d.is_finite())
            .collect();
        kth.sort_by(f32::total_cmp);
        kth.get(kth.len() / 2).copied().unwrap_or(f32::INFINITY)
    } else {
        f32::INFINITY
    };
    let n = graph.len().max(1);
    let pure_at = |delta: f32| {
        let pure = (0..graph.len())
            .filter(|&i| {
                graph
                    .of(i)
                    .take_while(|&(_, d)| d < delta)
                    .all(|(j, _)| pseudo[j] == pseudo[i])
            })
            .count();
        pure as f64 / n as f64
    };
    let mut best = all[0];
    for q in 1..=40 {
        let delta = all[((all.len() - 1) * q) / 40];
        if delta > cap || pure_at(delta) < purity {
            break;
        }
        best = delta;
    }
    best
}

/// Pools up to this size get ProbCover balls from the full distance matrix.
const PROBCOVER_EXACT_MAX: usize = 2048;

fn probcover<B: Backend>(
    c: &Compute<B>,
    pool: &Pool,
    n: usize,
    cfg: &SelectConfig,
) -> Result<Vec<Selected>, MineError> {
    let (rows, x) = pool_rows(pool);
    let prepared = Prepared::new(&x, pool.metric);
    let all: Vec<usize> = (0..rows.len()).collect();
    // Small pools get exact balls (every neighbour), as ProbCover defines them; large ones read
    // balls from `probcover_k`-neighbour lists, with the radius capped so few are cut short.
    let k = if rows.len() <= PROBCOVER_EXACT_MAX {
        rows.len().saturating_sub(1).max(1)
    } else {
        cfg.probcover_k
    };
    let graph = exact_neighbors(c, &prepared, &all, k)?;
    let km = lloyd_once(
        c,
        &x,
        pool.classes.clamp(2, rows.len().max(2)).min(rows.len()),
        cfg.seed,
    )?;
    let delta = probcover_radius(
        &graph,
        &km.assignments,
        cfg.probcover_purity,
        cfg.probcover_k,
    );
    // Equal gains go to the denser point (smaller mean neighbour distance): the more typical one.
    let spread: Vec<f32> = (0..rows.len())
        .map(|i| {
            let (sum, k) = graph
                .of(i)
                .take(cfg.probcover_k)
                .fold((0f32, 0usize), |(s, k), (_, d)| (s + d, k + 1));
            if k == 0 {
                f32::INFINITY
            } else {
                sum / k as f32
            }
        })
        .collect();
    // ball[i]: i itself and its neighbours closer than δ.
    let ball = |i: usize| {
        std::iter::once(i).chain(
            graph
                .of(i)
                .take_while(move |&(_, d)| d < delta)
                .map(|(j, _)| j),
        )
    };
    let mut covered = vec![false; rows.len()];
    for i in 0..pool.labelled.len() {
        ball(i).for_each(|j| covered[j] = true);
    }
    let first = pool.labelled.len();
    let mut taken = vec![false; rows.len()];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut best: Option<(usize, usize)> = None;
        for (i, _) in taken.iter().enumerate().skip(first).filter(|(_, t)| !**t) {
            let gain = ball(i).filter(|&j| !covered[j]).count();
            if best.is_none_or(|(g, b)| gain > g || (gain == g && spread[i] < spread[b])) {
                best = Some((gain, i));
            }
        }
        let Some((gain, i)) = best else {
            break;
        };
        if gain == 0 {
            // Everything is covered at δ: the rest by farthest-first coverage.
            let chosen: Vec<usize> = pool
                .labelled
                .iter()
                .copied()
                .chain(out.iter().map(|s: &Selected| s.row))
                .collect();
            let rest: Vec<usize> = (first..rows.len())
                .filter(|&k| !taken[k])
                .map(|k| rows[k])
                .collect();
            let sub = Pool {
                labelled: &chosen,
                candidates: &rest,
                ..*pool
            };
            let more = coreset(c, &sub, n - out.len(), cfg, None)?;
            out.extend(more.into_iter().map(|mut s| {
                s.reasons
                    .push(format!("all points covered at radius {delta:.3}"));
                s
            }));
            break;
        }
        taken[i] = true;
        ball(i).for_each(|j| covered[j] = true);
        out.push(Selected {
            row: rows[i],
            rank: 0,
            score: gain as f64,
            reasons: vec![format!("covers {gain} new points within radius {delta:.3}")],
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use std::collections::HashSet;

    fn pool_data() -> Vectors {
        Vectors::new(crate::testdata::clustered(300, 8, 6, 2), 8).unwrap()
    }

    #[test]
    fn every_strategy_returns_unique_candidates_within_budget() {
        let c = Compute::<Cpu>::host();
        let x = pool_data();
        let labelled: Vec<usize> = (0..10).collect();
        let candidates: Vec<usize> = (10..300).collect();
        let probs: Vec<f64> = (0..300)
            .flat_map(|i| {
                let q = (i % 17) as f64 / 17.0;
                [1.0 - q, q]
            })
            .collect();
        for s in Strategy::ALL {
            for probs in [None, Some(&probs[..])] {
                let pool = Pool {
                    x: &x,
                    labelled: &labelled,
                    candidates: &candidates,
                    probs,
                    classes: 2,
                    metric: Metric::Cosine,
                    competence: None,
                };
                let cfg = SelectConfig {
                    strategy: s,
                    ..Default::default()
                };
                let sel = select(&c, &pool, 25, &cfg).unwrap();
                assert_eq!(sel.items.len(), 25, "{s:?}");
                let rows: HashSet<usize> = sel.items.iter().map(|i| i.row).collect();
                assert_eq!(rows.len(), 25);
                assert!(rows.iter().all(|r| (10..300).contains(r)));
                assert!(
                    sel.items
                        .iter()
                        .all(|i| !i.reasons.is_empty() && i.score.is_finite())
                );
                assert_eq!(sel.items[0].rank, 1);
            }
        }
    }

    #[test]
    fn typiclust_covers_every_cluster_before_repeating() {
        let c = Compute::<Cpu>::host();
        let x = pool_data(); // 6 well separated clusters
        let candidates: Vec<usize> = (0..300).collect();
        let pool = Pool {
            x: &x,
            labelled: &[],
            candidates: &candidates,
            probs: None,
            classes: 2,
            metric: Metric::Cosine,
            competence: None,
        };
        let sel = select(&c, &pool, 6, &SelectConfig::default()).unwrap();
        assert_eq!(sel.used, Strategy::Typiclust);
        let truth = |r: usize| crate::testdata::clustered_centre(r, 300, 6);
        let hit: HashSet<usize> = sel.items.iter().map(|i| truth(i.row)).collect();
        assert_eq!(hit.len(), 6, "one pick per true cluster");
    }

    #[test]
    fn budget_larger_than_pool_is_clamped_and_zero_is_an_error() {
        let c = Compute::<Cpu>::host();
        let x = pool_data();
        let candidates: Vec<usize> = (0..7).collect();
        let pool = Pool {
            x: &x,
            labelled: &[],
            candidates: &candidates,
            probs: None,
            classes: 2,
            metric: Metric::Cosine,
            competence: None,
        };
        let sel = select(&c, &pool, 50, &SelectConfig::default()).unwrap();
        assert_eq!(sel.items.len(), 7);
        assert!(sel.clamped.is_some());
        assert!(matches!(
            select(&c, &pool, 0, &SelectConfig::default()),
            Err(MineError::Config(_))
        ));
        let none = Pool {
            candidates: &[],
            ..pool
        };
        assert!(matches!(
            select(&c, &none, 3, &SelectConfig::default()),
            Err(MineError::Empty(_))
        ));
    }

    #[test]
    fn probcover_covers_every_cluster_and_the_control_arm_is_random_and_apart() {
        let c = Compute::<Cpu>::host();
        let x = pool_data(); // 6 well separated clusters
        let candidates: Vec<usize> = (0..300).collect();
        let pool = Pool {
            x: &x,
            labelled: &[],
            candidates: &candidates,
            probs: None,
            classes: 6,
            metric: Metric::Cosine,
            competence: None,
        };
        let cfg = SelectConfig {
            strategy: Strategy::Probcover,
            ..Default::default()
        };
        let sel = select(&c, &pool, 6, &cfg).unwrap();
        assert_eq!(sel.used, Strategy::Probcover);
        let truth = |r: usize| crate::testdata::clustered_centre(r, 300, 6);
        let hit: HashSet<usize> = sel.items.iter().map(|i| truth(i.row)).collect();
        assert_eq!(hit.len(), 6, "one ball per true cluster: {:?}", sel.items);
        assert!(sel.items[0].score >= sel.items[5].score);
        // A control share of 0.25 of 20 picks: 5 random rows at the end, none twice.
        let cfg = SelectConfig {
            strategy: Strategy::Typiclust,
            control_share: 0.25,
            ..Default::default()
        };
        let sel = select(&c, &pool, 20, &cfg).unwrap();
        assert_eq!((sel.items.len(), sel.control_from), (20, 15));
        assert!(
            sel.items[15..]
                .iter()
                .all(|i| i.reasons == vec![CONTROL_ARM.to_string()])
        );
        assert!(
            sel.items[..15]
                .iter()
                .all(|i| !i.reasons.contains(&CONTROL_ARM.to_string()))
        );
        let rows: HashSet<usize> = sel.items.iter().map(|i| i.row).collect();
        assert_eq!(rows.len(), 20);
        assert!(cfg.validate().is_ok());
        assert!(
            SelectConfig {
                control_share: 1.0,
                ..cfg
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn auto_covers_while_the_model_is_weak_and_turns_to_uncertainty_once_competent() {
        let x = pool_data();
        let labelled: Vec<usize> = (0..200).collect();
        let candidates: Vec<usize> = (200..300).collect();
        let probs = vec![0.5; 600];
        let pool = |competence| Pool {
            x: &x,
            labelled: &labelled,
            candidates: &candidates,
            probs: Some(&probs[..]),
            classes: 2,
            metric: Metric::Cosine,
            competence,
        };
        let cfg = SelectConfig {
            competence_estimate: CompetenceEstimate::CrossValidated,
            competence: 0.92,
            ..SelectConfig::default()
        };
        // 200 labels are far past the budget rule's low-budget regime…
        assert_eq!(
            strategy_of(&cfg, &pool(None), 10),
            (Strategy::Auto, "high-budget")
        );
        // …but a weak model still gets coverage, and a competent one uncertainty.
        assert_eq!(
            strategy_of(&cfg, &pool(Some(0.7)), 10),
            (Strategy::Typiclust, "weak-model")
        );
        assert_eq!(
            strategy_of(&cfg, &pool(Some(0.95)), 10),
            (Strategy::Auto, "competent-model")
        );
        let sel = select(&Compute::<Cpu>::host(), &pool(Some(0.95)), 10, &cfg).unwrap();
        assert!(
            sel.items
                .iter()
                .all(|i| i.reasons.iter().any(|r| r.starts_with("model competence")))
        );
    }

    #[test]
    fn the_pool_estimate_is_the_mean_largest_probability_on_the_candidates_above_chance() {
        let x = pool_data();
        let labelled: Vec<usize> = (0..10).collect();
        let candidates: Vec<usize> = (10..14).collect();
        // Labelled rows would say 0.5; the candidates are sure (0.9, 0.8) or torn (0.6, 0.5).
        let mut probs = vec![0.5; 600];
        for (r, p) in [(10, 0.9), (11, 0.2), (12, 0.6), (13, 0.5)] {
            probs[2 * r] = p;
            probs[2 * r + 1] = 1.0 - p;
        }
        let pool = Pool {
            x: &x,
            labelled: &labelled,
            candidates: &candidates,
            probs: Some(&probs[..]),
            classes: 2,
            metric: Metric::Cosine,
            competence: Some(0.1),
        };
        let cfg = SelectConfig::default();
        // Mean confidence 0.7 is 0.4 of the way from chance (0.5) to certainty.
        let want = ((0.9 + 0.8 + 0.6 + 0.5) / 4.0 - 0.5) / 0.5;
        assert!((competence_of(&cfg, &pool).unwrap() - want).abs() < 1e-12);
        assert_eq!(
            strategy_of(&cfg, &pool, 2),
            (Strategy::Typiclust, "weak-model")
        );
        let low = SelectConfig {
            competence: 0.35,
            ..SelectConfig::default()
        };
        assert_eq!(
            strategy_of(&low, &pool, 2),
            (Strategy::Auto, "competent-model")
        );
        // The caller's cross-validated number is used only when asked for.
        let cv = SelectConfig {
            competence_estimate: CompetenceEstimate::CrossValidated,
            ..low
        };
        assert_eq!(competence_of(&cv, &pool), Some(0.1));
        assert_eq!(
            strategy_of(&cv, &pool, 2),
            (Strategy::Typiclust, "weak-model")
        );
    }
}
