//! Batched, committed writes shared by every ingest source, plus the run-ledger bookkeeping.

use std::time::Instant;

use chrono::Utc;
use rand::Rng;

use super::{IngestError, IngestSummary, Skipped};
use crate::config::IngestConfig;
use crate::store::{LabelRow, PredictionRow, RunRow, SampleRow, Store};

/// What one input item contributes.
#[derive(Debug, Default)]
pub(crate) struct Item {
    pub sample: Option<SampleRow>,
    pub label: Option<LabelRow>,
    pub prediction: Option<PredictionRow>,
}

/// Accumulates items and commits them in batches; owns the run's summary and ledger row.
pub(crate) struct Writer {
    store: Store,
    cfg: IngestConfig,
    samples: Vec<SampleRow>,
    labels: Vec<LabelRow>,
    predictions: Vec<PredictionRow>,
    pending_bytes: usize,
    offered_samples: usize,
    run: RunRow,
    started: Instant,
    pub summary: IngestSummary,
}

/// A run id that sorts by time and does not collide between concurrent runs.
pub fn new_run_id(kind: &str) -> String {
    let suffix: u16 = rand::rng().random();
    format!("{kind}-{}-{suffix:04x}", Utc::now().format("%Y%m%dT%H%M%S"))
}

impl Writer {
    /// Records the run as started in the ledger.
    pub async fn start(
        store: &Store,
        cfg: &IngestConfig,
        kind: &str,
        input: String,
        params: serde_json::Value,
    ) -> Result<Self, IngestError> {
        let run_id = new_run_id(&format!("ingest-{kind}"));
        let run = RunRow {
            run_id: run_id.clone(),
            kind: format!("ingest-{kind}"),
            started_at: Utc::now(),
            finished_at: None,
            status: "running".into(),
            params: params.to_string(),
            summary: "{}".into(),
        };
        store.record_run(&run).await?;
        Ok(Self {
            store: store.clone(),
            cfg: cfg.clone(),
            samples: Vec::new(),
            labels: Vec::new(),
            predictions: Vec::new(),
            pending_bytes: 0,
            offered_samples: 0,
            run,
            started: Instant::now(),
            summary: IngestSummary {
                run_id,
                kind: kind.into(),
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
        if let Some(s) = item.sample {
            self.pending_bytes += s.image.len();
            self.offered_samples += 1;
            self.samples.push(s);
        }
        self.labels.extend(item.label);
        self.predictions.extend(item.prediction);
        let rows = self
            .samples
            .len()
            .max(self.labels.len())
            .max(self.predictions.len());
        if rows >= self.cfg.batch_rows || self.pending_bytes >= self.cfg.batch_mib << 20 {
            self.flush().await?;
        }
        Ok(())
    }

    /// Commits what is queued: samples first, then labels and predictions that refer to them.
    pub async fn flush(&mut self) -> Result<(), IngestError> {
        if !self.samples.is_empty() {
            let r = self.store.insert_samples(&self.samples).await?;
            self.summary.new_samples += r.inserted;
            self.summary.commits += 1;
            self.samples.clear();
        }
        if !self.labels.is_empty() {
            let r = self.store.put_labels(&self.labels).await?;
            self.summary.labels_written += r.inserted + r.updated;
            self.summary.commits += 1;
            self.labels.clear();
        }
        if !self.predictions.is_empty() {
            let r = self.store.insert_predictions(&self.predictions).await?;
            self.summary.predictions_written += r.inserted;
            self.summary.commits += 1;
            self.predictions.clear();
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
        self.run.finished_at = Some(Utc::now());
        self.run.status = "ok".into();
        self.run.summary = serde_json::to_string(&self.summary).unwrap_or_else(|_| "{}".into());
        self.store.record_run(&self.run).await?;
        tracing::info!(
            run = %self.summary.run_id,
            new = self.summary.new_samples,
            skipped = self.summary.skipped.len(),
            "ingest finished"
        );
        Ok(self.summary)
    }

    /// Marks the run failed in the ledger (best effort) and passes the error on.
    pub async fn fail(mut self, err: IngestError) -> IngestError {
        self.run.finished_at = Some(Utc::now());
        self.run.status = "failed".into();
        self.run.summary = serde_json::json!({ "error": err.to_string() }).to_string();
        if let Err(e) = self.store.record_run(&self.run).await {
            tracing::warn!(error = %e, "could not record the failed run");
        }
        err
    }
}
