//! After generation, before anything lands: every image is decoded and checked, then embedded
//! and checked against the store. A pure, blocking function of the candidates, the loaded store
//! facts and the encoder (run on a blocking thread).
//!
//! In order, a candidate is refused when it is: undecodable, too small, blank; an exact or a
//! re-encoded (perceptual-hash) copy of a stored or an earlier new image; a near twin of an eval
//! or calibration image (leakage); a near twin of any stored or new image; too far from the gap
//! it was made for; or over the synthetic-to-real cap of the cluster it lands in.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use image::DynamicImage;

use super::config::CheckConfig;
use super::load::{Loaded, normalise};
use super::plan::{Gap, Job};
use crate::embed::ImageEncoder;
use crate::imaging::{DecodeLimits, decode, hamming, phash};
use crate::store::{
    Era, Label, LabelRow, LabelSource, SampleId, SampleRow, SampleSource, SynthStatus, VectorRows,
};

/// A generated image waiting for its checks.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub job: Job,
    pub bytes: Vec<u8>,
    pub model_id: String,
    pub cost_usd: f64,
}

/// What the checks decided about one candidate.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub job: Job,
    pub model_id: String,
    pub cost_usd: f64,
    pub status: SynthStatus,
    pub reason: String,
    pub sample_id: Option<String>,
    pub distance: Option<f32>,
    pub land_limit: Option<f32>,
    pub nearest_cluster: Option<u32>,
    /// The rows to write, for an accepted image (the label is absent when it was recovered
    /// from an interrupted run that already wrote it).
    pub sample: Option<SampleRow>,
    pub label: Option<LabelRow>,
    /// The raw embedding (what the embed stage would store).
    pub vector: Option<Vec<f32>>,
    /// A small JPEG for the report.
    pub thumbnail: Option<Vec<u8>>,
}

/// Where a gap's images should land: the unit-length centroid of its members and the 90th
/// percentile of their own distances to it.
#[derive(Debug, Clone)]
pub struct Target {
    pub centroid: Vec<f32>,
    pub p90: f32,
}

/// Everything the checks compare against.
pub struct CheckContext<'a> {
    pub cfg: &'a CheckConfig,
    pub loaded: &'a Loaded,
    /// Target per gap key.
    pub targets: HashMap<String, Target>,
    /// Cluster centroids of the mining run (unit length).
    pub clusters: Vec<(u32, Vec<f32>)>,
    /// Real and synthetic members per cluster before this run.
    pub real: HashMap<u32, usize>,
    pub synthetic: HashMap<u32, usize>,
    /// Cosine distance below which two images are near twins.
    pub near: f32,
    /// Confidence of the synthetic labels written.
    pub label_confidence: f32,
    pub backend: &'a str,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn unit_mean<'a>(rows: impl Iterator<Item = &'a [f32]>, dim: usize) -> Option<Vec<f32>> {
    let mut s = vec![0.0f32; dim];
    let mut n = 0;
    for r in rows {
        s.iter_mut().zip(r).for_each(|(a, b)| *a += b);
        n += 1;
    }
    let norm = s.iter().map(|x| x * x).sum::<f32>().sqrt();
    (n > 0 && norm > 0.0).then(|| s.into_iter().map(|x| x / norm).collect())
}

fn p90(mut d: Vec<f32>) -> f32 {
    if d.is_empty() {
        return 0.0;
    }
    d.sort_by(f32::total_cmp);
    d[((d.len() - 1) as f32 * 0.9).round() as usize]
}

/// Targets of the gaps, cluster centroids and member counts, from the loaded vectors.
pub fn context<'a>(
    loaded: &'a Loaded,
    gaps: &[Gap],
    cfg: &'a CheckConfig,
    label_confidence: f32,
    backend: &'a str,
) -> CheckContext<'a> {
    let v = &loaded.vectors;
    let row = super::load::row_index(v);
    let vec_of = |id: &str| row.get(id).map(|&r| &v.data[r * v.dim..(r + 1) * v.dim]);
    let target_of = |ids: Vec<&str>| -> Option<Target> {
        let rows: Vec<&[f32]> = ids.iter().filter_map(|id| vec_of(id)).collect();
        let centroid = unit_mean(rows.iter().copied(), v.dim)?;
        let p = p90(rows.iter().map(|r| 1.0 - dot(r, &centroid)).collect());
        Some(Target { centroid, p90: p })
    };
    let mut by_cluster: HashMap<u32, Vec<&str>> = HashMap::new();
    let (mut real, mut synthetic) = (HashMap::new(), HashMap::new());
    for m in &loaded.plan.members {
        by_cluster.entry(m.cluster).or_default().push(&m.sample_id);
        if m.source == SampleSource::Synthetic.as_str() {
            *synthetic.entry(m.cluster).or_insert(0) += 1;
        } else {
            *real.entry(m.cluster).or_insert(0) += 1;
        }
    }
    let mut clusters: Vec<(u32, Vec<f32>)> = by_cluster
        .iter()
        .filter_map(|(c, ids)| {
            unit_mean(ids.iter().filter_map(|id| vec_of(id)), v.dim).map(|m| (*c, m))
        })
        .collect();
    clusters.sort_by_key(|(c, _)| *c);
    let mut targets = HashMap::new();
    for g in gaps {
        let ids: Vec<&str> = match (&g.cluster, &g.stratum) {
            (Some(c), _) => by_cluster.get(c).cloned().unwrap_or_default(),
            (None, Some((k, val))) => loaded
                .plan
                .members
                .iter()
                .filter(|m| m.attr(k) == Some(val.as_str()))
                .map(|m| m.sample_id.as_str())
                .collect(),
            _ => Vec::new(),
        };
        if let Some(t) = target_of(ids) {
            targets.insert(g.key.clone(), t);
        }
    }
    let near = cfg
        .near_dup_distance
        .or(loaded.near_threshold.map(|t| t as f32))
        .unwrap_or(0.02);
    CheckContext {
        cfg,
        loaded,
        targets,
        clusters,
        real,
        synthetic,
        near,
        label_confidence,
        backend,
    }
}

fn thumbnail(img: &DynamicImage) -> Option<Vec<u8>> {
    let t = img.thumbnail(128, 128).to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&t)
        .ok()?;
    Some(out)
}

fn pixel_std(img: &DynamicImage) -> f32 {
    let g = img.thumbnail(64, 64).to_luma8();
    let n = g.len().max(1) as f32;
    let mean = g.iter().map(|&p| f32::from(p)).sum::<f32>() / n;
    (g.iter()
        .map(|&p| (f32::from(p) - mean).powi(2))
        .sum::<f32>()
        / n)
        .sqrt()
}

/// The nearest row of `v` among `rows` (all when `None`) to unit vector `q`: (distance, id).
fn nearest<'v>(
    v: &'v VectorRows,
    q: &[f32],
    keep: impl Fn(&str) -> bool,
) -> Option<(f32, &'v str)> {
    let mut best: Option<(f32, &str)> = None;
    for (i, id) in v.ids.iter().enumerate() {
        if !keep(id) {
            continue;
        }
        let d = 1.0 - dot(&v.data[i * v.dim..(i + 1) * v.dim], q);
        if best.is_none_or(|(b, _)| d < b) {
            best = Some((d, id.as_str()));
        }
    }
    best
}

/// The `synthetic` label of a generated image: by construction for procedural scenes, at the
/// configured confidence for a model that may not have drawn what it was asked for.
fn label_row(ctx: &CheckContext<'_>, c: &Candidate, sample_id: &str) -> LabelRow {
    LabelRow {
        sample_id: sample_id
            .parse()
            .unwrap_or_else(|_| SampleId::of_bytes(&c.bytes)),
        label: c.job.label,
        source: LabelSource::Synthetic,
        confidence: if ctx.backend == "procedural" {
            1.0
        } else {
            ctx.label_confidence
        },
        author: c.model_id.clone(),
        ts: Utc::now(),
    }
}

fn verdict(c: &Candidate, status: SynthStatus, reason: String) -> Verdict {
    Verdict {
        job: c.job.clone(),
        model_id: c.model_id.clone(),
        cost_usd: c.cost_usd,
        status,
        reason,
        sample_id: Some(SampleId::of_bytes(&c.bytes).to_string()),
        distance: None,
        land_limit: None,
        nearest_cluster: None,
        sample: None,
        label: None,
        vector: None,
        thumbnail: None,
    }
}

/// Checks every candidate; accepted ones carry the rows to write. Verdicts come back in the
/// candidates' order; of two copies the first is kept.
pub fn check(
    ctx: &CheckContext<'_>,
    encoder: &dyn ImageEncoder,
    candidates: Vec<Candidate>,
) -> Result<Vec<Verdict>, crate::embed::EmbedError> {
    let cfg = ctx.cfg;
    let limits = DecodeLimits::default();
    let store = &ctx.loaded.samples;
    let mut out: Vec<(usize, Verdict)> = Vec::with_capacity(candidates.len());
    let mut seen_ids: HashSet<String> = HashSet::new();
    let mut seen_hashes: Vec<(u64, String)> = Vec::new();
    // Stage 1: bytes and pixels.
    let mut decoded: Vec<(usize, Candidate, DynamicImage, u64, Verdict)> = Vec::new();
    for (at, c) in candidates.into_iter().enumerate() {
        let mut v = verdict(&c, SynthStatus::Rejected, String::new());
        let id = v.sample_id.clone().unwrap_or_default();
        let img = match decode(&c.bytes, &limits) {
            Ok(d) => d.image,
            Err(e) => {
                v.reason = format!("undecodable: {e}");
                out.push((at, v));
                continue;
            }
        };
        v.thumbnail = thumbnail(&img);
        if img.width().min(img.height()) < cfg.min_side_px {
            v.reason = format!(
                "too small: {}×{} (sides below {} px)",
                img.width(),
                img.height(),
                cfg.min_side_px
            );
            out.push((at, v));
            continue;
        }
        let std = pixel_std(&img);
        if std < cfg.min_pixel_std {
            v.reason = format!("blank: pixel std {std:.1} < {}", cfg.min_pixel_std);
            out.push((at, v));
            continue;
        }
        if let Some(f) = store.get(&id) {
            if f.source == SampleSource::Synthetic.as_str()
                && f.source_ref.ends_with(&c.job.synth_id)
            {
                // An interrupted run wrote this very image before recording its job.
                v.status = SynthStatus::Accepted;
                v.reason = "recovered: written by an interrupted run".into();
                v.label = Some(label_row(ctx, &c, &id));
            } else if ctx.loaded.held_out.contains(&id) {
                v.reason = format!("leak: exact copy of held-out sample {id}");
            } else {
                v.reason = format!("duplicate: exact copy of stored sample {id}");
            }
            out.push((at, v));
            continue;
        }
        if !seen_ids.insert(id.clone()) {
            v.reason = "duplicate: exact copy of another new image".into();
            out.push((at, v));
            continue;
        }
        let h = phash(&img);
        let twin = store
            .iter()
            .map(|(sid, f)| (hamming(h, f.phash), sid.as_str()))
            .chain(
                seen_hashes
                    .iter()
                    .map(|(p, sid)| (hamming(h, *p), sid.as_str())),
            )
            .filter(|(d, _)| *d <= cfg.phash_max_hamming)
            .min();
        if let Some((d, sid)) = twin {
            v.reason = if ctx.loaded.held_out.contains(sid) {
                format!("leak: re-encoded copy of held-out sample {sid} (phash distance {d})")
            } else {
                format!("duplicate: re-encoded copy of {sid} (phash distance {d})")
            };
            out.push((at, v));
            continue;
        }
        seen_hashes.push((h, id));
        decoded.push((at, c, img, h, v));
    }
    // Stage 2: embeddings.
    let images: Vec<DynamicImage> = decoded
        .iter()
        .map(|(_, _, img, _, _)| img.clone())
        .collect();
    let mut raw = Vec::with_capacity(images.len());
    for chunk in images.chunks(16) {
        raw.extend(encoder.embed_images(chunk)?);
    }
    drop(images);
    let mut new_rows = VectorRows {
        dim: ctx.loaded.vectors.dim,
        ..VectorRows::default()
    };
    let mut added: HashMap<u32, usize> = HashMap::new();
    for ((at, c, img, h, mut v), vector) in decoded.into_iter().zip(raw) {
        let mut unit = VectorRows {
            ids: vec![String::new()],
            data: vector.clone(),
            dim: vector.len(),
            non_finite: Vec::new(),
        };
        normalise(&mut unit);
        let q = unit.data;
        if q.len() != ctx.loaded.vectors.dim || q.iter().any(|x| !x.is_finite()) {
            v.reason = format!(
                "embedding: {} values (the store has {}), or not finite",
                q.len(),
                ctx.loaded.vectors.dim
            );
            out.push((at, v));
            continue;
        }
        let held = &ctx.loaded.held_out;
        if let Some((d, sid)) = nearest(&ctx.loaded.vectors, &q, |id| held.contains(id))
            && d < ctx.near
        {
            v.reason = format!("leak: near twin of held-out sample {sid} (distance {d:.4})");
            out.push((at, v));
            continue;
        }
        let twin = nearest(&ctx.loaded.vectors, &q, |_| true)
            .into_iter()
            .chain(nearest(&new_rows, &q, |_| true))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((d, sid)) = twin
            && d < ctx.near
        {
            v.reason = format!("duplicate: near twin of {sid} (distance {d:.4})");
            out.push((at, v));
            continue;
        }
        let nearest_cluster = ctx
            .clusters
            .iter()
            .map(|(cl, cen)| (1.0 - dot(&q, cen), *cl))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, cl)| cl);
        v.nearest_cluster = nearest_cluster;
        if let Some(t) = ctx.targets.get(&c.job.gap) {
            let d = 1.0 - dot(&q, &t.centroid);
            let limit = cfg.land_ratio * t.p90.max(1e-4);
            v.distance = Some(d);
            v.land_limit = Some(limit);
            // It lands when it is as close to the gap's centroid as the gap's own members are,
            // or when the gap's cluster is the nearest of all.
            let in_cluster = c.job.cluster.is_some() && c.job.cluster == nearest_cluster;
            if d > limit && !in_cluster {
                v.reason = match nearest_cluster {
                    Some(cl) => format!(
                        "missed gap: distance {d:.4} to its centroid > {limit:.4}, nearest cluster {cl}"
                    ),
                    None => format!("missed gap: distance {d:.4} to its centroid > {limit:.4}"),
                };
                out.push((at, v));
                continue;
            }
        }
        if let Some(cl) = nearest_cluster {
            let real = ctx.real.get(&cl).copied().unwrap_or(0);
            let synth =
                ctx.synthetic.get(&cl).copied().unwrap_or(0) + added.get(&cl).copied().unwrap_or(0);
            if (synth + 1) as f32 > cfg.max_synthetic_ratio * real as f32 {
                v.reason = format!(
                    "cap: cluster {cl} already has {synth} synthetic images for {real} real (≤ {:.0}%)",
                    100.0 * cfg.max_synthetic_ratio
                );
                out.push((at, v));
                continue;
            }
            *added.entry(cl).or_default() += 1;
        }
        let sample_id = SampleId::of_bytes(&c.bytes);
        let mut tags: Vec<String> = c
            .job
            .attributes
            .iter()
            .map(|(k, val)| format!("{k}={val}"))
            .collect();
        tags.push(format!("synth_task={}", c.job.task.as_str()));
        tags.push(format!("synth_gap={}", c.job.gap));
        // The split's groups (train::Splits): one request is one group, and an edit follows the
        // frame it was made from, so neither can leak across the eval line.
        tags.push(format!("synth_request={}", c.job.request_id));
        if let Some(src) = &c.job.source {
            tags.push(format!("synth_source={}", src.sample_id));
        }
        let format = crate::imaging::decode(&c.bytes, &limits)
            .map(|d| d.format)
            .unwrap_or("jpeg");
        let now = Utc::now();
        v.sample = Some(SampleRow {
            sample_id: sample_id.clone(),
            width: img.width(),
            height: img.height(),
            format: format.to_string(),
            source: SampleSource::Synthetic.as_str().into(),
            source_ref: format!("synth:{}:{}:{}", ctx.backend, c.model_id, c.job.synth_id),
            era: Era::guess_from_size(img.width(), img.height())
                .as_str()
                .into(),
            tags,
            phash: h,
            received_at: now,
            image: c.bytes.clone(),
        });
        v.label = Some(label_row(ctx, &c, sample_id.as_str()));
        v.status = SynthStatus::Accepted;
        v.vector = Some(vector);
        new_rows.ids.push(sample_id.to_string());
        new_rows.data.extend_from_slice(&q);
        out.push((at, v));
    }
    out.sort_by_key(|(at, _)| *at);
    Ok(out.into_iter().map(|(_, v)| v).collect())
}

/// The label an accepted verdict wrote (for counts).
pub fn accepted_label(v: &Verdict) -> Option<Label> {
    (v.status == SynthStatus::Accepted).then_some(v.job.label)
}
