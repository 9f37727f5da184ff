//! `roadwork labels export`: a selection as files to label.
//!
//! The export directory holds
//! - `images/<sample_id>.<ext>`: the original bytes (so a file's sha256 is its sample id);
//! - `sheet.csv`: `sample_id,file,label,author`, one row per image in rank order, `label` and
//!   `author` empty; fill `label` with 1 (roadwork) or 0 (clean) and import it back. It is not
//!   named `labels.csv`, which folder ingest would read as `path,label`;
//! - `label-studio-tasks.json`: the same images as Label Studio tasks (`data.image`, `data.sample_id`,
//!   the selection's rank, score and reasons, and the head's probability as a pre-annotation when
//!   a head is named), importable as is;
//! - `label-studio-config.xml`: the labelling interface for those tasks (one choice, `roadwork` or
//!   `clean`, named `label`), so an export in Label Studio's JSON, JSON-MIN or CSV form imports back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{LabelsError, extension, io};
use crate::store::{SelectionRow, Store, tables};

/// The sheet a person fills.
pub const SHEET: &str = "sheet.csv";
/// Label Studio's task list.
pub const LABEL_STUDIO_TASKS: &str = "label-studio-tasks.json";
/// Label Studio's labelling interface for the tasks.
pub const LABEL_STUDIO_CONFIG: &str = "label-studio-config.xml";

const CONFIG_XML: &str = r#"<View>
  <Image name="image" value="$image" zoom="true"/>
  <Header value="Is there roadwork in this street scene? (cones, barriers, work signs, workers, machines, dug asphalt)"/>
  <Choices name="label" toName="image" choice="single-radio" required="true">
    <Choice value="roadwork" hotkey="1"/>
    <Choice value="clean" hotkey="0"/>
  </Choices>
</View>
"#;

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub selection: String,
    pub out: PathBuf,
    /// Prefix of `data.image` in the Label Studio tasks. Default
    /// `/data/local-files/?d=<out dir name>/images/`: Label Studio's local-files storage with
    /// `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT` set to the export's parent directory.
    pub image_url_prefix: Option<String>,
    /// Head whose calibrated probabilities go into the tasks as pre-annotations.
    pub model_version: Option<String>,
}

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportSummary {
    pub selection: String,
    pub out: PathBuf,
    pub images: usize,
    pub bytes: u64,
    /// Selected samples no longer in the store (none unless samples were deleted by hand).
    pub missing: usize,
    pub sheet: PathBuf,
    pub tasks: PathBuf,
}

impl std::fmt::Display for ExportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "exported selection {}: {} images ({:.1} MiB) to {}",
            self.selection,
            self.images,
            self.bytes as f64 / (1 << 20) as f64,
            self.out.display()
        )?;
        writeln!(f, "  fill in:      {}", self.sheet.display())?;
        writeln!(f, "  Label Studio: {}", self.tasks.display())?;
        if self.missing > 0 {
            writeln!(
                f,
                "  {} selected samples are not in the store",
                self.missing
            )?;
        }
        Ok(())
    }
}

/// Ids per SQL `IN (…)` filter.
const CHUNK: usize = 256;

fn in_filter(ids: &[&str]) -> String {
    let list: Vec<String> = ids.iter().map(|i| format!("'{i}'")).collect();
    format!("sample_id IN ({})", list.join(","))
}

/// Calibrated probabilities of `model` for `ids` (from `head_scores`).
async fn head_probs(
    store: &Store,
    model: &str,
    ids: &[&str],
) -> Result<HashMap<String, f32>, LabelsError> {
    let mut out = HashMap::new();
    let model = model.replace('\'', "''");
    for chunk in ids.chunks(CHUNK) {
        let filter = format!("model_version = '{model}' AND {}", in_filter(chunk));
        let rows = store
            .id_values(tables::HEAD_SCORES, "sample_id", "prob", Some(&filter))
            .await?;
        out.extend(rows.into_iter().filter_map(|(id, p)| Some((id, p?))));
    }
    Ok(out)
}

/// Writes selection `opts.selection` to `opts.out` (created; files of an earlier export of the
/// same selection are overwritten).
pub async fn export_selection(
    store: &Store,
    opts: &ExportOptions,
) -> Result<ExportSummary, LabelsError> {
    let rows: Vec<SelectionRow> = store.selection(&opts.selection).await?;
    if rows.is_empty() {
        return Err(LabelsError::NoSelection(opts.selection.clone()));
    }
    let images_dir = opts.out.join("images");
    tokio::fs::create_dir_all(&images_dir)
        .await
        .map_err(io(&images_dir))?;
    let ids: Vec<&str> = rows.iter().map(|r| r.sample_id.as_str()).collect();
    let probs = match &opts.model_version {
        Some(m) => head_probs(store, m, &ids).await?,
        None => HashMap::new(),
    };
    // Sample id → (file name, bytes); images are read a chunk at a time.
    let mut files: HashMap<String, String> = HashMap::new();
    let mut bytes = 0u64;
    for chunk in ids.chunks(CHUNK) {
        for s in store.samples(Some(&in_filter(chunk))).await? {
            let name = format!("{}.{}", s.sample_id, extension(&s.format));
            let path = images_dir.join(&name);
            tokio::fs::write(&path, &s.image).await.map_err(io(&path))?;
            bytes += s.image.len() as u64;
            files.insert(s.sample_id.to_string(), name);
        }
    }
    let dir_name = opts
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let prefix = opts
        .image_url_prefix
        .clone()
        .unwrap_or_else(|| format!("/data/local-files/?d={dir_name}/images/"));
    let mut sheet = csv::Writer::from_writer(Vec::new());
    let csv_err = |e: csv::Error| LabelsError::Format {
        path: opts.out.join(SHEET),
        why: e.to_string(),
    };
    sheet
        .write_record(["sample_id", "file", "label", "author"])
        .map_err(csv_err)?;
    let mut tasks = Vec::new();
    let mut missing = 0;
    for r in &rows {
        let Some(name) = files.get(&r.sample_id) else {
            missing += 1;
            continue;
        };
        let file = format!("images/{name}");
        sheet
            .write_record([r.sample_id.as_str(), file.as_str(), "", ""])
            .map_err(csv_err)?;
        let mut task = json!({
            "data": {
                "image": format!("{prefix}{name}"),
                "sample_id": r.sample_id,
                "file": file,
                "selection": r.name,
                "rank": r.rank,
                "score": r.score,
                "reasons": r.reasons,
            }
        });
        if let (Some(p), Some(m)) = (probs.get(&r.sample_id), &opts.model_version) {
            let choice = if *p >= 0.5 { "roadwork" } else { "clean" };
            task["predictions"] = json!([{
                "model_version": m,
                "score": if *p >= 0.5 { *p } else { 1.0 - *p },
                "result": [{
                    "from_name": "label",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": [choice]}
                }]
            }]);
        }
        tasks.push(task);
    }
    let sheet_path = opts.out.join(SHEET);
    let sheet_bytes = sheet.into_inner().map_err(|e| LabelsError::Format {
        path: sheet_path.clone(),
        why: e.to_string(),
    })?;
    write(&sheet_path, &sheet_bytes).await?;
    let tasks_path = opts.out.join(LABEL_STUDIO_TASKS);
    let text = serde_json::to_vec_pretty(&tasks).map_err(|e| LabelsError::Format {
        path: tasks_path.clone(),
        why: e.to_string(),
    })?;
    write(&tasks_path, &text).await?;
    write(&opts.out.join(LABEL_STUDIO_CONFIG), CONFIG_XML.as_bytes()).await?;
    Ok(ExportSummary {
        selection: opts.selection.clone(),
        out: opts.out.clone(),
        images: files.len(),
        bytes,
        missing,
        sheet: sheet_path,
        tasks: tasks_path,
    })
}

async fn write(path: &Path, bytes: &[u8]) -> Result<(), LabelsError> {
    tokio::fs::write(path, bytes).await.map_err(io(path))
}
