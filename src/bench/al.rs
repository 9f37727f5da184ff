//! `roadwork bench al`: the selection strategies on data nobody here wrote — scikit-learn's copy
//! of the UCI handwritten digits (`datasets/digits/digits.csv`, 1,797 8×8 images, 10 classes).
//!
//! Protocol, per seed: a random split into a pool and a test set; starting from no labels, each
//! strategy picks rounds of labels up to every budget in turn (10, 20, … 500, cumulative); after
//! each round a multinomial logistic regression (L2, C = 1 as scikit-learn's default) is fitted on
//! the labelled pool rows and scored on the test set. Strategies see the model's probabilities
//! from the previous round (none in the first). The table reports mean ± standard error over
//! seeds.

use std::collections::BTreeMap;

use burn::prelude::Backend;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::mine::{
    CompetenceEstimate, Compute, Metric, MineError, Pool, SelectConfig, Strategy, Vectors, select,
};
pub use crate::testdata::{DIGITS_DIM, Digits, load_digits};

/// Multinomial logistic regression: weights `classes × (dim + 1)` (bias last).
pub struct Softmax {
    classes: usize,
    dim: usize,
    w: Vec<f64>,
}

impl Softmax {
    /// Minimises mean cross-entropy + `l2/2 · ‖W‖²` with full-batch Adam (convex, so any
    /// converging optimiser reaches the same model).
    pub fn fit(x: &Vectors, rows: &[usize], y: &[usize], classes: usize, l2: f64) -> Softmax {
        let dim = x.dim();
        let stride = dim + 1;
        let mut m = Softmax {
            classes,
            dim,
            w: vec![0.0; classes * stride],
        };
        let (mut m1, mut m2) = (vec![0.0; m.w.len()], vec![0.0; m.w.len()]);
        let (lr, b1, b2) = (0.05, 0.9, 0.999);
        let n = rows.len().max(1) as f64;
        for t in 1..=400 {
            let mut g = vec![0.0; m.w.len()];
            for &r in rows {
                let p = m.probs_row(x.row(r));
                for k in 0..classes {
                    let err = p[k] - f64::from(u8::from(y[r] == k));
                    let gk = &mut g[k * stride..(k + 1) * stride];
                    for (e, &v) in x.row(r).iter().enumerate() {
                        gk[e] += err * v as f64 / n;
                    }
                    gk[dim] += err / n;
                }
            }
            for k in 0..classes {
                for e in 0..dim {
                    g[k * stride + e] += l2 * m.w[k * stride + e];
                }
            }
            for i in 0..m.w.len() {
                m1[i] = b1 * m1[i] + (1.0 - b1) * g[i];
                m2[i] = b2 * m2[i] + (1.0 - b2) * g[i] * g[i];
                let mh = m1[i] / (1.0 - b1.powi(t));
                let vh = m2[i] / (1.0 - b2.powi(t));
                m.w[i] -= lr * mh / (vh.sqrt() + 1e-8);
            }
        }
        m
    }

    fn logits_row(&self, x: &[f32]) -> Vec<f64> {
        let stride = self.dim + 1;
        (0..self.classes)
            .map(|k| {
                let w = &self.w[k * stride..(k + 1) * stride];
                w[self.dim] + x.iter().zip(w).map(|(&a, &b)| a as f64 * b).sum::<f64>()
            })
            .collect()
    }

    fn probs_row(&self, x: &[f32]) -> Vec<f64> {
        softmax(&self.logits_row(x), 1.0)
    }

    /// Probabilities of every row at temperature `t`, row-major `n × classes`.
    pub fn probs(&self, x: &Vectors, t: f64) -> Vec<f64> {
        (0..x.len())
            .flat_map(|i| softmax(&self.logits_row(x.row(i)), t))
            .collect()
    }
}

fn softmax(z: &[f64], t: f64) -> Vec<f64> {
    let mx = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| ((v - mx) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// Held-out logits of `folds`-fold cross-validation of the softmax on `rows` (fold = position
/// mod `folds`), with each row's label; `None` with fewer than two rows per fold.
pub fn cross_validated_logits(
    x: &Vectors,
    rows: &[usize],
    y: &[usize],
    classes: usize,
    folds: usize,
) -> Option<Vec<(Vec<f64>, usize)>> {
    if folds < 2 || rows.len() < 2 * folds {
        return None;
    }
    let mut out = Vec::with_capacity(rows.len());
    for f in 0..folds {
        let train: Vec<usize> = (0..rows.len())
            .filter(|i| i % folds != f)
            .map(|i| rows[i])
            .collect();
        let m = Softmax::fit(x, &train, y, classes, 1.0 / train.len() as f64);
        for i in (0..rows.len()).filter(|i| i % folds == f) {
            out.push((m.logits_row(x.row(rows[i])), y[rows[i]]));
        }
    }
    Some(out)
}

/// Accuracy of `folds`-fold cross-validation of the softmax on `rows`; `None` with fewer than
/// two rows per fold.
pub fn cross_validated(
    x: &Vectors,
    rows: &[usize],
    y: &[usize],
    classes: usize,
    folds: usize,
) -> Option<f64> {
    let held = cross_validated_logits(x, rows, y, classes, folds)?;
    let correct = held
        .iter()
        .filter(|(z, label)| {
            (0..classes)
                .max_by(|&a, &b| z[a].total_cmp(&z[b]))
                .is_some_and(|k| k == *label)
        })
        .count();
    Some(correct as f64 / held.len() as f64)
}

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct AlConfig {
    pub budgets: Vec<usize>,
    pub seeds: usize,
    pub test_size: usize,
    pub strategies: Vec<Strategy>,
    pub metric: Metric,
    pub select: SelectConfig,
}

impl Default for AlConfig {
    fn default() -> Self {
        Self {
            budgets: vec![10, 20, 30, 40, 50, 75, 100, 150, 200, 300, 400, 500],
            seeds: 10,
            test_size: 500,
            strategies: Strategy::ALL.to_vec(),
            metric: Metric::Euclidean,
            select: SelectConfig::default(),
        }
    }
}

/// Mean ± standard error of one strategy at one budget.
#[derive(Debug, Clone, Serialize)]
pub struct AlRow {
    pub strategy: String,
    pub budget: usize,
    pub mean: f64,
    pub se: f64,
    pub seeds: usize,
    /// Seeds whose round for this budget ran `auto`'s uncertainty regime (`competent-model` or
    /// `high-budget`): where the switch fired.
    pub uncertainty_rounds: usize,
}

/// Runs every strategy over every budget and seed.
pub fn run<B: Backend>(
    c: &Compute<B>,
    data: &Digits,
    cfg: &AlConfig,
    mut progress: impl FnMut(&str),
) -> Result<Vec<AlRow>, MineError> {
    let n = data.y.len();
    let x = Vectors::new(data.x.clone(), DIGITS_DIM)?;
    if cfg.test_size >= n {
        return Err(MineError::Config(format!(
            "test size {} leaves no pool of {n} digits",
            cfg.test_size
        )));
    }
    let mut acc: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    let mut switched: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for seed in 0..cfg.seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(seed as u64);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let (test, pool) = order.split_at(cfg.test_size);
        for (si, &strategy) in cfg.strategies.iter().enumerate() {
            let mut labelled: Vec<usize> = Vec::new();
            let mut probs: Option<Vec<f64>> = None;
            for &budget in &cfg.budgets {
                let want = budget.min(pool.len()).saturating_sub(labelled.len());
                if want > 0 {
                    let candidates: Vec<usize> = pool
                        .iter()
                        .copied()
                        .filter(|r| !labelled.contains(r))
                        .collect();
                    // `auto` switches on the model's competence: by default its expected
                    // accuracy on the candidates (from `probs`); with `competence_estimate =
                    // "cross_validated"` its 3-fold accuracy on the rows labelled so far.
                    let competence = (strategy == Strategy::Auto
                        && cfg.select.competence_estimate == CompetenceEstimate::CrossValidated)
                        .then(|| cross_validated(&x, &labelled, &data.y, 10, 3))
                        .flatten();
                    let p = Pool {
                        x: &x,
                        labelled: &labelled,
                        candidates: &candidates,
                        probs: probs.as_deref(),
                        classes: 10,
                        metric: cfg.metric,
                        competence,
                    };
                    let sc = SelectConfig {
                        strategy,
                        seed: seed as u64 * 1000 + budget as u64,
                        ..cfg.select.clone()
                    };
                    let sel = select(c, &p, want, &sc)?;
                    if matches!(sel.regime.as_str(), "competent-model" | "high-budget") {
                        *switched.entry((si, budget)).or_default() += 1;
                    }
                    labelled.extend(sel.items.iter().map(|i| i.row));
                }
                let model = Softmax::fit(
                    &x,
                    &labelled,
                    &data.y,
                    10,
                    1.0 / labelled.len().max(1) as f64,
                );
                let all = model.probs(&x, 1.0);
                let correct = test
                    .iter()
                    .filter(|&&r| {
                        let row = &all[r * 10..(r + 1) * 10];
                        let pred = (0..10)
                            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                            .unwrap_or(0);
                        pred == data.y[r]
                    })
                    .count();
                acc.entry((si, budget))
                    .or_default()
                    .push(correct as f64 / test.len() as f64);
                probs = Some(all);
            }
            progress(&format!("seed {seed} {}", strategy.as_str()));
        }
    }
    Ok(acc
        .into_iter()
        .map(|((si, budget), v)| {
            let k = v.len() as f64;
            let mean = v.iter().sum::<f64>() / k;
            let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (k - 1.0).max(1.0);
            AlRow {
                strategy: cfg.strategies[si].as_str().into(),
                budget,
                mean,
                se: (var / k).sqrt(),
                seeds: v.len(),
                uncertainty_rounds: switched.get(&(si, budget)).copied().unwrap_or(0),
            }
        })
        .collect())
}

/// Budgets down, strategies across, accuracy in percent.
pub fn markdown(rows: &[AlRow]) -> String {
    let mut strategies: Vec<&str> = Vec::new();
    for r in rows {
        if !strategies.contains(&r.strategy.as_str()) {
            strategies.push(&r.strategy);
        }
    }
    let mut budgets: Vec<usize> = rows.iter().map(|r| r.budget).collect();
    budgets.sort_unstable();
    budgets.dedup();
    let mut out = format!("| labels | {} |\n|---|", strategies.join(" | "));
    out.push_str(&"---|".repeat(strategies.len()));
    out.push('\n');
    for b in budgets {
        out.push_str(&format!("| {b} |"));
        for s in &strategies {
            match rows.iter().find(|r| r.budget == b && r.strategy == *s) {
                Some(r) => out.push_str(&format!(" {:.1} ± {:.1} |", 100.0 * r.mean, 100.0 * r.se)),
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    let switch: Vec<String> = rows
        .iter()
        .filter(|r| r.strategy == Strategy::Auto.as_str() && r.uncertainty_rounds > 0)
        .map(|r| format!("{} ({}/{})", r.budget, r.uncertainty_rounds, r.seeds))
        .collect();
    if rows.iter().any(|r| r.strategy == Strategy::Auto.as_str()) {
        out.push_str(&format!(
            "\nauto ran uncertainty × diversity (seeds) at: {}\n",
            if switch.is_empty() {
                "never".to_string()
            } else {
                switch.join(", ")
            }
        ));
    }
    out
}
