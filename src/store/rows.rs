//! One Arrow ↔ row mapping for every table of records.
//!
//! A table's typed row is a serde struct whose fields are named like its columns; `serde_arrow`
//! turns a slice of rows into a batch of the table's schema ([`super::schema::schema_of`]) and a
//! batch read back into rows. What a row does not store itself — a key derived from other columns,
//! a size — is declared once per table in [`TableRow::DERIVED`] and filled on write. Columns a row
//! does not name are ignored on read, and a row field marked `#[serde(default)]` reads a column
//! that an older layout lacks (or a projection left out) as its default.
//!
//! The embeddings tables are not rows: their vectors are one contiguous `f32` matrix, written and
//! read column-wise in [`super::embeddings`].

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{ArrowError, FieldRef};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::schema::schema_of;

/// The typed row of one store table.
pub trait TableRow: Serialize + DeserializeOwned {
    /// The table the rows live in (one of [`super::tables::ALL`]).
    const TABLE: &'static str;
    /// Columns computed from the row's fields when it is written (keys, sizes). They are never
    /// read back into the row: the fields they come from are.
    const DERIVED: &'static [&'static str] = &[];
    /// The values of [`Self::DERIVED`] for `rows`, one array per name, in that order.
    fn derived(_rows: &[Self]) -> Vec<ArrayRef> {
        Vec::new()
    }
}

fn external(table: &str, e: impl std::fmt::Display) -> ArrowError {
    ArrowError::InvalidArgumentError(format!("{table}: {e}"))
}

/// Rows → one batch of their table's schema, columns in schema order.
pub fn to_batch<R: TableRow>(rows: &[R]) -> Result<RecordBatch, ArrowError> {
    let schema = schema_of(R::TABLE)
        .ok_or_else(|| ArrowError::SchemaError(format!("no table {:?}", R::TABLE)))?;
    let stored: Vec<FieldRef> = schema
        .fields()
        .iter()
        .filter(|f| !R::DERIVED.contains(&f.name().as_str()))
        .cloned()
        .collect();
    let body = serde_arrow::to_record_batch(&stored, &rows).map_err(|e| external(R::TABLE, e))?;
    let derived = R::derived(rows);
    if derived.len() != R::DERIVED.len() {
        return Err(external(
            R::TABLE,
            "derived columns do not match their names",
        ));
    }
    let columns = schema
        .fields()
        .iter()
        .map(|f| match R::DERIVED.iter().position(|d| d == f.name()) {
            Some(i) => Ok(derived[i].clone()),
            None => body
                .column_by_name(f.name())
                .cloned()
                .ok_or_else(|| external(R::TABLE, format!("column {:?} not written", f.name()))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, columns)
}

/// A batch read from the row's table (any projection that includes the row's fields) → rows.
pub fn from_batch<R: TableRow>(batch: &RecordBatch) -> Result<Vec<R>, ArrowError> {
    serde_arrow::from_record_batch(batch).map_err(|e| external(R::TABLE, e))
}

/// A derived key column: one string per row.
pub(crate) fn keys<R>(rows: &[R], key: impl Fn(&R) -> String) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(rows.iter().map(key)))
}

/// Serde forms of the typed values that a column stores differently from their JSON form.
pub(crate) mod serde_as {
    /// A UTC time as `Timestamp(µs, "UTC")`.
    pub mod micros {
        use chrono::{DateTime, TimeZone, Utc};
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_i64(t.timestamp_micros())
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
            let v = i64::deserialize(d)?;
            Utc.timestamp_micros(v)
                .single()
                .ok_or_else(|| serde::de::Error::custom(format!("timestamp {v} µs out of range")))
        }
    }

    /// An optional UTC time as a nullable `Timestamp(µs, "UTC")`.
    pub mod opt_micros {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_some(&t.timestamp_micros()),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super::micros")] DateTime<Utc>);
            Ok(Option::<Wrap>::deserialize(d)?.map(|Wrap(t)| t))
        }
    }

    /// A [`crate::store::Label`] as its stored integer (`UInt8`, 0 or 1).
    pub mod label_u8 {
        use serde::{Deserialize, Deserializer, Serializer};

        use crate::store::Label;

        pub fn serialize<S: Serializer>(l: &Label, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u8(l.as_u8())
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Label, D::Error> {
            let v = u8::deserialize(d)?;
            Label::from_int(v.into())
                .ok_or_else(|| serde::de::Error::custom(format!("label {v} is not 0 or 1")))
        }
    }

    /// A value kept as JSON text in a `Utf8` column; a null (a ledger from before the column
    /// existed) or absent column reads as the default.
    pub mod json_text {
        use serde::de::DeserializeOwned;
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        pub fn serialize<T: Serialize, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
            let text = serde_json::to_string(v).map_err(serde::ser::Error::custom)?;
            s.serialize_str(&text)
        }

        pub fn deserialize<'de, T: DeserializeOwned + Default, D: Deserializer<'de>>(
            d: D,
        ) -> Result<T, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(text) => serde_json::from_str(&text).map_err(serde::de::Error::custom),
                None => Ok(T::default()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow_array::{Array, UInt8Array, UInt64Array};
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::store::schema::{RUNS_BASE_COLUMNS, col};
    use crate::store::*;

    fn at(s: i64) -> chrono::DateTime<Utc> {
        Utc.timestamp_micros(1_780_000_000_000_000 + s).unwrap()
    }

    /// Writes `rows`, checks the batch has the table's schema exactly, reads them back.
    fn round_trip<R: TableRow + PartialEq + std::fmt::Debug>(rows: Vec<R>) -> RecordBatch {
        let batch = to_batch(&rows).unwrap();
        assert_eq!(batch.schema(), schema_of(R::TABLE).unwrap(), "{}", R::TABLE);
        assert_eq!(from_batch::<R>(&batch).unwrap(), rows, "{}", R::TABLE);
        batch
    }

    fn sample(byte: u8) -> SampleRow {
        let image = vec![byte; 10 + byte as usize];
        SampleRow {
            sample_id: SampleId::of_bytes(&image),
            image,
            width: 4,
            height: 3,
            format: "png".into(),
            source: "dataset".into(),
            source_ref: "x/1".into(),
            era: "fullres".into(),
            tags: vec!["city=Berlin".into(), "seq_id=7".into()],
            phash: u64::MAX - u64::from(byte),
            received_at: at(i64::from(byte)),
        }
    }

    #[test]
    fn samples_carry_their_size_and_every_field() {
        let b = round_trip(vec![sample(1), sample(200)]);
        let bytes = b
            .column_by_name(col::BYTES)
            .unwrap()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .unwrap();
        assert_eq!(bytes.values(), &[11, 210]);
        assert_eq!(to_batch::<SampleRow>(&[]).unwrap().num_rows(), 0);
    }

    #[test]
    fn label_keys_are_derived_and_bad_labels_are_refused() {
        let l = |author: &str, label| LabelRow {
            sample_id: sample(1).sample_id,
            label,
            source: LabelSource::Human,
            confidence: 0.75,
            author: author.into(),
            ts: at(5),
        };
        let rows = vec![l("erin", Label::Roadwork), l("sam", Label::Clean)];
        let b = round_trip(rows.clone());
        let ids = b.column_by_name(col::LABEL_ID).unwrap();
        let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(ids.value(1), rows[1].label_id());
        // A stored 7 is not a label: the error names the table instead of guessing.
        let mut cols = b.columns().to_vec();
        let i = b.schema().index_of(col::LABEL).unwrap();
        cols[i] = Arc::new(UInt8Array::from(vec![1, 7]));
        let bad = RecordBatch::try_new(b.schema(), cols).unwrap();
        let err = from_batch::<LabelRow>(&bad).unwrap_err().to_string();
        assert!(
            err.contains("labels") && err.contains("not 0 or 1"),
            "{err}"
        );
        // A sample id that is not a sha256 is refused too.
        let mut cols = b.columns().to_vec();
        let i = b.schema().index_of(col::SAMPLE_ID).unwrap();
        cols[i] = Arc::new(StringArray::from(vec!["zz", "yy"]));
        let bad = RecordBatch::try_new(b.schema(), cols).unwrap();
        assert!(from_batch::<LabelRow>(&bad).is_err());
    }

    #[test]
    fn runs_read_from_an_older_layout_get_empty_lineage() {
        let run = RunRow {
            run_id: RunId::new(RunKind::Mine, at(0)),
            kind: RunKind::Mine,
            started_at: at(0),
            finished_at: Some(at(9)),
            status: RunStatus::Ok,
            params: "{}".into(),
            summary: "{\"n\":1}".into(),
            parent: Some(RunId::new(RunKind::Nightly, at(0))),
            reads: BTreeMap::from([("samples".to_string(), 3)]),
            writes: BTreeMap::from([("mine_scores".to_string(), 4)]),
        };
        let open = RunRow {
            finished_at: None,
            status: RunStatus::Running,
            parent: None,
            reads: TableVersions::new(),
            ..run.clone()
        };
        let b = round_trip(vec![run.clone(), open]);
        // A layout-3 ledger has no parent/reads/writes columns at all.
        let idx: Vec<usize> = RUNS_BASE_COLUMNS
            .iter()
            .map(|c| b.schema().index_of(c).unwrap())
            .collect();
        let old = b.project(&idx).unwrap();
        let back = from_batch::<RunRow>(&old).unwrap();
        assert_eq!(back[0].parent, None);
        assert!(back[0].reads.is_empty() && back[0].writes.is_empty());
        assert_eq!(back[0].finished_at, run.finished_at);
        assert_eq!(back[1].finished_at, None);
        // Null lineage (a migrated ledger) reads the same way.
        let nulls = b
            .schema()
            .fields()
            .iter()
            .zip(b.columns())
            .map(|(f, c)| match f.name().as_str() {
                col::READS | col::WRITES | col::PARENT_RUN => {
                    arrow_array::new_null_array(f.data_type(), c.len())
                }
                _ => c.clone(),
            })
            .collect();
        let migrated = RecordBatch::try_new(b.schema(), nulls).unwrap();
        let back = from_batch::<RunRow>(&migrated).unwrap();
        assert!(
            back.iter()
                .all(|r| r.parent.is_none() && r.writes.is_empty())
        );
    }

    #[test]
    fn every_table_of_records_round_trips_with_its_key() {
        let mv = "h-20261202-000000".to_string();
        let id = sample(3).sample_id;
        round_trip(vec![PredictionRow {
            request_id: "r1".into(),
            sample_id: id.clone(),
            model_version: mv.clone(),
            tier: 2,
            score_tier1: Some(0.25),
            score_tier2: None,
            final_score: -1.0,
            latency_ms: 3.5,
            ts: at(1),
            validator: None,
        }]);
        round_trip(vec![MetaRow {
            key: "schema_version".into(),
            value: "6".into(),
        }]);
        round_trip(vec![ModelRow {
            model_version: mv.clone(),
            created_at: at(2),
            embedding_model: "dinov3-vits16".into(),
            snapshot: "train/x".into(),
            artifact_dir: "models/x".into(),
            card: "{}".into(),
        }]);
        let e = EvaluationRow {
            model_version: mv.clone(),
            ts: at(3),
            eval_set: "abc".into(),
            n: 40,
            metrics: "{}".into(),
            slices: "[]".into(),
        };
        let b = round_trip(vec![e.clone()]);
        let key = b.column_by_name(col::EVAL_ID).unwrap();
        let key = key.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(key.value(0), e.eval_id());
        round_trip(vec![HeadScoreRow {
            model_version: mv.clone(),
            sample_id: id.clone(),
            split: "train".into(),
            label: None,
            oof_prob: Some(0.5),
            prob: 0.25,
            ensemble_mean: 0.3,
            ensemble_std: 0.1,
            ensemble_mi: 0.01,
            ts: at(4),
        }]);
        let b = round_trip(vec![MineScoreRow {
            run_id: "mine-1".into(),
            sample_id: id.to_string(),
            cluster: 3,
            hardness: 0.9,
            reasons: "uncertain (0.61)".into(),
            prob: None,
            label_issue: true,
            outlier: false,
            knn_mean: 0.2,
            typicality: 1.5,
            dup_group: Some("g".into()),
            sets: "train".into(),
        }]);
        let key = b.column_by_name(col::SCORE_ID).unwrap();
        let key = key.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(key.value(0), format!("mine-1/{id}"));
        round_trip(vec![MineClusterRow {
            run_id: "mine-1".into(),
            cluster: 3,
            size: 10,
            n_labelled: 4,
            positive_share: None,
            error_rate: Some(0.25),
            train_share: 0.1,
            traffic_share: 0.2,
            drift_ratio: 2.0,
            drift_z: 1.0,
            under_covered: true,
            exemplar: id.to_string(),
        }]);
        round_trip(vec![DuplicateRow {
            run_id: "mine-1".into(),
            sample_a: "a".into(),
            sample_b: "b".into(),
            kind: "near".into(),
            distance: 0.01,
            sets_a: "train".into(),
            sets_b: "eval".into(),
        }]);
        round_trip(vec![SelectionRow {
            name: "night-1".into(),
            created_at: at(6),
            sample_id: id.to_string(),
            rank: 0,
            score: 0.5,
            strategy: "auto".into(),
            reasons: "margin".into(),
        }]);
        round_trip(vec![ShadowRow {
            request_id: "r1".into(),
            sample_id: id.to_string(),
            champion_version: mv.clone(),
            champion_score: 0.5,
            challenger_version: "h2".into(),
            challenger_score: 0.75,
            tier1_ms: 1.0,
            champion_head_ms: 0.1,
            challenger_head_ms: 0.2,
            ts: at(7),
            validator: Some("5F".into()),
        }]);
        round_trip(vec![SynthImageRow {
            synth_id: "s".into(),
            run_id: "synth-1".into(),
            request_id: "q".into(),
            gap: "cluster 3".into(),
            cluster: Some(3),
            label: Label::Roadwork,
            backend: "bedrock".into(),
            model_id: "stability.sd3-5-large-v1:0".into(),
            task: "text-to-image".into(),
            prompt: "cones".into(),
            negative_prompt: String::new(),
            seed: u64::MAX,
            source_sample: None,
            cost_usd: 0.08,
            status: SynthStatus::Rejected,
            reason: "duplicate".into(),
            sample_id: None,
            distance: Some(0.5),
            land_limit: None,
            nearest_cluster: Some(1),
            ts: at(8),
        }]);
    }

    #[test]
    fn columns_a_row_does_not_name_are_ignored_on_read() {
        let b = round_trip(vec![MetaRow {
            key: "k".into(),
            value: "v".into(),
        }]);
        let extra = arrow_array::Float32Array::from(vec![1.0]);
        let mut fields: Vec<FieldRef> = b.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(arrow_schema::Field::new(
            "added_later",
            extra.data_type().clone(),
            false,
        )));
        let mut cols = b.columns().to_vec();
        cols.push(Arc::new(extra));
        let wider =
            RecordBatch::try_new(Arc::new(arrow_schema::Schema::new(fields)), cols).unwrap();
        assert_eq!(from_batch::<MetaRow>(&wider).unwrap()[0].value, "v");
    }
}
