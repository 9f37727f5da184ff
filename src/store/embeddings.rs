//! Embedding tables: one per model id (`embeddings_<model id>`), so vectors from different weights,
//! resolutions or feature kinds never share an ANN index.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use chrono::Utc;
use futures::TryStreamExt;
use lancedb::index::Index;
use lancedb::index::vector::IvfHnswSqIndexBuilder;
use lancedb::query::{ExecutableQuery, QueryBase};
use lancedb::table::OptimizeAction;

use super::schema::col;
use super::{SampleId, Store, StoreError, WriteResult, arrow, lance};

/// Column holding the vector.
pub const VECTOR: &str = "vector";
/// Column holding the model id.
pub const MODEL_ID: &str = "model_id";
/// Column holding when the vector was computed.
pub const EMBEDDED_AT: &str = "embedded_at";

/// The table for `model_id` (characters outside `[A-Za-z0-9_]` become `_`).
pub fn embeddings_table(model_id: &str) -> String {
    let safe: String = model_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("embeddings_{safe}")
}

/// The vectors of an embeddings table as one flat row-major matrix: what training and mining read.
#[derive(Debug, Default)]
pub struct VectorRows {
    /// Sample id of each row, in row order.
    pub ids: Vec<String>,
    /// `ids.len() × dim` values.
    pub data: Vec<f32>,
    pub dim: usize,
    /// Rows left out because a value is NaN or infinite: `(sample id, index of the first bad value)`.
    /// Training refuses such a table, mining skips and counts them: the policy is the caller's.
    pub non_finite: Vec<(String, usize)>,
}

/// Collects `sample_id` + `vector` from batches scanned from embeddings table `table`.
pub fn collect_vectors(table: &str, batches: &[RecordBatch]) -> Result<VectorRows, StoreError> {
    use arrow_array::types::Float32Type;
    let mut out = VectorRows::default();
    for b in batches {
        let (Some(id), Some(v)) = (
            b.column_by_name(col::SAMPLE_ID)
                .and_then(|c| c.as_string_opt::<i32>()),
            b.column_by_name(VECTOR)
                .and_then(|c| c.as_fixed_size_list_opt()),
        ) else {
            return Err(StoreError::SchemaMismatch {
                table: table.to_string(),
                problems: "sample_id or vector column missing or mistyped".into(),
            });
        };
        let Some(values) = v.values().as_primitive_opt::<Float32Type>() else {
            return Err(StoreError::SchemaMismatch {
                table: table.to_string(),
                problems: "vector values are not f32".into(),
            });
        };
        out.dim = v.value_length() as usize;
        for i in 0..b.num_rows() {
            let start = v.value_offset(i) as usize;
            let row = &values.values()[start..start + out.dim];
            if let Some(bad) = row.iter().position(|x| !x.is_finite()) {
                out.non_finite.push((id.value(i).to_string(), bad));
                continue;
            }
            out.ids.push(id.value(i).to_string());
            out.data.extend_from_slice(row);
        }
    }
    Ok(out)
}

/// `sample_id`, `vector: FixedSizeList<f32, dim>`, `model_id`, `embedded_at`.
pub fn embeddings_schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::SAMPLE_ID, DataType::Utf8, false),
        Field::new(
            VECTOR,
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, true)),
                dim as i32,
            ),
            false,
        ),
        Field::new(MODEL_ID, DataType::Utf8, false),
        Field::new(
            EMBEDDED_AT,
            DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]))
}

/// What [`Store::refresh_vector_index`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexOutcome {
    /// Fewer rows than the threshold: searches stay exact.
    BelowThreshold { rows: usize },
    /// A new IVF-HNSW-SQ (cosine) index was trained.
    Created { rows: usize },
    /// New rows were added to the existing index.
    Refreshed { rows: usize },
}

impl Store {
    /// Creates the table for `model_id` if it is missing; an existing one must have `dim`.
    pub async fn ensure_embeddings_table(
        &self,
        model_id: &str,
        dim: usize,
    ) -> Result<String, StoreError> {
        let name = embeddings_table(model_id);
        let want = embeddings_schema(dim);
        if self.table_names().await?.contains(&name) {
            let have = self.table_schema(&name).await?;
            super::check_schema(&name, &want, &have)?;
        } else {
            self.db
                .create_empty_table(&name, want)
                .execute()
                .await
                .map_err(lance("create", &name))?;
        }
        Ok(name)
    }

    /// Writes vectors (insert, or replace an existing vector of the same sample). Every vector must
    /// have `dim` finite values; the write is refused otherwise, before anything is stored.
    pub async fn put_embeddings(
        &self,
        model_id: &str,
        dim: usize,
        rows: &[(SampleId, Vec<f32>)],
    ) -> Result<WriteResult, StoreError> {
        let table = self.ensure_embeddings_table(model_id, dim).await?;
        if let Some((id, v)) = rows
            .iter()
            .find(|(_, v)| v.len() != dim || v.iter().any(|x| !x.is_finite()))
        {
            return Err(StoreError::BadVector {
                table,
                sample_id: id.to_string(),
                why: if v.len() != dim {
                    format!("{} values, expected {dim}", v.len())
                } else {
                    "non-finite value".into()
                },
            });
        }
        let mut ids = StringBuilder::new();
        let mut vecs = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32)
            .with_field(Arc::new(Field::new("item", DataType::Float32, true)));
        let mut model = StringBuilder::new();
        let mut at = arrow_array::builder::TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let now = Utc::now().timestamp_micros();
        for (id, v) in rows {
            ids.append_value(id.as_str());
            vecs.values().append_slice(v);
            vecs.append(true);
            model.append_value(model_id);
            at.append_value(now);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(ids.finish()),
            Arc::new(vecs.finish()),
            Arc::new(model.finish()),
            Arc::new(at.finish()),
        ];
        let batch = RecordBatch::try_new(embeddings_schema(dim), cols).map_err(arrow(&table))?;
        self.merge(&table, batch, super::Merge::Upsert).await
    }

    /// The model ids that have an embeddings table (read from the tables' `model_id` column; the
    /// table-name suffix for an empty table).
    pub async fn embedding_models(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for t in self.table_names().await? {
            let Some(suffix) = t.strip_prefix("embeddings_") else {
                continue;
            };
            let first = self.scan(&t, Some(&[MODEL_ID]), None, Some(1)).await?;
            let id = first
                .iter()
                .find_map(|b| {
                    let c = b.column_by_name(MODEL_ID)?.as_string_opt::<i32>()?;
                    (arrow_array::Array::len(c) > 0).then(|| c.value(0).to_string())
                })
                .unwrap_or_else(|| suffix.to_string());
            out.push(id);
        }
        Ok(out)
    }

    /// Sample ids that already have a vector for `model_id` (empty when the table does not exist).
    pub async fn embedded_ids(&self, model_id: &str) -> Result<HashSet<String>, StoreError> {
        let table = embeddings_table(model_id);
        if !self.table_names().await?.contains(&table) {
            return Ok(HashSet::new());
        }
        self.string_column(&table, col::SAMPLE_ID, None).await
    }

    /// All values of one string column (e.g. every sample id), optionally filtered.
    pub async fn string_column(
        &self,
        table: &str,
        column: &str,
        filter: Option<&str>,
    ) -> Result<HashSet<String>, StoreError> {
        let mut out = HashSet::new();
        for b in self.scan(table, Some(&[column]), filter, None).await? {
            let Some(c) = b
                .column_by_name(column)
                .and_then(|c| c.as_string_opt::<i32>())
            else {
                continue;
            };
            out.extend(c.iter().flatten().map(str::to_string));
        }
        Ok(out)
    }

    /// Image bytes of the given samples (those that exist).
    pub async fn images(&self, ids: &[SampleId]) -> Result<Vec<(SampleId, Vec<u8>)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = ids
            .iter()
            .map(|i| format!("'{}'", i.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        let filter = format!("{} IN ({list})", col::SAMPLE_ID);
        let table = super::tables::SAMPLES;
        let mut out = Vec::with_capacity(ids.len());
        for b in self
            .scan(
                table,
                Some(&[col::SAMPLE_ID, col::IMAGE]),
                Some(&filter),
                None,
            )
            .await?
        {
            let (Some(id), Some(img)) = (
                b.column_by_name(col::SAMPLE_ID)
                    .and_then(|c| c.as_string_opt::<i32>()),
                b.column_by_name(col::IMAGE)
                    .and_then(|c| c.as_binary_opt::<i64>()),
            ) else {
                continue;
            };
            for i in 0..b.num_rows() {
                if let Ok(sid) = id.value(i).parse::<SampleId>() {
                    out.push((sid, img.value(i).to_vec()));
                }
            }
        }
        Ok(out)
    }

    /// Builds the cosine ANN index once the table has `min_rows`, or folds new rows into an existing
    /// one. Below the threshold searches are exact, which is both faster and correct for small n.
    pub async fn refresh_vector_index(
        &self,
        table: &str,
        min_rows: usize,
    ) -> Result<IndexOutcome, StoreError> {
        let rows = self.count_rows(table, None).await?;
        let t = self.table(table).await?;
        let has_index = t
            .list_indices()
            .await
            .map_err(lance("list indices", table))?
            .iter()
            .any(|i| i.columns.iter().any(|c| c == VECTOR));
        if has_index {
            t.optimize(OptimizeAction::Index(Default::default()))
                .await
                .map_err(lance("optimize index", table))?;
            return Ok(IndexOutcome::Refreshed { rows });
        }
        if rows < min_rows {
            return Ok(IndexOutcome::BelowThreshold { rows });
        }
        let builder = IvfHnswSqIndexBuilder::default().distance_type(lancedb::DistanceType::Cosine);
        t.create_index(&[VECTOR], Index::IvfHnswSq(builder))
            .execute()
            .await
            .map_err(lance("create index", table))?;
        Ok(IndexOutcome::Created { rows })
    }

    /// The `k` nearest stored vectors to `vector` by cosine distance, nearest first: through the
    /// table's ANN index when it has one (`exact = false`), or by a flat scan. `only_if` is a SQL
    /// filter on the embeddings table (e.g. `sample_id IN (…)`).
    pub async fn nearest(
        &self,
        model_id: &str,
        vector: &[f32],
        k: usize,
        only_if: Option<&str>,
        exact: bool,
    ) -> Result<Vec<(SampleId, f32)>, StoreError> {
        let table = embeddings_table(model_id);
        let t = self.table(&table).await?;
        let mut q = t
            .query()
            .nearest_to(vector)
            .map_err(lance("vector query", &table))?
            .distance_type(lancedb::DistanceType::Cosine)
            .limit(k.max(1));
        if exact {
            q = q.bypass_vector_index();
        }
        if let Some(f) = only_if {
            q = q.only_if(f);
        }
        let batches: Vec<RecordBatch> = q
            .execute()
            .await
            .map_err(lance("vector query", &table))?
            .try_collect()
            .await
            .map_err(lance("vector query", &table))?;
        let mut out = Vec::new();
        for b in &batches {
            let (Some(id), Some(d)) = (
                b.column_by_name(col::SAMPLE_ID)
                    .and_then(|c| c.as_string_opt::<i32>()),
                b.column_by_name("_distance")
                    .and_then(|c| c.as_primitive_opt::<arrow_array::types::Float32Type>()),
            ) else {
                return Err(StoreError::SchemaMismatch {
                    table: table.clone(),
                    problems: "vector query returned no sample_id/_distance".into(),
                });
            };
            for i in 0..b.num_rows() {
                if let Ok(sid) = id.value(i).parse::<SampleId>() {
                    out.push((sid, d.value(i)));
                }
            }
        }
        out.sort_by(|a, b| a.1.total_cmp(&b.1));
        Ok(out)
    }

    /// The stored vector of one sample, if it has one.
    pub async fn vector_of(
        &self,
        model_id: &str,
        sample: &SampleId,
    ) -> Result<Option<Vec<f32>>, StoreError> {
        let table = embeddings_table(model_id);
        let filter = format!("{} = '{}'", col::SAMPLE_ID, sample);
        let batches = self
            .scan(
                &table,
                Some(&[col::SAMPLE_ID, VECTOR]),
                Some(&filter),
                Some(1),
            )
            .await?;
        for b in &batches {
            if let Some(v) = b
                .column_by_name(VECTOR)
                .and_then(|c| c.as_fixed_size_list_opt())
                && b.num_rows() > 0
            {
                let values = v.value(0);
                let f = values.as_primitive::<arrow_array::types::Float32Type>();
                return Ok(Some(f.values().to_vec()));
            }
        }
        Ok(None)
    }
}
