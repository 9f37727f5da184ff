//! The training data: stored features joined with effective labels and sample facts, read at a
//! snapshot, and split deterministically by sample id.
//!
//! Splits are a pure function of the sample id (its sha256), so a sample never moves between train,
//! calibration and eval as the store grows: the eval set is frozen per sample, and no eval image
//! ever trains a head. Synthetic samples only ever train (calibration and evaluation are on real
//! data, the distribution validators send).

use std::collections::{BTreeMap, HashMap};

use arrow_array::RecordBatch;
use arrow_array::cast::AsArray;
use serde::{Deserialize, Serialize};

use super::TrainError;
use crate::store::rows::from_batch;
use crate::store::schema::{col, tables};
use crate::store::{
    LabelRow, RunId, RunKind, RunRow, RunStatus, SampleId, SampleSource, SnapshotName, Store,
    VECTOR, collect_vectors, effective_labels, embeddings_table,
};

/// Shares of real samples held out of training (`[train.split]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// Share of real samples in the frozen eval set.
    pub eval_share: f64,
    /// Share of real samples used only to fit the temperature.
    pub calib_share: f64,
    /// Tag keys (`key=value` in `samples.tags`) reported as evaluation slices, besides source and era.
    pub slice_tags: Vec<String>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            eval_share: 0.15,
            calib_share: 0.10,
            slice_tags: vec![
                "daytime".into(),
                "weather".into(),
                "scene_environment".into(),
            ],
        }
    }
}

/// Which part of the data a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Calib,
    Eval,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Calib => "calib",
            Split::Eval => "eval",
        }
    }
}

/// A uniform number in [0,1) from 8 bytes of the sample id (hex) starting at byte `at`.
fn unit(id: &SampleId, at: usize) -> f64 {
    let hex = &id.as_str()[at * 2..at * 2 + 16];
    u64::from_str_radix(hex, 16).unwrap_or(0) as f64 / 2f64.powi(64)
}

/// The split of a sample: synthetic samples always train; real ones by their id.
pub fn split_of(id: &SampleId, source: &str, cfg: &SplitConfig) -> Split {
    if source == SampleSource::Synthetic.as_str() {
        return Split::Train;
    }
    let u = unit(id, 0);
    if u < cfg.eval_share {
        Split::Eval
    } else if u < cfg.eval_share + cfg.calib_share {
        Split::Calib
    } else {
        Split::Train
    }
}

/// The cross-validation fold of a training sample (independent of its split draw).
pub fn fold_of(id: &SampleId, folds: usize) -> usize {
    ((unit(id, 8) * folds as f64) as usize).min(folds.saturating_sub(1))
}

/// Labelled, embedded samples in one contiguous feature matrix.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub ids: Vec<SampleId>,
    /// Row-major `len × dim`.
    pub x: Vec<f32>,
    pub dim: usize,
    pub y: Vec<u8>,
    pub split: Vec<Split>,
    /// `key=value` slice memberships per sample (source, era, configured tags).
    pub slices: Vec<Vec<String>>,
    /// Embedded samples without an effective label (validator traffic, mostly): scored by the
    /// head and the ensemble for mining, never trained on. Row-major like `x`.
    pub pool_ids: Vec<SampleId>,
    pub pool_x: Vec<f32>,
}

/// The rows of one split, as a sub-dataset.
pub struct Part {
    pub x: Vec<f32>,
    pub y: Vec<u8>,
    /// Indices into the parent dataset.
    pub rows: Vec<usize>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Features of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows selected by `keep`.
    pub fn part(&self, keep: impl Fn(usize) -> bool) -> Part {
        let rows: Vec<usize> = (0..self.len()).filter(|&i| keep(i)).collect();
        let mut x = Vec::with_capacity(rows.len() * self.dim);
        for &i in &rows {
            x.extend_from_slice(self.row(i));
        }
        Part {
            y: rows.iter().map(|&i| self.y[i]).collect(),
            x,
            rows,
        }
    }

    /// Samples per (split, label).
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (s, y) in self.split.iter().zip(&self.y) {
            *out.entry(format!("{}/{}", s.as_str(), y)).or_default() += 1;
        }
        out
    }
}

/// Reads a table now or at a snapshot.
async fn read(
    store: &Store,
    at: Option<&SnapshotName>,
    table: &str,
    cols: &[&str],
) -> Result<Vec<RecordBatch>, TrainError> {
    Ok(match at {
        Some(s) => store.scan_at(s, table, Some(cols), None).await?,
        None => store.scan(table, Some(cols), None, None).await?,
    })
}

/// Every vector of `embedding_model` (at the snapshot), with its dimension.
pub async fn read_vectors(
    store: &Store,
    at: Option<&SnapshotName>,
    embedding_model: &str,
) -> Result<(Vec<SampleId>, Vec<f32>, usize), TrainError> {
    let table = embeddings_table(embedding_model);
    if !store.table_names().await?.contains(&table) {
        return Err(TrainError::NoEmbeddings {
            model: embedding_model.to_string(),
            available: store.embedding_models().await?,
        });
    }
    let batches = read(store, at, &table, &[col::SAMPLE_ID, VECTOR])
        .await
        .map_err(|e| match e {
            TrainError::Store(crate::store::StoreError::SnapshotNotFound { name, .. }) => {
                TrainError::SnapshotLacksModel {
                    snapshot: name,
                    model: embedding_model.to_string(),
                }
            }
            other => other,
        })?;
    let rows = collect_vectors(&table, &batches)?;
    if let Some((sample_id, index)) = rows.non_finite.into_iter().next() {
        return Err(TrainError::NonFinite { sample_id, index });
    }
    // Rows in sample-id order, not storage order: the same snapshot gives the same training run
    // (and weights) however its fragments happen to be laid out (compaction, crash and resume).
    let mut order: Vec<usize> = (0..rows.ids.len()).collect();
    order.sort_by(|&a, &b| rows.ids[a].cmp(&rows.ids[b]));
    let (mut ids, mut x) = (Vec::with_capacity(rows.ids.len()), Vec::new());
    for i in order {
        let Ok(sid) = rows.ids[i].parse::<SampleId>() else {
            continue;
        };
        ids.push(sid);
        x.extend_from_slice(&rows.data[i * rows.dim..(i + 1) * rows.dim]);
    }
    let dim = rows.dim;
    Ok((ids, x, dim))
}

/// Source, era and tags of every sample (at the snapshot).
async fn read_facts(
    store: &Store,
    at: Option<&SnapshotName>,
) -> Result<HashMap<String, (String, Vec<String>)>, TrainError> {
    let batches = read(
        store,
        at,
        tables::SAMPLES,
        &[col::SAMPLE_ID, col::SOURCE, col::ERA, col::TAGS],
    )
    .await?;
    let mut out = HashMap::new();
    for b in &batches {
        let cols = (
            b.column_by_name(col::SAMPLE_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::SOURCE)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::ERA)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::TAGS)
                .and_then(|c| c.as_list_opt::<i32>()),
        );
        let (Some(id), Some(source), Some(era), Some(tags)) = cols else {
            return Err(TrainError::BadTable {
                table: tables::SAMPLES.into(),
                why: "sample columns missing or mistyped".into(),
            });
        };
        for i in 0..b.num_rows() {
            let t = tags.value(i);
            let mut slices = vec![
                format!("source={}", source.value(i)),
                format!("era={}", era.value(i)),
            ];
            if let Some(t) = t.as_string_opt::<i32>() {
                slices.extend(t.iter().flatten().map(str::to_string));
            }
            out.insert(
                id.value(i).to_string(),
                (source.value(i).to_string(), slices),
            );
        }
    }
    Ok(out)
}

/// The mining run whose clusters become evaluation slices for data read at `at`: the latest
/// successful one in the ledger as of the snapshot (now when `None`). A head records it in its card
/// so that later mining runs never change how it is judged.
pub async fn slice_run(
    store: &Store,
    at: Option<&SnapshotName>,
) -> Result<Option<RunId>, TrainError> {
    let batches = read(
        store,
        at,
        tables::RUNS,
        &crate::store::schema::RUNS_BASE_COLUMNS,
    )
    .await?;
    let mut latest: Option<RunRow> = None;
    for b in &batches {
        for r in from_batch::<RunRow>(b).map_err(|e| TrainError::BadTable {
            table: tables::RUNS.into(),
            why: e.to_string(),
        })? {
            if r.kind == RunKind::Mine
                && r.status == RunStatus::Ok
                && latest.as_ref().is_none_or(|l| r.started_at > l.started_at)
            {
                latest = Some(r);
            }
        }
    }
    Ok(latest.map(|r| r.run_id))
}

/// The cluster of every sample in mining run `run` (empty without one), read at `at`, so
/// evaluations report per-cluster slices.
async fn clusters_of(
    store: &Store,
    at: Option<&SnapshotName>,
    run: Option<&RunId>,
) -> Result<HashMap<String, u32>, TrainError> {
    let Some(run) = run else {
        return Ok(HashMap::new());
    };
    let mut out = HashMap::new();
    for b in read(
        store,
        at,
        tables::MINE_SCORES,
        &[col::RUN_ID, col::SAMPLE_ID, col::CLUSTER],
    )
    .await?
    {
        let (Some(r), Some(id), Some(c)) = (
            b.column_by_name(col::RUN_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::SAMPLE_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(col::CLUSTER)
                .and_then(|c| c.as_primitive_opt::<arrow_array::types::UInt32Type>()),
        ) else {
            return Err(TrainError::BadTable {
                table: tables::MINE_SCORES.into(),
                why: "run_id, sample_id or cluster missing or mistyped".into(),
            });
        };
        for i in 0..b.num_rows() {
            if r.value(i) == run.as_str() {
                out.insert(id.value(i).to_string(), c.value(i));
            }
        }
    }
    Ok(out)
}

/// Joins vectors, effective labels and sample facts at `at` (now when `None`); evaluation slices
/// include the clusters of mining run `slices_from`.
pub async fn load(
    store: &Store,
    at: Option<&SnapshotName>,
    embedding_model: &str,
    cfg: &SplitConfig,
    slices_from: Option<&RunId>,
) -> Result<Dataset, TrainError> {
    let (ids, x, dim) = read_vectors(store, at, embedding_model).await?;
    let mut label_rows = Vec::new();
    for b in read(
        store,
        at,
        tables::LABELS,
        &[
            col::LABEL_ID,
            col::SAMPLE_ID,
            col::LABEL,
            col::SOURCE,
            col::CONFIDENCE,
            col::AUTHOR,
            col::TS,
        ],
    )
    .await?
    {
        label_rows.extend(
            from_batch::<LabelRow>(&b).map_err(|e| TrainError::BadTable {
                table: tables::LABELS.into(),
                why: e.to_string(),
            })?,
        );
    }
    let labels: HashMap<String, u8> = effective_labels(&label_rows)
        .into_iter()
        .map(|l| (l.sample_id.to_string(), l.label.as_u8()))
        .collect();
    let facts = read_facts(store, at).await?;
    let clusters = clusters_of(store, at, slices_from).await?;
    let mut ds = Dataset {
        dim,
        ..Default::default()
    };
    let keep_tag = |s: &String| {
        s.starts_with("source=")
            || s.starts_with("era=")
            || s.split_once('=')
                .is_some_and(|(k, _)| cfg.slice_tags.iter().any(|t| t == k))
    };
    for (i, id) in ids.into_iter().enumerate() {
        let Some(&y) = labels.get(id.as_str()) else {
            ds.pool_x.extend_from_slice(&x[i * dim..(i + 1) * dim]);
            ds.pool_ids.push(id);
            continue;
        };
        let (source, slices) = facts
            .get(id.as_str())
            .cloned()
            .unwrap_or_else(|| ("unknown".into(), vec!["source=unknown".into()]));
        ds.split.push(split_of(&id, &source, cfg));
        let mut kept: Vec<String> = slices.into_iter().filter(|s| keep_tag(s)).collect();
        if let Some(c) = clusters.get(id.as_str()) {
            kept.push(format!("cluster={c}"));
        }
        ds.slices.push(kept);
        ds.x.extend_from_slice(&x[i * dim..(i + 1) * dim]);
        ds.y.push(y);
        ds.ids.push(id);
    }
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_stable_roughly_proportional_and_synthetic_only_trains() {
        let cfg = SplitConfig::default();
        let mut counts = HashMap::new();
        for i in 0..4000u32 {
            let id = SampleId::of_bytes(&i.to_le_bytes());
            let s = split_of(&id, "dataset", &cfg);
            assert_eq!(s, split_of(&id, "dataset", &cfg));
            assert_eq!(split_of(&id, "synthetic", &cfg), Split::Train);
            *counts.entry(s).or_insert(0usize) += 1;
        }
        let share = |s| counts[&s] as f64 / 4000.0;
        assert!((share(Split::Eval) - 0.15).abs() < 0.03);
        assert!((share(Split::Calib) - 0.10).abs() < 0.03);
        let folds: Vec<usize> = (0..1000u32)
            .map(|i| fold_of(&SampleId::of_bytes(&i.to_le_bytes()), 5))
            .collect();
        for f in 0..5 {
            let n = folds.iter().filter(|&&x| x == f).count();
            assert!((150..250).contains(&n), "fold {f}: {n}");
        }
    }
}
