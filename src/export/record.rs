//! One exported sample, the same in every layout that can carry it: the Parquet row (less the
//! image), a line of the `imagefolder` `metadata.jsonl`, the attributes of a FiftyOne
//! classification. Import reads it back into the store's rows, so a round trip keeps the sample
//! id (the bytes are written untouched), every label with its provenance, the tags and the dates.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{Label, LabelRow, LabelSource, MineScoreRow, SampleId, SampleRow, SelectionRow};

/// One label of a sample, as stored (`labels` table), with who gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportLabel {
    /// 1 = roadwork, 0 = clean (the subnet's and NATIX's convention).
    pub label: u8,
    /// `human|dataset|synthetic|teacher`.
    pub source: String,
    pub author: String,
    pub confidence: f32,
    pub ts: DateTime<Utc>,
}

/// Everything the store knows about one exported sample except its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportRecord {
    /// Hex sha256 of the image bytes (the file written is those bytes, so it re-hashes to this).
    pub sample_id: String,
    /// The image's path relative to the export root (absent when the bytes are inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    pub width: u32,
    pub height: u32,
    pub format: String,
    /// `validator|dataset|synthetic|upload`.
    pub source: String,
    pub source_ref: String,
    /// `crop224|letterbox224|fullres|unknown`.
    pub era: String,
    /// `key=value` tags.
    #[serde(default)]
    pub tags: Vec<String>,
    pub received_at: DateTime<Utc>,
    /// The effective label (precedence rule applied), 1/0; null when unlabelled.
    pub label: Option<u8>,
    pub label_source: Option<String>,
    pub label_author: Option<String>,
    pub label_confidence: Option<f32>,
    /// Every label row of the sample, the effective one among them.
    #[serde(default)]
    pub labels: Vec<ExportLabel>,
    /// The mining run the scores below come from.
    pub mine_run: Option<String>,
    pub cluster: Option<u32>,
    pub hardness: Option<f32>,
    pub reasons: Option<String>,
    pub label_issue: Option<bool>,
    pub outlier: Option<bool>,
    pub typicality: Option<f32>,
    /// The head's calibrated P(roadwork) that mining saw.
    pub prob: Option<f32>,
    /// The selection exported, and the sample's place in it.
    pub selection: Option<String>,
    pub selection_rank: Option<u32>,
    pub selection_score: Option<f32>,
}

/// Why an exported record cannot go back into the store.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0}")]
    SampleId(#[from] crate::store::BadSampleId),
    #[error("label {0} is not 0 or 1")]
    Label(u8),
    #[error("unknown label source {0:?}")]
    LabelSource(String),
    #[error("the image bytes hash to {found}, not the recorded sample id {recorded}")]
    Bytes { recorded: String, found: String },
}

impl ExportRecord {
    /// The record of a stored sample with its labels, the effective one first-class.
    pub fn new(
        s: &SampleRow,
        labels: &[&LabelRow],
        effective: Option<&crate::store::EffectiveLabel>,
        score: Option<&MineScoreRow>,
        selected: Option<&SelectionRow>,
    ) -> Self {
        let mut labels: Vec<ExportLabel> = labels
            .iter()
            .map(|l| ExportLabel {
                label: l.label.as_u8(),
                source: l.source.as_str().into(),
                author: l.author.clone(),
                confidence: l.confidence,
                ts: l.ts,
            })
            .collect();
        labels.sort_by(|a, b| (&a.source, &a.author).cmp(&(&b.source, &b.author)));
        Self {
            sample_id: s.sample_id.to_string(),
            file_name: None,
            width: s.width,
            height: s.height,
            format: s.format.clone(),
            source: s.source.clone(),
            source_ref: s.source_ref.clone(),
            era: s.era.clone(),
            tags: s.tags.clone(),
            received_at: s.received_at,
            label: effective.map(|e| e.label.as_u8()),
            label_source: effective.map(|e| e.source.as_str().into()),
            label_author: effective.map(|e| e.author.clone()),
            label_confidence: effective.map(|e| e.confidence),
            labels,
            mine_run: score.map(|m| m.run_id.clone()),
            cluster: score.map(|m| m.cluster),
            hardness: score.map(|m| m.hardness),
            reasons: score.map(|m| m.reasons.clone()),
            label_issue: score.map(|m| m.label_issue),
            outlier: score.map(|m| m.outlier),
            typicality: score.map(|m| m.typicality),
            prob: score.and_then(|m| m.prob),
            selection: selected.map(|r| r.name.clone()),
            selection_rank: selected.map(|r| r.rank),
            selection_score: selected.map(|r| r.score),
        }
    }

    /// The label rows this record carries. A record written by another tool may carry only the
    /// effective label (`label`, `label_source`, `label_author`); then that one is returned, with
    /// `default_author` when it names nobody.
    pub fn label_rows(
        &self,
        sample_id: &SampleId,
        default_author: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<LabelRow>, RecordError> {
        let row = |label: u8, source: Option<&str>, author: Option<&str>, conf, ts| {
            Ok::<_, RecordError>(LabelRow {
                sample_id: sample_id.clone(),
                label: Label::from_int(label.into()).ok_or(RecordError::Label(label))?,
                source: match source {
                    Some(s) => {
                        LabelSource::parse(s).ok_or_else(|| RecordError::LabelSource(s.into()))?
                    }
                    None => LabelSource::Dataset,
                },
                confidence: conf,
                author: author.unwrap_or(default_author).to_string(),
                ts,
            })
        };
        if !self.labels.is_empty() {
            return self
                .labels
                .iter()
                .map(|l| {
                    row(
                        l.label,
                        Some(&l.source),
                        Some(&l.author),
                        l.confidence,
                        l.ts,
                    )
                })
                .collect();
        }
        match self.label {
            Some(l) => Ok(vec![row(
                l,
                self.label_source.as_deref(),
                self.label_author.as_deref(),
                self.label_confidence.unwrap_or(1.0),
                now,
            )?]),
            None => Ok(Vec::new()),
        }
    }

    /// Checks that `bytes` are this record's image: the recorded id must be their hash, so a file
    /// swapped after export is caught instead of being stored under another sample's id.
    pub fn check_bytes(&self, bytes: &[u8]) -> Result<SampleId, RecordError> {
        let found = SampleId::of_bytes(bytes);
        let recorded: SampleId = self.sample_id.parse()?;
        if found != recorded {
            return Err(RecordError::Bytes {
                recorded: recorded.to_string(),
                found: found.to_string(),
            });
        }
        Ok(found)
    }
}
