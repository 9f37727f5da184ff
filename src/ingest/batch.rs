//! Batched, committed writes shared by every ingest source, plus the run-ledger bookkeeping.

use std::time::Instant;

use super::IngestConfig;
use super::{IngestError, IngestSummary, Skipped};
use crate::imaging::QualityScores;
use crate::store::{
    ImageQualityRow, LabelRow, PredictionRow, RunKind, RunLedger, SampleRow, ShadowRow, Store,
    tables,
};

/// What one input item contributes.
#[derive(Debug, Default)]
pub(crate) struct Item {
    pub sample: Option<SampleRow>,
    /// Its labels (several when a description carries each author's).
    pub labels: Vec<LabelRow>,
    pub prediction: Option<PredictionRow>,
    /// A challenger's shadow score (query logs).
    pub shadow: Option<ShadowRow>,
    /// The sample's quality scores: stored in `image_quality`, its issues added as `quality=` tags.
    pub quality: Option<QualityScores>,
}

/// Accumulates items and commits them in batches; owns the run's summary and ledger row.
pub(crate) struct Writer {
    store: Store,
    cfg: IngestConfig,
    samples: Vec<SampleRow>,
    labels: Vec<LabelRow>,
    predictions: Vec<PredictionRow>,
    shadows: Vec<ShadowRow>,
    quality: Vec<ImageQualityRow>,
    pending_bytes: usize,
    offered_samples: usize,
    run: RunLedger,
    started: Instant,
    pub summary: IngestSummary,
}

impl Writer {
    /// Records the run as started in the ledger.
    pub async fn start(
        store: &Store,
        cfg: &IngestConfig,
        kind: RunKind,
        input: String,
        params: serde_json::Value,
    ) -> Result<Self, IngestError> {
        let run = RunLedger::start(store, kind, params).await?;
        let run_id = run.id().to_string();
        Ok(Self {
            store: store.clone(),
            cfg: cfg.clone(),
            samples: Vec::new(),
            labels: Vec::new(),
            predictions: Vec::new(),
            shadows: Vec::new(),
            quality: Vec::new(),
            pending_bytes: 0,
            offered_samples: 0,
            run,
            started: Instant::now(),
            summary: IngestSummary {
                run_id,
                kind: kind.as_str().trim_start_matches("ingest-").into(),
                input,
                ..Default::default()
            },
        })
    }

    pub fn skip(&mut self, item: impl Into<String>, reason: impl Into<String>) {
        self.summary.skipped.push(Skipped {
            item: item.into(),
            reason: reason.into(),
        });
    }

    /// Queues one accepted item; commits when the batch is full.
    pub async fn push(&mut self, item: Item) -> Result<(), IngestError> {
        self.summary.accepted += 1;
        if let Some(mut s) = item.sample {
            if let Some(q) = &item.quality {
                let t = &self.cfg.quality;
                for tag in t.tags(q) {
                    if !s.tags.contains(&tag) {
                        s.tags.push(tag);
                    }
                }
                self.quality
                    .push(ImageQualityRow::of(s.sample_id.as_str(), q, t));
            }
            self.pending_bytes += s.image.len();
            self.offered_samples += 1;
            self.samples.push(s);
        }
        self.labels.extend(item.labels);
        self.predictions.extend(item.prediction);
        self.shadows.extend(item.shadow);
        let rows = self
            .samples
            .len()
            .max(self.labels.len())
            .max(self.predictions.len())
            .max(self.shadows.len());
        if rows >= self.cfg.batch_rows || self.pending_bytes >= self.cfg.batch_mib << 20 {
            self.flush().await?;
        }
        Ok(())
    }

    /// Commits what is queued: samples first, then labels and predictions that refer to them.
    pub async fn flush(&mut self) -> Result<(), IngestError> {
        if !self.samples.is_empty() {
            let r = self.store.insert_samples(&self.samples).await?;
            self.run.wrote(tables::SAMPLES, &r);
            self.summary.new_samples += r.inserted;
            self.summary.commits += 1;
            self.samples.clear();
        }
        if !self.quality.is_empty() {
            let r = self.store.put_image_quality(&self.quality).await?;
            self.run.wrote(tables::IMAGE_QUALITY, &r);
            self.summary.commits += 1;
            self.quality.clear();
        }
        if !self.labels.is_empty() {
            let r = self.store.put_labels(&self.labels).await?;
            self.run.wrote(tables::LABELS, &r);
            self.summary.labels_written += r.inserted + r.updated;
            self.summary.commits += 1;
            self.labels.clear();
        }
        if !self.predictions.is_empty() {
            let r = self.store.insert_predictions(&self.predictions).await?;
            self.run.wrote(tables::PREDICTIONS, &r);
            self.summary.predictions_written += r.inserted;
            self.summary.commits += 1;
            self.predictions.clear();
        }
        if !self.shadows.is_empty() {
            let r = self.store.put_shadow_scores(&self.shadows).await?;
            self.run.wrote(tables::SHADOW_SCORES, &r);
            self.summary.shadow_scores_written += r.inserted;
            self.summary.commits += 1;
            self.shadows.clear();
        }
        self.pending_bytes = 0;
        tracing::debug!(
            run = %self.summary.run_id,
            new = self.summary.new_samples,
            "ingest batch committed"
        );
        Ok(())
    }

    /// Commits the rest and closes the run in the ledger.
    pub async fn finish(mut self) -> Result<IngestSummary, IngestError> {
        self.flush().await?;
        self.summary.duplicates = self
            .offered_samples
            .saturating_sub(self.summary.new_samples as usize);
        self.summary.elapsed_s = self.started.elapsed().as_secs_f64();
        self.run.finish(&self.summary).await?;
        tracing::info!(
            run = %self.summary.run_id,
            new = self.summary.new_samples,
            skipped = self.summary.skipped.len(),
            "ingest finished"
        );
        Ok(self.summary)
    }

    /// Marks the run failed in the ledger (best effort) and passes the error on.
    pub async fn fail(self, err: IngestError) -> IngestError {
        self.run.fail(&err).await;
        err
    }
}
