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
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::MineError;
use super::compute::Compute;
use super::kmeans::{KMeansConfig, KMeansMode, kmeans};
use super::vectors::{Metric, Vectors, distance_from_dot};
use burn::prelude::Backend;

/// Query rows per GEMM block.
const QUERY_BLOCK: usize = 1024;
/// Candidate rows per GEMM block.
const CANDIDATE_BLOCK: usize = 16_384;

/// How the graph is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KnnMethod {
    /// Exact up to `exact_max_n` points, IVF above.
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

/// A query's running top-k, kept sorted ascending by distance.
#[derive(Clone)]
struct TopK {
    k: usize,
    items: Vec<(f32, u32)>,
}

impl TopK {
    fn new(k: usize) -> Self {
        Self {
            k,
            items: Vec::with_capacity(k + 1),
        }
    }

    fn push(&mut self, d: f32, j: u32) {
        if self.items.len() == self.k && self.items.last().is_some_and(|&(w, _)| d >= w) {
            return;
        }
        let at = self.items.partition_point(|&(x, _)| x <= d);
        self.items.insert(at, (d, j));
        self.items.truncate(self.k);
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
}

/// Searches `queries` against `candidates` (row indices of `p`), updating `tops` (one per query).
/// A row is never its own neighbour.
fn search<B: Backend>(
    c: &Compute<B>,
    p: &Prepared,
    queries: &[usize],
    candidates: &[usize],
    tops: &mut [TopK],
) -> Result<(), MineError> {
    let dim = p.x.dim();
    for (qb, tops) in queries
        .chunks(QUERY_BLOCK)
        .zip(tops.chunks_mut(QUERY_BLOCK))
    {
        let q = p.x.gather(qb);
        for cb in candidates.chunks(CANDIDATE_BLOCK) {
            let cand = p.x.gather(cb);
            let dots = c.dots(q.as_slice(), cand.as_slice(), dim)?;
            tops.par_iter_mut()
                .zip(dots.par_chunks(cb.len()))
                .zip(qb.par_iter())
                .for_each(|((top, row), &qi)| {
                    for (&cj, &dot) in cb.iter().zip(row) {
                        if cj != qi {
                            top.push(
                                distance_from_dot(p.metric, dot, p.sq[qi], p.sq[cj]),
                                cj as u32,
                            );
                        }
                    }
                });
        }
    }
    Ok(())
}

fn into_graph(k: usize, metric: Metric, tops: Vec<TopK>, method: String) -> KnnGraph {
    let mut neighbors = Vec::with_capacity(tops.len() * k);
    let mut distances = Vec::with_capacity(tops.len() * k);
    for t in tops {
        for j in 0..k {
            let (d, n) = t.items.get(j).copied().unwrap_or((f32::INFINITY, u32::MAX));
            neighbors.push(n);
            distances.push(d);
        }
    }
    KnnGraph {
        k,
        metric,
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
    Ok(into_graph(k, p.metric, tops, "exact".into()))
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
        KnnMethod::Auto => n > cfg.exact_max_n,
    };
    if !ivf {
        let all: Vec<usize> = (0..n).collect();
        return exact_neighbors(c, &p, &all, cfg.k);
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
    Ok(into_graph(
        k,
        cfg.metric,
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
        .map(|t| t.items.first().map_or(f32::INFINITY, |&(d, _)| d))
        .collect())
}

/// Index of the nearest centroid (squared Euclidean) of every row.
pub fn exact_to_centroids<B: Backend>(
    c: &Compute<B>,
    x: &Vectors,
    centroids: &Vectors,
) -> Result<Vec<usize>, MineError> {
    let cen_sq = centroids.sq_norms();
    let k = centroids.len();
    let mut out = Vec::with_capacity(x.len());
    for start in (0..x.len()).step_by(QUERY_BLOCK * 8) {
        let end = (start + QUERY_BLOCK * 8).min(x.len());
        let dots = c.dots(x.block(start, end), centroids.as_slice(), x.dim())?;
        out.extend(dots.chunks(k).map(|row| {
            (0..k)
                .map(|j| (cen_sq[j] - 2.0 * row[j], j))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map_or(0, |(_, j)| j)
        }));
    }
    Ok(out)
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
    fn exact_graph_matches_brute_force_for_both_metrics() {
        let c = Compute::<Cpu>::new(Default::default());
        let x = random(300, 8, 3);
        for metric in [Metric::Cosine, Metric::Euclidean] {
            let cfg = KnnConfig {
                k: 5,
                metric,
                method: KnnMethod::Exact,
                ..Default::default()
            };
            let g = knn_graph(&c, &x, &cfg).unwrap();
            for i in [0, 17, 299] {
                let got: Vec<usize> = g.of(i).map(|(j, _)| j).collect();
                assert_eq!(got, brute(&x, metric, i, 5), "{metric:?} row {i}");
                assert!(g.of(i).all(|(j, _)| j != i));
            }
        }
    }

    #[test]
    fn ivf_graph_has_high_recall_on_clustered_data() {
        let c = Compute::<Cpu>::new(Default::default());
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
        let c = Compute::<Cpu>::new(Default::default());
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
