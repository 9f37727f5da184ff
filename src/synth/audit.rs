//! The shortcut audit: can a linear probe tell a cluster's synthetic images from its real ones?
//!
//! Per cluster with enough of both, a logistic regression on the embeddings is fitted on one
//! half and scored on the other (two folds, every image scored once out of fold); the AUC of
//! those held-out scores says how separable the two are. Near 0.5, synthetic images look like
//! the real ones to the encoder; near 1, a head can learn "synthetic" instead of "roadwork", and
//! the cluster is flagged.

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde::Serialize;

/// One audited group.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct AuditRow {
    /// The cluster (`None`: every cluster together).
    pub cluster: Option<u32>,
    pub real: usize,
    pub synthetic: usize,
    /// Held-out real-vs-synthetic AUC; `None` when a side has too few images.
    pub auc: Option<f64>,
    pub flagged: bool,
}

/// Area under the ROC curve of `scores` for positives `y` (ties count half).
pub fn auc(scores: &[f64], y: &[bool]) -> Option<f64> {
    let pos = y.iter().filter(|&&b| b).count();
    let neg = y.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Mid-ranks over ties.
    let mut rank = vec![0.0; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            rank[k] = r;
        }
        i = j + 1;
    }
    let sum: f64 = (0..y.len()).filter(|&k| y[k]).map(|k| rank[k]).sum();
    Some((sum - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64)
}

/// L2-regularised logistic regression by full-batch gradient descent on standardised features,
/// classes weighted to balance. Returns the scorer.
fn fit(x: &[&[f32]], y: &[bool]) -> impl Fn(&[f32]) -> f64 {
    let d = x.first().map_or(0, |r| r.len());
    let n = x.len().max(1) as f64;
    let mut mean = vec![0.0f64; d];
    for r in x {
        mean.iter_mut()
            .zip(*r)
            .for_each(|(m, v)| *m += f64::from(*v) / n);
    }
    let mut sd = vec![0.0f64; d];
    for r in x {
        sd.iter_mut()
            .zip(r.iter().zip(&mean))
            .for_each(|(s, (v, m))| *s += (f64::from(*v) - m).powi(2) / n);
    }
    sd.iter_mut().for_each(|s| *s = s.sqrt().max(1e-6));
    let z: Vec<Vec<f64>> = x
        .iter()
        .map(|r| {
            r.iter()
                .zip(&mean)
                .zip(&sd)
                .map(|((v, m), s)| (f64::from(*v) - m) / s)
                .collect()
        })
        .collect();
    let pos = y.iter().filter(|&&b| b).count().max(1) as f64;
    let neg = (y.len() as f64 - pos).max(1.0);
    let weight = |b: bool| if b { n / (2.0 * pos) } else { n / (2.0 * neg) };
    let (mut w, mut b) = (vec![0.0f64; d], 0.0f64);
    let (lr, l2) = (0.5, 1e-2);
    for _ in 0..150 {
        let mut gw = vec![0.0f64; d];
        let mut gb = 0.0;
        for (zi, &yi) in z.iter().zip(y) {
            let s = b + zi.iter().zip(&w).map(|(a, c)| a * c).sum::<f64>();
            let p = 1.0 / (1.0 + (-s).exp());
            let g = weight(yi) * (p - f64::from(u8::from(yi)));
            gw.iter_mut().zip(zi).for_each(|(a, v)| *a += g * v / n);
            gb += g / n;
        }
        w.iter_mut()
            .zip(&gw)
            .for_each(|(wi, g)| *wi -= lr * (g + l2 * *wi));
        b -= lr * gb;
    }
    move |r: &[f32]| {
        b + r
            .iter()
            .zip(&mean)
            .zip(&sd)
            .zip(&w)
            .map(|(((v, m), s), wi)| (f64::from(*v) - m) / s * wi)
            .sum::<f64>()
    }
}

/// Held-out AUC of a linear probe telling `synthetic` (positive) from `real` rows.
pub fn domain_auc(real: &[&[f32]], synthetic: &[&[f32]], seed: u64) -> Option<f64> {
    if real.len() < 2 || synthetic.len() < 2 {
        return None;
    }
    let mut rows: Vec<(&[f32], bool)> = real
        .iter()
        .map(|r| (*r, false))
        .chain(synthetic.iter().map(|r| (*r, true)))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rows.shuffle(&mut rng);
    // Stratified halves: alternate within each class.
    let (mut k_real, mut k_syn) = (0usize, 0usize);
    let fold: Vec<usize> = rows
        .iter()
        .map(|(_, s)| {
            let k = if *s { &mut k_syn } else { &mut k_real };
            *k += 1;
            *k % 2
        })
        .collect();
    let mut scores = vec![0.0; rows.len()];
    for f in 0..2 {
        let train: Vec<usize> = (0..rows.len()).filter(|&i| fold[i] != f).collect();
        let x: Vec<&[f32]> = train.iter().map(|&i| rows[i].0).collect();
        let y: Vec<bool> = train.iter().map(|&i| rows[i].1).collect();
        let score = fit(&x, &y);
        for i in (0..rows.len()).filter(|&i| fold[i] == f) {
            scores[i] = score(rows[i].0);
        }
    }
    let y: Vec<bool> = rows.iter().map(|r| r.1).collect();
    auc(&scores, &y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn auc_matches_the_definition() {
        assert_eq!(
            auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
            Some(0.75)
        );
        assert_eq!(auc(&[1.0, 1.0], &[false, true]), Some(0.5));
        assert_eq!(auc(&[1.0], &[true]), None);
    }

    #[test]
    fn the_probe_separates_shifted_clouds_and_not_identical_ones() {
        let mut r = ChaCha8Rng::seed_from_u64(1);
        let mut cloud = |shift: f32, n: usize| -> Vec<Vec<f32>> {
            (0..n)
                .map(|_| {
                    (0..16)
                        .map(|j| r.random_range(-1.0f32..1.0) + if j == 3 { shift } else { 0.0 })
                        .collect()
                })
                .collect()
        };
        let real = cloud(0.0, 40);
        let same = cloud(0.0, 40);
        let shifted = cloud(2.5, 40);
        fn v(c: &[Vec<f32>]) -> Vec<&[f32]> {
            c.iter().map(Vec::as_slice).collect()
        }
        let sep = domain_auc(&v(&real), &v(&shifted), 0).unwrap();
        let mixed = domain_auc(&v(&real), &v(&same), 0).unwrap();
        assert!(sep > 0.95, "{sep}");
        assert!((0.25..0.75).contains(&mixed), "{mixed}");
        assert_eq!(domain_auc(&v(&real), &v(&shifted[..1]), 0), None);
    }
}
