//! `roadwork bench mine`: kNN graph, k-means and duplicate search at 100k–1M vectors, with peak
//! memory, on the clustered random vectors of [`crate::testdata`].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::mine::Vectors;
use crate::testdata::clustered;

/// One scale measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MineBenchRow {
    pub n: usize,
    pub dim: usize,
    pub knn_k: usize,
    pub knn_method: String,
    pub knn_s: f64,
    pub recall_at_10: f64,
    pub kmeans_k: usize,
    pub lloyd_s_per_iter: f64,
    pub minibatch_s_per_step: f64,
    pub minibatch_batch: usize,
    pub near_dup_s: f64,
    pub near_pairs: usize,
    pub phash_s: f64,
    pub phash_pairs: usize,
    pub peak_rss_mib: Option<f64>,
}

/// Times the kNN graph, k-means and duplicate search on `n` clustered `dim`-d vectors.
pub fn run<B: burn::prelude::Backend>(
    c: &crate::mine::Compute<B>,
    n: usize,
    dim: usize,
    kmeans_k: usize,
    seed: u64,
) -> Result<MineBenchRow, crate::mine::MineError> {
    use crate::mine::{
        KMeansConfig, KnnConfig, kmeans_plus_plus, knn_graph, lloyd, minibatch, near_pairs,
        near_threshold, phash_pairs, recall_at,
    };
    use std::time::Instant;
    let x = Vectors::new(clustered(n, dim, (n / 100).clamp(10, 2000), seed), dim)?;
    super::reset_peak_rss();
    let knn_cfg = KnnConfig::default();
    let t = Instant::now();
    let g = knn_graph(c, &x, &knn_cfg)?;
    let knn_s = t.elapsed().as_secs_f64();
    let recall = recall_at(c, &x, &g, 10, 200, seed)?;
    let t = Instant::now();
    let thr = near_threshold(&g, 0.13).unwrap_or(0.0);
    let near = near_pairs(&g, thr).len();
    let near_dup_s = t.elapsed().as_secs_f64();
    // Perceptual hashes: random, with 1 % re-encoded copies (≤ 4 bits flipped).
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut hashes: Vec<u64> = (0..n).map(|_| rng.random()).collect();
    for i in 0..n / 100 {
        let flips = rng.random_range(0..=4);
        let mut h = hashes[i];
        for _ in 0..flips {
            h ^= 1 << rng.random_range(0..64);
        }
        hashes[n - 1 - i] = h;
    }
    let t = Instant::now();
    let ph = phash_pairs(&hashes, 4).len();
    let phash_s = t.elapsed().as_secs_f64();
    // k-means: Lloyd iterations from a k-means++ start, and mini-batch steps.
    let k = kmeans_k.min(n);
    let init = kmeans_plus_plus(
        c,
        &x.gather(&(0..n.min(50_000)).collect::<Vec<_>>()),
        k,
        &mut rng,
    )?;
    let iters = 3;
    let t = Instant::now();
    let fit = lloyd(c, &x, init.clone(), iters, 0.0)?;
    // `lloyd` runs one extra assignment pass after its last update.
    let lloyd_s = t.elapsed().as_secs_f64() / (fit.iterations + 1) as f64;
    let cfg = KMeansConfig {
        max_iter: 50,
        max_no_improvement: usize::MAX,
        ..KMeansConfig::default()
    };
    let t = Instant::now();
    let mb = minibatch(c, &x, init, &cfg, &mut rng)?;
    let mb_total = t.elapsed().as_secs_f64();
    // Subtract the final full assignment pass (≈ one Lloyd iteration) from the step time.
    let minibatch_s = ((mb_total - lloyd_s).max(0.0)) / mb.iterations.max(1) as f64;
    Ok(MineBenchRow {
        n,
        dim,
        knn_k: g.k,
        knn_method: g.method.clone(),
        knn_s,
        recall_at_10: recall,
        kmeans_k: k,
        lloyd_s_per_iter: lloyd_s,
        minibatch_s_per_step: minibatch_s,
        minibatch_batch: cfg.batch_size,
        near_dup_s,
        near_pairs: near,
        phash_s,
        phash_pairs: ph,
        peak_rss_mib: super::peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64),
    })
}

/// The docs/BENCHMARKS.md table.
pub fn markdown(rows: &[MineBenchRow]) -> String {
    let mut s = String::from(
        "| n × dim | kNN graph (k) | method | recall@10 | k-means k | Lloyd s/iter | mini-batch s/step (batch) | near-dup s (pairs) | pHash s (pairs) | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} × {} | {:.1} s ({}) | {} | {:.3} | {} | {:.2} | {:.3} ({}) | {:.2} ({}) | {:.2} ({}) | {} |\n",
            r.n,
            r.dim,
            r.knn_s,
            r.knn_k,
            r.knn_method,
            r.recall_at_10,
            r.kmeans_k,
            r.lloyd_s_per_iter,
            r.minibatch_s_per_step,
            r.minibatch_batch,
            r.near_dup_s,
            r.near_pairs,
            r.phash_s,
            r.phash_pairs,
            r.peak_rss_mib.map_or("–".into(), |m| format!("{m:.0}")),
        ));
    }
    s
}

/// Recall of the Lance ANN index (IVF-HNSW-SQ, cosine) against a flat scan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LanceRecall {
    pub n: usize,
    pub dim: usize,
    pub index_build_s: f64,
    pub queries: usize,
    pub recall_at_10: f64,
    pub ann_ms_per_query: f64,
    pub exact_ms_per_query: f64,
}

/// Writes `n` clustered vectors to an embeddings table of `store`, builds the ANN index and
/// compares `queries` ANN searches (top 10) with exact ones.
pub async fn lance_recall(
    store: &crate::store::Store,
    n: usize,
    dim: usize,
    queries: usize,
) -> Result<LanceRecall, crate::mine::MineError> {
    use crate::store::{SampleId, embeddings_table};
    use std::collections::HashSet;
    use std::time::Instant;
    let model = format!("bench-lance-{n}x{dim}");
    let x = Vectors::new(clustered(n, dim, (n / 100).clamp(10, 2000), 5), dim)?;
    let ids: Vec<SampleId> = (0..n)
        .map(|i| SampleId::of_bytes(format!("bench-{i}").as_bytes()))
        .collect();
    for start in (0..n).step_by(20_000) {
        let end = (start + 20_000).min(n);
        let rows: Vec<(SampleId, Vec<f32>)> = (start..end)
            .map(|i| (ids[i].clone(), x.row(i).to_vec()))
            .collect();
        store.put_embeddings(&model, dim, &rows).await?;
    }
    let t = Instant::now();
    store
        .refresh_vector_index(&embeddings_table(&model), 1)
        .await?;
    let index_build_s = t.elapsed().as_secs_f64();
    let (mut hit, mut total, mut ann_s, mut exact_s) = (0usize, 0usize, 0f64, 0f64);
    let step = (n / queries.max(1)).max(1);
    let q: Vec<usize> = (0..n).step_by(step).take(queries).collect();
    for &i in &q {
        let t = Instant::now();
        let ann = store.nearest(&model, x.row(i), 10, None, false).await?;
        ann_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        let exact = store.nearest(&model, x.row(i), 10, None, true).await?;
        exact_s += t.elapsed().as_secs_f64();
        let e: HashSet<&SampleId> = exact.iter().map(|r| &r.0).collect();
        hit += ann.iter().filter(|r| e.contains(&r.0)).count();
        total += exact.len();
    }
    Ok(LanceRecall {
        n,
        dim,
        index_build_s,
        queries: q.len(),
        recall_at_10: hit as f64 / total.max(1) as f64,
        ann_ms_per_query: 1000.0 * ann_s / q.len().max(1) as f64,
        exact_ms_per_query: 1000.0 * exact_s / q.len().max(1) as f64,
    })
}
