//! The store: layout, idempotent writes, label precedence, snapshots.

use crate::support;

use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchIterator, StringArray};
use chrono::{TimeZone, Utc};
use roadwork::store::schema::{self, tables};
use roadwork::store::{
    Label, LabelRow, LabelSource, SampleId, SampleRow, SnapshotName, Store, StoreError,
};
use support::tmp_store;

fn sample(bytes: &[u8]) -> SampleRow {
    SampleRow {
        sample_id: SampleId::of_bytes(bytes),
        image: bytes.to_vec(),
        width: 2,
        height: 2,
        format: "png".into(),
        source: "upload".into(),
        source_ref: "test".into(),
        era: "unknown".into(),
        tags: vec!["weather=rain".into()],
        phash: 42,
        received_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
    }
}

fn label(id: &SampleId, l: Label, source: LabelSource, author: &str, t: i64) -> LabelRow {
    LabelRow {
        sample_id: id.clone(),
        label: l,
        source,
        confidence: 1.0,
        author: author.into(),
        ts: Utc.timestamp_opt(t, 0).unwrap(),
    }
}

/// Golden test: the persisted layout. Changing it means bumping SCHEMA_VERSION and a migration.
#[test]
fn layout_is_pinned() {
    let show = |s: arrow_schema::SchemaRef| {
        s.fields()
            .iter()
            .map(|f| format!("{}:{}", f.name(), f.data_type()))
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(schema::SCHEMA_VERSION, 7);
    assert_eq!(
        show(schema::runs_schema()),
        "run_id:Utf8,kind:Utf8,started_at:Timestamp(µs, \"UTC\"),finished_at:Timestamp(µs, \"UTC\"),\
status:Utf8,params:Utf8,summary:Utf8,parent_run:Utf8,reads:Utf8,writes:Utf8"
    );
    assert_eq!(
        show(schema::samples_schema()),
        "sample_id:Utf8,image:LargeBinary,width:UInt32,height:UInt32,format:Utf8,bytes:UInt64,\
source:Utf8,source_ref:Utf8,era:Utf8,tags:List(Utf8),phash:UInt64,received_at:Timestamp(µs, \"UTC\")"
    );
    assert_eq!(
        show(schema::labels_schema()),
        "label_id:Utf8,sample_id:Utf8,label:UInt8,source:Utf8,confidence:Float32,author:Utf8,ts:Timestamp(µs, \"UTC\")"
    );
    assert_eq!(
        show(schema::predictions_schema()),
        "request_id:Utf8,sample_id:Utf8,model_version:Utf8,tier:UInt8,score_tier1:Float32,\
score_tier2:Float32,final_score:Float32,latency_ms:Float32,ts:Timestamp(µs, \"UTC\"),validator:Utf8"
    );
    assert_eq!(
        show(schema::schema_of(tables::MODELS).unwrap()),
        "model_version:Utf8,created_at:Timestamp(µs, \"UTC\"),embedding_model:Utf8,snapshot:Utf8,\
artifact_dir:Utf8,card:Utf8"
    );
    assert_eq!(
        show(schema::schema_of(tables::EVALUATIONS).unwrap()),
        "eval_id:Utf8,model_version:Utf8,ts:Timestamp(µs, \"UTC\"),eval_set:Utf8,n:UInt32,metrics:Utf8,slices:Utf8"
    );
    assert_eq!(
        show(schema::schema_of(tables::HEAD_SCORES).unwrap()),
        "score_id:Utf8,model_version:Utf8,sample_id:Utf8,split:Utf8,label:UInt8,oof_prob:Float32,\
prob:Float32,ensemble_mean:Float32,ensemble_std:Float32,ensemble_mi:Float32,ts:Timestamp(µs, \"UTC\")"
    );
    assert_eq!(
        show(schema::schema_of(tables::MINE_SCORES).unwrap()),
        "score_id:Utf8,run_id:Utf8,sample_id:Utf8,cluster:UInt32,hardness:Float32,reasons:Utf8,\
prob:Float32,label_issue:Boolean,outlier:Boolean,knn_mean:Float32,typicality:Float32,dup_group:Utf8,sets:Utf8"
    );
    assert_eq!(
        show(schema::schema_of(tables::MINE_CLUSTERS).unwrap()),
        "cluster_id:Utf8,run_id:Utf8,cluster:UInt32,size:UInt32,n_labelled:UInt32,positive_share:Float32,\
error_rate:Float32,train_share:Float32,traffic_share:Float32,drift_ratio:Float32,drift_z:Float32,\
under_covered:Boolean,exemplar:Utf8"
    );
    assert_eq!(
        show(schema::schema_of(tables::DUPLICATES).unwrap()),
        "pair_id:Utf8,run_id:Utf8,sample_a:Utf8,sample_b:Utf8,kind:Utf8,distance:Float32,sets_a:Utf8,sets_b:Utf8"
    );
    assert_eq!(
        show(schema::schema_of(tables::SELECTIONS).unwrap()),
        "selection_row:Utf8,name:Utf8,created_at:Timestamp(µs, \"UTC\"),sample_id:Utf8,rank:UInt32,\
score:Float32,strategy:Utf8,reasons:Utf8"
    );
    assert_eq!(
        show(schema::schema_of(tables::SHADOW_SCORES).unwrap()),
        "shadow_id:Utf8,request_id:Utf8,sample_id:Utf8,champion_version:Utf8,champion_score:Float32,\
challenger_version:Utf8,challenger_score:Float32,tier1_ms:Float32,champion_head_ms:Float32,\
challenger_head_ms:Float32,ts:Timestamp(µs, \"UTC\"),validator:Utf8"
    );
    assert_eq!(
        show(schema::schema_of(tables::SYNTH_IMAGES).unwrap()),
        "synth_id:Utf8,run_id:Utf8,request_id:Utf8,gap:Utf8,cluster:UInt32,label:UInt8,backend:Utf8,\
model_id:Utf8,task:Utf8,prompt:Utf8,negative_prompt:Utf8,seed:UInt64,source_sample:Utf8,cost_usd:Float64,\
status:Utf8,reason:Utf8,sample_id:Utf8,distance:Float32,land_limit:Float32,nearest_cluster:UInt32,\
ts:Timestamp(µs, \"UTC\")"
    );
    assert_eq!(
        show(schema::schema_of(tables::IMAGE_QUALITY).unwrap()),
        "sample_id:Utf8,brightness:Float32,sharpness:Float32,entropy:Float32,colorfulness:Float32,\
aspect_ratio:Float32,issues:List(Utf8),ts:Timestamp(µs, \"UTC\")"
    );
}

/// A layout-1 store (before the training tables) opens: the tables are added and the version
/// recorded, and nothing already stored changes.
#[tokio::test]
async fn a_layout_1_store_is_upgraded_in_place() {
    let (dir, store) = tmp_store().await;
    store.insert_samples(&[sample(b"old")]).await.unwrap();
    drop(store);
    let uri = dir.path().join("store").to_string_lossy().into_owned();
    let db = lancedb::connect(&uri).execute().await.unwrap();
    for t in [
        tables::MODELS,
        tables::EVALUATIONS,
        tables::HEAD_SCORES,
        tables::MINE_SCORES,
        tables::MINE_CLUSTERS,
        tables::DUPLICATES,
        tables::SELECTIONS,
        tables::SHADOW_SCORES,
        tables::SYNTH_IMAGES,
    ] {
        db.drop_table(t, &[]).await.unwrap();
    }
    set_layout_version(&db, "1").await;
    let store = Store::open(&uri).await.unwrap();
    let names = store.table_names().await.unwrap();
    for t in tables::ALL {
        assert!(names.iter().any(|n| n == t), "{t} missing after upgrade");
    }
    assert_eq!(store.count_rows(tables::SAMPLES, None).await.unwrap(), 1);
    let meta = store
        .scan(tables::META, None, Some("key = 'schema_version'"), None)
        .await
        .unwrap();
    let v = meta[0]
        .column_by_name("value")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .value(0)
        .to_string();
    assert_eq!(v, roadwork::store::SCHEMA_VERSION.to_string());
}

#[tokio::test]
async fn open_creates_every_table_and_reopens() {
    let (dir, store) = tmp_store().await;
    let mut names = store.table_names().await.unwrap();
    names.sort();
    let mut want: Vec<String> = tables::ALL.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want);
    drop(store);
    let again = Store::open(&dir.path().join("store").to_string_lossy())
        .await
        .unwrap();
    assert_eq!(again.count_rows(tables::META, None).await.unwrap(), 1);
}

#[tokio::test]
async fn samples_round_trip_and_insert_is_idempotent() {
    let (_d, store) = tmp_store().await;
    let rows = vec![sample(b"one"), sample(b"two"), sample(b"one")];
    let r = store.insert_samples(&rows).await.unwrap();
    assert_eq!(r.inserted, 2);
    let again = store.insert_samples(&rows).await.unwrap();
    assert_eq!(again.inserted, 0);
    let mut back = store.samples(None).await.unwrap();
    back.sort_by(|a, b| a.image.cmp(&b.image));
    assert_eq!(back, vec![sample(b"one"), sample(b"two")]);
}

#[tokio::test]
async fn labels_update_only_on_change_and_precedence_applies() {
    let (_d, store) = tmp_store().await;
    let id = SampleId::of_bytes(b"x");
    let rows = vec![
        label(&id, Label::Clean, LabelSource::Dataset, "natix", 100),
        label(&id, Label::Roadwork, LabelSource::Teacher, "vlm", 200),
    ];
    assert_eq!(store.put_labels(&rows).await.unwrap().inserted, 2);
    let same = store.put_labels(&rows).await.unwrap();
    assert_eq!((same.inserted, same.updated), (0, 0));
    // The dataset changes its mind: replaced, not added.
    let changed = vec![label(
        &id,
        Label::Roadwork,
        LabelSource::Dataset,
        "natix",
        300,
    )];
    let r = store.put_labels(&changed).await.unwrap();
    assert_eq!((r.inserted, r.updated), (0, 1));
    assert_eq!(store.count_rows(tables::LABELS, None).await.unwrap(), 2);
    // A human overrides everything.
    store
        .put_labels(&[label(&id, Label::Clean, LabelSource::Human, "ann", 50)])
        .await
        .unwrap();
    let eff = store.effective_labels().await.unwrap();
    assert_eq!(eff.len(), 1);
    assert_eq!(eff[0].label, Label::Clean);
    assert_eq!(eff[0].source, LabelSource::Human);
    assert!(eff[0].disputed);
}

#[tokio::test]
async fn snapshots_pin_versions() {
    let (_d, store) = tmp_store().await;
    store.insert_samples(&[sample(b"a")]).await.unwrap();
    let name = SnapshotName::parse("train/head-1").unwrap();
    let snap = store.snapshot(&name).await.unwrap();
    assert!(snap.versions.contains_key(tables::SAMPLES));
    store.insert_samples(&[sample(b"b")]).await.unwrap();
    assert_eq!(store.count_rows(tables::SAMPLES, None).await.unwrap(), 2);
    let old = store
        .scan_at(&name, tables::SAMPLES, Some(&["sample_id"]), None)
        .await
        .unwrap();
    assert_eq!(old.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    assert!(matches!(
        store.snapshot(&name).await,
        Err(StoreError::SnapshotExists { .. })
    ));
    let listed = store.snapshots().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name.as_str(), "train/head-1");
    store.delete_snapshot(&name).await.unwrap();
    assert!(store.snapshots().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_store_from_a_newer_layout_is_refused() {
    let (dir, store) = tmp_store().await;
    drop(store);
    let uri = dir.path().join("store").to_string_lossy().into_owned();
    let db = lancedb::connect(&uri).execute().await.unwrap();
    set_layout_version(&db, "99").await;
    let err = Store::open(&uri).await.unwrap_err();
    assert!(
        matches!(err, StoreError::LayoutTooNew { found: 99, .. }),
        "{err}"
    );
}

/// Overwrites the stored layout version, as an older or newer binary would have left it.
async fn set_layout_version(db: &lancedb::Connection, v: &str) {
    let t = db.open_table(tables::META).execute().await.unwrap();
    let batch = RecordBatch::try_new(
        schema::meta_schema(),
        vec![
            Arc::new(StringArray::from(vec!["schema_version"])),
            Arc::new(StringArray::from(vec![v])),
        ],
    )
    .unwrap();
    let mut m = t.merge_insert(&["key"]);
    m.when_matched_update_all(None)
        .when_not_matched_insert_all();
    m.execute(Box::new(RecordBatchIterator::new(
        vec![Ok(batch)],
        schema::meta_schema(),
    )))
    .await
    .unwrap();
}

/// The documented type of an Arrow column in `docs/DATA_LAYOUT.md`.
fn doc_type(t: &arrow_schema::DataType) -> String {
    use arrow_schema::{DataType as D, TimeUnit};
    match t {
        D::Utf8 => "string".into(),
        D::LargeBinary => "large_binary".into(),
        D::Boolean => "bool".into(),
        D::UInt8 => "u8".into(),
        D::UInt32 => "u32".into(),
        D::UInt64 => "u64".into(),
        D::Int64 => "i64".into(),
        D::Float32 => "f32".into(),
        D::Float64 => "f64".into(),
        D::Timestamp(TimeUnit::Microsecond, Some(tz)) => format!("timestamp_us[{tz}]"),
        D::List(f) => format!("list<{}>", doc_type(f.data_type())),
        D::FixedSizeList(f, _) => format!("fixed_size_list<{}, D>", doc_type(f.data_type())),
        other => format!("{other}"),
    }
}

/// `docs/DATA_LAYOUT.md` is the store's contract for other readers (notebooks, the Python data
/// stack): every table has a section whose column table lists exactly the schema's columns, in
/// order, with their types and nullability, and names the table's key.
#[test]
fn the_data_layout_doc_matches_the_schema() {
    let doc = std::fs::read_to_string(support::root().join("docs/DATA_LAYOUT.md")).unwrap();
    let mut all: Vec<(String, arrow_schema::SchemaRef, &str)> = tables::ALL
        .iter()
        .map(|t| {
            (
                t.to_string(),
                schema::schema_of(t).unwrap(),
                schema::key_of(t),
            )
        })
        .collect();
    all.push((
        "embeddings_<model id>".into(),
        roadwork::store::embeddings_schema(384),
        "sample_id",
    ));
    all.push((
        "augmented_<model id>".into(),
        roadwork::store::augmented_schema(384),
        "copy_id",
    ));
    let mut problems = Vec::new();
    for (table, s, key) in all {
        let heading = format!("### `{table}`");
        let Some(start) = doc.find(&heading) else {
            problems.push(format!("{table}: no section {heading:?}"));
            continue;
        };
        let section = &doc[start + heading.len()..];
        let section = &section[..section.find("\n### ").unwrap_or(section.len())];
        if !section.contains(&format!("Key: `{key}`")) {
            problems.push(format!("{table}: the section does not say `Key: `{key}``"));
        }
        let rows: Vec<(String, String, String)> = section
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                let c: Vec<&str> = l.split('|').map(str::trim).collect();
                (
                    c[1].trim_matches('`').to_string(),
                    c[2].trim_matches('`').to_string(),
                    c[3].to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String, String)> = s
            .fields()
            .iter()
            .map(|f| {
                (
                    f.name().clone(),
                    doc_type(f.data_type()),
                    if f.is_nullable() { "yes" } else { "no" }.to_string(),
                )
            })
            .collect();
        if rows != want {
            problems.push(format!("{table}:\n  doc    {rows:?}\n  schema {want:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        doc.contains(&format!(
            "Layout version: {}",
            roadwork::store::SCHEMA_VERSION
        )),
        "the doc does not state the current layout version"
    );
}

/// A layout-3 ledger (no `parent_run`, `reads`, `writes`) gains the columns on open, and its old
/// rows read back with empty version maps.
#[tokio::test]
async fn a_layout_3_ledger_is_migrated_by_adding_columns() {
    let dir = tempfile::tempdir().unwrap();
    let uri = dir.path().join("store").to_string_lossy().into_owned();
    {
        let db = lancedb::connect(&uri).execute().await.unwrap();
        let old = Arc::new(arrow_schema::Schema::new(
            schema::runs_schema().fields()[..7].to_vec(),
        ));
        let old: arrow_schema::SchemaRef = old;
        let ts = arrow_array::TimestampMicrosecondArray::from(vec![1_700_000_000_000_000i64])
            .with_timezone("UTC");
        let s = |v: &str| Arc::new(StringArray::from(vec![v])) as arrow_array::ArrayRef;
        let batch = RecordBatch::try_new(
            old.clone(),
            vec![
                s("mine-20261130T010203.456"),
                s("mine"),
                Arc::new(ts.clone()),
                Arc::new(ts),
                s("ok"),
                s("{}"),
                s("{}"),
            ],
        )
        .unwrap();
        db.create_table(tables::RUNS, batch)
            .execute()
            .await
            .unwrap();
    }
    let store = Store::open(&uri).await.unwrap();
    let runs = store.runs().await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].kind, roadwork::store::RunKind::Mine);
    assert!(runs[0].reads.is_empty() && runs[0].parent.is_none());
    let have = store.table_schema(tables::RUNS).await.unwrap();
    assert!(have.field_with_name("writes").is_ok());
}
