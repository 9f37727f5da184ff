//! `roadwork labels import`: a filled sheet (CSV), a JSONL file, or a Label Studio export (JSON,
//! JSON-MIN or CSV) → labels with provenance, all or nothing.
//!
//! A row names its sample by `sample_id`, by `sha256` (the same thing: a sample id is the sha256
//! of the image bytes), or by `file` / `image`: an exported file name (`images/<sample_id>.jpg`,
//! also inside a Label Studio URL) or a path, relative to the label file, of an image whose bytes
//! are hashed. Its label is `label` (or `choice`): 1/0, or `roadwork`/`clean` (also yes/no,
//! true/false); a blank label is a row not labelled yet and is skipped. Its author is `author`
//! (or `annotator`, or Label Studio's `completed_by`), else the importer's `--author`.
//!
//! Refused, with every bad row listed and nothing written: a sample the store does not hold, a
//! label that is not one of those spellings, ways of naming a sample that disagree, and two rows
//! by one author for one sample that disagree. Agreeing duplicates count once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::{LabelsError, io};
use crate::store::{Label, LabelRow, LabelSource, RunKind, RunLedger, SampleId, Store, tables};

/// Largest label file read, bytes (a sheet of a million rows is ~100 MB).
pub const MAX_FILE_BYTES: u64 = 512 << 20;

/// One row that cannot be imported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadRow {
    /// Where: `line 7` (CSV, JSONL) or `task 3` / `item 3` (JSON).
    pub at: String,
    pub why: String,
}

/// How to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Author of rows that name none.
    pub author: Option<String>,
    /// `human` for people; `teacher` is written by `teach`.
    pub source: LabelSource,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            author: None,
            source: LabelSource::Human,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    pub file: PathBuf,
    pub run_id: String,
    /// Rows read (labelled or not).
    pub rows: usize,
    /// Rows with a blank label (not labelled yet), skipped.
    pub blank: usize,
    /// Distinct (sample, author) labels in the file.
    pub labels: usize,
    pub inserted: u64,
    pub updated: u64,
    /// Labels already in the store with the same value.
    pub unchanged: u64,
    pub roadwork: usize,
    pub clean: usize,
}

impl std::fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "imported {}: {} labels ({} roadwork, {} clean) from {} rows; {} new, {} changed, {} unchanged; {} blank rows skipped (run {})",
            self.file.display(),
            self.labels,
            self.roadwork,
            self.clean,
            self.rows,
            self.inserted,
            self.updated,
            self.unchanged,
            self.blank,
            self.run_id
        )
    }
}

/// A row as read from a file, before it is checked against the store.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawLabel {
    pub at: String,
    pub sample_id: Option<String>,
    pub sha256: Option<String>,
    pub file: Option<String>,
    pub label: Option<String>,
    pub author: Option<String>,
    pub ts: Option<DateTime<Utc>>,
}

fn fmt_err(path: &Path, why: impl Into<String>) -> LabelsError {
    LabelsError::Format {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Reads the rows of a label file; the format follows the extension (`.csv`, `.jsonl`/`.ndjson`,
/// `.json`). Pure: no store access.
pub fn parse_label_file(path: &Path, bytes: &[u8]) -> Result<Vec<RawLabel>, LabelsError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "csv" => parse_csv(path, bytes),
        "jsonl" | "ndjson" => parse_jsonl(path, bytes),
        "json" => parse_json(path, bytes),
        _ => Err(fmt_err(
            path,
            "unknown label file type: use .csv, .jsonl or Label Studio's .json export",
        )),
    }
}

fn parse_csv(path: &Path, bytes: &[u8]) -> Result<Vec<RawLabel>, LabelsError> {
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let header = r
        .headers()
        .map_err(|e| fmt_err(path, e.to_string()))?
        .clone();
    let find = |names: &[&str]| {
        header
            .iter()
            .position(|h| names.iter().any(|n| h.eq_ignore_ascii_case(n)))
    };
    let (id, sha, file, label, author) = (
        find(&["sample_id"]),
        find(&["sha256"]),
        find(&["file", "image", "path"]),
        find(&["label", "choice"]),
        find(&["author", "annotator"]),
    );
    let Some(label) = label else {
        return Err(fmt_err(path, "the header has no `label` column"));
    };
    if id.is_none() && sha.is_none() && file.is_none() {
        return Err(fmt_err(
            path,
            "the header names no sample: add `sample_id`, `sha256` or `file`",
        ));
    }
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        // Line 1 is the header.
        let at = format!("line {}", i + 2);
        let rec = rec.map_err(|e| fmt_err(path, format!("{at}: {e}")))?;
        let get = |c: Option<usize>| non_empty(c.and_then(|c| rec.get(c)));
        out.push(RawLabel {
            at,
            sample_id: get(id),
            sha256: get(sha),
            file: get(file),
            label: get(Some(label)),
            author: get(author),
            ts: None,
        });
    }
    Ok(out)
}

/// A flat JSON object (a JSONL line, a JSON-MIN item) → a row.
fn flat_row(at: String, v: &Value) -> Result<RawLabel, BadRow> {
    let Some(o) = v.as_object() else {
        return Err(BadRow {
            at,
            why: "not a JSON object".into(),
        });
    };
    let text = |keys: &[&str]| {
        keys.iter().find_map(|k| match o.get(*k) {
            Some(Value::String(s)) => non_empty(Some(s)),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            _ => None,
        })
    };
    Ok(RawLabel {
        sample_id: text(&["sample_id"]),
        sha256: text(&["sha256"]),
        file: text(&["file", "image", "path"]),
        label: text(&["label", "choice"]),
        author: text(&["author", "annotator"]),
        ts: text(&["updated_at", "created_at", "ts"]).and_then(|t| t.parse().ok()),
        at,
    })
}

fn parse_jsonl(path: &Path, bytes: &[u8]) -> Result<Vec<RawLabel>, LabelsError> {
    let text = std::str::from_utf8(bytes).map_err(|e| fmt_err(path, e.to_string()))?;
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("line {}", i + 1);
        match serde_json::from_str::<Value>(line) {
            Ok(v) => match flat_row(at, &v) {
                Ok(r) => out.push(r),
                Err(b) => bad.push(b),
            },
            Err(e) => bad.push(BadRow {
                at,
                why: format!("not JSON: {e}"),
            }),
        }
    }
    if !bad.is_empty() {
        return Err(LabelsError::BadRows {
            path: path.to_path_buf(),
            rows: bad,
        });
    }
    Ok(out)
}

/// Label Studio's `completed_by`: a user id, or an object with an email.
fn ls_author(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => Some(format!("label-studio-user-{n}")),
        Value::String(s) => non_empty(Some(s)),
        Value::Object(o) => o
            .get("email")
            .and_then(Value::as_str)
            .and_then(|s| non_empty(Some(s)))
            .or_else(|| o.get("id").map(|id| format!("label-studio-user-{id}"))),
        _ => None,
    }
}

/// The choice of an annotation's `result`: the `choices` region named `label`, else the only one.
fn ls_choice(result: Option<&Value>) -> Option<String> {
    let regions: Vec<&Value> = result?
        .as_array()?
        .iter()
        .filter(|r| r.get("type").and_then(Value::as_str) == Some("choices"))
        .collect();
    let region = regions
        .iter()
        .find(|r| r.get("from_name").and_then(Value::as_str) == Some("label"))
        .or(regions.first())?;
    region
        .pointer("/value/choices/0")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn parse_json(path: &Path, bytes: &[u8]) -> Result<Vec<RawLabel>, LabelsError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| fmt_err(path, e.to_string()))?;
    let Some(items) = v.as_array() else {
        return Err(fmt_err(
            path,
            "expected a JSON array (Label Studio's JSON or JSON-MIN export)",
        ));
    };
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(anns) = item.get("annotations") else {
            // JSON-MIN: one flat object per annotation, data fields at the top.
            match flat_row(format!("item {}", i + 1), item) {
                Ok(r) => out.push(r),
                Err(b) => bad.push(b),
            }
            continue;
        };
        let at = format!(
            "task {}",
            item.get("id")
                .map_or_else(|| format!("#{}", i + 1), Value::to_string)
        );
        let data = item.get("data");
        let text = |k: &str| {
            data.and_then(|d| d.get(k))
                .and_then(Value::as_str)
                .and_then(|s| non_empty(Some(s)))
        };
        let base = RawLabel {
            at: at.clone(),
            sample_id: text("sample_id"),
            sha256: text("sha256"),
            file: text("file").or_else(|| text("image")),
            ..RawLabel::default()
        };
        let anns: Vec<&Value> = anns
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|a| a.get("was_cancelled").and_then(Value::as_bool) != Some(true))
                    .collect()
            })
            .unwrap_or_default();
        if anns.is_empty() {
            out.push(base);
            continue;
        }
        for a in anns {
            out.push(RawLabel {
                label: ls_choice(a.get("result")),
                author: ls_author(a.get("completed_by")),
                ts: a
                    .get("updated_at")
                    .or(a.get("created_at"))
                    .and_then(Value::as_str)
                    .and_then(|t| t.parse().ok()),
                ..base.clone()
            });
        }
    }
    if !bad.is_empty() {
        return Err(LabelsError::BadRows {
            path: path.to_path_buf(),
            rows: bad,
        });
    }
    Ok(out)
}

/// The sample an exported file name stands for: the last path segment (also after `?d=` or `/`
/// in a Label Studio URL) without its extension, when that is a sample id.
fn id_from_file_name(file: &str) -> Option<SampleId> {
    let last = file.rsplit(['/', '\\', '=']).next()?;
    let stem = last.split('.').next()?;
    stem.parse().ok()
}

/// Resolves how a row names its sample; `base` is the label file's directory.
fn resolve_sample(r: &RawLabel, base: &Path) -> Result<SampleId, String> {
    let mut named: Vec<(String, SampleId)> = Vec::new();
    for (what, v) in [("sample_id", &r.sample_id), ("sha256", &r.sha256)] {
        if let Some(v) = v {
            let id = v
                .parse::<SampleId>()
                .map_err(|_| format!("{what} {v:?} is not 64 hex characters"))?;
            named.push((what.into(), id));
        }
    }
    if let Some(f) = &r.file {
        let id = match id_from_file_name(f) {
            Some(id) => id,
            None => {
                let p = base.join(f);
                let meta = std::fs::metadata(&p)
                    .map_err(|_| format!("file {f:?} is neither an exported file name nor a file next to the label file"))?;
                if meta.len() > MAX_FILE_BYTES {
                    return Err(format!("file {f:?} is too large to be an image"));
                }
                let bytes = std::fs::read(&p).map_err(|e| format!("file {f:?}: {e}"))?;
                SampleId::of_bytes(&bytes)
            }
        };
        named.push(("file".into(), id));
    }
    let Some((_, first)) = named.first().cloned() else {
        return Err("names no sample (sample_id, sha256 or file)".into());
    };
    if let Some((what, other)) = named.iter().find(|(_, id)| *id != first) {
        return Err(format!(
            "{} names {} but {what} names {}",
            named[0].0,
            &first.as_str()[..12],
            &other.as_str()[..12]
        ));
    }
    Ok(first)
}

/// Checks raw rows against each other and the store; the labels to write, or every bad row.
pub(crate) async fn validate(
    store: &Store,
    path: &Path,
    raw: &[RawLabel],
    opts: &ImportOptions,
    confidence: impl Fn(&RawLabel) -> f32,
) -> Result<(Vec<LabelRow>, usize), LabelsError> {
    let base = path.parent().unwrap_or(Path::new("."));
    let now = Utc::now();
    let mut bad = Vec::new();
    let mut blank = 0;
    // (sample, author) → (label, where first seen, row).
    let mut by_key: BTreeMap<(SampleId, String), (Label, String, LabelRow)> = BTreeMap::new();
    for r in raw {
        let Some(text) = &r.label else {
            blank += 1;
            continue;
        };
        let sample = match resolve_sample(r, base) {
            Ok(s) => s,
            Err(why) => {
                bad.push(BadRow {
                    at: r.at.clone(),
                    why,
                });
                continue;
            }
        };
        let Some(label) = Label::parse_loose(text) else {
            bad.push(BadRow {
                at: r.at.clone(),
                why: format!("label {text:?} is not 1/0 (roadwork/clean)"),
            });
            continue;
        };
        let Some(author) = r.author.clone().or_else(|| opts.author.clone()) else {
            bad.push(BadRow {
                at: r.at.clone(),
                why: "no author: add an `author` column or pass --author".into(),
            });
            continue;
        };
        let key = (sample.clone(), author.clone());
        match by_key.get(&key) {
            Some((l, first, _)) if *l != label => bad.push(BadRow {
                at: r.at.clone(),
                why: format!(
                    "{author} labelled {} as {} here and as {} at {first}",
                    &sample.as_str()[..12],
                    label.as_u8(),
                    l.as_u8()
                ),
            }),
            Some(_) => {}
            None => {
                let row = LabelRow {
                    sample_id: sample,
                    label,
                    source: opts.source,
                    confidence: confidence(r),
                    author,
                    ts: r.ts.unwrap_or(now),
                };
                by_key.insert(key, (label, r.at.clone(), row));
            }
        }
    }
    let ids: Vec<&str> = by_key.keys().map(|(s, _)| s.as_str()).collect();
    let have = store.present(tables::SAMPLES, "sample_id", &ids).await?;
    for (label_at, row) in by_key.values().map(|(_, at, row)| (at, row)) {
        if !have.contains(row.sample_id.as_str()) {
            bad.push(BadRow {
                at: label_at.clone(),
                why: format!("sample {} is not in the store", row.sample_id),
            });
        }
    }
    if !bad.is_empty() {
        return Err(LabelsError::BadRows {
            path: path.to_path_buf(),
            rows: bad,
        });
    }
    Ok((by_key.into_values().map(|(_, _, r)| r).collect(), blank))
}

/// Imports the label file at `path` into `store` (one commit, recorded in the run ledger).
pub async fn import_labels(
    store: &Store,
    path: &Path,
    opts: &ImportOptions,
) -> Result<ImportSummary, LabelsError> {
    let meta = tokio::fs::metadata(path).await.map_err(io(path))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(fmt_err(
            path,
            format!(
                "{} bytes is above the {MAX_FILE_BYTES}-byte limit",
                meta.len()
            ),
        ));
    }
    let bytes = tokio::fs::read(path).await.map_err(io(path))?;
    let raw = parse_label_file(path, &bytes)?;
    let (rows, blank) = validate(store, path, &raw, opts, |_| 1.0).await?;
    let params = serde_json::json!({
        "file": path,
        "author": opts.author,
        "source": opts.source.as_str(),
    });
    let mut run = RunLedger::start(store, RunKind::LabelsImport, params).await?;
    let result = async {
        let w = if rows.is_empty() {
            Default::default()
        } else {
            store.put_labels(&rows).await?
        };
        run.wrote(tables::LABELS, &w);
        let roadwork = rows.iter().filter(|r| r.label == Label::Roadwork).count();
        Ok::<_, LabelsError>(ImportSummary {
            file: path.to_path_buf(),
            run_id: run.id().to_string(),
            rows: raw.len(),
            blank,
            labels: rows.len(),
            inserted: w.inserted,
            updated: w.updated,
            unchanged: rows.len() as u64 - w.inserted - w.updated,
            roadwork,
            clean: rows.len() - roadwork,
        })
    }
    .await;
    run.close(result).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_studio_exports_parse_with_authors_choices_and_cancellations() {
        let id = "a".repeat(64);
        let json = serde_json::json!([
            {"id": 1, "data": {"image": format!("/data/local-files/?d=x/images/{id}.jpg")},
             "annotations": [
                {"completed_by": 3, "result": [{"type": "choices", "from_name": "label",
                  "to_name": "image", "value": {"choices": ["roadwork"]}}]},
                {"completed_by": {"id": 4, "email": "ann@example.com"}, "was_cancelled": true,
                 "result": []}
             ]},
            {"id": 2, "data": {"sample_id": id}, "annotations": []}
        ]);
        let rows = parse_label_file(Path::new("x.json"), json.to_string().as_bytes()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].label.as_deref(), Some("roadwork"));
        assert_eq!(rows[0].author.as_deref(), Some("label-studio-user-3"));
        assert_eq!(
            resolve_sample(&rows[0], Path::new(".")).unwrap().as_str(),
            id
        );
        assert_eq!(rows[1].label, None, "an unannotated task is a blank row");
    }

    #[test]
    fn disagreeing_ways_of_naming_a_sample_are_refused() {
        let r = RawLabel {
            at: "line 2".into(),
            sample_id: Some("a".repeat(64)),
            file: Some(format!("images/{}.png", "b".repeat(64))),
            label: Some("1".into()),
            ..RawLabel::default()
        };
        let why = resolve_sample(&r, Path::new(".")).unwrap_err();
        assert!(
            why.contains("sample_id names aaaaaaaaaaaa but file names"),
            "{why}"
        );
    }

    #[test]
    fn a_csv_without_a_label_column_is_a_format_error() {
        let e = parse_label_file(Path::new("s.csv"), b"sample_id,file\nx,y\n").unwrap_err();
        assert!(e.to_string().contains("no `label` column"), "{e}");
    }
}
