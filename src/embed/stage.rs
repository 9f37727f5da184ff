//! `roadwork embed`: vectors for every sample that lacks one for the model id, in chunks (one Lance
//! commit each, so a crash loses at most a chunk and a re-run continues), then the ANN index.

use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use super::{AugmentConfig, EmbedConfig, EmbedError, ImageEncoder};
use crate::imaging::augment::{augment, to_jpeg};
use crate::imaging::{DecodeLimits, decode};
use crate::ingest::Skipped;
use crate::store::{
    AugmentedVector, IndexOutcome, RunKind, RunLedger, SampleId, Store, augmented_table,
    embeddings_table, tables,
};

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
    /// The validator-augmented copies of the labelled samples (`embed.augment.copies` > 0).
    pub augmented: Option<AugmentSummary>,
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
        if let Some(a) = &self.augmented {
            write!(f, "{a}")?;
            for s in &a.skipped {
                writeln!(f, "    {}: {}", s.item, s.reason)?;
            }
        }
        Ok(())
    }
}

/// Runs `encode` on each prepared group while `prepare` readies the next one (both on the rayon
/// pool), so decoding and resizing full-resolution images overlap the encoder's forward pass
/// instead of waiting for it: on a GPU the forward costs the host almost nothing, and the decode of
/// the next batch is what would otherwise bound throughput.
fn pipelined<In: Send, Out: Send>(
    groups: Vec<In>,
    prepare: impl Fn(In) -> Out + Sync,
    mut encode: impl FnMut(Out) -> Result<(), EmbedError> + Send,
) -> Result<(), EmbedError> {
    let mut groups = groups.into_iter();
    let Some(first) = groups.next() else {
        return Ok(());
    };
    let mut ready = prepare(first);
    for next in groups {
        let (done, prepared) = rayon::join(|| encode(ready), || prepare(next));
        done?;
        ready = prepared;
    }
    encode(ready)
}

/// One forward pass over a prepared group (nothing to do for an empty one).
fn encode_group<T>(
    e: &dyn ImageEncoder,
    group: &[(T, Vec<f32>)],
) -> Result<Vec<Vec<f32>>, EmbedError> {
    if group.is_empty() {
        return Ok(Vec::new());
    }
    let px: Vec<f32> = group.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    e.embed_pixels(px, group.len())
}

/// Decodes and preprocesses one group in parallel; failures become skip reasons.
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
    let result = match embed_pending(store, embedder.clone(), cfg, limits, progress, &mut run).await
    {
        Ok(mut s) if cfg.augment.copies > 0 => {
            let batch = cfg.batch_size;
            augment_pending(
                store,
                embedder,
                &cfg.augment,
                batch,
                limits,
                progress,
                &mut run,
            )
            .await
            .map(|a| {
                s.augmented = Some(a);
                s
            })
        }
        other => other,
    };
    run.close(result).await
}

/// What one augmentation pass did.
#[derive(Debug, Clone, Serialize)]
pub struct AugmentSummary {
    pub run_id: String,
    pub table: String,
    /// Labelled samples and the copies each should have.
    pub labelled: usize,
    pub copies: u32,
    /// Copies missing when the pass started, and embedded by it.
    pub pending: usize,
    pub embedded: usize,
    pub skipped: Vec<Skipped>,
    pub elapsed_s: f64,
}

impl std::fmt::Display for AugmentSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "  augmented → {}: {} labelled × {} copies, pending {}, embedded {}, skipped {} in {:.1} s",
            self.table,
            self.labelled,
            self.copies,
            self.pending,
            self.embedded,
            self.skipped.len(),
            self.elapsed_s
        )
    }
}

/// Embeds the missing validator-augmented copies of every labelled sample (the nightly job runs
/// it again right before training, for the labels bought since the embed stage), recorded in the
/// run ledger as an embed run.
pub async fn augment_store(
    store: &Store,
    embedder: Arc<dyn ImageEncoder>,
    cfg: &EmbedConfig,
    limits: DecodeLimits,
    progress: bool,
) -> Result<AugmentSummary, EmbedError> {
    let params = serde_json::json!({ "model_id": embedder.model_id(), "augment": cfg.augment });
    let mut run = RunLedger::start(store, RunKind::Embed, params).await?;
    let result = augment_pending(
        store,
        embedder,
        &cfg.augment,
        cfg.batch_size,
        limits,
        progress,
        &mut run,
    )
    .await;
    run.close(result).await
}

/// The draws of copy `copy` of `sample`: its own seed, its level and whether level 0 letterboxes.
fn copy_plan(sample: &SampleId, cfg: &AugmentConfig, copy: u32) -> (u64, u8, bool) {
    use sha2::{Digest, Sha256};
    let h = |s: String| -> u64 {
        let d = Sha256::digest(s.as_bytes());
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    };
    let offset = h(format!("{}:{}", sample.as_str(), cfg.seed)) % 4;
    let seed = h(AugmentedVector::key(sample.as_str(), cfg.seed, copy));
    let level = ((offset + copy as u64) % 4) as u8;
    let unit = (seed >> 11) as f64 / (1u64 << 53) as f64;
    (seed, level, level == 0 && unit < cfg.letterbox_share)
}

/// Decodes, distorts (validator level, JPEG q75, decoded again) and preprocesses one chunk of
/// copies in parallel; failures become skip reasons.
fn prepare_copies(
    embedder: &dyn ImageEncoder,
    images: &std::collections::HashMap<SampleId, Vec<u8>>,
    copies: &[(SampleId, u32)],
    cfg: &AugmentConfig,
    limits: &DecodeLimits,
) -> (Vec<(AugmentedVector, Vec<f32>)>, Vec<Skipped>) {
    let pre = embedder.preprocess();
    let results: Vec<Result<(AugmentedVector, Vec<f32>), Skipped>> = copies
        .par_iter()
        .map(|(id, copy)| {
            let skip = |reason: String| Skipped {
                item: format!("{id} copy {copy}"),
                reason,
            };
            let bytes = images
                .get(id)
                .ok_or_else(|| skip("image not in the store".into()))?;
            let img = decode(bytes, limits).map_err(|e| skip(e.to_string()))?;
            let (seed, level, letterbox) = copy_plan(id, cfg, *copy);
            let (out, applied) = augment(&img.image.to_rgb8(), level, letterbox, seed);
            let jpeg = to_jpeg(&out).map_err(|e| skip(format!("JPEG encoding: {e}")))?;
            let sent = decode(&jpeg, limits).map_err(|e| skip(e.to_string()))?;
            let mut px = Vec::new();
            pre.append_pixels(&sent.image, &mut px);
            Ok((
                AugmentedVector {
                    sample_id: id.clone(),
                    seed: cfg.seed,
                    copy: *copy,
                    level: applied.level,
                    letterbox: applied.letterbox,
                    distortions: applied
                        .distortions
                        .iter()
                        .map(|(d, k)| format!("{}={k}", d.code()))
                        .collect(),
                    vector: Vec::new(),
                },
                px,
            ))
        })
        .collect();
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(s) => skipped.push(s),
        }
    }
    (ok, skipped)
}

async fn augment_pending(
    store: &Store,
    embedder: Arc<dyn ImageEncoder>,
    cfg: &AugmentConfig,
    batch: usize,
    limits: DecodeLimits,
    progress: bool,
    run: &mut RunLedger,
) -> Result<AugmentSummary, EmbedError> {
    let started = Instant::now();
    let model_id = embedder.model_id().to_string();
    let table = augmented_table(&model_id);
    let mut summary = AugmentSummary {
        run_id: run.id().to_string(),
        table: table.clone(),
        labelled: 0,
        copies: cfg.copies,
        pending: 0,
        embedded: 0,
        skipped: Vec::new(),
        elapsed_s: 0.0,
    };
    if cfg.copies == 0 {
        return Ok(summary);
    }
    let versions = store.versions().await?;
    for t in [tables::SAMPLES, tables::LABELS] {
        if let Some(&v) = versions.get(t) {
            run.read(t, v);
        }
    }
    store
        .ensure_augmented_table(&model_id, embedder.dim())
        .await?;
    let mut labelled: Vec<SampleId> = store
        .effective_labels()
        .await?
        .into_iter()
        .map(|l| l.sample_id)
        .collect();
    labelled.sort();
    labelled.dedup();
    summary.labelled = labelled.len();
    let done = store.augmented_keys(&model_id).await?;
    let pending: Vec<(SampleId, u32)> = labelled
        .iter()
        .flat_map(|id| (0..cfg.copies).map(move |c| (id.clone(), c)))
        .filter(|(id, c)| !done.contains(&AugmentedVector::key(id.as_str(), cfg.seed, *c)))
        .collect();
    summary.pending = pending.len();
    let bar = if progress {
        indicatif::ProgressBar::new(pending.len() as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let batch = batch.max(1);
    for chunk in pending.chunks(batch * 4) {
        let mut ids: Vec<SampleId> = chunk.iter().map(|(id, _)| id.clone()).collect();
        ids.dedup();
        let images: std::collections::HashMap<SampleId, Vec<u8>> =
            store.images(&ids).await?.into_iter().collect();
        let (e, copies, cfg2) = (embedder.clone(), chunk.to_vec(), cfg.clone());
        let (rows, skipped) = tokio::task::spawn_blocking(move || {
            let mut rows = Vec::with_capacity(copies.len());
            let mut skipped = Vec::new();
            pipelined(
                copies.chunks(batch).collect(),
                |group| prepare_copies(e.as_ref(), &images, group, &cfg2, &limits),
                |(ok, skip)| {
                    skipped.extend(skip);
                    let feats = encode_group(e.as_ref(), &ok)?;
                    rows.extend(ok.iter().zip(feats).map(|((r, _), v)| AugmentedVector {
                        vector: v,
                        ..r.clone()
                    }));
                    Ok(())
                },
            )?;
            Ok::<_, EmbedError>((rows, skipped))
        })
        .await
        .map_err(|e| EmbedError::Task(e.to_string()))??;
        let (good, bad): (Vec<_>, Vec<_>) = rows
            .into_iter()
            .partition(|r| r.vector.iter().all(|x| x.is_finite()));
        summary.skipped.extend(skipped);
        summary.skipped.extend(bad.into_iter().map(|r| Skipped {
            item: format!("{} copy {}", r.sample_id, r.copy),
            reason: "model produced a non-finite vector".into(),
        }));
        if !good.is_empty() {
            let w = store
                .put_augmented(&model_id, embedder.dim(), &good)
                .await?;
            run.wrote(&table, &w);
        }
        summary.embedded += good.len();
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    summary.elapsed_s = started.elapsed().as_secs_f64();
    Ok(summary)
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
        augmented: None,
    };
    let batch = cfg.batch_size.max(1);
    for chunk in pending.chunks(batch * 4) {
        let images = store.images(chunk).await?;
        let e = embedder.clone();
        let (vectors, skipped) = tokio::task::spawn_blocking(move || {
            let mut vectors = Vec::with_capacity(images.len());
            let mut skipped = Vec::new();
            let mut groups = Vec::new();
            let mut rest = images;
            while !rest.is_empty() {
                let tail = rest.split_off(batch.min(rest.len()));
                groups.push(std::mem::replace(&mut rest, tail));
            }
            pipelined(
                groups,
                |group| prepare(e.as_ref(), group, &limits),
                |(ok, skip)| {
                    skipped.extend(skip);
                    let feats = encode_group(e.as_ref(), &ok)?;
                    vectors.extend(ok.iter().map(|(id, _)| id.clone()).zip(feats));
                    Ok(())
                },
            )?;
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
