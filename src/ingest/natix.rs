//! NATIX `roadwork` parquet ingest (DESIGN.md §5): `image` (struct with `bytes`, or plain binary),
//! `label` (int), optional `id`, `city_name`, `gps`, `scene_description`,
//! `video_info.{seq_id,vid_id,frame_id}`, `scene_level_tags.{daytime,scene_environment,
//! travel_alteration,weather}` (nested struct or flattened names). These become sample tags
//! (`seq_id` groups a drive's frames into one split); the label goes to `labels` with source
//! `dataset`.
//!
//! Every file's columns are checked before anything is written, so a shard without a required
//! column fails the whole command with one error naming it.

use std::path::{Path, PathBuf};

use arrow::util::display::array_value_to_string;
use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Schema};
use chrono::Utc;

use super::batch::{Item, Writer};
use super::{IngestError, IngestSummary, Ingestor, shards};
use crate::store::RunKind;
use crate::store::{Era, Label, LabelRow, LabelSource, SampleRow, SampleSource};

/// Columns a NATIX shard must have.
pub const REQUIRED_COLUMNS: [&str; 2] = ["image", "label"];

/// Scene-tag columns and the tag key each becomes.
const TAG_COLUMNS: [(&str, &str); 10] = [
    ("scene_level_tags.daytime", "daytime"),
    ("scene_level_tags.scene_environment", "environment"),
    ("scene_level_tags.travel_alteration", "travel_alteration"),
    ("scene_level_tags.weather", "weather"),
    ("city_name", "city"),
    // The drive a frame belongs to: frames of one `seq_id` are near-identical, so the split
    // groups them (train.split.group_tags) and they never straddle train and eval.
    ("video_info.seq_id", "seq_id"),
    ("video_info.vid_id", "vid_id"),
    ("video_info.frame_id", "frame_id"),
    ("gps", "gps"),
    ("scene_description", "scene_description"),
];

/// Rows decoded per parallel step.
const READ_BATCH: usize = 32;

/// How to read NATIX shards.
#[derive(Debug, Clone)]
pub struct NatixOptions {
    /// Label author and `source_ref` prefix.
    pub dataset_name: String,
}

impl Default for NatixOptions {
    fn default() -> Self {
        Self {
            dataset_name: "natix-roadwork".into(),
        }
    }
}

/// Finds `path` (`a` or `a.b`) as a top-level column or by descending into structs.
fn find_column(batch: &RecordBatch, path: &str) -> Option<ArrayRef> {
    if let Some(c) = batch.column_by_name(path) {
        return Some(c.clone());
    }
    let mut parts = path.split('.');
    let mut cur = batch.column_by_name(parts.next()?)?.clone();
    for p in parts {
        let s = cur.as_struct_opt()?;
        cur = s.column_by_name(p)?.clone();
    }
    Some(cur)
}

fn find_field<'a>(schema: &'a Schema, name: &str) -> Option<&'a DataType> {
    schema.field_with_name(name).ok().map(|f| f.data_type())
}

fn is_binary(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

/// The required-column and type check for one file's schema.
fn check_schema(path: &Path, schema: &Schema) -> Result<(), IngestError> {
    let found = || {
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for col in REQUIRED_COLUMNS {
        if find_field(schema, col).is_none() {
            return Err(IngestError::MissingColumn {
                path: path.into(),
                column: col.into(),
                found: found(),
            });
        }
    }
    let image_ok = match find_field(schema, "image") {
        Some(DataType::Struct(fields)) => fields
            .iter()
            .any(|f| f.name() == "bytes" && is_binary(f.data_type())),
        Some(t) => is_binary(t),
        None => false,
    };
    if !image_ok {
        return Err(IngestError::ColumnType {
            path: path.into(),
            column: "image".into(),
            found: format!("{:?}", find_field(schema, "image")),
            expected: "struct<bytes: binary> or binary",
        });
    }
    match find_field(schema, "label") {
        Some(t) if t.is_integer() || matches!(t, DataType::Boolean) => Ok(()),
        t => Err(IngestError::ColumnType {
            path: path.into(),
            column: "label".into(),
            found: format!("{t:?}"),
            expected: "integer",
        }),
    }
}

fn binary_value(col: &dyn Array, i: usize) -> Option<&[u8]> {
    if col.is_null(i) {
        return None;
    }
    match col.data_type() {
        DataType::Binary => Some(col.as_binary::<i32>().value(i)),
        DataType::LargeBinary => Some(col.as_binary::<i64>().value(i)),
        DataType::BinaryView => Some(col.as_binary_view().value(i)),
        _ => None,
    }
}

/// One parquet row, read out of Arrow, not yet decoded.
struct RawRow {
    item: String,
    bytes: Result<Vec<u8>, String>,
    label: Result<Label, String>,
    id: Option<String>,
    tags: Vec<String>,
}

fn rows_of(batch: &RecordBatch, file: &str, first_row: usize, max_cell: u64) -> Vec<RawRow> {
    let image = find_column(batch, "image");
    let image_bytes = image.as_ref().and_then(|c| match c.data_type() {
        DataType::Struct(_) => c.as_struct().column_by_name("bytes").cloned(),
        _ => Some(c.clone()),
    });
    let label =
        find_column(batch, "label").and_then(|c| arrow::compute::cast(&c, &DataType::Int64).ok());
    let id = find_column(batch, "id");
    let tags: Vec<(&str, ArrayRef)> = TAG_COLUMNS
        .iter()
        .filter_map(|(col, key)| find_column(batch, col).map(|c| (*key, c)))
        .collect();
    (0..batch.num_rows())
        .map(|i| {
            let text = |c: &ArrayRef| {
                (!c.is_null(i))
                    .then(|| array_value_to_string(c, i).ok())
                    .flatten()
                    .filter(|s| !s.is_empty())
            };
            let label = match &label {
                Some(l) if !l.is_null(i) => {
                    let v = l.as_primitive::<arrow_array::types::Int64Type>().value(i);
                    Label::from_int(v).ok_or(format!("label {v} is not 0 or 1"))
                }
                _ => Err("label is null".to_string()),
            };
            RawRow {
                item: format!("{file}:{}", first_row + i),
                bytes: match image_bytes
                    .as_ref()
                    .and_then(|c| binary_value(c.as_ref(), i))
                {
                    None => Err("image bytes are null".to_string()),
                    // Not copied: a cell over the cap is refused by its length.
                    Some(b) if b.len() as u64 > max_cell => Err(format!(
                        "image cell of {} bytes is over ingest.max_file_mib ({} MiB)",
                        b.len(),
                        max_cell >> 20
                    )),
                    Some(b) => Ok(b.to_vec()),
                },
                label,
                id: id.as_ref().and_then(text),
                tags: tags
                    .iter()
                    .filter_map(|(k, c)| text(c).map(|v| format!("{k}={v}")))
                    .collect(),
            }
        })
        .collect()
}

impl Ingestor {
    /// Ingests NATIX parquet shards. All files are checked first; a missing required column in any
    /// of them fails the command before anything is written.
    pub async fn ingest_natix(
        &self,
        files: &[PathBuf],
        opts: &NatixOptions,
    ) -> Result<IngestSummary, IngestError> {
        let mut total_rows = 0u64;
        for f in files {
            let b = shards::open(f)?;
            check_schema(f, b.schema())?;
            total_rows += b.metadata().file_metadata().num_rows().max(0) as u64;
        }
        let input = files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let params = serde_json::json!({ "files": input, "dataset": opts.dataset_name });
        let mut w =
            Writer::start(&self.store, &self.cfg, RunKind::IngestNatix, input, params).await?;
        let bar = self.bar(total_rows, "natix");
        for f in files {
            if let Err(e) = self.ingest_one_shard(f, opts, &mut w, &bar).await {
                return Err(w.fail(e).await);
            }
        }
        bar.finish_and_clear();
        w.finish().await
    }

    async fn ingest_one_shard(
        &self,
        path: &Path,
        opts: &NatixOptions,
        w: &mut Writer,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), IngestError> {
        let max_cell = self.cfg.max_file_bytes();
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (mut rx, reader_task) = shards::read(
            path.to_path_buf(),
            READ_BATCH,
            self.limits,
            move |b, row| rows_of(b, &file_name, row, max_cell),
            |r: &RawRow| r.bytes.as_deref().map_err(Clone::clone),
        );
        while let Some(msg) = rx.recv().await {
            for (raw, facts) in msg? {
                w.summary.scanned += 1;
                bar.inc(1);
                let facts = match (facts, &raw.label) {
                    (Err(reason), _) => {
                        w.skip(raw.item, reason);
                        continue;
                    }
                    (_, Err(reason)) => {
                        w.skip(raw.item, reason.clone());
                        continue;
                    }
                    (Ok(f), Ok(_)) => f,
                };
                let now = Utc::now();
                let source_ref = match &raw.id {
                    Some(id) => format!("{}:{id}", opts.dataset_name),
                    None => format!("{}:{}", opts.dataset_name, raw.item),
                };
                let label = raw.label.ok().map(|label| LabelRow {
                    sample_id: facts.sample_id.clone(),
                    label,
                    source: LabelSource::Dataset,
                    confidence: 1.0,
                    author: opts.dataset_name.clone(),
                    ts: now,
                });
                let sample = SampleRow {
                    sample_id: facts.sample_id,
                    image: raw.bytes.unwrap_or_default(),
                    width: facts.width,
                    height: facts.height,
                    format: facts.format.into(),
                    source: SampleSource::Dataset.as_str().into(),
                    source_ref,
                    era: Era::guess_from_size(facts.width, facts.height)
                        .as_str()
                        .into(),
                    tags: raw.tags,
                    phash: facts.phash,
                    received_at: now,
                };
                w.push(Item {
                    sample: Some(sample),
                    labels: label.into_iter().collect(),
                    prediction: None,
                    shadow: None,
                    quality: Some(facts.quality),
                })
                .await?;
            }
        }
        reader_task
            .await
            .map_err(|e| IngestError::Task(e.to_string()))?;
        Ok(())
    }
}
