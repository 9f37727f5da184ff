//! Ad-hoc questions over the store: polars SQL on every Lance table, read on demand.
//!
//! Each table is registered as a lazy scan with projection pushdown, so `SELECT source, count(*)
//! FROM samples GROUP BY source` reads two small columns, never the images. Besides the stored tables
//! there is `effective_labels` (one row per labelled sample, the precedence rule applied).
//! Embedding columns arrive as fixed-size `Array` columns.

mod bridge;
mod format;
mod scan;

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float32Builder, StringBuilder, UInt8Builder, UInt32Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use polars::prelude::*;
use polars::sql::SQLContext;

use crate::store::{EffectiveLabel, Store, StoreError};

pub use bridge::batches_to_frame;
pub use format::{OutputFormat, render_table, write_frame};

/// Name of the derived effective-label table.
pub const EFFECTIVE_LABELS: &str = "effective_labels";

/// The question from the README, with a test of its own.
pub const SAMPLES_BY_SOURCE: &str =
    "SELECT source, count(*) AS n FROM samples GROUP BY source ORDER BY source";

/// Samples by source and effective label (unlabelled samples show label null); the demo prints it.
pub const SAMPLES_BY_SOURCE_AND_LABEL: &str = "SELECT s.source, l.label, count(*) AS n \
     FROM samples s LEFT JOIN effective_labels l ON s.sample_id = l.sample_id \
     GROUP BY s.source, l.label ORDER BY s.source, l.label";

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// User input: the SQL is wrong (unknown table or column, syntax).
    #[error("query failed: {0}")]
    Polars(#[from] PolarsError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// User input: a binary format needs a file.
    #[error("{0} output needs --out FILE")]
    NeedsFile(&'static str),
    #[error("background task failed: {0}")]
    Task(String),
}

/// Answers SQL over one store.
#[derive(Clone)]
pub struct QueryEngine {
    store: Store,
}

fn effective_labels_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::Utf8, false),
        Field::new("label", DataType::UInt8, false),
        Field::new("label_source", DataType::Utf8, false),
        Field::new("author", DataType::Utf8, false),
        Field::new("confidence", DataType::Float32, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("n_labels", DataType::UInt32, false),
        Field::new("disputed", DataType::Boolean, false),
    ]))
}

/// Effective labels as an Arrow batch of [`effective_labels_schema`].
pub(crate) fn effective_labels_batch(rows: &[EffectiveLabel]) -> Result<RecordBatch, ArrowError> {
    let mut id = StringBuilder::new();
    let mut label = UInt8Builder::new();
    let mut src = StringBuilder::new();
    let mut author = StringBuilder::new();
    let mut conf = Float32Builder::new();
    let mut ts = arrow_array::builder::TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let mut n = UInt32Builder::new();
    let mut disputed = BooleanBuilder::new();
    for r in rows {
        id.append_value(r.sample_id.as_str());
        label.append_value(r.label.as_u8());
        src.append_value(r.source.as_str());
        author.append_value(&r.author);
        conf.append_value(r.confidence);
        ts.append_value(r.ts.timestamp_micros());
        n.append_value(r.n_labels as u32);
        disputed.append_value(r.disputed);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(label.finish()),
        Arc::new(src.finish()),
        Arc::new(author.finish()),
        Arc::new(conf.finish()),
        Arc::new(ts.finish()),
        Arc::new(n.finish()),
        Arc::new(disputed.finish()),
    ];
    RecordBatch::try_new(effective_labels_schema(), cols)
}

impl QueryEngine {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Runs `sql` and collects the answer. Table scans happen on a blocking thread; only the columns
    /// the query uses are read.
    pub async fn execute(&self, sql: &str) -> Result<DataFrame, QueryError> {
        let mut tables = Vec::new();
        for name in self.store.table_names().await? {
            let schema = self.store.table_schema(&name).await?;
            tables.push((name.clone(), scan::Source::Table(name), schema));
        }
        tables.push((
            EFFECTIVE_LABELS.to_string(),
            scan::Source::EffectiveLabels,
            effective_labels_schema(),
        ));
        let store = self.store.clone();
        let sql = sql.to_string();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || -> Result<DataFrame, QueryError> {
            let mut ctx = SQLContext::new();
            for (name, source, arrow_schema) in tables {
                let scan = scan::LanceScan {
                    store: store.clone(),
                    source,
                    schema: bridge::polars_schema(&arrow_schema)?,
                    arrow_schema,
                    runtime: runtime.clone(),
                };
                let args = ScanArgsAnonymous {
                    name: "lance",
                    ..Default::default()
                };
                ctx.register(&name, LazyFrame::anonymous_scan(Arc::new(scan), args)?);
            }
            Ok(ctx.execute(&sql)?.collect()?)
        })
        .await
        .map_err(|e| QueryError::Task(e.to_string()))?
    }
}
