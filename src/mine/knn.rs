//! k-nearest-neighbour graphs without an `n × n` matrix.
//!
//! - **Exact**: query rows in blocks against candidate rows in blocks, one GEMM per pair of blocks,
//!   a running top-k per query. `O(n²·d)` time, `O(block² + n·k)` memory; the reference for recall
//!   and the default below `exact_max_n` points.
//! - **IVF** (batched approximate search): a coarse k-means splits the points into `nlist` lists;
//!   the members of each list are searched, as one batch, against the members of the `nprobe` lists
//!   whose centroids are nearest to their own. `O(n · nprobe · n/nlist · d)` time. Its recall@k
//!   against exact search is measured on a sample of queries and reported with the graph.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::MineError;
use super::compute::{Compute, Rows};
use super::kmeans::{KMeansConfig, KMeansMode, kmeans};
use super::vectors::{Metric, Vectors};
use burn::prelude::Backend;

/// How the graph is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KnnMethod {
    /// Exact up to `exact_max_n` points (`gpu_exact_max_n` on the CUDA engine), IVF above.
    #[default]
    Auto,
    Exact,
    Ivf,
}

/// kNN graph settings (`[mine.knn]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnnConfig {
    pub k: usize,
    pub metric: Metric,
    pub method: KnnMethod,
    pub exact_max_n: usize,
    /// The same bound on the CUDA engine, where the exact graph's top-k is reduced on the GPU and
    /// runs faster than IVF's many small searches up to about a million vectors.
    pub gpu_exact_max_n: usize,
    /// Coarse lists; default `√n`.
    pub nlist: Option<usize>,
    /// Lists searched per query list.
    pub nprobe: usize,
    /// Queries whose exact neighbours are computed to report recall.
    pub recall_sample: usize,
    pub seed: u64,
}

impl Default for KnnConfig {
    fn default() -> Self {
        Self {
            k: 20,
            metric: Metric::Cosine,
            method: KnnMethod::Auto,
            exact_max_n: 20_000,
            gpu_exact_max_n: 1_000_000,
            nlist: None,
            nprobe: 8,
            recall_sample: 500,
            seed: 0,
        }
    }
}

/// Each row's `k` nearest other rows, nearest first. Rows with fewer than `k` others have their
/// tail padded with `u32::MAX` / `+∞`.
#[derive(Debug, Clone)]
pub struct KnnGraph {
    pub k: usize,
    pub metric: Metric,
    pub neighbors: Vec<u32>,
    pub distances: Vec<f32>,
    /// `exact` or `ivf(nlist=…, nprobe=…)`.
    pub method: String,
}

impl KnnGraph {
    pub fn len(&self) -> usize {
        self.neighbors.len() / self.k.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.neighbors.is_empty()
    }

    /// `(neighbour, distance)` of row `i`, nearest first.
    pub fn of(&self, i: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let r = i * self.k..(i + 1) * self.k;
        self.neighbors[r.clone()]
            .iter()
            .zip(&self.distances[r])
            .filter(|(n, _)| **n != u32::MAX)
            .map(|(&n, &d)| (n as usize, d))
    }

    /// Distance to the nearest other row.
    pub fn nearest(&self, i: usize) -> Option<f32> {
        self.of(i).next().map(|(_, d)| d)
    }

    /// Mean distance to the `k` nearest rows (fewer when the graph has fewer).
    pub fn mean_distance(&self, i: usize) -> Option<f32> {
        let (s, c) = self
            .of(i)
            .fold((0f32, 0usize), |(s, c), (_, d)| (s + d, c + 1));
        (c > 0).then(|| s / c as f32)
    }
}

/// A query's running top-k, kept sorted ascending by a key that orders candidates as their
/// distance does (`−dot` for cosine, `‖c‖² − 2·dot` for Euclidean): no square root or subtraction
/// per pair in the scan; [`Prepared::distance`] turns a key into the distance at the end.
#[derive(Clone)]
struct TopK {
    k: usize,
    items: Vec<(f32, u32)>,
    /// The key a candidate must beat: the k-th best so far, +∞ until there are k.
    worst: f32,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            items: Vec::with_capacity(k + 1),
            worst: f32::INFINITY,
        }
    }

    /// Keeps `(key, j)` if it is among the `k` smallest by `(key, id)`: ties go to the lower row
    /// id, so the result does not depend on the order candidates are scanned in.
    fn push(&mut self, key: f32, j: u32) {
        if self.items.len() == self.k {
            let (wk, wj) = self.items[self.k - 1];
            if key > wk || (key == wk && j >= wj) {
                return;
            }
        }
        let at = self
            .items
            .partition_point(|&(x, i)| x < key || (x == key && i < j));
        self.items.insert(at, (key, j));
        self.items.truncate(self.k);
        if self.items.len() == self.k {
            self.worst = self.items[self.k - 1].0;
        }
    }
}

/// Rows prepared for a metric: normalised for cosine, plus squared norms for Euclidean.
pub struct Prepared {
    pub x: Vectors,
    pub sq: Vec<f32>,
    pub metric: Metric,
}

impl Prepared {
    pub fn new(x: &Vectors, metric: Metric) -> Self {
        let x = x.for_metric(metric);
        let sq = x.sq_norms();
        Self { x, sq, metric }
    }

    /// The ranking key of candidate `j` at dot product `dot` (see [`TopK`]).
    fn key(&self, dot: f32, j: usize) -> f32 {
        match self.metric {
            Metric::Cosine => -dot,
            Metric::Euclidean => self.sq[j] - 2.0 * dot,
        }
    }

    /// The distance from query row `q` at ranking key `key`.
    fn distance(&self, q: usize, key: f32) -> f32 {
        match self.metric {
            Metric::Cosine => (1.0 + key).max(0.0),
            Metric::Euclidean => (self.sq[q] + key).max(0.0).sqrt(),
        }
    }
}

/// Searches `queries` against `candidates` (row indices of `p`), updating `tops` (one per query),
/// with the top-k update fused into the blocked product. A row is never its own neighbour.
fn search<B: Backend>(
    c: &Compute<B>,
    p: &Prepared,
    queries: &[usize],
    candidates: &[usize],
    tops: &mut [TopK],
) -> Result<(), MineError> {
    let (x, dim) = (p.x.as_slice(), p.x.dim());
    let (q, cand) = (Rows::pick(x, dim, queries), Rows::pick(x, dim, candidates));
    let k = tops.first().map_or(0, |t| t.k);
    let euclidean = p.metric == Metric::Euclidean;
    if let Some(found) = c.top_k(q, queries, cand, candidates, euclidean, k)? {
        for (top, items) in tops.iter_mut().zip(found) {
            for (key, j) in items {
                top.push(key, j);
            }
        }
        return Ok(());
    }
    c.scan(q, cand, tops, |top, qi, c0, dots| {
        let own = queries[qi];
        let ids = &candidates[c0..c0 + dots.len()];
        match p.metric {
            Metric::Cosine => {
                for (&dot, &cj) in dots.iter().zip(ids) {
                    if -dot <= top.worst && cj != own {
                        top.push(-dot, cj as u32);
                    }
                }
            }
            Metric::Euclidean => {
                for (&dot, &cj) in dots.iter().zip(ids) {
                    let key = p.key(dot, cj);
                    if key <= top.worst && cj != own {
                        top.push(key, cj as u32);
                    }
                }
            }
        }
    })
}

/// Every row's top-k among all rows from the upper triangle of the Gram matrix: each pair's dot
/// product is computed once and offered to both rows, half the products of a query-by-query
/// search.
fn exact_all<B: Backend>(c: &Compute<B>, p: &Prepared, k: usize) -> Result<Vec<TopK>, MineError> {
    let n = p.x.len();
    if c.reduces_on_device() {
        // On the GPU the full product with the top-k reduced in place beats half the products
        // with every block read back.
        let all: Vec<usize> = (0..n).collect();
        let mut tops = vec![TopK::new(k); n];
        search(c, p, &all, &all, &mut tops)?;
        return Ok(tops);
    }
    let accs = c.scan_triangle(
        p.x.as_slice(),
        p.x.dim(),
        || vec![TopK::new(k); n],
        |tops, r0, c0, rows, cols, dots| {
            for r in 0..rows {
                let i = r0 + r;
                // A diagonal block holds each pair twice and the row itself once.
                let from = if r0 == c0 { r + 1 } else { 0 };
                for (cc, &dot) in dots[r * cols..(r + 1) * cols].iter().enumerate().skip(from) {
                    let j = c0 + cc;
                    let (ki, kj) = (p.key(dot, j), p.key(dot, i));
                    if ki <= tops[i].worst {
                        tops[i].push(ki, j as u32);
                    }
                    if kj <= tops[j].worst {
                        tops[j].push(kj, i as u32);
                    }
                }
            }
        },
    )?;
    let mut accs = accs.into_iter();
    let mut tops = accs.next().unwrap_or_else(|| vec![TopK::new(k); n]);
    for other in accs {
        for (t, o) in tops.iter_mut().zip(other) {
            for (key, j) in o.items {
                t.push(key, j);
            }
        }
    }
    Ok(tops)
}

/// The graph of `tops`, the running top-k of query rows `queries`.
fn into_graph(
    p: &Prepared,
    k: usize,
    queries: &[usize],
    tops: Vec<TopK>,
    method: String,
) -> KnnGraph {
    let mut neighbors = Vec::with_capacity(tops.len() * k);
    let mut distances = Vec::with_capacity(tops.len() * k);
    for (t, &q) in tops.iter().zip(queries) {
        for j in 0..k {
            match t.items.get(j) {
                Some(&(key, n)) => {
                    neighbors.push(n);
                    distances.push(p.distance(q, key));
                }
                None => {
                    neighbors.push(u32::MAX);
                    distances.push(f32::INFINITY);
                }
            }
        }
    }
    KnnGraph {
        k,
        metric: p.metric,
        neighbors,
        distances,
        method,
    }
}

fn check(x: &Vectors, k: usize) -> Result<(), MineError> {
    if x.is_empty() {
        return Err(MineError::Empty("kNN graph of no vectors".into()));
    }
    if k == 0 {
        return Err(MineError::Config("knn.k must be at least 1".into()));
    }
    Ok(())
}

/// Exact neighbours of the `queries` rows among all rows (k is clamped to n − 1).
pub fn exact_neighbors<B: Backend>(
    c: &Compute<B>,
    p: &Prepared,
    queries: &[usize],
    k: usize,
) -> Result<KnnGraph, MineError> {
    check(&p.x, k)?;
    let k = k.min(p.x.len().saturating_sub(1)).max(1);
    let all: Vec<usize> = (0..p.x.len()).collect();
    let mut tops = vec![TopK::new(k); queries.len()];
    search(c, p, queries, &all, &mut tops)?;
    Ok(into_graph(p, k, queries, tops, "exact".into()))
}

/// The kNN graph of every row, exact or IVF per `cfg.method`.
pub fn knn_graph<B: Backend>(
    c: &Compute<B>,
    x: &Vectors,
    cfg: &KnnConfig,
) -> Result<KnnGraph, MineError> {
    check(x, cfg.k)?;
    let p = Prepared::new(x, cfg.metric);
    let n = x.len();
    let ivf = match cfg.method {
        KnnMethod::Exact => false,
        KnnMethod::Ivf => true,
        KnnMethod::Auto if c.reduces_on_device() => n > cfg.gpu_exact_max_n,
        KnnMethod::Auto => n > cfg.exact_max_n,
    };
    if !ivf {
        let k = cfg.k.min(n.saturating_sub(1)).max(1);
        let all: Vec<usize> = (0..n).collect();
        let tops = exact_all(c, &p, k)?;
        return Ok(into_graph(&p, k, &all, tops, "exact".into()));
    }
    let k = cfg.k.min(n.saturating_sub(1)).max(1);
    let nlist = cfg
        .nlist
        .unwrap_or((n as f64).sqrt().round() as usize)
        .clamp(1, n);
    let nprobe = cfg.nprobe.clamp(1, nlist);
    // Coarse quantiser: a few Lloyd iterations on a sample are enough to partition space.
    let km_cfg = KMeansConfig {
        mode: KMeansMode::Lloyd,
        max_iter: 10,
        restarts: 1,
        seed: cfg.seed,
        init_sample: (nlist * 64).min(n),
        ..KMeansConfig::default()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let sample_n = (nlist * 64).clamp(nlist, n);
    let sample = rand::seq::index::sample(&mut rng, n, sample_n).into_vec();
    let coarse = kmeans(c, &p.x.gather(&sample), nlist, &km_cfg)?;
    let cen = Vectors::new(coarse.centroids.clone(), x.dim())?;
    // Every row's list.
    let assign = exact_to_centroids(c, &p.x, &cen)?;
    let mut lists = vec![Vec::new(); nlist];
    for (i, &l) in assign.iter().enumerate() {
        lists[l].push(i);
    }
    // Each list's nprobe nearest lists (itself first).
    let cen_sq = cen.sq_norms();
    let cdots = c.dots(cen.as_slice(), cen.as_slice(), x.dim())?;
    let mut tops = vec![TopK::new(k); n];
    for (l, members) in lists.iter().enumerate() {
        if members.is_empty() {
            continue;
        }
        let mut order: Vec<(f32, usize)> = (0..nlist)
            .map(|m| {
                let d2 = cen_sq[l] + cen_sq[m] - 2.0 * cdots[l * nlist + m];
                (if m == l { f32::NEG_INFINITY } else { d2 }, m)
            })
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        let candidates: Vec<usize> = order
            .iter()
            .take(nprobe)
            .flat_map(|&(_, m)| lists[m].iter().copied())
            .collect();
        let mut local: Vec<TopK> = vec![TopK::new(k); members.len()];
        search(c, &p, members, &candidates, &mut local)?;
        for (&i, t) in members.iter().zip(local) {
            tops[i] = t;
        }
    }
    let all: Vec<usize> = (0..n).collect();
    Ok(into_graph(
        &p,
        k,
        &all,
        tops,
        format!("ivf(nlist={nlist}, nprobe={nprobe})"),
    ))
}

/// Distance from each of `queries` to its nearest row among `targets` (+∞ when there is none;
/// a row is not its own nearest).
pub fn nearest_in<B: Backend>(
    c: &Compute<B>,
    p: &Prepared,
    queries: &[usize],
    targets: &[usize],
) -> Result<Vec<f32>, MineError> {
    let mut tops = vec![TopK::new(1); queries.len()];
    if !targets.is_empty() {
        search(c, p, queries, targets, &mut tops)?;
    }
    Ok(tops
        .iter()
        .zip(queries)
        .map(|(t, &q)| {
            t.items
                .first()
                .map_or(f32::INFINITY, |&(key, _)| p.distance(q, key))
        })
        .collect())
}

/// Index of the nearest centroid (squared Euclidean) of every row.
pub fn exact_to_centroids<B: Backend>(
    c: &Compute<B>,
    x: &Vectors,
    centroids: &Vectors,
) -> Result<Vec<usize>, MineError> {
    let a = c.nearest(&c.resident(x.as_slice(), x.dim())?, centroids.as_slice())?;
    Ok(a.labels.into_iter().map(|l| l as usize).collect())
}

/// Recall@k of `graph` against exact search on `sample` random rows: the share of each sampled
/// row's true k nearest neighbours that the graph also lists.
pub fn recall_at<B: Backend>(
    c: &Compute<B>,
    x: &Vectors,
    graph: &KnnGraph,
    k: usize,
    sample: usize,
    seed: u64,
) -> Result<f64, MineError> {
    let n = x.len();
    let k = k.min(graph.k).min(n.saturating_sub(1));
    if k == 0 {
        return Ok(1.0);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rows = rand::seq::index::sample(&mut rng, n, sample.clamp(1, n)).into_vec();
    let p = Prepared::new(x, graph.metric);
    let exact = exact_neighbors(c, &p, &rows, k)?;
    let mut hit = 0usize;
    for (qi, &row) in rows.iter().enumerate() {
        // Ties at the k-th distance make "the" true set ambiguous: count a graph neighbour as a hit
        // when it is no farther than the exact k-th neighbour.
        let kth = exact.of(qi).nth(k - 1).map_or(f32::INFINITY, |(_, d)| d);
        hit += graph
            .of(row)
            .take(k)
            .filter(|&(_, d)| d <= kth + 1e-6)
            .count();
    }
    Ok(hit as f64 / (rows.len() * k) as f64)
}

#[cfg(test)]
mod tests {
    use super::super::vectors::distance_from_dot;
    use super::*;
    use crate::backend::Cpu;
    use rand::Rng;

    fn random(n: usize, d: usize, seed: u64) -> Vectors {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Vectors::new((0..n * d).map(|_| rng.random::<f32>() - 0.5).collect(), d).unwrap()
    }

    /// Brute force in plain loops, the reference for the blocked GEMM path.
    fn brute(x: &Vectors, metric: Metric, i: usize, k: usize) -> Vec<usize> {
        let p = x.for_metric(metric);
        let mut d: Vec<(f32, usize)> = (0..x.len())
            .filter(|&j| j != i)
            .map(|j| {
                let dot: f32 = p.row(i).iter().zip(p.row(j)).map(|(a, b)| a * b).sum();
                let sq = |r: &[f32]| r.iter().map(|v| v * v).sum::<f32>();
                (
                    distance_from_dot(metric, dot, sq(p.row(i)), sq(p.row(j))),
                    j,
                )
            })
            .collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0));
        d.into_iter().take(k).map(|(_, j)| j).collect()
    }

    #[test]
    fn exact_graph_matches_brute_force_for_both_metrics_on_both_engines() {
        let x = random(300, 8, 3);
        let engines = [Compute::<Cpu>::host(), Compute::new(Default::default())];
        for (c, metric) in engines
            .iter()
            .flat_map(|c| [(c, Metric::Cosine), (c, Metric::Euclidean)])
        {
            let cfg = KnnConfig {
                k: 5,
                metric,
                method: KnnMethod::Exact,
                ..Default::default()
            };
            let g = knn_graph(c, &x, &cfg).unwrap();
            let p = x.for_metric(metric);
            let sq = |r: &[f32]| r.iter().map(|v| v * v).sum::<f32>();
            for i in [0, 17, 299] {
                let got: Vec<usize> = g.of(i).map(|(j, _)| j).collect();
                assert_eq!(got, brute(&x, metric, i, 5), "{metric:?} row {i}");
                for (j, d) in g.of(i) {
                    let dot: f32 = p.row(i).iter().zip(p.row(j)).map(|(a, b)| a * b).sum();
                    let want = distance_from_dot(metric, dot, sq(p.row(i)), sq(p.row(j)));
                    assert!((d - want).abs() < 1e-4, "{metric:?} {i}→{j}: {d} vs {want}");
                }
            }
        }
    }

    #[test]
    fn ivf_graph_has_high_recall_on_clustered_data() {
        let c = Compute::<Cpu>::host();
        let x = Vectors::new(crate::testdata::clustered(4000, 16, 40, 5), 16).unwrap();
        let cfg = KnnConfig {
            k: 10,
            method: KnnMethod::Ivf,
            nprobe: 6,
            ..Default::default()
        };
        let g = knn_graph(&c, &x, &cfg).unwrap();
        assert!(g.method.starts_with("ivf"));
        let r = recall_at(&c, &x, &g, 10, 200, 1).unwrap();
        assert!(r > 0.9, "recall {r}");
    }

    #[test]
    fn k_larger_than_n_is_clamped_and_tiny_inputs_work() {
        let c = Compute::<Cpu>::host();
        let x = random(3, 4, 1);
        let g = knn_graph(
            &c,
            &x,
            &KnnConfig {
                k: 10,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(g.k, 2);
        assert_eq!(g.of(0).count(), 2);
        let one = random(1, 4, 1);
        let g = knn_graph(&c, &one, &KnnConfig::default()).unwrap();
        assert_eq!(g.of(0).count(), 0);
        assert_eq!(g.nearest(0), None);
        let none = Vectors::new(vec![], 4).unwrap();
        assert!(matches!(
            knn_graph(&c, &none, &KnnConfig::default()),
            Err(MineError::Empty(_))
        ));
    }
}
