//! Image-folder ingest. Labels and provenance come from, in order: the folder's description files
//! (`manifest.jsonl`, the Hugging Face `imagefolder` `metadata.jsonl`, FiftyOne's `labels.json`
//! beside `data/`: see [`super::described`]), a `path,label` CSV, or the class folder directly under
//! the root (`roadwork`/`clean`, also `positive`/`negative`, `1`/`0`), after an optional split
//! folder (`train/`, `test/`, `validation/`…). A folder deeper down never sets a label
//! (`2024/1/x.jpg` is unlabelled). Files with none are stored unlabelled. So every folder layout
//! `roadwork export` writes reads back with its labels, their authors and dates, the tags and the
//! sample's source; a file whose bytes do not hash to the sample id its metadata records is
//! reported, not stored.
//!
//! The walk is bounded: symbolic links are not followed (a link to `/` or `/dev/zero` is reported,
//! not read), only regular files are opened (a FIFO or device is reported), and a file over
//! `ingest.max_file_mib` is reported by its size without being read. `labels.csv` rows that match
//! no file are reported too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use chrono::Utc;
use rayon::prelude::*;

use super::batch::{Item, Writer};
use super::described::{self, Described};
use super::{IngestError, IngestSummary, Ingestor, image_facts};
use crate::store::RunKind;
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

/// Files under `root` to read, and the entries passed over with why (paths relative to root).
struct Listing {
    files: Vec<PathBuf>,
    passed: Vec<(String, String)>,
}

fn list_files(root: &Path, exclude: &[PathBuf]) -> Result<Listing, IngestError> {
    let mut out = Listing {
        files: Vec::new(),
        passed: Vec::new(),
    };
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
            // The entry's own type: a symbolic link is a link here, never what it points to.
            let kind = entry.file_type().map_err(|source| IngestError::Io {
                path: path.clone(),
                source,
            })?;
            let rel = || rel_key(path.strip_prefix(root).unwrap_or(&path));
            if kind.is_symlink() {
                out.passed
                    .push((rel(), "symbolic link, not followed".into()));
            } else if kind.is_dir() {
                stack.push(path);
            } else if !kind.is_file() {
                out.passed
                    .push((rel(), "not a regular file (FIFO, socket or device)".into()));
            } else if !exclude.iter().any(|e| e == &path) {
                out.files.push(path);
            }
        }
    }
    out.files.sort();
    out.passed.sort();
    Ok(out)
}

/// Reads a regular file of at most `max` bytes without following a link or waiting on a FIFO
/// (it may have been swapped since the walk), refusing a larger one before reading it.
pub(crate) fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max {
        return Err(format!(
            "file of {} bytes is over ingest.max_file_mib ({} MiB)",
            meta.len(),
            max >> 20
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file that grows while read is still cut at the cap (+1 byte to see that it did).
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!(
            "file grew past ingest.max_file_mib ({} MiB) while read",
            max >> 20
        ));
    }
    Ok(bytes)
}

/// Split folders of the Hugging Face `imagefolder` layout, which may stand above the class folder.
const SPLIT_DIRS: [&str; 6] = ["train", "test", "validation", "valid", "val", "dev"];

/// The label of the class folder directly under the root (after an optional split folder).
fn label_from_dirs(rel: &Path) -> Option<Label> {
    let dirs: Vec<String> = rel
        .parent()?
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_ascii_lowercase())
        .collect();
    let class = match dirs.as_slice() {
        [split, class, ..] if SPLIT_DIRS.contains(&split.as_str()) => class,
        [class, ..] => class,
        [] => return None,
    };
    match class.as_str() {
        "roadwork" | "positive" | "1" => Some(Label::Roadwork),
        "clean" | "negative" | "0" => Some(Label::Clean),
        _ => None,
    }
}

/// Reads `path,label` rows; keys are paths relative to `root`, values the label and its line.
fn read_label_csv(
    csv_path: &Path,
    root: &Path,
) -> Result<HashMap<String, (Label, usize)>, IngestError> {
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
        out.insert(key, (label, line));
    }
    Ok(out)
}

/// The labels of one file: every label a description gives (with its provenance), else the CSV's,
/// else the class folder's, authored by `author` as dataset labels.
fn labels_of(
    entry: Option<&Described>,
    csv: &HashMap<String, (Label, usize)>,
    rel: &str,
    author: &str,
    sample_id: &crate::store::SampleId,
    now: chrono::DateTime<Utc>,
) -> Vec<LabelRow> {
    let row = |label, source: Option<LabelSource>, by: Option<&str>, confidence, ts| LabelRow {
        sample_id: sample_id.clone(),
        label,
        source: source.unwrap_or(LabelSource::Dataset),
        confidence,
        author: by.unwrap_or(author).to_string(),
        ts,
    };
    if let Some(e) = entry.filter(|e| !e.labels.is_empty()) {
        return e
            .labels
            .iter()
            .map(|l| {
                row(
                    l.label,
                    l.source,
                    l.author.as_deref(),
                    l.confidence,
                    l.ts.unwrap_or(now),
                )
            })
            .collect();
    }
    csv.get(rel)
        .map(|(l, _)| *l)
        .or_else(|| label_from_dirs(Path::new(rel)))
        .map(|l| row(l, None, None, 1.0, now))
        .into_iter()
        .collect()
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
        let descriptions = described::read(&root)?;
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
        let mut exclude = descriptions.files.clone();
        exclude.extend(csv_abs.clone());
        let Listing { files, passed } = list_files(&root, &exclude)?;
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
        for (rel, why) in passed {
            w.summary.scanned += 1;
            w.skip(rel, why);
        }
        // A label row naming no file is a mistake in the sheet, reported rather than dropped.
        let listed: std::collections::HashSet<String> = files
            .iter()
            .map(|p| rel_key(p.strip_prefix(&root).unwrap_or(p)))
            .collect();
        let mut unmatched: Vec<&String> = descriptions.unmatched(&listed).collect();
        unmatched.sort();
        for key in unmatched {
            w.skip(
                key.clone(),
                "described in a metadata or labels file but no such image file is here",
            );
        }
        if let Some(csv) = &csv_abs {
            let mut unmatched: Vec<(usize, &String)> = csv_labels
                .iter()
                .filter(|(k, _)| !listed.contains(*k))
                .map(|(k, (_, line))| (*line, k))
                .collect();
            unmatched.sort();
            for (line, key) in unmatched {
                w.skip(
                    format!("{}:{line}", csv.display()),
                    format!("label row matches no file ({key})"),
                );
            }
        }
        let max_file = self.cfg.max_file_bytes();
        let bar = self.bar(files.len() as u64, "folder");
        for chunk in files.chunks(CHUNK) {
            let limits = self.limits;
            let chunk: Vec<PathBuf> = chunk.to_vec();
            let prepared = tokio::task::spawn_blocking(move || {
                chunk
                    .into_par_iter()
                    .map(|p| {
                        let r = read_bounded(&p, max_file).and_then(|bytes| {
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
                let entry = descriptions.get(&rel);
                if let Some(recorded) = entry.and_then(|e| e.sample_id.as_deref())
                    && recorded != facts.sample_id.as_str()
                {
                    w.skip(
                        rel,
                        format!(
                            "the bytes hash to {}, not the sample id {recorded} the metadata records",
                            facts.sample_id
                        ),
                    );
                    continue;
                }
                let now = Utc::now();
                let labels = labels_of(entry, &csv_labels, &rel, &author, &facts.sample_id, now);
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
                    era: entry
                        .and_then(|e| e.era)
                        .unwrap_or_else(|| Era::guess_from_size(facts.width, facts.height))
                        .as_str()
                        .into(),
                    tags: entry.map(|e| e.tags.clone()).unwrap_or_default(),
                    phash: facts.phash,
                    received_at: entry.and_then(|e| e.received_at).unwrap_or(now),
                    image: bytes,
                };
                let item = Item {
                    sample: Some(sample),
                    labels,
                    prediction: None,
                    shadow: None,
                    quality: Some(facts.quality),
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
    fn only_the_class_folder_under_the_root_or_a_split_labels() {
        let l = |p: &str| label_from_dirs(Path::new(p));
        assert_eq!(l("roadwork/img.jpg"), Some(Label::Roadwork));
        assert_eq!(l("clean/x/img.jpg"), Some(Label::Clean));
        assert_eq!(l("train/1/img.jpg"), Some(Label::Roadwork));
        assert_eq!(l("validation/negative/img.jpg"), Some(Label::Clean));
        // A deeper folder named like a class is not one.
        assert_eq!(l("2024/1/img.jpg"), None);
        assert_eq!(l("a/roadwork/x/img.jpg"), None);
        assert_eq!(l("img.jpg"), None);
        assert_eq!(l("other/img.jpg"), None);
    }

    #[test]
    fn a_bounded_read_refuses_big_files_links_and_fifos_without_reading_them() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("a.bin");
        std::fs::write(&f, vec![1u8; 2048]).unwrap();
        assert_eq!(read_bounded(&f, 2048).unwrap().len(), 2048);
        assert!(
            read_bounded(&f, 2047)
                .unwrap_err()
                .contains("over ingest.max_file_mib")
        );
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert!(read_bounded(&link, 1 << 20).is_err());
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(
            read_bounded(&fifo, 1 << 20).unwrap_err(),
            "not a regular file"
        );
    }
}
