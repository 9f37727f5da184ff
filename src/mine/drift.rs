//! Drift between recent validator traffic and the training set.
//!
//! - Per cluster: the share of recent traffic against the share of the training snapshot, with a
//!   two-proportion z-score. A cluster that traffic visits much more than training covers is
//!   *under-covered*: the labelling and synthesis stages consume that ranked list.
//! - Whole distribution: a kernel two-sample test, the unbiased MMD² with a Gaussian kernel whose
//!   bandwidth is the median pairwise distance (Gretton et al. 2012), and a permutation p-value.

use burn::prelude::Backend;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::MineError;
use super::compute::Compute;
use super::vectors::{Vectors, quantile};

/// Drift settings (`[mine.drift]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Traffic of the last this many days is "recent".
    pub recent_days: u32,
    /// A cluster needs at least this many recent queries to be called under-covered.
    pub min_traffic: usize,
    /// …and a traffic share at least this many times its training share.
    pub min_ratio: f64,
    /// Rows per side in the two-sample test (uniform samples above it).
    pub mmd_max_per_side: usize,
    pub mmd_permutations: usize,
    pub seed: u64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            recent_days: 7,
            min_traffic: 5,
            min_ratio: 1.5,
            mmd_max_per_side: 1000,
            mmd_permutations: 200,
            seed: 0,
        }
    }
}

/// One cluster's coverage.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterDrift {
    pub cluster: usize,
    pub train_n: usize,
    pub traffic_n: usize,
    pub train_share: f64,
    pub traffic_share: f64,
    /// `(traffic_share + ε) / (train_share + ε)`, ε = half a sample of either side.
    pub ratio: f64,
    /// Two-proportion z-score (positive = more traffic than training).
    pub z: f64,
    pub under_covered: bool,
}

/// Per-cluster coverage, in cluster order.
pub fn cluster_drift(
    assignments: &[u32],
    k: usize,
    train_rows: &[usize],
    traffic_rows: &[usize],
    cfg: &DriftConfig,
) -> Vec<ClusterDrift> {
    let count = |rows: &[usize]| {
        let mut c = vec![0usize; k];
        for &r in rows {
            if let Some(&a) = assignments.get(r) {
                c[(a as usize).min(k.saturating_sub(1))] += 1;
            }
        }
        c
    };
    let (tr, tf) = (count(train_rows), count(traffic_rows));
    let (nt, nf) = (
        train_rows.len().max(1) as f64,
        traffic_rows.len().max(1) as f64,
    );
    (0..k)
        .map(|j| {
            let (ps, qs) = (tr[j] as f64 / nt, tf[j] as f64 / nf);
            let eps = 0.5 / nt.max(nf);
            let ratio = (qs + eps) / (ps + eps);
            let pooled = (tr[j] + tf[j]) as f64 / (nt + nf);
            let se = (pooled * (1.0 - pooled) * (1.0 / nt + 1.0 / nf)).sqrt();
            let z = if se > 0.0 { (qs - ps) / se } else { 0.0 };
            ClusterDrift {
                cluster: j,
                train_n: tr[j],
                traffic_n: tf[j],
                train_share: ps,
                traffic_share: qs,
                ratio,
                z,
                under_covered: tf[j] >= cfg.min_traffic && ratio >= cfg.min_ratio,
            }
        })
        .collect()
}

/// Under-covered clusters, most urgent (largest z) first.
pub fn under_covered(drift: &[ClusterDrift]) -> Vec<&ClusterDrift> {
    let mut v: Vec<&ClusterDrift> = drift.iter().filter(|d| d.under_covered).collect();
    v.sort_by(|a, b| b.z.total_cmp(&a.z).then(a.cluster.cmp(&b.cluster)));
    v
}

/// The kernel two-sample test's result.
#[derive(Debug, Clone, Serialize)]
pub struct Mmd {
    pub mmd2: f64,
    pub p_value: f64,
    pub bandwidth: f64,
    pub n_a: usize,
    pub n_b: usize,
    pub permutations: usize,
}

/// Unbiased MMD² between rows `a` and rows `b` of `x`, with a permutation p-value.
pub fn mmd_test<B: Backend>(
    c: &Compute<B>,
    x: &Vectors,
    a: &[usize],
    b: &[usize],
    cfg: &DriftConfig,
) -> Result<Mmd, MineError> {
    if a.len() < 2 || b.len() < 2 {
        return Err(MineError::TooFew {
            what: "rows per side for the two-sample test".into(),
            need: 2,
            have: a.len().min(b.len()),
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut take = |rows: &[usize]| -> Vec<usize> {
        let mut r = rows.to_vec();
        if r.len() > cfg.mmd_max_per_side {
            r.shuffle(&mut rng);
            r.truncate(cfg.mmd_max_per_side);
        }
        r
    };
    let (a, b) = (take(a), take(b));
    let rows: Vec<usize> = a.iter().chain(&b).copied().collect();
    let m = rows.len();
    let z = x.gather(&rows);
    let sq = z.sq_norms();
    let dots = c.dots(z.as_slice(), z.as_slice(), z.dim())?;
    let d2: Vec<f32> = (0..m * m)
        .map(|e| (sq[e / m] + sq[e % m] - 2.0 * dots[e]).max(0.0))
        .collect();
    let off: Vec<f32> = (0..m * m)
        .filter(|e| e / m < e % m)
        .map(|e| d2[e])
        .collect();
    let med = quantile(&off, 0.5).unwrap_or(1.0).max(1e-12);
    let kern: Vec<f64> = d2
        .iter()
        .map(|&v| (-(v as f64) / (2.0 * med)).exp())
        .collect();
    let na = a.len();
    let stat = |is_a: &[bool]| -> f64 {
        let (mut saa, mut sbb, mut sab) = (0f64, 0f64, 0f64);
        for i in 0..m {
            for j in 0..m {
                if i == j {
                    continue;
                }
                let k = kern[i * m + j];
                match (is_a[i], is_a[j]) {
                    (true, true) => saa += k,
                    (false, false) => sbb += k,
                    _ => sab += k,
                }
            }
        }
        let (fa, fb) = (na as f64, (m - na) as f64);
        saa / (fa * (fa - 1.0)) + sbb / (fb * (fb - 1.0)) - sab / (fa * fb)
    };
    let mut labels: Vec<bool> = (0..m).map(|i| i < na).collect();
    let observed = stat(&labels);
    let mut at_least = 0usize;
    for _ in 0..cfg.mmd_permutations {
        labels.shuffle(&mut rng);
        if stat(&labels) >= observed {
            at_least += 1;
        }
    }
    Ok(Mmd {
        mmd2: observed,
        p_value: (at_least + 1) as f64 / (cfg.mmd_permutations + 1) as f64,
        bandwidth: med.sqrt(),
        n_a: na,
        n_b: m - na,
        permutations: cfg.mmd_permutations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use rand::Rng;

    #[test]
    fn the_test_separates_shifted_samples_and_not_identical_ones() {
        let c = Compute::<Cpu>::host();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let mut v = Vec::new();
        for i in 0..240 {
            let shift = if i >= 160 { 0.8 } else { 0.0 };
            v.extend((0..4).map(|_| rng.random::<f32>() + shift));
        }
        let x = Vectors::new(v, 4).unwrap();
        let cfg = DriftConfig {
            mmd_permutations: 99,
            ..Default::default()
        };
        let same: Vec<usize> = (0..80).collect();
        let same2: Vec<usize> = (80..160).collect();
        let shifted: Vec<usize> = (160..240).collect();
        let drift = mmd_test(&c, &x, &same, &shifted, &cfg).unwrap();
        assert!(drift.p_value <= 0.02, "{drift:?}");
        let none = mmd_test(&c, &x, &same, &same2, &cfg).unwrap();
        assert!(none.p_value > 0.05, "{none:?}");
        assert!(mmd_test(&c, &x, &[0], &same, &cfg).is_err());
    }

    #[test]
    fn a_cluster_that_traffic_visits_more_is_under_covered() {
        // 4 clusters; training spread evenly, traffic 70 % in cluster 2.
        let assign: Vec<u32> = (0..400).map(|i| (i % 4) as u32).collect();
        let train: Vec<usize> = (0..200).collect();
        let mut traffic: Vec<usize> = (200..400).filter(|i| i % 4 == 2).collect(); // 50
        traffic.extend((200..220).filter(|i| i % 4 != 2)); // 15 others
        let d = cluster_drift(&assign, 4, &train, &traffic, &DriftConfig::default());
        let u = under_covered(&d);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].cluster, 2);
        assert!(u[0].z > 3.0);
        assert!(d.iter().all(|c| c.ratio.is_finite() && c.z.is_finite()));
    }
}
