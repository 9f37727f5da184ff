//! SQL over the store: the README question, type round-trips (embeddings included), formats, errors.

use crate::support;

use std::sync::Arc;

use arrow_array::types::Float32Type;
use arrow_array::{FixedSizeListArray, RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::{DataType, Field, Schema};
use polars::prelude::{AnyValue, DataType as PlType, SerReader, TimeUnit};
use roadwork::ingest::{FolderOptions, NatixOptions};
use roadwork::query::{OutputFormat, QueryEngine, QueryError, SAMPLES_BY_SOURCE, write_frame};
use roadwork::synth::scenes::{generate_scenes, write_natix_shard};
use support::{ingestor, tmp_store};

async fn filled() -> (tempfile::TempDir, roadwork::store::Store) {
    let (dir, store) = tmp_store().await;
    generate_scenes(&dir.path().join("scenes"), 6, 1, false).unwrap();
    let ing = ingestor(&store, 50);
    ing.ingest_folder(&dir.path().join("scenes"), &FolderOptions::default())
        .await
        .unwrap();
    let shard = dir.path().join("n.parquet");
    write_natix_shard(&shard, 2, &[0, 1, 2, 3]).unwrap();
    ing.ingest_natix(&[shard], &NatixOptions::default())
        .await
        .unwrap();
    (dir, store)
}

fn col_str(df: &polars::prelude::DataFrame, name: &str) -> Vec<String> {
    let c = df.column(name).unwrap();
    (0..df.height())
        .map(|i| match c.get(i).unwrap() {
            AnyValue::String(s) => s.to_string(),
            AnyValue::StringOwned(s) => s.to_string(),
            other => other.to_string(),
        })
        .collect()
}

#[tokio::test]
async fn readme_question_counts_by_source() {
    let (_d, store) = filled().await;
    let q = QueryEngine::new(store);
    let df = q.execute(SAMPLES_BY_SOURCE).await.unwrap();
    assert_eq!(col_str(&df, "source"), vec!["dataset", "synthetic"]);
    let n = df.column("n").unwrap();
    assert_eq!(n.get(0).unwrap().extract::<u64>(), Some(4));
    assert_eq!(n.get(1).unwrap().extract::<u64>(), Some(6));
    // Effective labels join back to samples.
    let df = q
        .execute(roadwork::query::SAMPLES_BY_SOURCE_AND_LABEL)
        .await
        .unwrap();
    // dataset×{0,1} and synthetic×{0,1}, two of each class in the shard, three in the scenes.
    assert_eq!(df.height(), 4);
    let n: Vec<Option<u64>> = (0..4)
        .map(|i| df.column("n").unwrap().get(i).unwrap().extract::<u64>())
        .collect();
    assert_eq!(n, vec![Some(2), Some(2), Some(3), Some(3)]);
}

#[tokio::test]
async fn stored_types_arrive_as_polars_types() {
    let (_d, store) = filled().await;
    let df = QueryEngine::new(store)
        .execute("SELECT sample_id, image, width, phash, tags, received_at FROM samples LIMIT 3")
        .await
        .unwrap();
    assert_eq!(df.height(), 3);
    let dt = |c: &str| df.column(c).unwrap().dtype().clone();
    assert_eq!(dt("sample_id"), PlType::String);
    assert_eq!(dt("image"), PlType::Binary);
    assert_eq!(dt("width"), PlType::UInt32);
    assert_eq!(dt("phash"), PlType::UInt64);
    assert_eq!(dt("tags"), PlType::List(Box::new(PlType::String)));
    assert!(
        matches!(dt("received_at"), PlType::Datetime(TimeUnit::Microseconds, Some(tz)) if tz.as_str() == "UTC")
    );
    // Image bytes survive intact: their hash is the sample id.
    let ids = col_str(&df, "sample_id");
    let img = df.column("image").unwrap();
    for (i, id) in ids.iter().enumerate() {
        let AnyValue::Binary(b) = img.get(i).unwrap() else {
            panic!("binary expected")
        };
        assert_eq!(&roadwork::store::SampleId::of_bytes(b).to_string(), id);
    }
}

#[tokio::test]
async fn embedding_columns_are_fixed_size_arrays() {
    let (dir, store) = tmp_store().await;
    let uri = dir.path().join("store").to_string_lossy().into_owned();
    let db = lancedb::connect(&uri).execute().await.unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::Utf8, false),
        Field::new(
            "vector",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), 4),
            false,
        ),
    ]));
    let vectors = [vec![0.5f32, -1.0, 2.25, 0.0], vec![1.0, 2.0, 3.0, 4.0]];
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["a", "b"])),
            Arc::new(
                FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
                    vectors
                        .iter()
                        .map(|v| Some(v.iter().copied().map(Some).collect::<Vec<_>>())),
                    4,
                ),
            ),
        ],
    )
    .unwrap();
    db.create_table(
        "embeddings_test",
        Box::new(RecordBatchIterator::new(vec![Ok(batch)], schema))
            as Box<dyn arrow_array::RecordBatchReader + Send>,
    )
    .execute()
    .await
    .unwrap();
    let df = QueryEngine::new(store)
        .execute("SELECT sample_id, vector FROM embeddings_test ORDER BY sample_id")
        .await
        .unwrap();
    assert_eq!(
        df.column("vector").unwrap().dtype(),
        &PlType::Array(Box::new(PlType::Float32), 4)
    );
    let col = df.column("vector").unwrap();
    for (i, want) in vectors.iter().enumerate() {
        let AnyValue::Array(s, 4) = col.get(i).unwrap() else {
            panic!("array expected")
        };
        let got: Vec<f32> = s.f32().unwrap().into_no_null_iter().collect();
        assert_eq!(&got, want);
    }
}

#[tokio::test]
async fn every_output_format_writes_something_readable() {
    let (d, store) = filled().await;
    let df = QueryEngine::new(store)
        .execute("SELECT sample_id, width, tags, phash FROM samples ORDER BY sample_id")
        .await
        .unwrap();
    let csv = d.path().join("o.csv");
    write_frame(&df, OutputFormat::Csv, Some(&csv), 10).unwrap();
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 11);
    assert!(text.lines().next().unwrap() == "sample_id,width,tags,phash");
    assert!(text.contains("[\"\"daytime="), "tags as JSON lists: {text}");
    let json = d.path().join("o.json");
    write_frame(&df, OutputFormat::Json, Some(&json), 10).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 10);
    assert!(v[0]["tags"].is_array() && v[0]["width"].is_u64());
    let pq = d.path().join("o.parquet");
    write_frame(&df, OutputFormat::Parquet, Some(&pq), 10).unwrap();
    let back = polars::prelude::ParquetReader::new(std::fs::File::open(&pq).unwrap())
        .finish()
        .unwrap();
    assert!(back.equals(&df));
    assert!(matches!(
        write_frame(&df, OutputFormat::Parquet, None, 10),
        Err(QueryError::NeedsFile(_))
    ));
    let table = roadwork::query::render_table(&df, 3);
    assert!(
        table.contains("… 7 more rows") && table.contains("(10 rows)"),
        "{table}"
    );
}

#[tokio::test]
async fn bad_sql_is_an_error_not_a_panic() {
    let (_d, store) = tmp_store().await;
    let q = QueryEngine::new(store);
    for sql in [
        "SELECT * FROM no_such_table",
        "SELECT no_such_column FROM samples",
        "SELEKT 1",
    ] {
        assert!(
            matches!(q.execute(sql).await, Err(QueryError::Polars(_))),
            "{sql}"
        );
    }
    let empty = q.execute(SAMPLES_BY_SOURCE).await.unwrap();
    assert_eq!(empty.height(), 0);
}
