//! Procedural street scenes with and without roadwork: road in perspective with lane markings, sky,
//! buildings, trees, parked and moving cars, pedestrians; for positives cones, barriers, roadwork
//! signs, workers in high-visibility vests, excavators, arrow boards and dug asphalt; varied
//! daytime, weather, camera height and pitch; JPEG sizes from 224² to 1920×1080.
//!
//! Clean scenes include hard negatives (orange vehicles, people in orange jackets without reflective
//! stripes, striped poles) so a classifier has to look at the right things.

mod canvas;
mod natix;
mod render;
mod spec;

use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::store::manifest::{MANIFEST_FILE, ManifestEntry};
use crate::store::{Label, LabelSource, SampleSource};

pub use natix::{natix_schema, write_natix_shard};
pub use render::render;
pub use spec::{Daytime, Element, Environment, SceneSpec, Weather, scene_rng};

/// Version of the drawing code; part of every `source_ref`, so images from a changed generator are
/// told apart from old ones.
pub const GENERATOR: &str = "procedural-v1";

/// Why scenes could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SceneError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode scene {index} as JPEG: {detail}")]
    Encode { index: u64, detail: String },
}

/// What a generation run wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerateSummary {
    pub out_dir: PathBuf,
    pub n: usize,
    pub roadwork: usize,
    pub clean: usize,
    pub bytes: u64,
    pub elapsed_s: f64,
}

/// Renders and JPEG-encodes one scene.
pub fn scene_jpeg(spec: &SceneSpec) -> Result<Vec<u8>, SceneError> {
    let img = render(spec);
    let mut buf = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, spec.jpeg_quality)
        .encode_image(&img)
        .map_err(|e| SceneError::Encode {
            index: spec.index,
            detail: e.to_string(),
        })?;
    Ok(buf)
}

/// Relative path of a scene inside the output folder: `roadwork/…` or `clean/…`, so the folder is
/// ingestible by its layout alone.
pub fn scene_path(spec: &SceneSpec) -> String {
    let class = match spec.label {
        Label::Roadwork => "roadwork",
        Label::Clean => "clean",
    };
    format!("{class}/scene-s{}-{:06}.jpg", spec.seed, spec.index)
}

/// The manifest line for a scene.
pub fn manifest_entry(spec: &SceneSpec) -> ManifestEntry {
    ManifestEntry {
        file: scene_path(spec),
        label: Some(spec.label),
        label_source: Some(LabelSource::Synthetic),
        label_author: Some(GENERATOR.into()),
        source: Some(SampleSource::Synthetic),
        source_ref: Some(format!(
            "{GENERATOR}:seed={}:index={}",
            spec.seed, spec.index
        )),
        tags: spec.tags(),
    }
}

/// Writes scenes `0..n` of `seed` under `out`, with `manifest.jsonl` and `labels.csv`.
/// Same (n, seed) → byte-identical files.
pub fn generate_scenes(
    out: &Path,
    n: usize,
    seed: u64,
    progress: bool,
) -> Result<GenerateSummary, SceneError> {
    let started = std::time::Instant::now();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SceneError::Io { path, source }
    };
    for class in ["roadwork", "clean"] {
        std::fs::create_dir_all(out.join(class)).map_err(io(&out.join(class)))?;
    }
    let bar = if progress {
        indicatif::ProgressBar::new(n as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let specs: Vec<SceneSpec> = (0..n as u64).map(|i| SceneSpec::draw(seed, i)).collect();
    let bytes: Vec<u64> = specs
        .par_iter()
        .map(|spec| {
            let jpg = scene_jpeg(spec)?;
            let path = out.join(scene_path(spec));
            std::fs::write(&path, &jpg).map_err(io(&path))?;
            bar.inc(1);
            Ok(jpg.len() as u64)
        })
        .collect::<Result<_, SceneError>>()?;
    bar.finish_and_clear();
    let manifest_path = out.join(MANIFEST_FILE);
    let mut manifest =
        std::io::BufWriter::new(std::fs::File::create(&manifest_path).map_err(io(&manifest_path))?);
    let mut csv = String::from("path,label\n");
    for spec in &specs {
        let line = serde_json::to_string(&manifest_entry(spec)).unwrap_or_default();
        writeln!(manifest, "{line}").map_err(io(&manifest_path))?;
        csv.push_str(&format!("{},{}\n", scene_path(spec), spec.label.as_u8()));
    }
    manifest.flush().map_err(io(&manifest_path))?;
    let csv_path = out.join("labels.csv");
    std::fs::write(&csv_path, csv).map_err(io(&csv_path))?;
    let roadwork = specs.iter().filter(|s| s.label == Label::Roadwork).count();
    Ok(GenerateSummary {
        out_dir: out.to_path_buf(),
        n,
        roadwork,
        clean: n - roadwork,
        bytes: bytes.iter().sum(),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}
