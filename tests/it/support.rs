//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use roadwork::config::Config;
use roadwork::ingest::Ingestor;
use roadwork::store::Store;
use roadwork::synth::scenes::{SceneSpec, scene_jpeg};

/// A fresh store in its own temporary directory (kept alive by the returned guard).
pub async fn tmp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store").to_string_lossy())
        .await
        .expect("open store");
    (dir, store)
}

/// An ingestor with small batches, so tests see several commits.
pub fn ingestor(store: &Store, batch_rows: usize) -> Ingestor {
    let mut cfg = Config::default();
    cfg.ingest.batch_rows = batch_rows;
    Ingestor::new(store.clone(), cfg.ingest, cfg.decode).quiet()
}

/// JPEG bytes of scene `index` of `seed`, at a small size unless it is already small.
pub fn small_scene(seed: u64, index: u64) -> Vec<u8> {
    let mut spec = SceneSpec::draw(seed, index);
    spec.width = 160 + 16 * (index as u32 % 4);
    spec.height = 120;
    scene_jpeg(&spec).expect("encode")
}

/// Writes `bytes` at `dir/rel`, creating folders.
pub fn put(dir: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(&p, bytes).expect("write");
    p
}

/// Every (sample_id, image) pair in the store hashes correctly: the store is consistent.
pub async fn assert_samples_consistent(store: &Store) -> usize {
    let samples = store.samples(None).await.expect("read samples");
    for s in &samples {
        assert_eq!(
            roadwork::store::SampleId::of_bytes(&s.image),
            s.sample_id,
            "stored bytes do not match their id"
        );
    }
    let mut ids: Vec<_> = samples.iter().map(|s| s.sample_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), samples.len(), "duplicate sample ids");
    samples.len()
}

/// Appends a raw vector row (bypassing `put_embeddings`, which refuses non-finite values), the way
/// a foreign writer could.
pub async fn append_raw_vector(
    store: &Store,
    model: &str,
    dim: usize,
    id: &roadwork::store::SampleId,
    row: &[f32],
) {
    use arrow_array::builder::{
        FixedSizeListBuilder, Float32Builder, StringBuilder, TimestampMicrosecondBuilder,
    };
    use arrow_array::{RecordBatch, RecordBatchIterator};
    use std::sync::Arc;
    let mut sid = StringBuilder::new();
    let mut v = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32).with_field(Arc::new(
        arrow_schema::Field::new("item", arrow_schema::DataType::Float32, true),
    ));
    let mut m = StringBuilder::new();
    let mut at = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    sid.append_value(id.as_str());
    v.values().append_slice(row);
    v.append(true);
    m.append_value(model);
    at.append_value(0);
    let batch = RecordBatch::try_new(
        roadwork::store::embeddings_schema(dim),
        vec![
            Arc::new(sid.finish()),
            Arc::new(v.finish()),
            Arc::new(m.finish()),
            Arc::new(at.finish()),
        ],
    )
    .unwrap();
    let db = lancedb::connect(store.uri()).execute().await.unwrap();
    let t = db
        .open_table(roadwork::store::embeddings_table(model))
        .execute()
        .await
        .unwrap();
    let reader: Box<dyn arrow_array::RecordBatchReader + Send> = Box::new(
        RecordBatchIterator::new(vec![Ok(batch.clone())], batch.schema()),
    );
    t.add(reader).execute().await.unwrap();
}

/// The model card of a linear head (no hidden layers) over `dim` features of `embedding_model`,
/// whose encoded weights are `weights`.
pub fn linear_card(
    version: &str,
    embedding_model: &str,
    dim: usize,
    weights: &[u8],
) -> roadwork::train::ModelCard {
    let linear = roadwork::train::HeadConfig {
        hidden: vec![],
        dropout: 0.0,
    };
    roadwork::train::ModelCard::untrained(version, embedding_model, dim, linear, weights)
}

/// The repository root (fixtures are relative to it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A serve configuration with one profile on a free loopback port, following the registry
/// pointers every 50 ms.
pub fn loopback_serve() -> roadwork::serve::ServeConfig {
    roadwork::serve::ServeConfig {
        watch_ms: 50,
        profiles: vec![roadwork::serve::ProfileConfig {
            name: "speed".into(),
            bind: "127.0.0.1".into(),
            port: 0,
            axon_hotkey: None,
            tier2: false,
        }],
        ..Default::default()
    }
}
