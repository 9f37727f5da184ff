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
