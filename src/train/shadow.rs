//! What shadow scoring showed about a challenger: how often it agreed with the champion on live
//! traffic, which way it flips answers at 0.5, and what it costs. The promote stage requires
//! `pipeline.min_shadow` of these comparisons before a challenger may serve, and the run report
//! shows them.
//!
//! Scores are tier-1 probabilities on the same features; the challenger's tier-1 latency is the
//! champion's measured tier-1 time with the champion's head time replaced by the challenger's (the
//! decode and the encoder pass are shared, so that is what it would take serving).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::ShadowRow;

/// Median and 95th percentile, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Millis {
    pub p50: f64,
    pub p95: f64,
}

impl Millis {
    fn of(mut v: Vec<f64>) -> Self {
        v.retain(|x| x.is_finite());
        v.sort_by(f64::total_cmp);
        let q = |p: f64| {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((v.len() - 1) as f64 * p).round() as usize;
            v[i.min(v.len() - 1)]
        };
        Self {
            p50: q(0.5),
            p95: q(0.95),
        }
    }
}

/// Agreement of one challenger with one champion over its shadow comparisons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowStats {
    pub challenger: String,
    pub champion: String,
    /// Comparisons (answered requests).
    pub n: usize,
    /// Distinct images among them.
    pub images: usize,
    /// Share of comparisons where both heads answer on the same side of 0.5.
    pub agreement: f64,
    /// Share where they do not: `1 − agreement`.
    pub flip_rate: f64,
    /// Champion said no (< 0.5), challenger yes.
    pub flips_to_roadwork: usize,
    /// Champion said yes, challenger no.
    pub flips_to_clean: usize,
    /// Mean |champion − challenger|.
    pub mean_abs_diff: f64,
    /// Mean probability each head gave (a shift in the positive rate shows here first).
    pub champion_mean: f64,
    pub challenger_mean: f64,
    /// The champion's tier-1 time as served, and the challenger's had it served.
    pub champion_tier1_ms: Millis,
    pub challenger_tier1_ms: Millis,
    /// Head forwards alone.
    pub champion_head_ms: Millis,
    pub challenger_head_ms: Millis,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

/// The side of 0.5 an answer is on (what the validator's thresholding reads).
fn yes(p: f32) -> bool {
    p > 0.5
}

/// Whether the two heads answer this comparison on different sides of 0.5.
pub fn flips(r: &ShadowRow) -> bool {
    yes(r.champion_score) != yes(r.challenger_score)
}

impl ShadowStats {
    /// The statistics of `rows` (all of one challenger and one champion); `None` when empty.
    pub fn of(rows: &[ShadowRow]) -> Option<Self> {
        let first = rows.first()?;
        let n = rows.len();
        let nf = n as f64;
        let mean = |f: &dyn Fn(&ShadowRow) -> f64| rows.iter().map(f).sum::<f64>() / nf;
        let to_yes = rows
            .iter()
            .filter(|r| !yes(r.champion_score) && yes(r.challenger_score))
            .count();
        let to_no = rows
            .iter()
            .filter(|r| yes(r.champion_score) && !yes(r.challenger_score))
            .count();
        let flip_rate = (to_yes + to_no) as f64 / nf;
        let images: std::collections::HashSet<&str> =
            rows.iter().map(|r| r.sample_id.as_str()).collect();
        let ms =
            |f: &dyn Fn(&ShadowRow) -> f32| Millis::of(rows.iter().map(|r| f(r) as f64).collect());
        Some(Self {
            challenger: first.challenger_version.clone(),
            champion: first.champion_version.clone(),
            n,
            images: images.len(),
            agreement: 1.0 - flip_rate,
            flip_rate,
            flips_to_roadwork: to_yes,
            flips_to_clean: to_no,
            mean_abs_diff: mean(&|r| (r.champion_score - r.challenger_score).abs() as f64),
            champion_mean: mean(&|r| r.champion_score as f64),
            challenger_mean: mean(&|r| r.challenger_score as f64),
            champion_tier1_ms: ms(&|r| r.tier1_ms),
            challenger_tier1_ms: ms(&|r| {
                (r.tier1_ms - r.champion_head_ms).max(0.0) + r.challenger_head_ms
            }),
            champion_head_ms: ms(&|r| r.champion_head_ms),
            challenger_head_ms: ms(&|r| r.challenger_head_ms),
            first: rows.iter().map(|r| r.ts).min().unwrap_or(first.ts),
            last: rows.iter().map(|r| r.ts).max().unwrap_or(first.ts),
        })
    }

    /// One line for logs and notes.
    pub fn summary(&self) -> String {
        format!(
            "{} shadow answers: agreement {:.1}%, flips {} → roadwork / {} → clean, mean |Δp| {:.3}, \
             tier 1 p50 {:.1} ms (champion) vs {:.1} ms (challenger)",
            self.n,
            100.0 * self.agreement,
            self.flips_to_roadwork,
            self.flips_to_clean,
            self.mean_abs_diff,
            self.champion_tier1_ms.p50,
            self.challenger_tier1_ms.p50,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(i: usize, champion: f32, challenger: f32) -> ShadowRow {
        ShadowRow {
            request_id: format!("r{i}"),
            sample_id: format!("{:064x}", i % 3),
            champion_version: "a".into(),
            champion_score: champion,
            challenger_version: "b".into(),
            challenger_score: challenger,
            tier1_ms: 10.0 + i as f32,
            champion_head_ms: 1.0,
            challenger_head_ms: 3.0,
            ts: Utc::now(),
            validator: None,
        }
    }

    #[test]
    fn agreement_counts_sides_of_one_half_and_latency_swaps_the_head() {
        let rows = vec![
            row(0, 0.9, 0.8),
            row(1, 0.2, 0.7),
            row(2, 0.6, 0.4),
            row(3, 0.1, 0.2),
        ];
        let s = ShadowStats::of(&rows).unwrap();
        assert_eq!((s.n, s.images), (4, 3));
        assert_eq!((s.flips_to_roadwork, s.flips_to_clean), (1, 1));
        assert!((s.agreement - 0.5).abs() < 1e-9 && (s.flip_rate - 0.5).abs() < 1e-9);
        assert!((s.mean_abs_diff - (0.1 + 0.5 + 0.2 + 0.1) / 4.0).abs() < 1e-6);
        // Tier-1 times 10..13; the challenger's head costs 2 ms more.
        assert_eq!(s.champion_tier1_ms.p50, 12.0);
        assert_eq!(s.challenger_tier1_ms.p50, 14.0);
        assert_eq!(s.challenger_head_ms.p95, 3.0);
        assert!(flips(&rows[1]) && !flips(&rows[0]));
        assert!(ShadowStats::of(&[]).is_none());
    }
}
