//! Ingest of roadwork's own Parquet export (`samples.parquet`, see [`crate::export`]): each row
//! carries the sample's bytes (an `image` column) or a `file_name` beside the table, every label
//! with its provenance, the tags, source, era and dates. A re-ingest of an export therefore
//! restores the same sample ids and label rows, and adds nothing to a store that has them.
//!
//! A `file_name` is confined to the table's folder: absolute paths, `..` and links that lead out
//! are refused per row, and files are read with the folder ingest's bounded read.

use std::path::{Component, Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use chrono::Utc;

use super::batch::{Item, Writer};
use super::folder::read_bounded;
use super::{IngestError, IngestSummary, Ingestor, shards};
use crate::export::ExportRecord;
use crate::store::{Era, RunKind, SampleRow, SampleSource};

/// Rows decoded per parallel step.
const READ_BATCH: usize = 64;

/// One row: its record and its bytes (or why there are none).
type Raw = (
    String,
    Result<ExportRecord, String>,
    Result<Vec<u8>, String>,
);

/// The path of `name` under `base`, when it stays there.
fn confined(base: &Path, name: &str) -> Result<PathBuf, String> {
    let rel = Path::new(name);
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!(
            "file_name {name:?} is not a plain relative path under the table's folder"
        ));
    }
    let path = base.join(rel);
    let real = path
        .canonicalize()
        .map_err(|e| format!("file_name {name:?}: {e}"))?;
    if !real.starts_with(base) {
        return Err(format!(
            "file_name {name:?} leads out of the table's folder"
        ));
    }
    Ok(path)
}

fn rows_of(batch: &RecordBatch, file: &str, first: usize, base: &Path, max: u64) -> Vec<Raw> {
    let records: Result<Vec<ExportRecord>, String> =
        serde_arrow::from_record_batch(batch).map_err(|e| e.to_string());
    let image = batch
        .column_by_name("image")
        .filter(|c| matches!(c.data_type(), DataType::LargeBinary | DataType::Binary));
    (0..batch.num_rows())
        .map(|i| {
            let item = format!("{file}:{}", first + i);
            let rec = match &records {
                Ok(r) => Ok(r[i].clone()),
                Err(e) => Err(format!("not a roadwork export row: {e}")),
            };
            let bytes = match (image, &rec) {
                (Some(c), _) if !c.is_null(i) => {
                    let b: &[u8] = match c.data_type() {
                        DataType::LargeBinary => c.as_binary::<i64>().value(i),
                        _ => c.as_binary::<i32>().value(i),
                    };
                    if b.len() as u64 > max {
                        Err(format!(
                            "image cell of {} bytes is over ingest.max_file_mib ({} MiB)",
                            b.len(),
                            max >> 20
                        ))
                    } else {
                        Ok(b.to_vec())
                    }
                }
                (_, Ok(r)) => match &r.file_name {
                    Some(name) => confined(base, name).and_then(|p| read_bounded(&p, max)),
                    None => Err("neither an image cell nor a file_name".into()),
                },
                (_, Err(e)) => Err(e.clone()),
            };
            (item, rec, bytes)
        })
        .collect()
}

impl Ingestor {
    /// Ingests `samples.parquet` files written by `roadwork export --layout parquet`.
    pub async fn ingest_parquet(&self, files: &[PathBuf]) -> Result<IngestSummary, IngestError> {
        let mut total = 0u64;
        for f in files {
            let b = shards::open(f)?;
            for col in ["sample_id", "labels", "received_at"] {
                if b.schema().field_with_name(col).is_err() {
                    return Err(IngestError::MissingColumn {
                        path: f.clone(),
                        column: col.into(),
                        found: b
                            .schema()
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
            }
            total += b.metadata().file_metadata().num_rows().max(0) as u64;
        }
        let input = files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let params = serde_json::json!({ "files": input });
        let mut w = Writer::start(
            &self.store,
            &self.cfg,
            RunKind::IngestParquet,
            input,
            params,
        )
        .await?;
        let bar = self.bar(total, "parquet");
        for f in files {
            if let Err(e) = self.ingest_one_table(f, &mut w, &bar).await {
                return Err(w.fail(e).await);
            }
        }
        bar.finish_and_clear();
        w.finish().await
    }

    async fn ingest_one_table(
        &self,
        path: &Path,
        w: &mut Writer,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), IngestError> {
        let max = self.cfg.max_file_bytes();
        let base = path
            .parent()
            .unwrap_or(Path::new("."))
            .canonicalize()
            .map_err(|source| IngestError::Io {
                path: path.into(),
                source,
            })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (mut rx, reader) = shards::read(
            path.to_path_buf(),
            READ_BATCH,
            self.limits,
            move |b, row| rows_of(b, &name, row, &base, max),
            |r: &Raw| r.2.as_deref().map_err(Clone::clone),
        );
        while let Some(msg) = rx.recv().await {
            for ((item, rec, bytes), facts) in msg? {
                w.summary.scanned += 1;
                bar.inc(1);
                let (rec, bytes, facts) = match (rec, bytes, facts) {
                    (Ok(r), Ok(b), Ok(f)) => (r, b, f),
                    (Err(why), _, _) | (_, Err(why), _) | (_, _, Err(why)) => {
                        w.skip(item, why);
                        continue;
                    }
                };
                if let Err(e) = rec.check_bytes(&bytes) {
                    w.skip(item, e.to_string());
                    continue;
                }
                let Ok(source) = rec.source.parse::<SampleSource>() else {
                    w.skip(item, format!("unknown sample source {:?}", rec.source));
                    continue;
                };
                let labels = match rec.label_rows(&facts.sample_id, "parquet", Utc::now()) {
                    Ok(l) => l,
                    Err(e) => {
                        w.skip(item, e.to_string());
                        continue;
                    }
                };
                let sample = SampleRow {
                    sample_id: facts.sample_id,
                    image: bytes,
                    width: facts.width,
                    height: facts.height,
                    format: facts.format.into(),
                    source: source.as_str().into(),
                    source_ref: rec.source_ref,
                    era: Era::parse(&rec.era)
                        .unwrap_or_else(|| Era::guess_from_size(facts.width, facts.height))
                        .as_str()
                        .into(),
                    tags: rec.tags,
                    phash: facts.phash,
                    received_at: rec.received_at,
                };
                w.push(Item {
                    sample: Some(sample),
                    labels,
                    quality: Some(facts.quality),
                    ..Default::default()
                })
                .await?;
            }
        }
        reader.await.map_err(|e| IngestError::Task(e.to_string()))?;
        Ok(())
    }
}
