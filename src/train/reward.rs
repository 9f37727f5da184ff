//! The subnet-72 reward, simulated: what a validator would pay this head (DESIGN.md §5).
//!
//! Per validator: predictions are rounded with numpy's banker's rounding, kept in windows of the
//! last 100 (for MCC) and last 10 (for accuracy), and `reward = (0.5·max(0, MCC₁₀₀) + 0.5·acc₁₀)³`;
//! the validator's score is an EMA of rewards with α = 0.05. `-1` scores 0 and stays out of the
//! windows; an answer outside [0,1] scores 0; a NaN or ±Inf poisons the metrics so the next 100
//! queries pay 0. The replay asks the eval set with 50/50 labels, as validators do.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::metrics::Confusion;

/// numpy's `round`: half to even.
pub fn numpy_round(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// Window lengths and EMA factor of the validator.
pub const MCC_WINDOW: usize = 100;
pub const ACC_WINDOW: usize = 10;
pub const EMA_ALPHA: f64 = 0.05;

/// One validator's view of one miner.
#[derive(Debug, Clone, Default)]
pub struct ValidatorTracker {
    preds: VecDeque<u8>,
    labels: VecDeque<u8>,
    poisoned_for: usize,
    /// The validator's score of this miner.
    pub ema: f64,
}

impl ValidatorTracker {
    /// Records one answer to a query whose true label is `label`; returns that query's reward.
    pub fn record(&mut self, prediction: f32, label: u8) -> f64 {
        let reward = if !prediction.is_finite() {
            self.poisoned_for = MCC_WINDOW;
            0.0
        } else if self.poisoned_for > 0 {
            self.poisoned_for -= 1;
            0.0
        } else if prediction == -1.0 || !(0.0..=1.0).contains(&prediction) {
            0.0
        } else {
            self.preds.push_back(numpy_round(prediction as f64) as u8);
            self.labels.push_back(label);
            if self.preds.len() > MCC_WINDOW {
                self.preds.pop_front();
                self.labels.pop_front();
            }
            self.current_reward()
        };
        self.ema = EMA_ALPHA * reward + (1.0 - EMA_ALPHA) * self.ema;
        reward
    }

    /// `(0.5·max(0, MCC over the last 100) + 0.5·accuracy over the last 10)³`.
    pub fn current_reward(&self) -> f64 {
        let labels: Vec<u8> = self.labels.iter().copied().collect();
        let mcc = Confusion::of(self.preds.iter().copied(), &labels).mcc();
        let k = self.preds.len().saturating_sub(ACC_WINDOW);
        let last = self.preds.len() - k;
        let correct = self
            .preds
            .iter()
            .zip(&self.labels)
            .skip(k)
            .filter(|(p, y)| p == y)
            .count();
        let acc = if last == 0 {
            0.0
        } else {
            correct as f64 / last as f64
        };
        (0.5 * mcc.max(0.0) + 0.5 * acc).powi(3)
    }
}

/// What a replay of the eval set as validator traffic paid.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Replay {
    pub queries: usize,
    /// Mean per-query reward after the first 100 queries (the windows are full by then).
    pub mean_reward: f64,
    /// The validator's EMA score after the last query.
    pub final_ema: f64,
    /// Bootstrap interval of `mean_reward` (absent when not computed, and in older cards).
    #[serde(default)]
    pub interval: Option<RewardInterval>,
}

/// A percentile bootstrap interval of the replayed mean reward: the eval set resampled with
/// replacement within each class, each resample replayed with its own query draw. It says how much
/// of a reward difference between two heads the eval set's size can explain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardInterval {
    pub lo: f64,
    pub hi: f64,
    /// Coverage, e.g. 0.95.
    pub level: f64,
    pub resamples: usize,
}

/// The percentile bootstrap interval (`level`, e.g. 0.95) of the replayed mean reward over
/// `resamples` class-stratified resamples of the eval set. `None` without both classes or
/// resamples.
pub fn reward_interval(
    probs: &[f32],
    labels: &[u8],
    queries: usize,
    seed: u64,
    resamples: usize,
    level: f64,
) -> Option<RewardInterval> {
    let pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 1).collect();
    let neg: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 0).collect();
    if pos.is_empty() || neg.is_empty() || resamples == 0 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut means = Vec::with_capacity(resamples);
    let (mut p, mut y) = (
        Vec::with_capacity(labels.len()),
        Vec::with_capacity(labels.len()),
    );
    for r in 0..resamples {
        p.clear();
        y.clear();
        for class in [&pos, &neg] {
            for _ in 0..class.len() {
                let i = class[rng.random_range(0..class.len())];
                p.push(probs[i]);
                y.push(labels[i]);
            }
        }
        if let Some(rep) = replay(&p, &y, queries, seed.wrapping_add(1 + r as u64)) {
            means.push(rep.mean_reward);
        }
    }
    if means.is_empty() {
        return None;
    }
    means.sort_by(f64::total_cmp);
    let q = |f: f64| {
        let at = (f * (means.len() - 1) as f64).round() as usize;
        means[at.min(means.len() - 1)]
    };
    let tail = (1.0 - level.clamp(0.0, 1.0)) / 2.0;
    Some(RewardInterval {
        lo: q(tail),
        hi: q(1.0 - tail),
        level,
        resamples,
    })
}

/// Replays `queries` validator queries: each draws a label 0/1 with probability ½, then a random
/// eval sample of that label, and scores this head's served probability for it. `None` when the
/// eval set lacks a class.
pub fn replay(probs: &[f32], labels: &[u8], queries: usize, seed: u64) -> Option<Replay> {
    let pos: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 1).collect();
    let neg: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == 0).collect();
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tracker = ValidatorTracker::default();
    let (mut sum, mut counted) = (0.0, 0usize);
    for q in 0..queries {
        let pool = if rng.random_bool(0.5) { &pos } else { &neg };
        let i = pool[rng.random_range(0..pool.len())];
        let r = tracker.record(probs[i], labels[i]);
        if q >= MCC_WINDOW {
            sum += r;
            counted += 1;
        }
    }
    Some(Replay {
        queries,
        mean_reward: if counted > 0 {
            sum / counted as f64
        } else {
            0.0
        },
        final_ema: tracker.ema,
        interval: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_rounding_is_half_to_even() {
        assert_eq!(numpy_round(0.5), 0.0);
        assert_eq!(numpy_round(1.5), 2.0);
        assert_eq!(numpy_round(2.5), 2.0);
        assert_eq!(numpy_round(0.500001), 1.0);
        assert_eq!(numpy_round(0.49), 0.0);
        assert_eq!(numpy_round(1.0), 1.0);
    }

    #[test]
    fn hand_computed_windows() {
        let mut t = ValidatorTracker::default();
        // 1st answer right: MCC over [1]/[1] is 0 (one class), acc 1 → (0.5)^3.
        assert!((t.record(0.9, 1) - 0.125).abs() < 1e-12);
        // 2nd right, other class: MCC 1, acc 1 → 1.
        assert!((t.record(0.1, 0) - 1.0).abs() < 1e-12);
        // 0.5 rounds to 0 against label 1: preds [1,0,0] labels [1,0,1].
        // tp=1 fp=0 tn=1 fn=1 → MCC = 1/sqrt(1·2·1·2) = 0.5; acc = 2/3.
        let want = (0.5f64 * 0.5 + 0.5 * 2.0 / 3.0).powi(3);
        assert!((t.record(0.5, 1) - want).abs() < 1e-12);
        // -1 pays 0 and leaves the windows as they were.
        assert_eq!(t.record(-1.0, 1), 0.0);
        assert!((t.current_reward() - want).abs() < 1e-12);
        // Out of range pays 0 too.
        assert_eq!(t.record(1.5, 1), 0.0);
    }

    #[test]
    fn accuracy_window_is_the_last_ten_and_mcc_the_last_hundred() {
        let mut t = ValidatorTracker::default();
        // 100 perfect answers, then 10 wrong: acc₁₀ = 0; MCC over the last 100 = 90 right, 10 wrong.
        for i in 0..100 {
            let y = (i % 2) as u8;
            t.record(if y == 1 { 0.9 } else { 0.1 }, y);
        }
        let mut last = 0.0;
        for i in 0..10 {
            let y = (i % 2) as u8;
            last = t.record(if y == 1 { 0.1 } else { 0.9 }, y);
        }
        // Window: 90 right (45/45), 10 wrong (5 per class): tp=45 fn=5 tn=45 fp=5 → MCC 0.8.
        assert!((last - (0.5f64 * 0.8).powi(3)).abs() < 1e-9, "{last}");
    }

    #[test]
    fn a_nan_pays_nothing_for_the_next_hundred_queries() {
        let mut t = ValidatorTracker::default();
        t.record(f32::NAN, 1);
        for i in 0..100 {
            assert_eq!(t.record(0.9, 1), 0.0, "query {i}");
        }
        assert!(t.record(0.9, 1) > 0.0);
    }

    #[test]
    fn a_perfect_head_earns_one_and_a_coin_flip_little() {
        let labels: Vec<u8> = (0..200).map(|i| (i % 2) as u8).collect();
        let perfect: Vec<f32> = labels
            .iter()
            .map(|&y| if y == 1 { 0.99 } else { 0.01 })
            .collect();
        let r = replay(&perfect, &labels, 1000, 1).unwrap();
        assert!((r.mean_reward - 1.0).abs() < 1e-12);
        assert!(r.final_ema > 0.99);
        let constant = vec![0.9f32; 200];
        let r = replay(&constant, &labels, 1000, 1).unwrap();
        // Always "roadwork": MCC 0, accuracy ≈ 0.5 → ≈ 0.25³.
        assert!(r.mean_reward < 0.05, "{}", r.mean_reward);
        assert!(replay(&constant, &[1; 200], 10, 1).is_none());
    }

    #[test]
    fn the_interval_brackets_the_reward_and_narrows_with_more_data() {
        let make = |n: usize, right: usize| {
            // `right` of every 100 answers correct, both classes alike.
            let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
            let probs: Vec<f32> = (0..n)
                .map(|i| {
                    let ok = (i / 2) % 100 < right;
                    match (labels[i], ok) {
                        (1, true) | (0, false) => 0.9,
                        _ => 0.1,
                    }
                })
                .collect();
            (probs, labels)
        };
        let (p, y) = make(200, 85);
        let point = replay(&p, &y, 1000, 3).unwrap().mean_reward;
        let small = reward_interval(&p, &y, 1000, 3, 100, 0.95).unwrap();
        assert!(small.lo < point && point < small.hi, "{small:?} vs {point}");
        assert_eq!(small.resamples, 100);
        let (p, y) = make(4000, 85);
        let large = reward_interval(&p, &y, 1000, 3, 100, 0.95).unwrap();
        assert!(
            large.hi - large.lo < small.hi - small.lo,
            "{large:?} vs {small:?}"
        );
        assert_eq!(reward_interval(&p, &y, 1000, 3, 100, 0.95), Some(large));
        assert!(reward_interval(&p, &[1; 4000], 1000, 3, 100, 0.95).is_none());
        assert!(reward_interval(&p, &y, 1000, 3, 0, 0.95).is_none());
    }
}
