//! Where a sample sits in the data: outliers (sparse neighbourhoods) and typicality (dense ones).
//!
//! - Outlier: mean distance to the k nearest neighbours above `Q3 + 1.7·IQR` of that statistic over
//!   the table (Tukey's fence with the factor DESIGN.md §6 names).
//! - Typicality (TypiClust, Hacohen et al. 2022): `1 / (ε + mean distance to the k nearest members
//!   of the same cluster)`; the most typical member of an uncovered cluster is the best first label.

use burn::prelude::Backend;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::MineError;
use super::compute::Compute;
use super::knn::{KnnGraph, Prepared};
use super::vectors::{Metric, Vectors, distance_from_dot, quantile};

/// Outlier scores of every row of a kNN graph.
#[derive(Debug, Clone)]
pub struct Outliers {
    /// Mean distance to the k nearest neighbours (`NaN`-free; +∞ for a row with no neighbour).
    pub knn_mean: Vec<f32>,
    /// `Q3 + factor·IQR` of `knn_mean`.
    pub fence: f64,
    pub is_outlier: Vec<bool>,
}

/// Flags rows whose mean kNN distance is above `Q3 + factor·IQR`.
pub fn outliers(graph: &KnnGraph, factor: f64) -> Outliers {
    let knn_mean: Vec<f32> = (0..graph.len())
        .map(|i| graph.mean_distance(i).unwrap_or(f32::INFINITY))
        .collect();
    let finite: Vec<f32> = knn_mean.iter().copied().filter(|v| v.is_finite()).collect();
    let fence = match (quantile(&finite, 0.25), quantile(&finite, 0.75)) {
        (Some(q1), Some(q3)) => q3 + factor * (q3 - q1),
        _ => f64::INFINITY,
    };
    Outliers {
        is_outlier: knn_mean
            .iter()
            .map(|&m| m.is_finite() && m as f64 > fence)
            .collect(),
        knn_mean,
        fence,
    }
}

/// Typicality of every row within its cluster, from exact neighbours among (a sample of at most
/// `reference_max` of) the cluster's members. A singleton cluster's member gets typicality 0.
pub fn typicality<B: Backend>(
    c: &Compute<B>,
    x: &Vectors,
    metric: Metric,
    assignments: &[u32],
    k: usize,
    reference_max: usize,
    seed: u64,
) -> Result<Vec<f32>, MineError> {
    if assignments.len() != x.len() {
        return Err(MineError::Shape(format!(
            "{} assignments for {} vectors",
            assignments.len(),
            x.len()
        )));
    }
    let p = Prepared::new(x, metric);
    let clusters = assignments
        .iter()
        .map(|&a| a as usize + 1)
        .max()
        .unwrap_or(0);
    let mut members = vec![Vec::new(); clusters];
    for (i, &a) in assignments.iter().enumerate() {
        members[a as usize].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = vec![0f32; x.len()];
    for m in members.iter().filter(|m| m.len() > 1) {
        let reference: Vec<usize> = if m.len() > reference_max.max(2) {
            rand::seq::index::sample(&mut rng, m.len(), reference_max.max(2))
                .into_iter()
                .map(|i| m[i])
                .collect()
        } else {
            m.clone()
        };
        let kk = k.min(reference.len() - 1).max(1);
        let q = p.x.gather(m);
        let r = p.x.gather(&reference);
        for (qb, rows) in m.chunks(1024).zip(q.as_slice().chunks(1024 * x.dim())) {
            let dots = c.dots(rows, r.as_slice(), x.dim())?;
            for (row, &qi) in dots.chunks(reference.len()).zip(qb) {
                let mut d: Vec<f32> = row
                    .iter()
                    .zip(&reference)
                    .filter(|&(_, &rj)| rj != qi)
                    .map(|(&dot, &rj)| distance_from_dot(metric, dot, p.sq[qi], p.sq[rj]))
                    .collect();
                let kk = kk.min(d.len());
                if kk == 0 {
                    continue;
                }
                d.select_nth_unstable_by(kk - 1, f32::total_cmp);
                let mean = d[..kk].iter().sum::<f32>() / kk as f32;
                out[qi] = 1.0 / (1e-6 + mean);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use crate::mine::knn::{KnnConfig, KnnMethod, knn_graph};

    #[test]
    fn a_far_point_is_an_outlier_and_a_dense_centre_is_typical() {
        let c = Compute::<Cpu>::host();
        // 300 uniform points in the unit square and one far away.
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut v: Vec<f32> = (0..600).map(|_| rng.random::<f32>()).collect();
        v.extend([5.0, 5.0]);
        let x = Vectors::new(v, 2).unwrap();
        let g = knn_graph(
            &c,
            &x,
            &KnnConfig {
                k: 3,
                metric: Metric::Euclidean,
                method: KnnMethod::Exact,
                ..Default::default()
            },
        )
        .unwrap();
        let o = outliers(&g, 1.7);
        let flagged = o.is_outlier.iter().filter(|&&b| b).count();
        assert!(o.is_outlier[300]);
        assert!(
            flagged <= 9,
            "uniform data has few Tukey outliers, got {flagged}"
        );
        // One cluster of the line: the ends are less typical than the middle.
        let assign = vec![0u32; 40];
        let line = Vectors::new((0..40).map(|i| i as f32).collect(), 1).unwrap();
        let t = typicality(&c, &line, Metric::Euclidean, &assign, 4, 1000, 0).unwrap();
        assert!(t[20] > t[0] && t[20] > t[39]);
    }
}
