//! What a folder's description files say about its images, whichever tool wrote them:
//! - `manifest.jsonl`: roadwork's own (the scene generator writes it);
//! - `metadata.jsonl`: the Hugging Face `imagefolder` layout (`file_name` plus any columns; the
//!   columns `roadwork export` writes carry every label with its provenance, tags and dates);
//! - `labels.json` beside `data/`: FiftyOne's `FiftyOneImageClassificationDataset` (`classes` plus
//!   a target per file stem, or `{label, confidence, attributes}`).
//!
//! The files only describe: which files are read is decided by the folder walk, so a path in a
//! description never opens anything (`../../etc/passwd` matches no walked file and is reported).

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::IngestError;
use crate::export::{ExportLabel, FIFTYONE_LABELS, METADATA_JSONL};
use crate::store::manifest::ManifestEntry;
use crate::store::{Era, Label, LabelSource, SampleSource};

/// Description files are read whole; a larger one is refused with its size.
const MAX_DESCRIPTION_BYTES: u64 = 512 << 20;

/// One label a description gives a file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GivenLabel {
    pub label: Label,
    pub source: Option<LabelSource>,
    pub author: Option<String>,
    pub confidence: f32,
    pub ts: Option<DateTime<Utc>>,
}

/// What the description files say about one image file.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Described {
    /// Every label given (the first is the effective one when only that is known).
    pub labels: Vec<GivenLabel>,
    pub source: Option<SampleSource>,
    pub source_ref: Option<String>,
    pub tags: Vec<String>,
    pub era: Option<Era>,
    pub received_at: Option<DateTime<Utc>>,
    /// The sample id recorded at export: the bytes must hash to it.
    pub sample_id: Option<String>,
}

/// All description files of one folder, keyed by the file's path relative to the root.
#[derive(Debug, Default)]
pub(crate) struct Descriptions {
    pub by_file: HashMap<String, Described>,
    /// The description files read (excluded from the images).
    pub files: Vec<std::path::PathBuf>,
    /// FiftyOne names files by stem under `data/`; the full key is resolved against the walk.
    by_stem: HashMap<String, Described>,
}

impl Descriptions {
    /// The description of `rel` (a walked file), from any of the files.
    pub fn get(&self, rel: &str) -> Option<&Described> {
        self.by_file.get(rel).or_else(|| {
            let stem = rel.strip_prefix("data/")?;
            let stem = match stem.rsplit_once('.') {
                Some((s, _)) => s,
                None => stem,
            };
            self.by_stem.get(stem)
        })
    }

    /// Keys that name no walked file, for the summary.
    pub fn unmatched<'a>(
        &'a self,
        walked: &'a std::collections::HashSet<String>,
    ) -> impl Iterator<Item = &'a String> + 'a {
        let stems: std::collections::HashSet<&str> = walked
            .iter()
            .filter_map(|w| w.strip_prefix("data/"))
            .map(|s| s.rsplit_once('.').map_or(s, |(a, _)| a))
            .collect();
        self.by_file.keys().filter(|k| !walked.contains(*k)).chain(
            self.by_stem
                .keys()
                .filter(move |k| !stems.contains(k.as_str())),
        )
    }
}

fn read_text(path: &Path) -> Result<String, IngestError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| IngestError::Io {
        path: path.into(),
        source,
    })?;
    let bad = |why: String| IngestError::LabelFile {
        path: path.into(),
        line: 0,
        why,
    };
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() > MAX_DESCRIPTION_BYTES {
        return Err(bad(format!(
            "{} bytes is over the 512 MiB limit",
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|source| IngestError::Io {
        path: path.into(),
        source,
    })
}

/// A label spelled as a number (0/1) or a word (`roadwork`, `clean`, …).
fn loose_label(v: &serde_json::Value) -> Option<Label> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().and_then(Label::from_int),
        serde_json::Value::String(s) => Label::parse_loose(s),
        serde_json::Value::Bool(b) => Some(if *b { Label::Roadwork } else { Label::Clean }),
        _ => None,
    }
}

/// The columns of an exported record that describe a file (the rest — scores — are not
/// ingested: they belong to the store that computed them).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RecordFields {
    sample_id: Option<String>,
    source: Option<String>,
    source_ref: Option<String>,
    era: Option<String>,
    tags: Option<Vec<String>>,
    received_at: Option<DateTime<Utc>>,
    label_source: Option<String>,
    label_author: Option<String>,
    label_confidence: Option<f32>,
    labels: Option<Vec<ExportLabel>>,
}

impl RecordFields {
    /// The description, with `effective` as the only label when no full label list is given.
    fn described(self, effective: Option<Label>, confidence: Option<f32>) -> Described {
        let labels = match self.labels.filter(|l| !l.is_empty()) {
            Some(all) => all
                .into_iter()
                .filter_map(|l| {
                    Some(GivenLabel {
                        label: Label::from_int(l.label.into())?,
                        source: LabelSource::parse(&l.source),
                        author: Some(l.author),
                        confidence: l.confidence,
                        ts: Some(l.ts),
                    })
                })
                .collect(),
            None => effective
                .map(|label| GivenLabel {
                    label,
                    source: self.label_source.as_deref().and_then(LabelSource::parse),
                    author: self.label_author.clone(),
                    confidence: confidence.or(self.label_confidence).unwrap_or(1.0),
                    ts: None,
                })
                .into_iter()
                .collect(),
        };
        Described {
            labels,
            source: self.source.as_deref().and_then(|s| s.parse().ok()),
            source_ref: self.source_ref,
            tags: self.tags.unwrap_or_default(),
            era: self.era.as_deref().and_then(Era::parse),
            received_at: self.received_at,
            sample_id: self.sample_id,
        }
    }
}

fn manifest(path: &Path, out: &mut Descriptions) -> Result<(), IngestError> {
    for (i, line) in read_text(path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: ManifestEntry = serde_json::from_str(line).map_err(|e| IngestError::LabelFile {
            path: path.into(),
            line: i + 1,
            why: e.to_string(),
        })?;
        let d = Described {
            labels: e
                .label
                .map(|label| GivenLabel {
                    label,
                    source: e.label_source,
                    author: e.label_author.clone(),
                    confidence: 1.0,
                    ts: None,
                })
                .into_iter()
                .collect(),
            source: e.source,
            source_ref: e.source_ref.clone(),
            tags: e.tags.clone(),
            ..Default::default()
        };
        out.by_file.insert(e.file, d);
    }
    Ok(())
}

fn hf_metadata(path: &Path, out: &mut Descriptions) -> Result<(), IngestError> {
    for (i, line) in read_text(path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| IngestError::LabelFile {
            path: path.into(),
            line: i + 1,
            why,
        };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let Some(file) = v.get("file_name").and_then(|f| f.as_str()) else {
            return Err(bad("no \"file_name\" (the imagefolder metadata key)".into()));
        };
        let file = file.trim_start_matches("./").to_string();
        let label = v.get("label").and_then(loose_label);
        let fields: RecordFields = serde_json::from_value(v.clone()).unwrap_or_default();
        out.by_file.insert(file, fields.described(label, None));
    }
    Ok(())
}

fn fiftyone(path: &Path, out: &mut Descriptions) -> Result<(), IngestError> {
    let bad = |why: String| IngestError::LabelFile {
        path: path.into(),
        line: 0,
        why,
    };
    let doc: serde_json::Value =
        serde_json::from_str(&read_text(path)?).map_err(|e| bad(e.to_string()))?;
    let classes: Option<Vec<String>> = doc
        .get("classes")
        .and_then(|c| serde_json::from_value(c.clone()).ok());
    let Some(labels) = doc.get("labels").and_then(|l| l.as_object()) else {
        return Err(bad(
            "no \"labels\" object (FiftyOne image classification)".into()
        ));
    };
    // A target is a class index when `classes` is given, else the class name itself.
    let target = |t: &serde_json::Value| -> Option<Label> {
        match (&classes, t) {
            (Some(c), serde_json::Value::Number(n)) => {
                let name = c.get(usize::try_from(n.as_u64()?).ok()?)?;
                Label::parse_loose(name)
            }
            (_, t) => loose_label(t),
        }
    };
    for (stem, entry) in labels {
        let d = match entry {
            serde_json::Value::Object(o) => {
                let label = o.get("label").and_then(target);
                let conf = o
                    .get("confidence")
                    .and_then(|c| c.as_f64())
                    .map(|c| c as f32);
                let fields: RecordFields = o
                    .get("attributes")
                    .and_then(|a| serde_json::from_value(a.clone()).ok())
                    .unwrap_or_default();
                fields.described(label, conf)
            }
            // A list is a multilabel classification: not a binary label.
            serde_json::Value::Array(_) | serde_json::Value::Null => Described::default(),
            t => RecordFields::default().described(target(t), None),
        };
        out.by_stem.insert(stem.clone(), d);
    }
    Ok(())
}

/// Reads every description file at the folder root.
pub(crate) fn read(root: &Path) -> Result<Descriptions, IngestError> {
    let mut out = Descriptions::default();
    let m = root.join(crate::store::manifest::MANIFEST_FILE);
    if m.is_file() {
        manifest(&m, &mut out)?;
        out.files.push(m);
    }
    let h = root.join(METADATA_JSONL);
    if h.is_file() {
        hf_metadata(&h, &mut out)?;
        out.files.push(h);
    }
    let f = root.join(FIFTYONE_LABELS);
    if f.is_file() && root.join("data").is_dir() {
        fiftyone(&f, &mut out)?;
        out.files.push(f);
    }
    let info = root.join(crate::export::EXPORT_INFO);
    if info.is_file() {
        out.files.push(info);
    }
    Ok(out)
}
