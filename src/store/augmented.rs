//! Validator-augmented embeddings: one table per model id (`augmented_<model id>`) holding the
//! vectors of distorted copies of samples, made as validators distorted their challenges before
//! 2026-05-03 (`crate::imaging::augment`, then JPEG quality 75).
//!
//! They live apart from `embeddings_<model id>` on purpose: every reader of clean vectors (mining,
//! the ANN index, `roadwork similar`, training's clean rows) opens that table and can never pick up
//! a distorted copy by accident. A copy is keyed by sample, seed and copy index, so the same
//! configuration always finds its cache and another seed makes new copies beside the old ones.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, FixedSizeListBuilder, Float32Builder, ListBuilder, StringBuilder,
    TimestampMicrosecondBuilder, UInt8Builder, UInt32Builder, UInt64Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt8Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use chrono::Utc;

use super::embeddings::{EMBEDDED_AT, MODEL_ID, VECTOR};
use super::schema::{col, ts_type};
use super::{Merge, SampleId, Store, StoreError, WriteResult, arrow};

/// Column holding the copy's key (`<sample id>:<seed>:<copy>`).
pub const COPY_ID: &str = "copy_id";

/// Prefix of every augmented-embeddings table.
pub const AUGMENTED_PREFIX: &str = "augmented_";

/// The table for `model_id` (characters outside `[A-Za-z0-9_]` become `_`, as for the clean one).
pub fn augmented_table(model_id: &str) -> String {
    let safe: String = model_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{AUGMENTED_PREFIX}{safe}")
}

/// `copy_id`, `sample_id`, `seed`, `copy`, `level`, `letterbox`, `distortions`, `vector`,
/// `model_id`, `embedded_at`.
pub fn augmented_schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(COPY_ID, DataType::Utf8, false),
        Field::new(col::SAMPLE_ID, DataType::Utf8, false),
        Field::new("seed", DataType::UInt64, false),
        Field::new("copy", DataType::UInt32, false),
        Field::new("level", DataType::UInt8, false),
        Field::new("letterbox", DataType::Boolean, false),
        Field::new_list(
            "distortions",
            Field::new("item", DataType::Utf8, true),
            false,
        ),
        Field::new(
            VECTOR,
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, true)),
                dim as i32,
            ),
            false,
        ),
        Field::new(MODEL_ID, DataType::Utf8, false),
        Field::new(EMBEDDED_AT, ts_type(), false),
    ]))
}

/// One embedded distorted copy.
#[derive(Debug, Clone, PartialEq)]
pub struct AugmentedVector {
    pub sample_id: SampleId,
    /// The configuration's seed (`embed.augment.seed`) the copy was drawn with.
    pub seed: u64,
    /// Index of the copy, 0-based.
    pub copy: u32,
    /// Validator level 0–3.
    pub level: u8,
    /// Level 0 letterboxed instead of centre-cropped.
    pub letterbox: bool,
    /// Distortions that ran, as `<code>=<strength>` (`CS=1`, `GB=2`, …), in order.
    pub distortions: Vec<String>,
    pub vector: Vec<f32>,
}

impl AugmentedVector {
    /// The key of a copy.
    pub fn key(sample_id: &str, seed: u64, copy: u32) -> String {
        format!("{sample_id}:{seed}:{copy}")
    }
}

/// Decodes batches scanned from augmented table `table` (every column). Rows with a non-finite
/// value or an unparsable sample id are skipped and counted in the second value.
pub fn collect_augmented(
    table: &str,
    batches: &[RecordBatch],
) -> Result<(Vec<AugmentedVector>, usize), StoreError> {
    let bad = |why: &str| StoreError::SchemaMismatch {
        table: table.to_string(),
        problems: why.to_string(),
    };
    let mut out = Vec::new();
    let mut skipped = 0;
    for b in batches {
        let get = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| bad(&format!("column {name} missing")))
        };
        let sid = get(col::SAMPLE_ID)?
            .as_string_opt::<i32>()
            .ok_or_else(|| bad("sample_id is not a string"))?;
        let seed = get("seed")?
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| bad("seed is not u64"))?;
        let copy = get("copy")?
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| bad("copy is not u32"))?;
        let level = get("level")?
            .as_primitive_opt::<UInt8Type>()
            .ok_or_else(|| bad("level is not u8"))?;
        let letterbox = get("letterbox")?
            .as_boolean_opt()
            .ok_or_else(|| bad("letterbox is not bool"))?;
        let dist = get("distortions")?
            .as_list_opt::<i32>()
            .ok_or_else(|| bad("distortions is not a list"))?;
        let vec = get(VECTOR)?
            .as_fixed_size_list_opt()
            .ok_or_else(|| bad("vector is not a fixed-size list"))?;
        let values = vec
            .values()
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| bad("vector values are not f32"))?;
        let dim = vec.value_length() as usize;
        for i in 0..b.num_rows() {
            let start = vec.value_offset(i) as usize;
            let v = &values.values()[start..start + dim];
            let Ok(sample_id) = sid.value(i).parse::<SampleId>() else {
                skipped += 1;
                continue;
            };
            if v.iter().any(|x| !x.is_finite()) {
                skipped += 1;
                continue;
            }
            let d = dist.value(i);
            let names = d
                .as_string_opt::<i32>()
                .ok_or_else(|| bad("distortions are not strings"))?;
            out.push(AugmentedVector {
                sample_id,
                seed: seed.value(i),
                copy: copy.value(i),
                level: level.value(i),
                letterbox: letterbox.value(i),
                distortions: names.iter().flatten().map(str::to_string).collect(),
                vector: v.to_vec(),
            });
        }
    }
    Ok((out, skipped))
}

impl Store {
    /// Creates the augmented table for `model_id` if it is missing; an existing one must have `dim`.
    pub async fn ensure_augmented_table(
        &self,
        model_id: &str,
        dim: usize,
    ) -> Result<String, StoreError> {
        let name = augmented_table(model_id);
        let want = augmented_schema(dim);
        if self.table_names().await?.contains(&name) {
            let have = self.table_schema(&name).await?;
            super::check_schema(&name, &want, &have)?;
        } else {
            self.db
                .create_empty_table(&name, want)
                .execute()
                .await
                .map_err(super::lance("create", &name))?;
        }
        Ok(name)
    }

    /// Keys (`copy_id`) already stored for `model_id` (empty when the table does not exist).
    pub async fn augmented_keys(
        &self,
        model_id: &str,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let table = augmented_table(model_id);
        if !self.table_names().await?.contains(&table) {
            return Ok(Default::default());
        }
        self.string_column(&table, COPY_ID, None).await
    }

    /// Writes distorted copies (insert, or replace the same key). Every vector must have `dim`
    /// finite values; the write is refused otherwise, before anything is stored.
    pub async fn put_augmented(
        &self,
        model_id: &str,
        dim: usize,
        rows: &[AugmentedVector],
    ) -> Result<WriteResult, StoreError> {
        let table = self.ensure_augmented_table(model_id, dim).await?;
        if let Some(r) = rows
            .iter()
            .find(|r| r.vector.len() != dim || r.vector.iter().any(|x| !x.is_finite()))
        {
            return Err(StoreError::BadVector {
                table,
                sample_id: r.sample_id.to_string(),
                why: if r.vector.len() != dim {
                    format!("{} values, expected {dim}", r.vector.len())
                } else {
                    "non-finite value".into()
                },
            });
        }
        let mut key = StringBuilder::new();
        let mut sid = StringBuilder::new();
        let mut seed = UInt64Builder::new();
        let mut copy = UInt32Builder::new();
        let mut level = UInt8Builder::new();
        let mut letterbox = BooleanBuilder::new();
        let mut dist = ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
            "item",
            DataType::Utf8,
            true,
        )));
        let mut vecs = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32)
            .with_field(Arc::new(Field::new("item", DataType::Float32, true)));
        let mut model = StringBuilder::new();
        let mut at = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let now = Utc::now().timestamp_micros();
        for r in rows {
            key.append_value(AugmentedVector::key(r.sample_id.as_str(), r.seed, r.copy));
            sid.append_value(r.sample_id.as_str());
            seed.append_value(r.seed);
            copy.append_value(r.copy);
            level.append_value(r.level);
            letterbox.append_value(r.letterbox);
            for d in &r.distortions {
                dist.values().append_value(d);
            }
            dist.append(true);
            vecs.values().append_slice(&r.vector);
            vecs.append(true);
            model.append_value(model_id);
            at.append_value(now);
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(key.finish()),
            Arc::new(sid.finish()),
            Arc::new(seed.finish()),
            Arc::new(copy.finish()),
            Arc::new(level.finish()),
            Arc::new(letterbox.finish()),
            Arc::new(dist.finish()),
            Arc::new(vecs.finish()),
            Arc::new(model.finish()),
            Arc::new(at.finish()),
        ];
        debug_assert!(cols.iter().all(|c| c.len() == rows.len()));
        let batch = RecordBatch::try_new(augmented_schema(dim), cols).map_err(arrow(&table))?;
        self.merge(&table, batch, Merge::Upsert).await
    }
}
