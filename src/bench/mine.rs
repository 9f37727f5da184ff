//! `roadwork bench mine`: kNN graph, k-means and duplicate search at 100k–1M vectors, with peak
//! memory, on the clustered random vectors of [`crate::testdata`]; scikit-learn's k-means (Lloyd
//! and Elkan, from the same start) and brute-force kNN run on the same vectors in the same call
//! when `python3 -c 'import sklearn'` works, so the ratios are side by side.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::mine::Vectors;
use crate::testdata::clustered;

/// What one `bench mine` case runs.
#[derive(Debug, Clone)]
pub struct MinePlan {
    pub n: usize,
    pub dim: usize,
    pub kmeans_k: usize,
    pub seed: u64,
    /// The exact kNN graph at any n (default: IVF above `exact_max_n`).
    pub exact: bool,
    /// The scikit-learn reference to run on the same vectors in the same call.
    pub sklearn: Option<SklearnRef>,
}

/// How to run `benches/sklearn_mine.py`.
#[derive(Debug, Clone)]
pub struct SklearnRef {
    pub python: String,
    pub script: PathBuf,
}

/// scikit-learn on the same vectors and the same k-means start.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SklearnRow {
    pub version: String,
    /// BLAS and thread pools scikit-learn reports (threadpoolctl).
    pub blas: String,
    pub lloyd_s_per_iter: f64,
    /// scikit-learn's Elkan variant (references without one, such as the PyTorch script, omit it).
    pub elkan_s_per_iter: Option<f64>,
    pub inertia: f64,
    /// `NearestNeighbors(algorithm="brute")` on the unit rows (cosine order), when `--exact`.
    pub knn_brute_s: Option<f64>,
}

/// One scale measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MineBenchRow {
    pub n: usize,
    pub dim: usize,
    pub engine: String,
    pub knn_k: usize,
    pub knn_method: String,
    pub knn_s: f64,
    pub recall_at_10: f64,
    pub kmeans_k: usize,
    pub lloyd_s_per_iter: f64,
    pub lloyd_inertia: f64,
    pub minibatch_s_per_step: f64,
    pub minibatch_batch: usize,
    pub near_dup_s: f64,
    pub near_pairs: usize,
    pub phash_s: f64,
    pub phash_pairs: usize,
    pub peak_rss_mib: Option<f64>,
    /// The scikit-learn side, or why it did not run (JSON: `{"row": …}` or `{"skipped": …}`).
    #[serde(serialize_with = "ok_or_reason")]
    pub sklearn: Result<SklearnRow, String>,
}

/// A `Result` as `{"row": …}` or `{"skipped": reason}`: plain to read from any JSON tool.
fn ok_or_reason<S: serde::Serializer>(
    r: &Result<SklearnRow, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(1))?;
    match r {
        Ok(row) => m.serialize_entry("row", row)?,
        Err(why) => m.serialize_entry("skipped", why)?,
    }
    m.end()
}

/// Lloyd iterations timed, on both sides from the same k-means++ start with `tol = 0` (each run
/// also does one assignment pass after its last update). The mining stage runs up to
/// `[mine.kmeans] max_iter` (100) per start; 20 shows the steady state, not only the first
/// iterations where every centre still moves far.
const LLOYD_ITERS: usize = 20;

/// Times the kNN graph, k-means and duplicate search on `plan.n` clustered vectors, then runs
/// scikit-learn on the same vectors.
pub fn run<B: burn::prelude::Backend>(
    c: &crate::mine::Compute<B>,
    plan: &MinePlan,
) -> Result<MineBenchRow, crate::mine::MineError> {
    use crate::mine::{
        KMeansConfig, KnnConfig, KnnMethod, kmeans_plus_plus, knn_graph, lloyd, minibatch,
        near_pairs, near_threshold, phash_pairs, recall_at,
    };
    use std::time::Instant;
    let (n, dim, seed) = (plan.n, plan.dim, plan.seed);
    let x = Vectors::new(clustered(n, dim, (n / 100).clamp(10, 2000), seed), dim)?;
    super::reset_peak_rss();
    let knn_cfg = KnnConfig {
        method: if plan.exact {
            KnnMethod::Exact
        } else {
            KnnMethod::Auto
        },
        ..KnnConfig::default()
    };
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
    let k = plan.kmeans_k.min(n);
    let init = kmeans_plus_plus(
        c,
        &x.gather(&(0..n.min(50_000)).collect::<Vec<_>>()),
        k,
        &mut rng,
    )?;
    let t = Instant::now();
    let fit = lloyd(c, &x, init.clone(), LLOYD_ITERS, 0.0)?;
    // `lloyd` runs one extra assignment pass after its last update.
    let lloyd_s = t.elapsed().as_secs_f64() / (fit.iterations + 1) as f64;
    let cfg = KMeansConfig {
        max_iter: 50,
        max_no_improvement: usize::MAX,
        ..KMeansConfig::default()
    };
    let t = Instant::now();
    let mb = minibatch(c, &x, init.clone(), &cfg, &mut rng)?;
    let mb_total = t.elapsed().as_secs_f64();
    // Subtract the final full assignment pass (≈ one Lloyd iteration) from the step time.
    let minibatch_s = ((mb_total - lloyd_s).max(0.0)) / mb.iterations.max(1) as f64;
    let peak_rss_mib = super::peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64);
    let sklearn = match &plan.sklearn {
        Some(r) => run_sklearn(r, &x, &init, k, plan.exact.then_some(g.k)),
        None => Err("not asked for".into()),
    };
    Ok(MineBenchRow {
        n,
        dim,
        engine: c.describe(),
        knn_k: g.k,
        knn_method: g.method.clone(),
        knn_s,
        recall_at_10: recall,
        kmeans_k: k,
        lloyd_s_per_iter: lloyd_s,
        lloyd_inertia: fit.inertia,
        minibatch_s_per_step: minibatch_s,
        minibatch_batch: cfg.batch_size,
        near_dup_s,
        near_pairs: near,
        phash_s,
        phash_pairs: ph,
        peak_rss_mib,
        sklearn,
    })
}

/// Runs every case of `ns` on each engine in turn: the first engine's row of each case also runs
/// the reference (`plan.sklearn`), the others are there to be compared with the first
/// ([`engines_markdown`]). `done` sees each row as it finishes.
pub fn run_engines(
    engines: &[crate::mine::Compute<crate::backend::Cpu>],
    ns: &[usize],
    plan: &MinePlan,
    mut done: impl FnMut(&MineBenchRow),
) -> Result<Vec<MineBenchRow>, crate::mine::MineError> {
    let mut rows = Vec::new();
    for &n in ns {
        for (i, c) in engines.iter().enumerate() {
            tracing::info!(n, engine = %c.describe(), "bench mine");
            let p = MinePlan {
                n,
                sklearn: if i == 0 { plan.sklearn.clone() } else { None },
                ..plan.clone()
            };
            let row = run(c, &p)?;
            done(&row);
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Each engine against the first engine of the same case (GPU against the host, say), as a
/// Markdown table; empty with one engine per case.
pub fn engines_markdown(rows: &[MineBenchRow]) -> String {
    let mut s = String::new();
    for r in rows {
        let Some(first) = rows.iter().find(|f| f.n == r.n && f.dim == r.dim) else {
            continue;
        };
        if std::ptr::eq(first, r) {
            continue;
        }
        if s.is_empty() {
            s.push_str("\n| n × dim, k | engine | Lloyd s/iter | kNN graph s (method) | first engine | first engine's Lloyd speed-up | its kNN speed-up |\n|---|---|---|---|---|---|---|\n");
        }
        s.push_str(&format!(
            "| {} × {}, {} | {} | {:.4} | {:.2} ({}) | {} | {:.2}× | {:.2}× |\n",
            r.n,
            r.dim,
            r.kmeans_k,
            r.engine,
            r.lloyd_s_per_iter,
            r.knn_s,
            r.knn_method,
            first.engine,
            r.lloyd_s_per_iter / first.lloyd_s_per_iter,
            r.knn_s / first.knn_s,
        ));
    }
    s
}

/// The scikit-learn timer committed with the repository (as [`super::embed::default_torch_script`]).
pub fn default_sklearn_script() -> PathBuf {
    let rel = Path::new("benches").join("sklearn_mine.py");
    if rel.is_file() {
        return rel;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Row-major little-endian `f32`, the layout `numpy.fromfile(…, "<f4")` reads.
fn write_f32(path: &Path, v: &[f32]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(v.len() * 4);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, bytes)
}

/// Runs the reference script on `x` from the `init` centroids; with `knn_k`, also brute kNN.
fn run_sklearn(
    r: &SklearnRef,
    x: &Vectors,
    init: &[f32],
    k: usize,
    knn_k: Option<usize>,
) -> Result<SklearnRow, String> {
    if !r.script.is_file() {
        return Err(format!("{} not found", r.script.display()));
    }
    let dir = std::env::temp_dir().join(format!("roadwork-bench-mine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (xp, cp) = (dir.join("x.f32"), dir.join("init.f32"));
    let out = write_f32(&xp, x.as_slice())
        .and_then(|_| write_f32(&cp, init))
        .map_err(|e| format!("writing the vectors for scikit-learn: {e}"))
        .and_then(|_| {
            std::process::Command::new(&r.python)
                .arg(&r.script)
                .arg("--data")
                .arg(&xp)
                .arg("--init")
                .arg(&cp)
                .args(["--n", &x.len().to_string(), "--dim", &x.dim().to_string()])
                .args(["--k", &k.to_string(), "--iters", &LLOYD_ITERS.to_string()])
                .args(["--knn-k", &knn_k.unwrap_or(0).to_string()])
                .args(["--knn-n", &knn_k.map_or(0, |_| x.len()).to_string()])
                .output()
                .map_err(|e| format!("cannot run {}: {e}", r.python))
        });
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "scikit-learn reference failed: {}",
            err.lines().last().unwrap_or("no output")
        ));
    }
    parse_sklearn(&String::from_utf8_lossy(&out.stdout))
}

/// The script's JSON lines as one row.
fn parse_sklearn(stdout: &str) -> Result<SklearnRow, String> {
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let op = |name: &str| lines.iter().find(|v| v["op"] == name);
    let num = |name: &str, field: &str| {
        op(name)
            .and_then(|v| v[field].as_f64())
            .ok_or_else(|| format!("scikit-learn printed no {name}.{field}"))
    };
    let env = op("env").ok_or("scikit-learn printed no environment line")?;
    Ok(SklearnRow {
        version: env["sklearn"].as_str().unwrap_or("?").to_string(),
        blas: env["blas"].to_string(),
        lloyd_s_per_iter: num("lloyd", "s_per_iter")?,
        elkan_s_per_iter: num("elkan", "s_per_iter").ok(),
        inertia: num("lloyd", "inertia")?,
        knn_brute_s: num("knn_brute", "s").ok(),
    })
}

/// The docs/BENCHMARKS.md tables: the scale table, then roadwork against scikit-learn.
pub fn markdown(rows: &[MineBenchRow]) -> String {
    let mut s = String::from(
        "| n × dim | kNN graph (k) | method | recall@10 | k-means k | Lloyd s/iter | mini-batch s/step (batch) | near-dup s (pairs) | pHash s (pairs) | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} × {} | {:.1} s ({}) | {} | {:.3} | {} | {:.3} | {:.3} ({}) | {:.2} ({}) | {:.2} ({}) | {} |\n",
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
    s.push_str(
        "\n| n × dim, k | engine | Lloyd s/iter | reference | reference lloyd (elkan) | speed-up | inertia (reference) | kNN graph s | reference brute s | speed-up |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        match &r.sklearn {
            Ok(sk) => {
                let knn = match sk.knn_brute_s {
                    Some(b) => format!("{b:.2} | {:.2}×", b / r.knn_s),
                    None => "– (without --exact) | –".into(),
                };
                s.push_str(&format!(
                    "| {} × {}, {} | {} | {:.4} | {} | {:.4} ({}) | {:.2}× | {:.4e} ({:.4e}) | {:.2} | {knn} |\n",
                    r.n,
                    r.dim,
                    r.kmeans_k,
                    r.engine,
                    r.lloyd_s_per_iter,
                    sk.version,
                    sk.lloyd_s_per_iter,
                    sk.elkan_s_per_iter
                        .map_or("–".into(), |e| format!("{e:.4}")),
                    sk.lloyd_s_per_iter / r.lloyd_s_per_iter,
                    r.lloyd_inertia,
                    sk.inertia,
                    r.knn_s,
                ));
            }
            Err(e) => s.push_str(&format!(
                "| {} × {}, {} | {} | {:.4} | skipped: {e} | – | – | {:.4e} | {:.2} | – | – |\n",
                r.n, r.dim, r.kmeans_k, r.engine, r.lloyd_s_per_iter, r.lloyd_inertia, r.knn_s
            )),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use crate::mine::Compute;

    #[test]
    fn the_scikit_learn_lines_become_one_row_and_missing_cases_are_errors() {
        let out = r#"{"op": "env", "sklearn": "1.9.1", "numpy": "2.4.6", "blas": [{"internal_api": "openblas"}]}
not json
{"op": "lloyd", "s_per_iter": 0.25, "iterations": 3, "inertia": 123.5}
{"op": "elkan", "s_per_iter": 0.5, "iterations": 3, "inertia": 123.5}
{"op": "knn_brute", "n": 100, "k": 20, "s": 4.0}"#;
        let r = parse_sklearn(out).unwrap();
        assert_eq!(r.version, "1.9.1");
        assert!(r.blas.contains("openblas"));
        assert_eq!(
            (r.lloyd_s_per_iter, r.elkan_s_per_iter, r.inertia),
            (0.25, Some(0.5), 123.5)
        );
        assert_eq!(r.knn_brute_s, Some(4.0));
        let no_knn: String = out.lines().take(4).collect::<Vec<_>>().join("\n");
        assert_eq!(parse_sklearn(&no_knn).unwrap().knn_brute_s, None);
        let no_lloyd: String = out
            .lines()
            .filter(|l| !l.contains("\"lloyd\""))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(parse_sklearn(&no_lloyd).unwrap_err().contains("lloyd"));
    }

    #[test]
    fn a_small_exact_run_reports_the_exact_graph_and_why_scikit_learn_is_missing() {
        let plan = MinePlan {
            n: 1500,
            dim: 16,
            kmeans_k: 8,
            seed: 1,
            exact: true,
            sklearn: Some(SklearnRef {
                python: "python3".into(),
                script: "/nonexistent/sklearn_mine.py".into(),
            }),
        };
        let r = run(&Compute::<Cpu>::host(), &plan).unwrap();
        assert_eq!(r.knn_method, "exact");
        assert!(r.recall_at_10 > 0.999, "{}", r.recall_at_10);
        assert!(r.lloyd_inertia > 0.0 && r.lloyd_s_per_iter > 0.0);
        let err = r.sklearn.as_ref().unwrap_err();
        assert!(err.contains("not found"), "{err}");
        let json = serde_json::to_value(&r).unwrap();
        assert!(
            json["sklearn"]["skipped"]
                .as_str()
                .unwrap()
                .contains("not found")
        );
        let md = markdown(&[r]);
        assert!(md.contains("skipped: ") && md.contains("| 1500 × 16, 8 | host gemm"));
    }
}
