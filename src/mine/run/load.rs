//! The mining stage's `load` phase: one embeddings table joined with what the store knows about
//! each row. Async store reads only; no analysis.

use std::collections::HashMap;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{Array, TimestampMicrosecondArray};
use chrono::{Duration, Utc};

use super::MineConfig;
use crate::mine::{MineError, Vectors};
use crate::store::schema::{col, tables};
use crate::store::{Store, VECTOR, collect_vectors, embeddings_table};

/// Everything mining reads, joined by row.
pub(super) struct Inputs {
    pub ids: Vec<String>,
    pub x: Vectors,
    pub skipped_non_finite: usize,
    pub source: Vec<String>,
    pub phash: Vec<Option<u64>>,
    pub label: Vec<Option<u8>>,
    /// From `head_scores` of the chosen head.
    pub split: Vec<Option<String>>,
    pub prob: Vec<Option<f64>>,
    pub oof: Vec<Option<f64>>,
    pub mi: Vec<Option<f64>>,
    pub tier_gap: Vec<Option<f64>>,
    /// Champion vs shadow challenger, see [`crate::mine::hardness::shadow_signal`].
    pub shadow: Vec<Option<f64>>,
    /// Seen in validator traffic within the recent window.
    pub recent_traffic: Vec<bool>,
    pub traffic: Vec<bool>,
    /// Image-quality issues found at ingest (`image_quality.issues`).
    pub quality: Vec<Vec<String>>,
}

impl Inputs {
    /// Sets each row belongs to, for leakage and drift.
    pub fn sets(&self, i: usize) -> Vec<String> {
        let mut s = Vec::new();
        match self.split[i].as_deref() {
            Some("train") if self.source[i] == "synthetic" => s.push("synthetic".to_string()),
            Some(sp @ ("train" | "calib" | "eval" | "eval_synthetic")) => s.push(sp.to_string()),
            _ if self.source[i] == "synthetic" => s.push("synthetic".into()),
            _ if self.label[i].is_some() => s.push("labelled".into()),
            _ => {}
        }
        if self.traffic[i] {
            s.push("traffic".into());
        }
        if s.is_empty() {
            s.push("unlabelled".into());
        }
        s
    }
}

/// Reads one embeddings table and joins sample facts, effective labels, the prediction log and
/// the head's scores onto its rows (the `load` phase: store reads only).
pub(super) async fn load(
    store: &Store,
    cfg: &MineConfig,
    model: &str,
    head: Option<&str>,
) -> Result<Inputs, MineError> {
    let table = embeddings_table(model);
    let batches = store
        .scan(&table, Some(&[col::SAMPLE_ID, VECTOR]), None, None)
        .await?;
    let rows = collect_vectors(&table, &batches)?;
    let (ids, data, dim, skipped) = (rows.ids, rows.data, rows.dim, rows.non_finite.len());
    if skipped > 0 {
        tracing::warn!(skipped, table, "vectors with non-finite values skipped");
    }
    if ids.is_empty() {
        return Err(MineError::Empty(format!("{table} has no finite vectors")));
    }
    let x = Vectors::new(data, dim)?;
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let n = ids.len();
    let mut inp = Inputs {
        x,
        skipped_non_finite: skipped,
        source: vec![String::new(); n],
        phash: vec![None; n],
        label: vec![None; n],
        split: vec![None; n],
        prob: vec![None; n],
        oof: vec![None; n],
        mi: vec![None; n],
        tier_gap: vec![None; n],
        shadow: vec![None; n],
        recent_traffic: vec![false; n],
        traffic: vec![false; n],
        quality: vec![Vec::new(); n],
        ids: Vec::new(),
    };
    let recent = Utc::now() - Duration::days(cfg.drift.recent_days as i64);
    for b in store
        .scan(
            tables::SAMPLES,
            Some(&[col::SAMPLE_ID, col::SOURCE, col::PHASH, col::RECEIVED_AT]),
            None,
            None,
        )
        .await?
    {
        let (Some(id), Some(src), Some(ph), Some(at)) = (
            b.column_by_name(col::SAMPLE_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::SOURCE)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::PHASH)
                .and_then(|c| c.as_primitive_opt::<UInt64Type>()),
            b.column_by_name(col::RECEIVED_AT)
                .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>()),
        ) else {
            return Err(MineError::Shape("samples columns missing".into()));
        };
        for i in 0..b.num_rows() {
            if let Some(&r) = index.get(id.value(i)) {
                inp.source[r] = src.value(i).to_string();
                inp.phash[r] = (!ph.is_null(i)).then(|| ph.value(i));
                if src.value(i) == "validator" {
                    inp.traffic[r] = true;
                    let ts = chrono::DateTime::from_timestamp_micros(at.value(i));
                    inp.recent_traffic[r] = ts.is_some_and(|t| t >= recent);
                }
            }
        }
    }
    for q in store.image_quality().await? {
        if let Some(&r) = index.get(q.sample_id.as_str()) {
            inp.quality[r] = q.issues;
        }
    }
    for l in store.effective_labels().await? {
        if let Some(&r) = index.get(l.sample_id.to_string().as_str()) {
            inp.label[r] = Some(l.label.as_u8());
        }
    }
    let mut gaps: HashMap<usize, (f64, usize)> = HashMap::new();
    for p in store.predictions().await? {
        if let Some(&r) = index.get(p.sample_id.to_string().as_str()) {
            inp.traffic[r] = true;
            if p.ts >= recent {
                inp.recent_traffic[r] = true;
            }
            if let (Some(a), Some(b)) = (p.score_tier1, p.score_tier2)
                && a.is_finite()
                && b.is_finite()
            {
                let e = gaps.entry(r).or_default();
                e.0 += (a - b).abs() as f64;
                e.1 += 1;
            }
        }
    }
    for (r, (s, c)) in gaps {
        inp.tier_gap[r] = Some(s / c as f64);
    }
    let mut shadow: HashMap<usize, (f64, usize)> = HashMap::new();
    for row in store.shadow_scores(None, None).await? {
        if let Some(&r) = index.get(row.sample_id.as_str()) {
            let e = shadow.entry(r).or_default();
            e.0 += crate::mine::hardness::shadow_signal(row.champion_score, row.challenger_score);
            e.1 += 1;
        }
    }
    for (r, (s, c)) in shadow {
        inp.shadow[r] = Some(s / c as f64);
    }
    if let Some(v) = head {
        for h in store.head_scores(v).await? {
            if let Some(&r) = index.get(h.sample_id.to_string().as_str()) {
                let fin = |x: f32| (x.is_finite()).then_some(x as f64);
                inp.split[r] = Some(h.split.clone());
                inp.prob[r] = fin(h.prob);
                inp.oof[r] = h.oof_prob.and_then(fin);
                inp.mi[r] = fin(h.ensemble_mi);
            }
        }
    }
    inp.ids = ids;
    Ok(inp)
}
