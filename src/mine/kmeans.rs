//! k-means on Burn tensors: greedy k-means++ initialisation, Lloyd iterations, restarts, and a
//! mini-batch mode for large n.
//!
//! Facts carried over (from Arthur & Vassilvitskii 2007, Sculley 2010, and scikit-learn's
//! documented behaviour): k-means++ draws each new centre with probability ∝ D(x)² and, in its
//! greedy form, keeps the best of `2 + ⌊ln k⌋` draws; Lloyd stops when assignments no longer change
//! or the total squared centre shift falls below `tol × mean feature variance`; an empty cluster is
//! re-seeded at the point farthest from its centre; mini-batch updates move each centre to the
//! running mean of the points assigned to it so far.
//!
//! Memory is `O(n·d + k·d)`: points are processed in row chunks, the `n × k` distance matrix
//! never exists.

use burn::prelude::{Backend, Int, Tensor};
use burn::tensor::IndexingUpdateOp;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::MineError;
use super::compute::{Compute, host_f32, host_usize};
use super::vectors::Vectors;

/// Rows per device chunk in the assignment step (`chunk × k` distances at a time).
const CHUNK_ROWS: usize = 32_768;

/// Full-batch Lloyd or mini-batch updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KMeansMode {
    /// Mini-batch above `minibatch_above` points, Lloyd below.
    #[default]
    Auto,
    Lloyd,
    MiniBatch,
}

/// k-means settings (`[mine.kmeans]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KMeansConfig {
    pub mode: KMeansMode,
    /// Lloyd iterations, or mini-batch steps.
    pub max_iter: usize,
    /// Relative tolerance on the squared centre shift (× mean feature variance).
    pub tol: f64,
    /// Independent k-means++ starts; the lowest inertia wins.
    pub restarts: usize,
    pub seed: u64,
    pub minibatch_above: usize,
    pub batch_size: usize,
    /// Mini-batch stops after this many steps without a better smoothed batch inertia.
    pub max_no_improvement: usize,
    /// k-means++ runs on a uniform sample of at most this many points.
    pub init_sample: usize,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        Self {
            mode: KMeansMode::Auto,
            max_iter: 100,
            tol: 1e-4,
            restarts: 3,
            seed: 0,
            minibatch_above: 200_000,
            batch_size: 4096,
            max_no_improvement: 10,
            init_sample: 100_000,
        }
    }
}

/// A clustering of the rows.
#[derive(Debug, Clone)]
pub struct KMeans {
    pub k: usize,
    pub dim: usize,
    /// `k × dim`, row-major.
    pub centroids: Vec<f32>,
    /// Cluster of each row.
    pub assignments: Vec<u32>,
    /// Squared distance of each row to its centroid.
    pub sq_distances: Vec<f32>,
    /// Sum of `sq_distances`.
    pub inertia: f64,
    /// Lloyd iterations or mini-batch steps of the winning start.
    pub iterations: usize,
    pub converged: bool,
    pub mode: KMeansMode,
}

impl KMeans {
    /// Members of every cluster.
    pub fn sizes(&self) -> Vec<usize> {
        let mut s = vec![0; self.k];
        for &a in &self.assignments {
            s[a as usize] += 1;
        }
        s
    }

    pub fn centroid(&self, c: usize) -> &[f32] {
        &self.centroids[c * self.dim..(c + 1) * self.dim]
    }
}

/// The points, resident on the device in row chunks, with their squared norms.
struct DevicePoints<B: Backend> {
    chunks: Vec<(Tensor<B, 2>, Tensor<B, 2>)>,
}

impl<B: Backend> DevicePoints<B> {
    fn upload(c: &Compute<B>, x: &Vectors) -> Self {
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < x.len() {
            let end = (start + CHUNK_ROWS).min(x.len());
            let t = c.matrix(x.block(start, end), end - start, x.dim());
            let sq = t.clone().powi_scalar(2).sum_dim(1);
            chunks.push((t, sq));
            start = end;
        }
        Self { chunks }
    }
}

/// What one assignment pass returns.
struct Assignment<B: Backend> {
    labels: Vec<usize>,
    sq_dist: Vec<f32>,
    sums: Tensor<B, 2>,
    counts: Vec<f32>,
}

/// Assigns every point to its nearest centroid and accumulates per-cluster sums on the device.
fn assign<B: Backend>(
    c: &Compute<B>,
    points: &DevicePoints<B>,
    centroids: &[f32],
    k: usize,
    dim: usize,
) -> Result<Assignment<B>, MineError> {
    let cen = c.matrix(centroids, k, dim);
    let cen_sq = cen.clone().powi_scalar(2).sum_dim(1).reshape([1, k]);
    let cen_t = cen.transpose();
    let mut sums = Tensor::<B, 2>::zeros([k, dim], c.device());
    let mut counts = Tensor::<B, 1>::zeros([k], c.device());
    let (mut labels, mut sq_dist) = (Vec::new(), Vec::new());
    for (x, x_sq) in &points.chunks {
        let rows = x.dims()[0];
        // ‖x‖² − 2 x·c + ‖c‖²: [rows, k]
        let d = x_sq.clone() - x.clone().matmul(cen_t.clone()).mul_scalar(2.0) + cen_sq.clone();
        let (min, idx) = d.min_dim_with_indices(1);
        let idx: Tensor<B, 1, Int> = idx.reshape([rows]);
        sums = sums.select_assign(0, idx.clone(), x.clone(), IndexingUpdateOp::Add);
        counts = counts.select_assign(
            0,
            idx.clone(),
            Tensor::ones([rows], c.device()),
            IndexingUpdateOp::Add,
        );
        labels.extend(host_usize(idx));
        sq_dist.extend(host_f32(min.clamp_min(0.0))?);
    }
    Ok(Assignment {
        labels,
        sq_dist,
        sums,
        counts: host_f32(counts)?,
    })
}

/// New centroids = cluster means; an empty cluster takes the farthest point not yet used.
fn update(
    a: &Assignment<impl Backend>,
    x: &Vectors,
    sums: Vec<f32>,
    dim: usize,
) -> Result<Vec<f32>, MineError> {
    let mut cen = sums;
    let empty: Vec<usize> = (0..a.counts.len()).filter(|&j| a.counts[j] < 0.5).collect();
    for (j, &n) in a.counts.iter().enumerate() {
        if n >= 0.5 {
            cen[j * dim..(j + 1) * dim].iter_mut().for_each(|v| *v /= n);
        }
    }
    if !empty.is_empty() {
        let mut far: Vec<usize> = (0..a.sq_dist.len()).collect();
        far.sort_by(|&p, &q| a.sq_dist[q].total_cmp(&a.sq_dist[p]));
        for (j, &p) in empty.iter().zip(&far) {
            cen[j * dim..(j + 1) * dim].copy_from_slice(x.row(p));
        }
    }
    Ok(cen)
}

/// Mean per-feature variance: scikit-learn's scale for `tol`.
fn mean_variance(x: &Vectors) -> f64 {
    let (n, d) = (x.len() as f64, x.dim());
    let mut mean = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for i in 0..x.len() {
        for (j, &v) in x.row(i).iter().enumerate() {
            mean[j] += v as f64;
            sq[j] += (v as f64) * (v as f64);
        }
    }
    (0..d)
        .map(|j| (sq[j] / n - (mean[j] / n).powi(2)).max(0.0))
        .sum::<f64>()
        / d as f64
}

fn result(
    k: usize,
    dim: usize,
    centroids: Vec<f32>,
    a: Assignment<impl Backend>,
    iterations: usize,
    converged: bool,
    mode: KMeansMode,
) -> KMeans {
    KMeans {
        k,
        dim,
        centroids,
        assignments: a.labels.iter().map(|&l| l as u32).collect(),
        inertia: a.sq_dist.iter().map(|&v| v as f64).sum(),
        sq_distances: a.sq_dist,
        iterations,
        converged,
        mode,
    }
}

/// Lloyd iterations from given centroids (`k × dim`).
pub fn lloyd<B: Backend>(
    c: &Compute<B>,
    x: &Vectors,
    init: Vec<f32>,
    max_iter: usize,
    tol: f64,
) -> Result<KMeans, MineError> {
    let dim = x.dim();
    let k = init.len() / dim;
    check(x, k)?;
    let points = DevicePoints::upload(c, x);
    let tol_abs = tol * mean_variance(x);
    let mut cen = init;
    let mut prev: Option<Vec<usize>> = None;
    for it in 1..=max_iter.max(1) {
        let a = assign(c, &points, &cen, k, dim)?;
        if prev.as_ref() == Some(&a.labels) {
            return Ok(result(k, dim, cen, a, it, true, KMeansMode::Lloyd));
        }
        let sums = host_f32(a.sums.clone())?;
        let next = update(&a, x, sums, dim)?;
        let shift: f64 = next
            .iter()
            .zip(&cen)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        cen = next;
        if shift <= tol_abs || it == max_iter.max(1) {
            let a = assign(c, &points, &cen, k, dim)?;
            return Ok(result(
                k,
                dim,
                cen,
                a,
                it,
                shift <= tol_abs,
                KMeansMode::Lloyd,
            ));
        }
        prev = Some(a.labels);
    }
    Err(MineError::Compute("k-means ran no iteration".into()))
}

fn check(x: &Vectors, k: usize) -> Result<(), MineError> {
    if x.is_empty() {
        return Err(MineError::Empty("k-means on no points".into()));
    }
    if k == 0 || k > x.len() {
        return Err(MineError::TooFew {
            what: "points for k-means".into(),
            need: k.max(1),
            have: x.len(),
        });
    }
    Ok(())
}

/// Greedy k-means++ centres (`k × dim`) from `x`.
pub fn kmeans_plus_plus<B: Backend>(
    c: &Compute<B>,
    x: &Vectors,
    k: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<f32>, MineError> {
    check(x, k)?;
    let (n, dim) = (x.len(), x.dim());
    let trials = 2 + (k as f64).ln().floor() as usize;
    let sq = x.sq_norms();
    let points = c.matrix(x.as_slice(), n, dim);
    // Squared distances of every point to the given centre rows: [n, t] on the host.
    let sq_dists_to = |rows: &[usize]| -> Result<Vec<f32>, MineError> {
        let cand = x.gather(rows);
        let dots = host_f32(
            points
                .clone()
                .matmul(c.matrix(cand.as_slice(), rows.len(), dim).transpose()),
        )?;
        Ok((0..n * rows.len())
            .map(|e| {
                let (i, t) = (e / rows.len(), e % rows.len());
                (sq[i] + sq[rows[t]] - 2.0 * dots[e]).max(0.0)
            })
            .collect())
    };
    let first = rng.random_range(0..n);
    let mut centres = vec![first];
    let mut closest = sq_dists_to(&[first])?;
    while centres.len() < k {
        let total: f64 = closest.iter().map(|&v| v as f64).sum();
        let cands: Vec<usize> = if total <= 0.0 {
            // Every point coincides with a centre: any unused point will do.
            (0..n).filter(|i| !centres.contains(i)).take(1).collect()
        } else {
            let cum: Vec<f64> = closest
                .iter()
                .scan(0f64, |s, &v| {
                    *s += v as f64;
                    Some(*s)
                })
                .collect();
            (0..trials)
                .map(|_| {
                    let r = rng.random::<f64>() * total;
                    cum.partition_point(|&c| c < r).min(n - 1)
                })
                .collect()
        };
        let Some(&fallback) = cands.first() else {
            break;
        };
        let d = sq_dists_to(&cands)?;
        let t = cands.len();
        let (mut best, mut best_pot, mut best_col) = (fallback, f64::INFINITY, 0);
        for (j, &cand) in cands.iter().enumerate() {
            let pot: f64 = (0..n).map(|i| closest[i].min(d[i * t + j]) as f64).sum();
            if pot < best_pot {
                (best, best_pot, best_col) = (cand, pot, j);
            }
        }
        for i in 0..n {
            closest[i] = closest[i].min(d[i * t + best_col]);
        }
        centres.push(best);
    }
    Ok(x.gather(&centres).as_slice().to_vec())
}

/// Mini-batch k-means from given centroids; finishes with one full assignment pass.
pub fn minibatch<B: Backend>(
    c: &Compute<B>,
    x: &Vectors,
    init: Vec<f32>,
    cfg: &KMeansConfig,
    rng: &mut ChaCha8Rng,
) -> Result<KMeans, MineError> {
    let (n, dim) = (x.len(), x.dim());
    let k = init.len() / dim;
    check(x, k)?;
    let batch = cfg.batch_size.clamp(1, n);
    let mut cen = init;
    let mut seen = vec![0f32; k];
    let (mut best, mut ewa, mut stale, mut steps) = (f64::INFINITY, None::<f64>, 0usize, 0usize);
    let alpha = (2.0 * batch as f64 / (n as f64 + 1.0)).min(1.0);
    for step in 1..=cfg.max_iter.max(1) {
        steps = step;
        let rows: Vec<usize> = (0..batch).map(|_| rng.random_range(0..n)).collect();
        let b = x.gather(&rows);
        let points = DevicePoints::upload(c, &b);
        let a = assign(c, &points, &cen, k, dim)?;
        let sums = host_f32(a.sums.clone())?;
        for j in 0..k {
            let m = a.counts[j];
            if m < 0.5 {
                continue;
            }
            let total = seen[j] + m;
            for e in 0..dim {
                let v = &mut cen[j * dim + e];
                *v = (*v * seen[j] + sums[j * dim + e]) / total;
            }
            seen[j] = total;
        }
        let inertia = a.sq_dist.iter().map(|&v| v as f64).sum::<f64>() / batch as f64;
        let smoothed = ewa.map_or(inertia, |e| e * (1.0 - alpha) + inertia * alpha);
        ewa = Some(smoothed);
        if smoothed < best {
            (best, stale) = (smoothed, 0);
        } else {
            stale += 1;
            if stale >= cfg.max_no_improvement {
                break;
            }
        }
    }
    // Centres that never received a point are re-seeded at far points by one Lloyd update.
    let points = DevicePoints::upload(c, x);
    let mut a = assign(c, &points, &cen, k, dim)?;
    if a.counts.iter().any(|&m| m < 0.5) {
        let sums = host_f32(a.sums.clone())?;
        cen = update(&a, x, sums, dim)?;
        a = assign(c, &points, &cen, k, dim)?;
    }
    let converged = stale >= cfg.max_no_improvement;
    Ok(result(
        k,
        dim,
        cen,
        a,
        steps,
        converged,
        KMeansMode::MiniBatch,
    ))
}

/// k-means with `cfg.restarts` k-means++ starts; the lowest inertia wins.
pub fn kmeans<B: Backend>(
    c: &Compute<B>,
    x: &Vectors,
    k: usize,
    cfg: &KMeansConfig,
) -> Result<KMeans, MineError> {
    check(x, k)?;
    let mode = match cfg.mode {
        KMeansMode::Auto if x.len() > cfg.minibatch_above => KMeansMode::MiniBatch,
        KMeansMode::Auto => KMeansMode::Lloyd,
        m => m,
    };
    let mut best: Option<KMeans> = None;
    for r in 0..cfg.restarts.max(1) {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(r as u64));
        let init = if x.len() > cfg.init_sample.max(k) {
            let rows = rand::seq::index::sample(&mut rng, x.len(), cfg.init_sample.max(k));
            kmeans_plus_plus(c, &x.gather(&rows.into_vec()), k, &mut rng)?
        } else {
            kmeans_plus_plus(c, x, k, &mut rng)?
        };
        let fit = match mode {
            KMeansMode::MiniBatch => minibatch(c, x, init, cfg, &mut rng)?,
            _ => lloyd(c, x, init, cfg.max_iter, cfg.tol)?,
        };
        tracing::debug!(
            restart = r,
            inertia = fit.inertia,
            iterations = fit.iterations,
            "k-means start"
        );
        if best.as_ref().is_none_or(|b| fit.inertia < b.inertia) {
            best = Some(fit);
        }
    }
    best.ok_or_else(|| MineError::Compute("k-means ran no start".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;

    fn blobs() -> Vectors {
        // Three tight blobs around (0,0), (10,0), (0,10).
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut v = Vec::new();
        for (cx, cy) in [(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)] {
            for _ in 0..50 {
                v.push(cx + rng.random::<f32>() - 0.5);
                v.push(cy + rng.random::<f32>() - 0.5);
            }
        }
        Vectors::new(v, 2).unwrap()
    }

    #[test]
    fn finds_three_blobs_with_lloyd_and_minibatch() {
        let c = Compute::<Cpu>::new(Default::default());
        let x = blobs();
        for mode in [KMeansMode::Lloyd, KMeansMode::MiniBatch] {
            let cfg = KMeansConfig {
                mode,
                batch_size: 32,
                ..Default::default()
            };
            let fit = kmeans(&c, &x, 3, &cfg).unwrap();
            assert_eq!(
                fit.sizes().iter().filter(|&&s| s == 50).count(),
                3,
                "{mode:?}"
            );
            // Each blob's points share one label.
            for b in 0..3 {
                let l = fit.assignments[b * 50];
                assert!(
                    fit.assignments[b * 50..(b + 1) * 50]
                        .iter()
                        .all(|&a| a == l)
                );
            }
            assert!(
                fit.inertia < 150.0 * 0.5,
                "{mode:?} inertia {}",
                fit.inertia
            );
        }
    }

    #[test]
    fn k_larger_than_n_is_an_error_and_k_equal_n_is_exact() {
        let c = Compute::<Cpu>::new(Default::default());
        let x = Vectors::new(vec![0.0, 1.0, 5.0], 1).unwrap();
        assert!(matches!(
            kmeans(&c, &x, 4, &KMeansConfig::default()),
            Err(MineError::TooFew {
                need: 4,
                have: 3,
                ..
            })
        ));
        let fit = kmeans(&c, &x, 3, &KMeansConfig::default()).unwrap();
        assert!(fit.inertia < 1e-9);
        let empty = Vectors::new(vec![], 1).unwrap();
        assert!(matches!(
            kmeans(&c, &empty, 1, &KMeansConfig::default()),
            Err(MineError::Empty(_))
        ));
    }

    #[test]
    fn an_empty_cluster_is_reseeded() {
        let c = Compute::<Cpu>::new(Default::default());
        let x = blobs();
        // Two centres on the same point: one of them starts empty.
        let init = vec![0.0, 0.0, 0.0, 0.0, 10.0, 0.0];
        let fit = lloyd(&c, &x, init, 50, 0.0).unwrap();
        assert!(fit.sizes().iter().all(|&s| s > 0), "{:?}", fit.sizes());
        assert!(fit.inertia < 75.0);
    }
}
