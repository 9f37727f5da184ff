//! `roadwork embed`: vectors for every sample that lacks one for the model id, in chunks (one Lance
//! commit each, so a crash loses at most a chunk and a re-run continues), then the ANN index.

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::{EmbedConfig, EmbedError, ImageEncoder};
use crate::imaging::{DecodeLimits, decode};
use crate::ingest::Skipped;
use crate::store::{IndexOutcome, RunKind, RunLedger, SampleId, Store, embeddings_table, tables};

/// What one embed run did.
#[derive(Debug, Clone, Serialize)]
pub struct EmbedSummary {
    pub run_id: String,
    pub model_id: String,
    pub table: String,
    /// The random stand-in model was used (no weights file).
    pub random_weights: bool,
    /// Samples without a vector when the run started.
    pub pending: usize,
    pub embedded: usize,
    pub skipped: Vec<Skipped>,
    pub elapsed_s: f64,
    pub images_per_s: f64,
    /// `below-threshold`, `created` or `refreshed`, with the row count.
    pub index: String,
}

impl std::fmt::Display for EmbedSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "embed {} → {} (run {})",
            self.model_id, self.table, self.run_id
        )?;
        if self.random_weights {
            writeln!(
                f,
                "  WARNING: random weights (no --weights given): vectors are not meaningful"
            )?;
        }
        writeln!(
            f,
            "  pending {}, embedded {}, skipped {} in {:.1} s ({:.1} images/s); index: {}",
            self.pending,
            self.embedded,
            self.skipped.len(),
            self.elapsed_s,
            self.images_per_s,
            self.index
        )?;
        for s in &self.skipped {
            writeln!(f, "    {}: {}", s.item, s.reason)?;
        }
        Ok(())
    }
}

/// Decodes and preprocesses one chunk in parallel; failures become skip reasons.
fn prepare(
    embedder: &dyn ImageEncoder,
    images: Vec<(SampleId, Vec<u8>)>,
    limits: &DecodeLimits,
) -> (Vec<(SampleId, Vec<f32>)>, Vec<Skipped>) {
    let pre = embedder.preprocess();
    let results: Vec<(SampleId, Result<Vec<f32>, String>)> = images
        .into_par_iter()
        .map(|(id, bytes)| {
            let r = decode(&bytes, limits)
                .map(|d| {
                    let mut px = Vec::new();
                    pre.append_pixels(&d.image, &mut px);
                    px
                })
                .map_err(|e| e.to_string());
            (id, r)
        })
        .collect();
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for (id, r) in results {
        match r {
            Ok(px) => ok.push((id, px)),
            Err(reason) => skipped.push(Skipped {
                item: id.to_string(),
                reason,
            }),
        }
    }
    (ok, skipped)
}

/// Embeds every pending sample of `store` with `embedder`, recorded in the run ledger (a failure
/// closes the run as failed; the chunks already committed stay).
pub async fn embed_store(
    store: &Store,
    embedder: Arc<dyn ImageEncoder>,
    cfg: &EmbedConfig,
    limits: DecodeLimits,
    progress: bool,
) -> Result<EmbedSummary, EmbedError> {
    let params = serde_json::json!({ "model_id": embedder.model_id(), "config": cfg });
    let mut run = RunLedger::start(store, RunKind::Embed, params).await?;
    let result = embed_pending(store, embedder, cfg, limits, progress, &mut run).await;
    run.close(result).await
}

async fn embed_pending(
    store: &Store,
    embedder: Arc<dyn ImageEncoder>,
    cfg: &EmbedConfig,
    limits: DecodeLimits,
    progress: bool,
    run: &mut RunLedger,
) -> Result<EmbedSummary, EmbedError> {
    let started = Instant::now();
    let model_id = embedder.model_id().to_string();
    let versions = store.versions().await?;
    if let Some(&v) = versions.get(tables::SAMPLES) {
        run.read(tables::SAMPLES, v);
    }
    let table = store
        .ensure_embeddings_table(&model_id, embedder.dim())
        .await?;
    let done = store.embedded_ids(&model_id).await?;
    let mut pending: Vec<SampleId> = store
        .string_column(tables::SAMPLES, crate::store::schema::col::SAMPLE_ID, None)
        .await?
        .into_iter()
        .filter(|id| !done.contains(id))
        .filter_map(|id| id.parse().ok())
        .collect();
    pending.sort();
    if embedder.is_random() {
        tracing::warn!(model = %model_id, "no weights given: embedding with a RANDOM model");
    }
    let bar = if progress {
        indicatif::ProgressBar::new(pending.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut summary = EmbedSummary {
        run_id: run.id().to_string(),
        model_id: model_id.clone(),
        table: table.clone(),
        random_weights: embedder.is_random(),
        pending: pending.len(),
        embedded: 0,
        skipped: Vec::new(),
        elapsed_s: 0.0,
        images_per_s: 0.0,
        index: String::new(),
    };
    let batch = cfg.batch_size.max(1);
    for chunk in pending.chunks(batch * 4) {
        let images = store.images(chunk).await?;
        let e = embedder.clone();
        let (vectors, skipped) = tokio::task::spawn_blocking(move || {
            let (ok, skipped) = prepare(e.as_ref(), images, &limits);
            let mut vectors = Vec::with_capacity(ok.len());
            for group in ok.chunks(batch) {
                let n = group.len();
                let px: Vec<f32> = group.iter().flat_map(|(_, p)| p.iter().copied()).collect();
                let feats = e.embed_pixels(px, n)?;
                vectors.extend(group.iter().map(|(id, _)| id.clone()).zip(feats));
            }
            Ok::<_, EmbedError>((vectors, skipped))
        })
        .await
        .map_err(|e| EmbedError::Task(e.to_string()))??;
        // A non-finite vector would poison every later stage: drop it with a reason instead.
        let (good, bad): (Vec<_>, Vec<_>) = vectors
            .into_iter()
            .partition(|(_, v)| v.iter().all(|x| x.is_finite()));
        summary.skipped.extend(skipped);
        summary
            .skipped
            .extend(bad.into_iter().map(|(id, _)| Skipped {
                item: id.to_string(),
                reason: "model produced a non-finite vector".into(),
            }));
        if !good.is_empty() {
            let w = store
                .put_embeddings(&model_id, embedder.dim(), &good)
                .await?;
            run.wrote(&table, &w);
        }
        summary.embedded += good.len();
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let outcome = store
        .refresh_vector_index(&embeddings_table(&model_id), cfg.index_min_rows)
        .await?;
    summary.index = match outcome {
        IndexOutcome::BelowThreshold { rows } => {
            format!(
                "none yet ({rows} rows < {}; exact search)",
                cfg.index_min_rows
            )
        }
        IndexOutcome::Created { rows } => format!("created IVF-HNSW-SQ over {rows} rows"),
        IndexOutcome::Refreshed { rows } => format!("refreshed ({rows} rows)"),
    };
    summary.elapsed_s = started.elapsed().as_secs_f64();
    summary.images_per_s = summary.embedded as f64 / summary.elapsed_s.max(1e-9);
    Ok(summary)
}
