//! The mining stage's tables (layout 3): per-sample scores and per-cluster facts of each mining
//! run, duplicate edges, and named selections for labelling.
//!
//! Rows are keyed by run (or selection name) so a run's results stay queryable next to earlier
//! runs: `SELECT * FROM mine_scores WHERE run_id = '…' ORDER BY hardness DESC`.

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt32Array,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, Utc};

use super::schema::{
    col, column, finish, from_micros, micros, opt_str_array, str_array, tables, ts_array, ts_type,
};
use super::{Merge, Store, StoreError, WriteResult, arrow};

fn f32_col(v: impl Iterator<Item = Option<f32>>) -> ArrayRef {
    Arc::new(Float32Array::from_iter(v))
}

fn u32_col(v: impl Iterator<Item = u32>) -> ArrayRef {
    Arc::new(UInt32Array::from_iter_values(v))
}

fn bool_col(v: impl Iterator<Item = bool>) -> ArrayRef {
    Arc::new(BooleanArray::from_iter(v.map(Some)))
}

/// `mine_scores`: one row per (run, sample).
pub fn mine_scores_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::SCORE_ID, DataType::Utf8, false),
        Field::new(col::RUN_ID, DataType::Utf8, false),
        Field::new(col::SAMPLE_ID, DataType::Utf8, false),
        Field::new(col::CLUSTER, DataType::UInt32, false),
        Field::new(col::HARDNESS, DataType::Float32, false),
        Field::new(col::REASONS, DataType::Utf8, false),
        Field::new(col::PROB, DataType::Float32, true),
        Field::new(col::LABEL_ISSUE, DataType::Boolean, false),
        Field::new(col::OUTLIER, DataType::Boolean, false),
        Field::new(col::KNN_MEAN, DataType::Float32, false),
        Field::new(col::TYPICALITY, DataType::Float32, false),
        Field::new(col::DUP_GROUP, DataType::Utf8, true),
        Field::new(col::SETS, DataType::Utf8, false),
    ]))
}

/// `mine_clusters`: one row per (run, cluster).
pub fn mine_clusters_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::CLUSTER_ID, DataType::Utf8, false),
        Field::new(col::RUN_ID, DataType::Utf8, false),
        Field::new(col::CLUSTER, DataType::UInt32, false),
        Field::new(col::SIZE, DataType::UInt32, false),
        Field::new(col::N_LABELLED, DataType::UInt32, false),
        Field::new(col::POSITIVE_SHARE, DataType::Float32, true),
        Field::new(col::ERROR_RATE, DataType::Float32, true),
        Field::new(col::TRAIN_SHARE, DataType::Float32, false),
        Field::new(col::TRAFFIC_SHARE, DataType::Float32, false),
        Field::new(col::DRIFT_RATIO, DataType::Float32, false),
        Field::new(col::DRIFT_Z, DataType::Float32, false),
        Field::new(col::UNDER_COVERED, DataType::Boolean, false),
        Field::new(col::EXEMPLAR, DataType::Utf8, false),
    ]))
}

/// `duplicates`: one row per (run, edge).
pub fn duplicates_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::PAIR_ID, DataType::Utf8, false),
        Field::new(col::RUN_ID, DataType::Utf8, false),
        Field::new(col::SAMPLE_A, DataType::Utf8, false),
        Field::new(col::SAMPLE_B, DataType::Utf8, false),
        Field::new(col::KIND, DataType::Utf8, false),
        Field::new(col::DISTANCE, DataType::Float32, false),
        Field::new(col::SETS_A, DataType::Utf8, false),
        Field::new(col::SETS_B, DataType::Utf8, false),
    ]))
}

/// `selections`: one row per (selection name, sample).
pub fn selections_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::SELECTION_ROW, DataType::Utf8, false),
        Field::new(col::NAME, DataType::Utf8, false),
        Field::new(col::CREATED_AT, ts_type(), false),
        Field::new(col::SAMPLE_ID, DataType::Utf8, false),
        Field::new(col::RANK, DataType::UInt32, false),
        Field::new(col::SCORE, DataType::Float32, false),
        Field::new(col::STRATEGY, DataType::Utf8, false),
        Field::new(col::REASONS, DataType::Utf8, false),
    ]))
}

/// What one mining run found about one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct MineScoreRow {
    pub run_id: String,
    pub sample_id: String,
    pub cluster: u32,
    pub hardness: f32,
    /// `; `-separated, strongest first (`label-issue (0.93); uncertain (0.61)`).
    pub reasons: String,
    pub prob: Option<f32>,
    pub label_issue: bool,
    pub outlier: bool,
    pub knn_mean: f32,
    pub typicality: f32,
    /// The sample id representing its duplicate group, if it has duplicates.
    pub dup_group: Option<String>,
    /// `,`-separated sets the sample belongs to (`train`, `eval`, `traffic`, …).
    pub sets: String,
}

/// One cluster of a mining run.
#[derive(Debug, Clone, PartialEq)]
pub struct MineClusterRow {
    pub run_id: String,
    pub cluster: u32,
    pub size: u32,
    pub n_labelled: u32,
    /// Share of labelled members labelled roadwork.
    pub positive_share: Option<f32>,
    /// Share of labelled members the champion head gets wrong.
    pub error_rate: Option<f32>,
    pub train_share: f32,
    pub traffic_share: f32,
    pub drift_ratio: f32,
    pub drift_z: f32,
    pub under_covered: bool,
    /// The member nearest the centroid: what the cluster looks like.
    pub exemplar: String,
}

/// One duplicate edge of a mining run.
#[derive(Debug, Clone, PartialEq)]
pub struct DuplicateRow {
    pub run_id: String,
    pub sample_a: String,
    pub sample_b: String,
    /// `exact|re-encoded|near`.
    pub kind: String,
    pub distance: f32,
    pub sets_a: String,
    pub sets_b: String,
}

/// One selected sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectionRow {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub sample_id: String,
    pub rank: u32,
    pub score: f32,
    pub strategy: String,
    pub reasons: String,
}

fn mine_scores_to_batch(rows: &[MineScoreRow]) -> Result<RecordBatch, ArrowError> {
    let ids: Vec<String> = rows
        .iter()
        .map(|r| format!("{}/{}", r.run_id, r.sample_id))
        .collect();
    finish(
        mine_scores_schema(),
        vec![
            str_array(ids.iter().map(String::as_str)),
            str_array(rows.iter().map(|r| r.run_id.as_str())),
            str_array(rows.iter().map(|r| r.sample_id.as_str())),
            u32_col(rows.iter().map(|r| r.cluster)),
            f32_col(rows.iter().map(|r| Some(r.hardness))),
            str_array(rows.iter().map(|r| r.reasons.as_str())),
            f32_col(rows.iter().map(|r| r.prob)),
            bool_col(rows.iter().map(|r| r.label_issue)),
            bool_col(rows.iter().map(|r| r.outlier)),
            f32_col(rows.iter().map(|r| Some(r.knn_mean))),
            f32_col(rows.iter().map(|r| Some(r.typicality))),
            opt_str_array(rows.iter().map(|r| r.dup_group.as_deref())),
            str_array(rows.iter().map(|r| r.sets.as_str())),
        ],
    )
}

fn mine_clusters_to_batch(rows: &[MineClusterRow]) -> Result<RecordBatch, ArrowError> {
    let ids: Vec<String> = rows
        .iter()
        .map(|r| format!("{}/{}", r.run_id, r.cluster))
        .collect();
    finish(
        mine_clusters_schema(),
        vec![
            str_array(ids.iter().map(String::as_str)),
            str_array(rows.iter().map(|r| r.run_id.as_str())),
            u32_col(rows.iter().map(|r| r.cluster)),
            u32_col(rows.iter().map(|r| r.size)),
            u32_col(rows.iter().map(|r| r.n_labelled)),
            f32_col(rows.iter().map(|r| r.positive_share)),
            f32_col(rows.iter().map(|r| r.error_rate)),
            f32_col(rows.iter().map(|r| Some(r.train_share))),
            f32_col(rows.iter().map(|r| Some(r.traffic_share))),
            f32_col(rows.iter().map(|r| Some(r.drift_ratio))),
            f32_col(rows.iter().map(|r| Some(r.drift_z))),
            bool_col(rows.iter().map(|r| r.under_covered)),
            str_array(rows.iter().map(|r| r.exemplar.as_str())),
        ],
    )
}

fn duplicates_to_batch(rows: &[DuplicateRow]) -> Result<RecordBatch, ArrowError> {
    let ids: Vec<String> = rows
        .iter()
        .map(|r| format!("{}/{}/{}", r.run_id, r.sample_a, r.sample_b))
        .collect();
    finish(
        duplicates_schema(),
        vec![
            str_array(ids.iter().map(String::as_str)),
            str_array(rows.iter().map(|r| r.run_id.as_str())),
            str_array(rows.iter().map(|r| r.sample_a.as_str())),
            str_array(rows.iter().map(|r| r.sample_b.as_str())),
            str_array(rows.iter().map(|r| r.kind.as_str())),
            f32_col(rows.iter().map(|r| Some(r.distance))),
            str_array(rows.iter().map(|r| r.sets_a.as_str())),
            str_array(rows.iter().map(|r| r.sets_b.as_str())),
        ],
    )
}

fn selections_to_batch(rows: &[SelectionRow]) -> Result<RecordBatch, ArrowError> {
    let ids: Vec<String> = rows
        .iter()
        .map(|r| format!("{}/{}", r.name, r.sample_id))
        .collect();
    finish(
        selections_schema(),
        vec![
            str_array(ids.iter().map(String::as_str)),
            str_array(rows.iter().map(|r| r.name.as_str())),
            ts_array(rows.iter().map(|r| Some(micros(&r.created_at)))),
            str_array(rows.iter().map(|r| r.sample_id.as_str())),
            u32_col(rows.iter().map(|r| r.rank)),
            f32_col(rows.iter().map(|r| Some(r.score))),
            str_array(rows.iter().map(|r| r.strategy.as_str())),
            str_array(rows.iter().map(|r| r.reasons.as_str())),
        ],
    )
}

fn selections_from_batch(b: &RecordBatch) -> Result<Vec<SelectionRow>, ArrowError> {
    let name = column::<StringArray>(b, col::NAME)?;
    let at = column::<TimestampMicrosecondArray>(b, col::CREATED_AT)?;
    let id = column::<StringArray>(b, col::SAMPLE_ID)?;
    let rank = column::<UInt32Array>(b, col::RANK)?;
    let score = column::<Float32Array>(b, col::SCORE)?;
    let strategy = column::<StringArray>(b, col::STRATEGY)?;
    let reasons = column::<StringArray>(b, col::REASONS)?;
    Ok((0..b.num_rows())
        .map(|i| SelectionRow {
            name: name.value(i).to_string(),
            created_at: from_micros(at.value(i)),
            sample_id: id.value(i).to_string(),
            rank: rank.value(i),
            score: score.value(i),
            strategy: strategy.value(i).to_string(),
            reasons: reasons.value(i).to_string(),
        })
        .collect())
}

fn mine_clusters_from_batch(b: &RecordBatch) -> Result<Vec<MineClusterRow>, ArrowError> {
    let run = column::<StringArray>(b, col::RUN_ID)?;
    let u = |name| column::<UInt32Array>(b, name);
    let f = |name| column::<Float32Array>(b, name);
    let flag = |name| column::<BooleanArray>(b, name);
    let (cluster, size, n_lab) = (u("cluster")?, u("size")?, u("n_labelled")?);
    let (pos, err, trs, tfs, ratio, z) = (
        f("positive_share")?,
        f("error_rate")?,
        f("train_share")?,
        f("traffic_share")?,
        f("drift_ratio")?,
        f("drift_z")?,
    );
    let under = flag("under_covered")?;
    let ex = column::<StringArray>(b, "exemplar")?;
    let opt = |a: &Float32Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
    Ok((0..b.num_rows())
        .map(|i| MineClusterRow {
            run_id: run.value(i).to_string(),
            cluster: cluster.value(i),
            size: size.value(i),
            n_labelled: n_lab.value(i),
            positive_share: opt(pos, i),
            error_rate: opt(err, i),
            train_share: trs.value(i),
            traffic_share: tfs.value(i),
            drift_ratio: ratio.value(i),
            drift_z: z.value(i),
            under_covered: under.value(i),
            exemplar: ex.value(i).to_string(),
        })
        .collect())
}

impl Store {
    /// The clusters of mining run `run_id`, by cluster index.
    pub async fn mine_clusters(&self, run_id: &str) -> Result<Vec<MineClusterRow>, StoreError> {
        let filter = format!("{} = '{}'", col::RUN_ID, run_id.replace('\'', "''"));
        let mut rows = self
            .rows(
                tables::MINE_CLUSTERS,
                Some(&filter),
                mine_clusters_from_batch,
            )
            .await?;
        rows.sort_by_key(|r| r.cluster);
        Ok(rows)
    }

    /// The rows of selection `name`, by rank (empty when there is no such selection). The name
    /// is matched exactly; a quote in it cannot reach the SQL filter.
    pub async fn selection(&self, name: &str) -> Result<Vec<SelectionRow>, StoreError> {
        let filter = format!("{} = '{}'", col::NAME, name.replace('\'', "''"));
        let mut rows = self
            .rows(tables::SELECTIONS, Some(&filter), selections_from_batch)
            .await?;
        rows.retain(|r| r.name == name);
        rows.sort_by_key(|r| r.rank);
        Ok(rows)
    }

    /// Writes a mining run's per-sample scores (one commit; a repeated run id replaces its rows).
    pub async fn put_mine_scores(&self, rows: &[MineScoreRow]) -> Result<WriteResult, StoreError> {
        let b = mine_scores_to_batch(rows).map_err(arrow(tables::MINE_SCORES))?;
        self.merge(tables::MINE_SCORES, b, Merge::Upsert).await
    }

    /// Writes a mining run's clusters.
    pub async fn put_mine_clusters(
        &self,
        rows: &[MineClusterRow],
    ) -> Result<WriteResult, StoreError> {
        let b = mine_clusters_to_batch(rows).map_err(arrow(tables::MINE_CLUSTERS))?;
        self.merge(tables::MINE_CLUSTERS, b, Merge::Upsert).await
    }

    /// Writes a mining run's duplicate edges.
    pub async fn put_duplicates(&self, rows: &[DuplicateRow]) -> Result<WriteResult, StoreError> {
        let b = duplicates_to_batch(rows).map_err(arrow(tables::DUPLICATES))?;
        self.merge(tables::DUPLICATES, b, Merge::Upsert).await
    }

    /// Writes a named selection; re-using a name replaces the rows of the samples it names again.
    pub async fn put_selection(&self, rows: &[SelectionRow]) -> Result<WriteResult, StoreError> {
        let b = selections_to_batch(rows).map_err(arrow(tables::SELECTIONS))?;
        self.merge(tables::SELECTIONS, b, Merge::Upsert).await
    }
}
