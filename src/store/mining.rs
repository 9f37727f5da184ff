//! The mining stage's tables (layout 3): per-sample scores and per-cluster facts of each mining
//! run, duplicate edges, and named selections for labelling.
//!
//! Rows are keyed by run (or selection name) so a run's results stay queryable next to earlier
//! runs: `SELECT * FROM mine_scores WHERE run_id = '…' ORDER BY hardness DESC`.

use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::rows::{TableRow, keys, serde_as};
use super::schema::{col, tables, ts_type};
use super::{Merge, Store, StoreError, WriteResult};

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectionRow {
    pub name: String,
    #[serde(with = "serde_as::micros")]
    pub created_at: DateTime<Utc>,
    pub sample_id: String,
    pub rank: u32,
    pub score: f32,
    pub strategy: String,
    pub reasons: String,
}

impl TableRow for MineScoreRow {
    const TABLE: &'static str = tables::MINE_SCORES;
    const DERIVED: &'static [&'static str] = &[col::SCORE_ID];
    fn derived(rows: &[Self]) -> Vec<ArrayRef> {
        vec![keys(rows, |r| format!("{}/{}", r.run_id, r.sample_id))]
    }
}

impl TableRow for MineClusterRow {
    const TABLE: &'static str = tables::MINE_CLUSTERS;
    const DERIVED: &'static [&'static str] = &[col::CLUSTER_ID];
    fn derived(rows: &[Self]) -> Vec<ArrayRef> {
        vec![keys(rows, |r| format!("{}/{}", r.run_id, r.cluster))]
    }
}

impl TableRow for DuplicateRow {
    const TABLE: &'static str = tables::DUPLICATES;
    const DERIVED: &'static [&'static str] = &[col::PAIR_ID];
    fn derived(rows: &[Self]) -> Vec<ArrayRef> {
        vec![keys(rows, |r| {
            format!("{}/{}/{}", r.run_id, r.sample_a, r.sample_b)
        })]
    }
}

impl TableRow for SelectionRow {
    const TABLE: &'static str = tables::SELECTIONS;
    const DERIVED: &'static [&'static str] = &[col::SELECTION_ROW];
    fn derived(rows: &[Self]) -> Vec<ArrayRef> {
        vec![keys(rows, |r| format!("{}/{}", r.name, r.sample_id))]
    }
}

impl Store {
    /// The clusters of mining run `run_id`, by cluster index.
    pub async fn mine_clusters(&self, run_id: &str) -> Result<Vec<MineClusterRow>, StoreError> {
        let filter = format!("{} = '{}'", col::RUN_ID, run_id.replace('\'', "''"));
        let mut rows = self.read_rows::<MineClusterRow>(Some(&filter)).await?;
        rows.sort_by_key(|r| r.cluster);
        Ok(rows)
    }

    /// The rows of selection `name`, by rank (empty when there is no such selection). The name
    /// is matched exactly; a quote in it cannot reach the SQL filter.
    pub async fn selection(&self, name: &str) -> Result<Vec<SelectionRow>, StoreError> {
        let filter = format!("{} = '{}'", col::NAME, name.replace('\'', "''"));
        let mut rows = self.read_rows::<SelectionRow>(Some(&filter)).await?;
        rows.retain(|r| r.name == name);
        rows.sort_by_key(|r| r.rank);
        Ok(rows)
    }

    /// Writes a mining run's per-sample scores (one commit; a repeated run id replaces its rows).
    pub async fn put_mine_scores(&self, rows: &[MineScoreRow]) -> Result<WriteResult, StoreError> {
        self.write_rows(rows, Merge::Upsert).await
    }

    /// Writes a mining run's clusters.
    pub async fn put_mine_clusters(
        &self,
        rows: &[MineClusterRow],
    ) -> Result<WriteResult, StoreError> {
        self.write_rows(rows, Merge::Upsert).await
    }

    /// Writes a mining run's duplicate edges.
    pub async fn put_duplicates(&self, rows: &[DuplicateRow]) -> Result<WriteResult, StoreError> {
        self.write_rows(rows, Merge::Upsert).await
    }

    /// Writes a named selection; re-using a name replaces the rows of the samples it names again.
    pub async fn put_selection(&self, rows: &[SelectionRow]) -> Result<WriteResult, StoreError> {
        self.write_rows(rows, Merge::Upsert).await
    }
}
