//! The mining stage's `compute` phase: every analysis over the loaded rows, as one pure, blocking
//! function of its inputs (run on a blocking thread by [`super::Miner::run`]). It returns the rows
//! to write and the report; it touches neither the store nor the file system.

use std::collections::HashMap;

use burn::prelude::Backend;

use super::load::Inputs;
use super::{HardRow, MineConfig, MineSummary};
use crate::mine::dedup::{
    DuplicateKind, DuplicatePair, Groups, leakage, near_pairs, near_threshold, phash_pairs,
};
use crate::mine::density::{outliers, typicality};
use crate::mine::drift::{cluster_drift, mmd_test, under_covered};
use crate::mine::hardness::{HardCase, Signals, score};
use crate::mine::kmeans::kmeans;
use crate::mine::knn::{knn_graph, recall_at};
use crate::mine::label_issues::find_binary_label_issues;
use crate::mine::{Compute, MineError};
use crate::store::{DuplicateRow, MineClusterRow, MineScoreRow, RunId};

/// What the compute phase produced: the rows of each output table and the report.
pub(super) struct Analysis {
    pub scores: Vec<MineScoreRow>,
    pub clusters: Vec<MineClusterRow>,
    pub duplicates: Vec<DuplicateRow>,
    pub summary: MineSummary,
}

/// Runs every analysis on `inp`. `head_version`: whose scores `inp` carries (none: label issues
/// and uncertainty are skipped with a note).
pub(super) fn analyse<B: Backend>(
    c: &Compute<B>,
    inp: &Inputs,
    cfg: &MineConfig,
    run_id: &RunId,
    model: &str,
    head_version: Option<&str>,
) -> Result<Analysis, MineError> {
    let n = inp.ids.len();
    let mut notes = Vec::new();
    if head_version.is_none() {
        notes.push("no head scores: uncertainty, ensemble and label issues skipped".into());
    }
    // Neighbourhoods.
    let graph = knn_graph(c, &inp.x, &cfg.knn)?;
    let recall = if graph.method == "exact" {
        1.0
    } else {
        recall_at(c, &inp.x, &graph, 10, cfg.knn.recall_sample, cfg.knn.seed)?
    };
    // Clusters on the metric's geometry.
    let k = cfg
        .clusters
        .unwrap_or(((n as f64 / 2.0).sqrt().round() as usize).clamp(2, 256))
        .min(n);
    let xm = inp.x.for_metric(cfg.knn.metric);
    let km = kmeans(c, &xm, k, &cfg.kmeans)?;
    // Duplicates and leakage.
    let sets: Vec<Vec<String>> = (0..n).map(|i| inp.sets(i)).collect();
    let hashes: Vec<(usize, u64)> = inp
        .phash
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.map(|h| (i, h)))
        .collect();
    let mut pairs: Vec<DuplicatePair> = phash_pairs(
        &hashes.iter().map(|h| h.1).collect::<Vec<_>>(),
        cfg.phash_max_hamming,
    )
    .into_iter()
    .map(|mut p| {
        (p.a, p.b) = (hashes[p.a].0, hashes[p.b].0);
        p
    })
    .collect();
    let thr = near_threshold(&graph, cfg.near_dup_factor);
    if let Some(t) = thr {
        pairs.extend(near_pairs(&graph, t));
    }
    let leak = leakage(&pairs, &sets);
    let mut groups = Groups::new(n);
    pairs.iter().for_each(|p| groups.union(p.a, p.b));
    let group = groups.labels();
    let mut dup_counts: HashMap<String, usize> = HashMap::new();
    for p in &pairs {
        *dup_counts.entry(p.kind.as_str().into()).or_default() += 1;
    }
    dup_counts.insert(
        DuplicateKind::Exact.as_str().into(),
        leak.exact_cross_set.len(),
    );
    // Density.
    let out = outliers(&graph, cfg.outlier_iqr_factor);
    let typ = typicality(
        c,
        &inp.x,
        cfg.knn.metric,
        &km.assignments,
        cfg.select.typicality_k,
        2048,
        cfg.kmeans.seed,
    )?;
    // Label issues on out-of-fold probabilities.
    let with_oof: Vec<usize> = (0..n)
        .filter(|&i| inp.oof[i].is_some() && inp.label[i].is_some())
        .collect();
    let mut issue_quality: HashMap<usize, f64> = HashMap::new();
    let label_issues = if with_oof.is_empty() {
        if head_version.is_some() {
            notes.push("the head has no out-of-fold scores: label issues skipped".into());
        }
        None
    } else {
        let p: Vec<f64> = with_oof.iter().filter_map(|&i| inp.oof[i]).collect();
        let y: Vec<u8> = with_oof.iter().filter_map(|&i| inp.label[i]).collect();
        match find_binary_label_issues(&p, &y) {
            Ok(li) => {
                for (j, &i) in with_oof.iter().enumerate() {
                    if li.is_issue[j] {
                        issue_quality.insert(i, li.label_quality[j]);
                    }
                }
                Some(li.count())
            }
            Err(MineError::OneClass) => {
                notes.push("only one class labelled: label issues skipped".into());
                None
            }
            Err(e) => return Err(e),
        }
    };
    // Hardness.
    let hard: Vec<HardCase> = (0..n)
        .map(|i| {
            let mut h = score(
                &Signals {
                    prob: inp.prob[i],
                    ensemble_mi: inp.mi[i],
                    tier_gap: inp.tier_gap[i],
                    shadow: inp.shadow[i],
                    label_issue: issue_quality.get(&i).copied(),
                    outlier: out.is_outlier[i].then_some((out.knn_mean[i] as f64, out.fence)),
                },
                cfg.reason_min,
            );
            // Image-quality issues are reasons to look, not evidence the model is wrong: they
            // are listed without raising the hardness.
            if !inp.quality[i].is_empty() {
                h.reasons
                    .push(format!("quality: {}", inp.quality[i].join(", ")));
            }
            h
        })
        .collect();
    // Drift.
    let train_rows: Vec<usize> = (0..n)
        .filter(|&i| sets[i].iter().any(|s| s == "train" || s == "synthetic"))
        .collect();
    let train_rows = if train_rows.is_empty() {
        (0..n).filter(|&i| inp.label[i].is_some()).collect()
    } else {
        train_rows
    };
    let traffic_rows: Vec<usize> = (0..n).filter(|&i| inp.recent_traffic[i]).collect();
    let drift = cluster_drift(&km.assignments, k, &train_rows, &traffic_rows, &cfg.drift);
    let mmd = if train_rows.len() >= 2 && traffic_rows.len() >= 2 {
        Some(mmd_test(c, &xm, &train_rows, &traffic_rows, &cfg.drift)?)
    } else {
        notes.push(format!(
            "drift test skipped: {} training and {} recent traffic samples",
            train_rows.len(),
            traffic_rows.len()
        ));
        None
    };
    // Cluster rows.
    let mut exemplar = vec![usize::MAX; k];
    for i in 0..n {
        let a = km.assignments[i] as usize;
        if exemplar[a] == usize::MAX || km.sq_distances[i] < km.sq_distances[exemplar[a]] {
            exemplar[a] = i;
        }
    }
    let sizes = km.sizes();
    let cluster_rows: Vec<MineClusterRow> = (0..k)
        .map(|j| {
            let members = (0..n).filter(|&i| km.assignments[i] as usize == j);
            let (mut nl, mut pos, mut scored, mut wrong) = (0u32, 0u32, 0u32, 0u32);
            for i in members {
                if let Some(y) = inp.label[i] {
                    nl += 1;
                    pos += u32::from(y == 1);
                    if let Some(p) = inp.prob[i] {
                        scored += 1;
                        wrong += u32::from((p > 0.5) != (y == 1));
                    }
                }
            }
            let d = &drift[j];
            MineClusterRow {
                run_id: run_id.to_string(),
                cluster: j as u32,
                size: sizes[j] as u32,
                n_labelled: nl,
                positive_share: (nl > 0).then(|| pos as f32 / nl as f32),
                error_rate: (scored > 0).then(|| wrong as f32 / scored as f32),
                train_share: d.train_share as f32,
                traffic_share: d.traffic_share as f32,
                drift_ratio: d.ratio as f32,
                drift_z: d.z as f32,
                under_covered: d.under_covered,
                exemplar: inp.ids.get(exemplar[j]).cloned().unwrap_or_default(),
            }
        })
        .collect();
    // Write.
    let score_rows: Vec<MineScoreRow> = (0..n)
        .map(|i| MineScoreRow {
            run_id: run_id.to_string(),
            sample_id: inp.ids[i].clone(),
            cluster: km.assignments[i],
            hardness: hard[i].hardness as f32,
            reasons: hard[i].reasons.join("; "),
            prob: inp.prob[i].map(|p| p as f32),
            label_issue: issue_quality.contains_key(&i),
            outlier: out.is_outlier[i],
            knn_mean: if out.knn_mean[i].is_finite() {
                out.knn_mean[i]
            } else {
                -1.0
            },
            typicality: typ[i],
            dup_group: group[i].map(|g| inp.ids[g].clone()),
            sets: sets[i].join(","),
        })
        .collect();
    let dup_rows: Vec<DuplicateRow> = pairs
        .iter()
        .map(|p| DuplicateRow {
            run_id: run_id.to_string(),
            sample_a: inp.ids[p.a].clone(),
            sample_b: inp.ids[p.b].clone(),
            kind: p.kind.as_str().into(),
            distance: p.distance as f32,
            sets_a: sets[p.a].join(","),
            sets_b: sets[p.b].join(","),
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        hard[b]
            .hardness
            .total_cmp(&hard[a].hardness)
            .then(a.cmp(&b))
    });
    let top_hard: Vec<HardRow> = order
        .iter()
        .take(cfg.top)
        .filter(|&&i| hard[i].hardness > 0.0)
        .map(|&i| HardRow {
            sample_id: inp.ids[i].clone(),
            hardness: hard[i].hardness,
            reasons: hard[i].reasons.clone(),
            label: inp.label[i],
            prob: inp.prob[i],
        })
        .collect();
    let summary = MineSummary {
        run_id: run_id.to_string(),
        embedding_model: model.to_string(),
        head_version: head_version.map(str::to_string),
        n,
        skipped_non_finite: inp.skipped_non_finite,
        knn_method: graph.method.clone(),
        knn_recall_at_10: recall,
        clusters: k,
        duplicates: dup_counts,
        near_threshold: thr,
        leakage: leak,
        label_issues,
        outliers: out.is_outlier.iter().filter(|&&b| b).count(),
        drift: mmd,
        under_covered: under_covered(&drift).into_iter().cloned().collect(),
        top_hard,
        notes,
        report: None,
    };
    Ok(Analysis {
        scores: score_rows,
        clusters: cluster_rows,
        duplicates: dup_rows,
        summary,
    })
}
