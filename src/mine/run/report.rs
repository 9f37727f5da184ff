//! The mining stage's files for people and labelling tools: the Markdown report of a run and a
//! selection as CSV.

use std::path::Path;

use super::MineSummary;
use crate::mine::MineError;
use crate::store::{MineClusterRow, SelectionRow};

/// Writes a selection as CSV for labelling tools: `rank,sample_id,score,strategy,reasons`.
pub fn write_selection_csv(rows: &[SelectionRow], path: &Path) -> Result<(), MineError> {
    let io = |e: std::io::Error| MineError::Config(format!("cannot write {}: {e}", path.display()));
    let mut w = csv::Writer::from_path(path).map_err(|e| MineError::Config(e.to_string()))?;
    w.write_record(["rank", "sample_id", "score", "strategy", "reasons"])
        .map_err(|e| MineError::Config(e.to_string()))?;
    for r in rows {
        w.write_record([
            r.rank.to_string(),
            r.sample_id.clone(),
            format!("{:.6}", r.score),
            r.strategy.clone(),
            r.reasons.clone(),
        ])
        .map_err(|e| MineError::Config(e.to_string()))?;
    }
    w.flush().map_err(io)
}

pub(super) fn markdown_report(
    s: &MineSummary,
    clusters: &[MineClusterRow],
    _ids: &[String],
) -> String {
    let mut r = format!(
        "# Mining run {}\n\n- embeddings: `{}`\n- head: {}\n- samples: {} ({} skipped: non-finite)\n- kNN graph: {} (recall@10 {:.3})\n- clusters: {}\n- outliers: {}\n- label issues: {}\n",
        s.run_id,
        s.embedding_model,
        s.head_version.as_deref().unwrap_or("none"),
        s.n,
        s.skipped_non_finite,
        s.knn_method,
        s.knn_recall_at_10,
        s.clusters,
        s.outliers,
        s.label_issues.map_or("skipped".into(), |v| v.to_string()),
    );
    if let Some(m) = &s.drift {
        r.push_str(&format!(
            "- drift (MMD², traffic vs training): {:.5}, p = {:.3} ({} vs {} samples)\n",
            m.mmd2, m.p_value, m.n_a, m.n_b
        ));
    }
    for n in &s.notes {
        r.push_str(&format!("- note: {n}\n"));
    }
    r.push_str("\n## Top hard cases\n\n| sample | hardness | label | prob | reasons |\n|---|---|---|---|---|\n");
    for h in &s.top_hard {
        r.push_str(&format!(
            "| `{}` | {:.3} | {} | {} | {} |\n",
            &h.sample_id[..h.sample_id.len().min(16)],
            h.hardness,
            h.label.map_or("–".into(), |l| l.to_string()),
            h.prob.map_or("–".into(), |p| format!("{p:.3}")),
            h.reasons.join("; ")
        ));
    }
    r.push_str("\n## Under-covered clusters (traffic share ≫ training share)\n\n| cluster | traffic n | traffic share | train share | ratio | z |\n|---|---|---|---|---|---|\n");
    for d in &s.under_covered {
        r.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} | {:.2} | {:.2} |\n",
            d.cluster, d.traffic_n, d.traffic_share, d.train_share, d.ratio, d.z
        ));
    }
    r.push_str("\n## Duplicates and leakage\n\n");
    let mut kinds: Vec<_> = s.duplicates.iter().collect();
    kinds.sort();
    for (k, v) in kinds {
        r.push_str(&format!("- {k}: {v}\n"));
    }
    r.push_str(&format!(
        "- eval/calibration samples with a twin in training or synthetic data: {}\n\n| sets | kind | edges |\n|---|---|---|\n",
        s.leakage.leaked_eval.len()
    ));
    for (k, v) in &s.leakage.counts {
        let mut p = k.splitn(3, '|');
        let (a, b, kind) = (
            p.next().unwrap_or(""),
            p.next().unwrap_or(""),
            p.next().unwrap_or(""),
        );
        r.push_str(&format!("| {a} ↔ {b} | {kind} | {v} |\n"));
    }
    r.push_str("\n## Clusters\n\n| cluster | size | labelled | roadwork share | error rate | train share | traffic share | exemplar |\n|---|---|---|---|---|---|---|---|\n");
    let f = |v: Option<f32>| v.map_or("–".into(), |v| format!("{v:.2}"));
    for c in clusters {
        r.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} | `{}` |\n",
            c.cluster,
            c.size,
            c.n_labelled,
            f(c.positive_share),
            f(c.error_rate),
            c.train_share,
            c.traffic_share,
            &c.exemplar[..c.exemplar.len().min(16)]
        ));
    }
    r
}
