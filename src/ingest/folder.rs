//! Image-folder ingest. A label comes from, in order: the folder's `manifest.jsonl`, a `path,label`
//! CSV, or the nearest enclosing directory named `roadwork`/`clean` (also `positive`/`negative`,
//! `1`/`0`). Files with none are stored unlabelled.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::Utc;
use rayon::prelude::*;

use super::batch::{Item, Writer};
use super::{IngestError, IngestSummary, Ingestor, image_facts};
use crate::store::RunKind;
use crate::store::manifest::{MANIFEST_FILE, ManifestEntry};
use crate::store::{Era, Label, LabelRow, LabelSource, SampleRow, SampleSource};

/// How to read one folder.
#[derive(Debug, Clone)]
pub struct FolderOptions {
    /// `path,label` CSV (header optional); paths relative to the CSV's folder or the image folder.
    /// Default: `labels.csv` at the folder root, when present.
    pub labels_csv: Option<PathBuf>,
    /// Source recorded for images the manifest does not describe.
    pub source: SampleSource,
    /// Author of folder and CSV labels; defaults to the folder's name.
    pub author: Option<String>,
}

impl Default for FolderOptions {
    fn default() -> Self {
        Self {
            labels_csv: None,
            source: SampleSource::Upload,
            author: None,
        }
    }
}

/// A label CSV at the folder root with this name is used when none is given.
pub const DEFAULT_LABELS_CSV: &str = "labels.csv";

/// Files read and decoded per parallel chunk.
const CHUNK: usize = 32;

fn rel_key(p: &Path) -> String {
    p.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn list_files(root: &Path, exclude: &[PathBuf]) -> Result<Vec<PathBuf>, IngestError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|source| IngestError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in rd {
            let entry = entry.map_err(|source| IngestError::Io {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if !exclude.iter().any(|e| e == &path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn label_from_dirs(rel: &Path) -> Option<Label> {
    rel.parent()?.components().rev().find_map(|c| {
        match c
            .as_os_str()
            .to_string_lossy()
            .to_ascii_lowercase()
            .as_str()
        {
            "roadwork" | "positive" | "1" => Some(Label::Roadwork),
            "clean" | "negative" | "0" => Some(Label::Clean),
            _ => None,
        }
    })
}

/// Reads `path,label` rows; keys are paths relative to `root`.
fn read_label_csv(csv_path: &Path, root: &Path) -> Result<HashMap<String, Label>, IngestError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(csv_path)
        .map_err(|e| IngestError::LabelFile {
            path: csv_path.into(),
            line: 0,
            why: e.to_string(),
        })?;
    let base = csv_path.parent().unwrap_or(Path::new("."));
    let mut out = HashMap::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 1;
        let bad = |why: String| IngestError::LabelFile {
            path: csv_path.into(),
            line,
            why,
        };
        let rec = rec.map_err(|e| bad(e.to_string()))?;
        if rec.len() < 2 {
            return Err(bad("expected two columns: path,label".into()));
        }
        let (file, label) = (&rec[0], &rec[1]);
        let Some(label) = Label::parse_loose(label) else {
            if line == 1 {
                continue; // a header row
            }
            return Err(bad(format!(
                "{label:?} is not a label (1/0, roadwork/clean)"
            )));
        };
        let as_given = Path::new(file);
        let abs = if as_given.is_absolute() {
            as_given.to_path_buf()
        } else if base.join(as_given).exists() {
            base.join(as_given)
        } else {
            root.join(as_given)
        };
        let key = match abs.strip_prefix(root) {
            Ok(rel) => rel_key(rel),
            Err(_) => rel_key(as_given),
        };
        out.insert(key, label);
    }
    Ok(out)
}

fn read_manifest(path: &Path) -> Result<HashMap<String, ManifestEntry>, IngestError> {
    let text = std::fs::read_to_string(path).map_err(|source| IngestError::Io {
        path: path.into(),
        source,
    })?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: ManifestEntry = serde_json::from_str(line).map_err(|e| IngestError::LabelFile {
            path: path.into(),
            line: i + 1,
            why: e.to_string(),
        })?;
        out.insert(e.file.clone(), e);
    }
    Ok(out)
}

impl Ingestor {
    /// Ingests every file under `dir`. Non-images and corrupt images are skipped with their reason.
    pub async fn ingest_folder(
        &self,
        dir: &Path,
        opts: &FolderOptions,
    ) -> Result<IngestSummary, IngestError> {
        if !dir.is_dir() {
            return Err(IngestError::NotADirectory { path: dir.into() });
        }
        let root = dir.canonicalize().map_err(|source| IngestError::Io {
            path: dir.into(),
            source,
        })?;
        let manifest_path = root.join(MANIFEST_FILE);
        let manifest = if manifest_path.is_file() {
            read_manifest(&manifest_path)?
        } else {
            HashMap::new()
        };
        let default_csv = root.join(DEFAULT_LABELS_CSV);
        let csv_abs = match &opts.labels_csv {
            Some(p) => Some(p.canonicalize().map_err(|source| IngestError::Io {
                path: p.clone(),
                source,
            })?),
            None => default_csv.is_file().then_some(default_csv),
        };
        let csv_labels = match &csv_abs {
            Some(p) => read_label_csv(p, &root)?,
            None => HashMap::new(),
        };
        let mut exclude = vec![manifest_path];
        exclude.extend(csv_abs.clone());
        let files = list_files(&root, &exclude)?;
        let author = opts.author.clone().unwrap_or_else(|| {
            root.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "folder".into())
        });
        let params = serde_json::json!({
            "dir": root.display().to_string(),
            "labels_csv": csv_abs.as_ref().map(|p| p.display().to_string()),
            "source": opts.source.as_str(),
            "files": files.len(),
        });
        let mut w = Writer::start(
            &self.store,
            &self.cfg,
            RunKind::IngestFolder,
            root.display().to_string(),
            params,
        )
        .await?;
        let bar = self.bar(files.len() as u64, "folder");
        for chunk in files.chunks(CHUNK) {
            let limits = self.limits;
            let chunk: Vec<PathBuf> = chunk.to_vec();
            let prepared = tokio::task::spawn_blocking(move || {
                chunk
                    .into_par_iter()
                    .map(|p| {
                        let r = std::fs::read(&p)
                            .map_err(|e| format!("cannot read: {e}"))
                            .and_then(|bytes| {
                                image_facts(&bytes, &limits)
                                    .map(|f| (f, bytes))
                                    .map_err(|e| e.to_string())
                            });
                        (p, r)
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .map_err(|e| IngestError::Task(e.to_string()));
            let prepared = match prepared {
                Ok(p) => p,
                Err(e) => return Err(w.fail(e).await),
            };
            for (path, result) in prepared {
                w.summary.scanned += 1;
                bar.inc(1);
                let rel = rel_key(path.strip_prefix(&root).unwrap_or(&path));
                let (facts, bytes) = match result {
                    Ok(x) => x,
                    Err(reason) => {
                        w.skip(rel, reason);
                        continue;
                    }
                };
                let entry = manifest.get(&rel);
                let label = entry
                    .and_then(|e| e.label)
                    .or_else(|| csv_labels.get(&rel).copied())
                    .or_else(|| label_from_dirs(Path::new(&rel)));
                let now = Utc::now();
                let label_row = label.map(|label| LabelRow {
                    sample_id: facts.sample_id.clone(),
                    label,
                    source: entry
                        .and_then(|e| e.label_source)
                        .unwrap_or(LabelSource::Dataset),
                    confidence: 1.0,
                    author: entry
                        .and_then(|e| e.label_author.clone())
                        .unwrap_or_else(|| author.clone()),
                    ts: now,
                });
                let sample = SampleRow {
                    sample_id: facts.sample_id,
                    width: facts.width,
                    height: facts.height,
                    format: facts.format.into(),
                    source: entry
                        .and_then(|e| e.source)
                        .unwrap_or(opts.source)
                        .as_str()
                        .into(),
                    source_ref: entry
                        .and_then(|e| e.source_ref.clone())
                        .unwrap_or_else(|| rel.clone()),
                    era: Era::guess_from_size(facts.width, facts.height)
                        .as_str()
                        .into(),
                    tags: entry.map(|e| e.tags.clone()).unwrap_or_default(),
                    phash: facts.phash,
                    received_at: now,
                    image: bytes,
                };
                let item = Item {
                    sample: Some(sample),
                    label: label_row,
                    prediction: None,
                    shadow: None,
                };
                if let Err(e) = w.push(item).await {
                    return Err(w.fail(e).await);
                }
            }
        }
        bar.finish_and_clear();
        w.finish().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_from_nearest_labelled_dir() {
        assert_eq!(
            label_from_dirs(Path::new("a/roadwork/x/img.jpg")),
            Some(Label::Roadwork)
        );
        assert_eq!(
            label_from_dirs(Path::new("roadwork/clean/img.jpg")),
            Some(Label::Clean)
        );
        assert_eq!(label_from_dirs(Path::new("img.jpg")), None);
        assert_eq!(label_from_dirs(Path::new("other/img.jpg")), None);
    }
}
