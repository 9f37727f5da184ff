//! Export: a selection, a snapshot or a filtered part of the store, written in a layout other
//! tools read: Parquet (images as files or inline), the Hugging Face `imagefolder` layout, the
//! NATIX `roadwork` Parquet schema, and FiftyOne's image-classification layout. `roadwork ingest`
//! reads each of them back (see `docs/EXPORT.md` for what each layout can carry).
//!
//! The stage shape: [`ExportPlan::validate`] → `load` (async: labels, scores, the selection; then
//! the samples streamed in chunks) → `write` (blocking, off the async workers: files and one
//! layout writer) → [`ExportSummary`]. The export is written under a temporary name beside `out`
//! and renamed when complete, so a crash or an error never leaves a half export under the final
//! name, and an existing `out` is never overwritten.

mod layouts;
pub mod record;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::store::rows::from_batch;
use crate::store::schema::{col, tables};
use crate::store::{
    EffectiveLabel, LabelRow, MineScoreRow, RunKind, RunStatus, SampleRow, SelectionRow,
    SnapshotName, Store, StoreError, effective_labels,
};
pub use layouts::{
    FIFTYONE_CLASSES, FIFTYONE_LABELS, METADATA_JSONL, NATIX_SHARD, SAMPLES_PARQUET,
    UNLABELLED_DIR, extension, record_fields,
};
pub use record::{ExportLabel, ExportRecord, RecordError};

/// The layouts `roadwork export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// `samples.parquet` (+ `images/` unless inline): every column of the store about a sample.
    Parquet,
    /// Hugging Face `imagefolder`: `roadwork/`, `clean/`, `unlabelled/` + `metadata.jsonl`.
    Imagefolder,
    /// The NATIX `roadwork` dataset's Parquet schema (labelled samples only).
    Natix,
    /// FiftyOne `FiftyOneImageClassificationDataset`: `data/` + `labels.json`.
    Fiftyone,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Parquet => "parquet",
            Layout::Imagefolder => "imagefolder",
            Layout::Natix => "natix",
            Layout::Fiftyone => "fiftyone",
        }
    }
}

/// Where the image bytes go in the Parquet layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Images {
    /// One file per image beside the table (`images/<sample_id>.<ext>`).
    #[default]
    Files,
    /// The bytes in the table's `image` column.
    Inline,
}

/// Which samples to export: any combination narrows the set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scope {
    /// Read the store as it was when this snapshot was taken (a training set: `train/<id>`).
    pub snapshot: Option<SnapshotName>,
    /// Only the samples of this named selection, with their rank and score.
    pub selection: Option<String>,
    /// A SQL predicate over `samples` columns (`source = 'validator' AND era = 'fullres'`).
    pub filter: Option<String>,
    /// Only samples whose effective label is this (`unlabelled` for none).
    pub label: Option<LabelFilter>,
    /// At most this many samples (in sample-id order).
    pub limit: Option<usize>,
}

/// A filter on the effective label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LabelFilter {
    Roadwork,
    Clean,
    Labelled,
    Unlabelled,
}

impl LabelFilter {
    fn admits(self, label: Option<u8>) -> bool {
        match self {
            LabelFilter::Roadwork => label == Some(1),
            LabelFilter::Clean => label == Some(0),
            LabelFilter::Labelled => label.is_some(),
            LabelFilter::Unlabelled => label.is_none(),
        }
    }
}

/// A validated export request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportPlan {
    pub layout: Layout,
    pub images: Images,
    pub scope: Scope,
    pub out: PathBuf,
}

/// Why an export failed. Nothing is left under `out` when it does.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// User input: the destination exists.
    #[error("{0} already exists; export writes a new folder and never overwrites one")]
    Exists(PathBuf),
    /// User input: an option that the layout cannot honour.
    #[error("{0}")]
    Plan(String),
    /// User input: there is no such selection.
    #[error("no selection named {0:?} (see `roadwork mine select`)")]
    NoSelection(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {detail}")]
    Format { what: &'static str, detail: String },
    #[error("background task failed: {0}")]
    Task(String),
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportSummary {
    pub layout: String,
    pub out: PathBuf,
    /// Samples written.
    pub samples: usize,
    pub labelled: usize,
    /// Samples in scope that the layout cannot hold (NATIX has no unlabelled rows), by reason.
    pub left_out: Vec<(String, usize)>,
    /// Image bytes written.
    pub bytes: u64,
    /// The mining run whose scores were exported with the samples, if any.
    pub mine_run: Option<String>,
}

/// Samples read (and written) per chunk: bounds memory to this many images.
const CHUNK: usize = 256;
/// Sample ids per `IN (…)` filter of a selection.
const IDS_PER_QUERY: usize = 512;
/// The file in every export that says what it holds.
pub const EXPORT_INFO: &str = "roadwork-export.json";

impl ExportPlan {
    /// Checks the request before anything is read.
    pub fn validate(self) -> Result<Self, ExportError> {
        // NATIX shards always hold the bytes in their `image` struct; the flag is moot there.
        if self.images == Images::Inline && !matches!(self.layout, Layout::Parquet | Layout::Natix)
        {
            return Err(ExportError::Plan(format!(
                "--images inline needs a Parquet layout; {} keeps images as files",
                self.layout.as_str()
            )));
        }
        if self.out.exists() {
            return Err(ExportError::Exists(self.out.clone()));
        }
        if let Some(f) = &self.scope.filter
            && (f.trim().is_empty() || f.contains(';'))
        {
            return Err(ExportError::Plan(format!(
                "--where {f:?} is not one SQL predicate"
            )));
        }
        if self.scope.limit == Some(0) {
            return Err(ExportError::Plan("--limit must be at least 1".into()));
        }
        Ok(self)
    }
}

/// What `load` gathers before the samples are streamed: everything but the images.
struct Context {
    labels: HashMap<String, Vec<LabelRow>>,
    effective: HashMap<String, EffectiveLabel>,
    scores: HashMap<String, MineScoreRow>,
    mine_run: Option<String>,
    selection: Option<HashMap<String, SelectionRow>>,
}

impl Context {
    fn record(&self, s: &SampleRow) -> ExportRecord {
        let id = s.sample_id.as_str();
        let labels: Vec<&LabelRow> = self
            .labels
            .get(id)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        ExportRecord::new(
            s,
            &labels,
            self.effective.get(id),
            self.scores.get(id),
            self.selection.as_ref().and_then(|m| m.get(id)),
        )
    }
}

async fn read_table(
    store: &Store,
    at: Option<&SnapshotName>,
    table: &str,
    filter: Option<&str>,
) -> Result<Vec<arrow_array::RecordBatch>, StoreError> {
    match at {
        Some(name) => store.scan_at(name, table, None, filter).await,
        None => store.scan(table, None, filter, None).await,
    }
}

fn rows<R: crate::store::TableRow>(
    batches: &[arrow_array::RecordBatch],
) -> Result<Vec<R>, StoreError> {
    let mut out = Vec::new();
    for b in batches {
        out.extend(from_batch::<R>(b).map_err(|e| StoreError::Arrow {
            table: R::TABLE.into(),
            source: e,
        })?);
    }
    Ok(out)
}

async fn load_context(store: &Store, scope: &Scope) -> Result<Context, ExportError> {
    let at = scope.snapshot.as_ref();
    let label_rows: Vec<LabelRow> = rows(&read_table(store, at, tables::LABELS, None).await?)?;
    let effective = effective_labels(&label_rows)
        .into_iter()
        .map(|e| (e.sample_id.to_string(), e))
        .collect();
    let mut labels: HashMap<String, Vec<LabelRow>> = HashMap::new();
    for l in label_rows {
        labels.entry(l.sample_id.to_string()).or_default().push(l);
    }
    // The latest successful mining run of the ledger as read (at the snapshot, when given).
    let runs: Vec<crate::store::RunRow> = rows(&read_table(store, at, tables::RUNS, None).await?)?;
    let mine_run = runs
        .iter()
        .filter(|r| r.kind == RunKind::Mine && r.status == RunStatus::Ok)
        .max_by_key(|r| r.started_at)
        .map(|r| r.run_id.to_string());
    let scores = match &mine_run {
        Some(run) => {
            let filter = format!("{} = '{}'", col::RUN_ID, run.replace('\'', "''"));
            let scored: Vec<MineScoreRow> =
                rows(&read_table(store, at, tables::MINE_SCORES, Some(&filter)).await?)?;
            scored
                .into_iter()
                .map(|m| (m.sample_id.clone(), m))
                .collect()
        }
        None => HashMap::new(),
    };
    let selection = match &scope.selection {
        Some(name) => {
            let filter = format!("{} = '{}'", col::NAME, name.replace('\'', "''"));
            let sel: Vec<SelectionRow> =
                rows(&read_table(store, at, tables::SELECTIONS, Some(&filter)).await?)?;
            let sel: HashMap<String, SelectionRow> = sel
                .into_iter()
                .filter(|r| &r.name == name)
                .map(|r| (r.sample_id.clone(), r))
                .collect();
            if sel.is_empty() {
                return Err(ExportError::NoSelection(name.clone()));
            }
            Some(sel)
        }
        None => None,
    };
    Ok(Context {
        labels,
        effective,
        scores,
        mine_run,
        selection,
    })
}

/// The sample filters to scan: one per chunk of a selection's ids, else the user's predicate.
fn sample_filters(scope: &Scope, ctx: &Context) -> Vec<Option<String>> {
    let user = scope.filter.as_ref().map(|f| format!("({f})"));
    let Some(sel) = &ctx.selection else {
        return vec![user];
    };
    let mut ids: Vec<&String> = sel.keys().collect();
    ids.sort();
    ids.chunks(IDS_PER_QUERY)
        .map(|chunk| {
            let list = chunk
                .iter()
                .filter(|id| id.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(|id| format!("'{id}'"))
                .collect::<Vec<_>>()
                .join(", ");
            let ids = format!("{} IN ({list})", col::SAMPLE_ID);
            Some(match &user {
                Some(u) => format!("{ids} AND {u}"),
                None => ids,
            })
        })
        .collect()
}

/// Runs an export: reads the store, writes the layout under a temporary name, renames it to
/// `plan.out` when every file is written.
pub async fn export(store: &Store, plan: ExportPlan) -> Result<ExportSummary, ExportError> {
    let plan = plan.validate()?;
    let ctx = load_context(store, &plan.scope).await?;
    let parent = match plan.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|source| ExportError::Io {
        path: parent.clone(),
        source,
    })?;
    let name = plan
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    let result = write_all(store, &plan, &ctx, &staging).await;
    match result {
        Ok(mut summary) => {
            std::fs::rename(&staging, &plan.out).map_err(|source| ExportError::Io {
                path: plan.out.clone(),
                source,
            })?;
            summary.out = plan.out.clone();
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

async fn write_all(
    store: &Store,
    plan: &ExportPlan,
    ctx: &Context,
    staging: &Path,
) -> Result<ExportSummary, ExportError> {
    let mut writer = {
        let (layout, images, dir) = (plan.layout, plan.images, staging.to_path_buf());
        tokio::task::spawn_blocking(move || layouts::Writer::create(layout, images, &dir))
            .await
            .map_err(|e| ExportError::Task(e.to_string()))??
    };
    let mut seen = HashSet::new();
    let mut left_out: HashMap<String, usize> = HashMap::new();
    let limit = plan.scope.limit.unwrap_or(usize::MAX);
    let mut taken = 0usize;
    'scan: for filter in sample_filters(&plan.scope, ctx) {
        let mut stream = match &plan.scope.snapshot {
            Some(at) => {
                store
                    .stream_at(at, tables::SAMPLES, filter.as_deref())
                    .await?
            }
            None => store.stream(tables::SAMPLES, filter.as_deref()).await?,
        };
        let mut pending: Vec<(ExportRecord, Vec<u8>)> = Vec::new();
        loop {
            let batch = stream.try_next().await.map_err(|e| ExportError::Format {
                what: "reading samples",
                detail: e.to_string(),
            })?;
            let done = batch.is_none();
            if let Some(b) = batch {
                for s in rows::<SampleRow>(std::slice::from_ref(&b))? {
                    let rec = ctx.record(&s);
                    if !seen.insert(rec.sample_id.clone()) {
                        continue;
                    }
                    if let Some(f) = plan.scope.label
                        && !f.admits(rec.label)
                    {
                        continue;
                    }
                    if plan.layout == Layout::Natix && rec.label.is_none() {
                        *left_out
                            .entry("unlabelled (the NATIX schema has no unlabelled rows)".into())
                            .or_default() += 1;
                        continue;
                    }
                    if taken >= limit {
                        break;
                    }
                    taken += 1;
                    pending.push((rec, s.image));
                }
            }
            if pending.len() >= CHUNK || (done && !pending.is_empty()) || taken >= limit {
                let chunk = std::mem::take(&mut pending);
                writer = tokio::task::spawn_blocking(move || {
                    writer.write(chunk)?;
                    Ok::<_, ExportError>(writer)
                })
                .await
                .map_err(|e| ExportError::Task(e.to_string()))??;
            }
            if taken >= limit {
                break 'scan;
            }
            if done {
                break;
            }
        }
    }
    let info = serde_json::json!({
        "layout": plan.layout.as_str(),
        "images": plan.images,
        "scope": plan.scope,
        "mine_run": ctx.mine_run,
        "exported_at": chrono::Utc::now(),
        "roadwork": env!("CARGO_PKG_VERSION"),
    });
    let mut summary = tokio::task::spawn_blocking(move || writer.finish(&info))
        .await
        .map_err(|e| ExportError::Task(e.to_string()))??;
    summary.layout = plan.layout.as_str().into();
    summary.mine_run = ctx.mine_run.clone();
    let mut left: Vec<(String, usize)> = left_out.into_iter().collect();
    left.sort();
    summary.left_out = left;
    Ok(summary)
}
