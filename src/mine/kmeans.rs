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

use burn::prelude::Backend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::MineError;
use rayon::prelude::*;

use super::compute::{Compute, Nearest, Resident, Rows};
use super::vectors::Vectors;

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

/// New centroids = cluster means; an empty cluster takes the farthest point not yet used.
fn update(a: &Nearest, x: &Vectors, dim: usize) -> Vec<f32> {
    let mut cen = a.sums.clone();
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
    cen
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
    a: Nearest,
    iterations: usize,
    converged: bool,
    mode: KMeansMode,
) -> KMeans {
    KMeans {
        k,
        dim,
        centroids,
        assignments: a.labels,
        inertia: a.sq_dist.iter().map(|&v| v as f64).sum(),
        sq_distances: a.sq_dist,
        iterations,
        converged,
        mode,
    }
}

/// Lloyd iterations from given centroids (`k × dim`).
///
/// On the host engine the assignment keeps Hamerly's bounds (Hamerly 2010): per point an upper
/// bound on the distance to its centre and a lower bound on the distance to any other, moved by
/// the centres' shifts each iteration. A point whose exact distance to its own centre is within
/// the lower bound, or within half the distance from its centre to the nearest other centre,
/// keeps its centre without being compared to the others; only the rest go through the GEMM. The
/// assignments and centres are those of plain Lloyd (the bounds are exact); on clustered
/// embeddings most points stop needing the GEMM after the first iterations.
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
    let mut assigner = if c.is_host() {
        Assigner::Bounded(Bounds::new(x))
    } else {
        Assigner::Plain(c.resident(x.as_slice(), dim)?)
    };
    let tol_abs = tol * mean_variance(x);
    let mut cen = init;
    let mut prev: Option<Vec<u32>> = None;
    for it in 1..=max_iter.max(1) {
        let a = assigner.assign(c, &cen)?;
        if prev.as_ref() == Some(&a.labels) {
            return Ok(result(k, dim, cen, a, it, true, KMeansMode::Lloyd));
        }
        let next = update(&a, x, dim);
        let shift: f64 = next
            .iter()
            .zip(&cen)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        cen = next;
        if shift <= tol_abs || it == max_iter.max(1) {
            let a = assigner.assign(c, &cen)?;
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

/// How a Lloyd run assigns points: every point through the GEMM, or with Hamerly's bounds.
enum Assigner<'a, B: Backend> {
    Plain(Resident<'a, B>),
    Bounded(Bounds<'a>),
}

impl<B: Backend> Assigner<'_, B> {
    fn assign(&mut self, c: &Compute<B>, cen: &[f32]) -> Result<Nearest, MineError> {
        match self {
            Assigner::Plain(points) => c.nearest(points, cen),
            Assigner::Bounded(b) => b.assign(c, cen),
        }
    }
}

/// Hamerly's per-point bounds across the iterations of one Lloyd run.
struct Bounds<'a> {
    x: &'a Vectors,
    x_sq: Vec<f32>,
    labels: Vec<u32>,
    /// Exact distance to the own centre after each pass.
    upper: Vec<f32>,
    /// At most the distance to any other centre.
    lower: Vec<f32>,
    /// The centres of the previous pass (none before the first).
    prev: Option<Vec<f32>>,
}

/// Relative slack on squared distances from the `‖x‖² + ‖c‖² − 2x·c` expansion, so that its f32
/// rounding never makes a lower bound too high.
const BOUND_SLACK: f32 = 4e-6;

impl<'a> Bounds<'a> {
    fn new(x: &'a Vectors) -> Self {
        let n = x.len();
        Self {
            x,
            x_sq: x.sq_norms(),
            labels: vec![0; n],
            upper: vec![0.0; n],
            lower: vec![0.0; n],
            prev: None,
        }
    }

    fn assign<B: Backend>(&mut self, c: &Compute<B>, cen: &[f32]) -> Result<Nearest, MineError> {
        let (x, dim) = (self.x, self.x.dim());
        let k = cen.len() / dim;
        let cen_sq = super::compute::sq_norms(cen, dim);
        let todo: Vec<usize> = match self.prev.take() {
            None => (0..x.len()).collect(),
            Some(prev) => {
                // Move the bounds by the centres' shifts.
                let shift: Vec<f32> = (0..k)
                    .map(|j| sq_dist(&cen[j * dim..(j + 1) * dim], &prev[j * dim..(j + 1) * dim]))
                    .map(f32::sqrt)
                    .collect();
                let (mut m1, mut m1_at, mut m2) = (0f32, usize::MAX, 0f32);
                for (j, &p) in shift.iter().enumerate() {
                    if p > m1 {
                        (m2, m1, m1_at) = (m1, p, j);
                    } else if p > m2 {
                        m2 = p;
                    }
                }
                // Half the distance from each centre to its nearest other centre.
                let dots = c.dots(cen, cen, dim)?;
                let half: Vec<f32> = (0..k)
                    .map(|j| {
                        (0..k)
                            .filter(|&o| o != j)
                            .map(|o| (cen_sq[j] + cen_sq[o] - 2.0 * dots[j * k + o]).max(0.0))
                            .fold(f32::INFINITY, f32::min)
                            .sqrt()
                            * 0.5
                            * (1.0 - BOUND_SLACK)
                    })
                    .collect();
                let labels = &self.labels;
                self.upper
                    .par_iter_mut()
                    .zip(self.lower.par_iter_mut())
                    .enumerate()
                    .filter_map(|(i, (u, l))| {
                        let a = labels[i] as usize;
                        *l -= if a == m1_at { m2 } else { m1 };
                        *u = sq_dist(x.row(i), &cen[a * dim..(a + 1) * dim]).sqrt();
                        (*u > half[a].max(*l)).then_some(i)
                    })
                    .collect()
            }
        };
        // The points the bounds could not settle: nearest and second-nearest centre by GEMM.
        tracing::debug!(gemm_rows = todo.len(), n = x.len(), "k-means pass");
        if !todo.is_empty() {
            let rows = if todo.len() == x.len() {
                Rows::all(x.as_slice(), dim)
            } else {
                Rows::pick(x.as_slice(), dim, &todo)
            };
            let mut best = vec![(f32::INFINITY, 0u32, f32::INFINITY); todo.len()];
            c.scan(rows, Rows::all(cen, dim), &mut best, |b, _, c0, dots| {
                for (o, &dot) in dots.iter().enumerate() {
                    let key = cen_sq[c0 + o] - 2.0 * dot;
                    if key < b.2 {
                        if key < b.0 {
                            *b = (key, (c0 + o) as u32, b.0);
                        } else {
                            b.2 = key;
                        }
                    }
                }
            })?;
            // From the GEMM's expansion: the own distance padded up and the second one down by
            // the rounding slack, so both stay bounds.
            let settled: Vec<(usize, u32, f32, f32)> = todo
                .par_iter()
                .zip(&best)
                .map(|(&i, &(first, j, second))| {
                    let slack = |d2: f32| BOUND_SLACK * (self.x_sq[i] + d2.abs());
                    let d1 = (self.x_sq[i] + first).max(0.0);
                    let u = (d1 + slack(d1)).sqrt();
                    let d2 = self.x_sq[i] + second;
                    let l = (d2 - slack(d2)).max(0.0).sqrt();
                    (i, j, u, if second.is_finite() { l } else { f32::INFINITY })
                })
                .collect();
            for (i, j, u, l) in settled {
                self.labels[i] = j;
                self.upper[i] = u;
                self.lower[i] = l;
            }
        }
        self.prev = Some(cen.to_vec());
        Ok(self.nearest(k))
    }

    /// The pass's result: labels, exact squared distances, and the per-cluster sums.
    fn nearest(&self, k: usize) -> Nearest {
        let dim = self.x.dim();
        let (sums, counts) = (0..self.x.len())
            .into_par_iter()
            .fold(
                || (vec![0f64; k * dim], vec![0u64; k]),
                |(mut s, mut n), i| {
                    let a = self.labels[i] as usize;
                    n[a] += 1;
                    for (acc, &v) in s[a * dim..(a + 1) * dim].iter_mut().zip(self.x.row(i)) {
                        *acc += v as f64;
                    }
                    (s, n)
                },
            )
            .reduce(
                || (vec![0f64; k * dim], vec![0u64; k]),
                |(mut s, mut n), (s2, n2)| {
                    s.iter_mut().zip(&s2).for_each(|(a, b)| *a += b);
                    n.iter_mut().zip(&n2).for_each(|(a, b)| *a += b);
                    (s, n)
                },
            );
        Nearest {
            labels: self.labels.clone(),
            sq_dist: self.upper.iter().map(|u| u * u).collect(),
            sums: sums.iter().map(|&v| v as f32).collect(),
            counts: counts.iter().map(|&v| v as f32).collect(),
        }
    }
}

/// `‖a − b‖²`, computed directly (no cancellation), in 16 independent lanes so it vectorises.
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            let d = x[l] - y[l];
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
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
    let points = c.resident(x.as_slice(), dim)?;
    // Squared distances of every point to the given centre rows: [n, t] on the host.
    let sq_dists_to = |rows: &[usize]| -> Result<Vec<f32>, MineError> {
        let cand = x.gather(rows);
        // [t, n]: one row of dots per centre.
        let dots = c.dots_against(cand.as_slice(), &points)?;
        Ok((0..n * rows.len())
            .map(|e| {
                let (i, t) = (e / rows.len(), e % rows.len());
                (sq[i] + sq[rows[t]] - 2.0 * dots[t * n + i]).max(0.0)
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
        let a = c.nearest(&c.resident(b.as_slice(), dim)?, &cen)?;
        let sums = &a.sums;
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
    let points = c.resident(x.as_slice(), dim)?;
    let mut a = c.nearest(&points, &cen)?;
    if a.counts.iter().any(|&m| m < 0.5) {
        cen = update(&a, x, dim);
        a = c.nearest(&points, &cen)?;
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
    fn finds_three_blobs_with_lloyd_and_minibatch_on_both_engines() {
        let x = blobs();
        let engines = [Compute::<Cpu>::host(), Compute::new(Default::default())];
        for (c, mode) in engines
            .iter()
            .flat_map(|c| [(c, KMeansMode::Lloyd), (c, KMeansMode::MiniBatch)])
        {
            let cfg = KMeansConfig {
                mode,
                batch_size: 32,
                ..Default::default()
            };
            let fit = kmeans(c, &x, 3, &cfg).unwrap();
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
        let c = Compute::<Cpu>::host();
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
    fn bounded_lloyd_on_the_host_matches_plain_lloyd_on_the_reference_engine() {
        // Clustered data, more centres than true clusters, enough iterations for the bounds to
        // prune most points: the bounds must never change an assignment.
        let x = Vectors::new(crate::testdata::clustered(3000, 24, 40, 9), 24).unwrap();
        let (h, r) = (
            Compute::<Cpu>::host(),
            Compute::<Cpu>::new(Default::default()),
        );
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let init = kmeans_plus_plus(&r, &x, 25, &mut rng).unwrap();
        for iters in [1, 2, 5, 30] {
            let a = lloyd(&h, &x, init.clone(), iters, 0.0).unwrap();
            let b = lloyd(&r, &x, init.clone(), iters, 0.0).unwrap();
            assert_eq!(a.assignments, b.assignments, "{iters} iterations");
            assert_eq!(a.iterations, b.iterations);
            assert!((a.inertia - b.inertia).abs() <= 1e-4 * b.inertia, "{iters}");
            for (p, q) in a.centroids.iter().zip(&b.centroids) {
                assert!((p - q).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn an_empty_cluster_is_reseeded() {
        let c = Compute::<Cpu>::host();
        let x = blobs();
        // Two centres on the same point: one of them starts empty.
        let init = vec![0.0, 0.0, 0.0, 0.0, 10.0, 0.0];
        let fit = lloyd(&c, &x, init, 50, 0.0).unwrap();
        assert!(fit.sizes().iter().all(|&s| s > 0), "{:?}", fit.sizes());
        assert!(fit.inertia < 75.0);
    }
}
