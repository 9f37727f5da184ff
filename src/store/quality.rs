//! The `image_quality` table (layout 7): CleanVision-style scores of every ingested image and the
//! issues they raised under the thresholds in force when it was ingested (`ingest.quality`).
//!
//! One row per sample, so the scores can be filtered next to everything else:
//! `SELECT sample_id FROM image_quality WHERE array_contains(issues, 'blurry')`, or
//! `... WHERE brightness < 0.2`. The issues also become `quality=` tags of the sample (slices of
//! the evaluation) and reasons of the mining stage.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::rows::{TableRow, serde_as};
use super::schema::{col, tables, ts_type};
use super::{Merge, Store, StoreError, WriteResult};
use crate::imaging::{QualityScores, QualityThresholds};

/// `image_quality`: one row per sample.
pub fn image_quality_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::SAMPLE_ID, DataType::Utf8, false),
        Field::new(col::BRIGHTNESS, DataType::Float32, false),
        Field::new(col::SHARPNESS, DataType::Float32, false),
        Field::new(col::ENTROPY, DataType::Float32, false),
        Field::new(col::COLORFULNESS, DataType::Float32, false),
        Field::new(col::ASPECT_RATIO, DataType::Float32, false),
        Field::new_list(col::ISSUES, Field::new("item", DataType::Utf8, true), false),
        Field::new(col::TS, ts_type(), false),
    ]))
}

/// The scores of one image and the issues they raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageQualityRow {
    pub sample_id: String,
    pub brightness: f32,
    pub sharpness: f32,
    pub entropy: f32,
    pub colorfulness: f32,
    pub aspect_ratio: f32,
    /// Issue names ([`crate::imaging::QualityIssue::as_str`]); empty when none.
    pub issues: Vec<String>,
    #[serde(with = "serde_as::micros")]
    pub ts: DateTime<Utc>,
}

impl ImageQualityRow {
    /// The row of `sample_id` with scores `s` under thresholds `t`.
    pub fn of(sample_id: &str, s: &QualityScores, t: &QualityThresholds) -> Self {
        Self {
            sample_id: sample_id.to_string(),
            brightness: s.brightness,
            sharpness: s.sharpness,
            entropy: s.entropy,
            colorfulness: s.colorfulness,
            aspect_ratio: s.aspect_ratio,
            issues: t
                .issues(s)
                .into_iter()
                .map(|i| i.as_str().to_string())
                .collect(),
            ts: Utc::now(),
        }
    }
}

impl TableRow for ImageQualityRow {
    const TABLE: &'static str = tables::IMAGE_QUALITY;
}

impl Store {
    /// Writes quality rows; a sample scored before keeps its first row (the same bytes give the
    /// same scores).
    pub async fn put_image_quality(
        &self,
        rows: &[ImageQualityRow],
    ) -> Result<WriteResult, StoreError> {
        self.write_rows(rows, Merge::InsertOnly).await
    }

    /// Every quality row.
    pub async fn image_quality(&self) -> Result<Vec<ImageQualityRow>, StoreError> {
        self.read_rows::<ImageQualityRow>(None).await
    }
}
