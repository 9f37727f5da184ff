//! `roadwork bench ingest`: folder-ingest throughput on full-HD JPEGs (the size validators send since
//! May 2026) into a fresh store: images/s, MB/s and peak memory of the ingest alone.

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::config::Config;
use crate::ingest::{FolderOptions, Ingestor};
use crate::pipeline::PipelineError;
use crate::store::Store;
use crate::synth::scenes::{SceneError, SceneSpec, scene_jpeg, scene_path};

/// One benchmark result.
#[derive(Debug, Clone, Serialize)]
pub struct IngestBench {
    pub images: usize,
    pub width: u32,
    pub height: u32,
    pub total_mib: f64,
    pub seconds: f64,
    pub images_per_s: f64,
    pub mib_per_s: f64,
    /// Peak resident memory during the ingest, MiB (`None` where the OS does not say).
    pub peak_rss_mib: Option<f64>,
    pub threads: usize,
    pub batch_rows: usize,
}

impl IngestBench {
    /// A Markdown table row set, ready for docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        format!(
            "| images | size | MiB | s | images/s | MiB/s | peak RSS MiB | threads |\n\
             |---|---|---|---|---|---|---|---|\n\
             | {} | {}×{} | {:.1} | {:.2} | {:.1} | {:.1} | {} | {} |\n",
            self.images,
            self.width,
            self.height,
            self.total_mib,
            self.seconds,
            self.images_per_s,
            self.mib_per_s,
            self.peak_rss_mib
                .map(|m| format!("{m:.0}"))
                .unwrap_or_else(|| "n/a".into()),
            self.threads
        )
    }
}

fn write_scenes(dir: &Path, n: usize, width: u32, height: u32) -> Result<u64, SceneError> {
    let sizes = (0..n as u64)
        .into_par_iter()
        .map(|i| {
            let mut spec = SceneSpec::draw(2026, i);
            spec.width = width;
            spec.height = height;
            let jpg = scene_jpeg(&spec)?;
            let path = dir.join(scene_path(&spec));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| SceneError::Io {
                    path: parent.into(),
                    source,
                })?;
            }
            std::fs::write(&path, &jpg).map_err(|source| SceneError::Io { path, source })?;
            Ok(jpg.len() as u64)
        })
        .collect::<Result<Vec<_>, SceneError>>()?;
    Ok(sizes.iter().sum())
}

/// Generates `n` JPEGs of `width`×`height` under `work`, then times their ingest into a new store
/// there. `work` is left in place for inspection.
pub async fn run(
    cfg: &Config,
    work: &Path,
    n: usize,
    width: u32,
    height: u32,
) -> Result<IngestBench, PipelineError> {
    let images = work.join("images");
    let _ = std::fs::remove_dir_all(work);
    let (dir, w, h) = (images.clone(), width, height);
    let bytes = tokio::task::spawn_blocking(move || write_scenes(&dir, n, w, h))
        .await
        .map_err(|e| PipelineError::Task(e.to_string()))??;
    let store = Store::open(&work.join("store").to_string_lossy()).await?;
    let ingestor = Ingestor::new(store, cfg.ingest.clone(), cfg.decode).quiet();
    let measured = super::reset_peak_rss();
    let t = Instant::now();
    let summary = ingestor
        .ingest_folder(&images, &FolderOptions::default())
        .await?;
    let seconds = t.elapsed().as_secs_f64();
    let total_mib = bytes as f64 / (1 << 20) as f64;
    Ok(IngestBench {
        images: summary.accepted,
        width,
        height,
        total_mib,
        seconds,
        images_per_s: summary.accepted as f64 / seconds,
        mib_per_s: total_mib / seconds,
        peak_rss_mib: measured
            .then(super::peak_rss_bytes)
            .flatten()
            .map(|b| b as f64 / (1 << 20) as f64),
        threads: rayon::current_num_threads(),
        batch_rows: cfg.ingest.batch_rows,
    })
}
