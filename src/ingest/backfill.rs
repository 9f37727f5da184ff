//! Image-quality scores for samples ingested before the store had the `image_quality` table
//! (layout 7): the nightly ingest stage fills them in, so mining reasons, `roadwork query` and
//! the evaluation's `quality=` slices cover old samples as they cover new ones.

use std::collections::HashSet;

use rayon::prelude::*;
use serde::Serialize;

use super::{IngestError, Ingestor, Skipped};
use crate::imaging::{decode, quality_scores};
use crate::store::schema::{col, tables};
use crate::store::{ImageQualityRow, SampleId};

/// Samples scored per read (bounds the image bytes held at once).
const CHUNK: usize = 64;

/// What one backfill did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QualityBackfill {
    /// Samples without scores when it started.
    pub missing: usize,
    pub scored: usize,
    /// Samples whose bytes no longer decode (kept, reported, never scored).
    pub skipped: Vec<Skipped>,
}

impl Ingestor {
    /// Scores every sample that has no `image_quality` row, under the thresholds in force now.
    /// Idempotent: a second call finds nothing missing (undecodable samples are reported again).
    pub async fn backfill_quality(&self) -> Result<QualityBackfill, IngestError> {
        let scored: HashSet<String> = self
            .store
            .image_quality()
            .await?
            .into_iter()
            .map(|r| r.sample_id)
            .collect();
        let mut missing: Vec<SampleId> = self
            .store
            .string_column(tables::SAMPLES, col::SAMPLE_ID, None)
            .await?
            .into_iter()
            .filter(|id| !scored.contains(id))
            .filter_map(|id| id.parse().ok())
            .collect();
        missing.sort();
        let mut out = QualityBackfill {
            missing: missing.len(),
            ..Default::default()
        };
        for chunk in missing.chunks(CHUNK) {
            let images = self.store.images(chunk).await?;
            let (limits, thresholds) = (self.limits, self.cfg.quality);
            let results: Vec<Result<ImageQualityRow, Skipped>> =
                tokio::task::spawn_blocking(move || {
                    images
                        .into_par_iter()
                        .map(|(id, bytes)| {
                            decode(&bytes, &limits)
                                .map(|d| {
                                    ImageQualityRow::of(
                                        id.as_str(),
                                        &quality_scores(&d.image),
                                        &thresholds,
                                    )
                                })
                                .map_err(|e| Skipped {
                                    item: id.to_string(),
                                    reason: e.to_string(),
                                })
                        })
                        .collect()
                })
                .await
                .map_err(|e| IngestError::Task(e.to_string()))?;
            let mut rows = Vec::with_capacity(results.len());
            for r in results {
                match r {
                    Ok(row) => rows.push(row),
                    Err(s) => out.skipped.push(s),
                }
            }
            if !rows.is_empty() {
                self.store.put_image_quality(&rows).await?;
                out.scored += rows.len();
            }
        }
        if out.missing > 0 {
            tracing::info!(
                missing = out.missing,
                scored = out.scored,
                "image-quality scores backfilled"
            );
        }
        Ok(out)
    }
}
