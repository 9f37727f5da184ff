//! The training stage end to end on small stores of clustered features: determinism, calibration,
//! the registry (promotion gate, rollback, atomic pointer, crash safety), bad input, and the rows
//! mining reads.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::Autodiff;
use chrono::Utc;
use roadwork::embed::Cpu;
use roadwork::store::{
    Label, LabelRow, LabelSource, SampleId, SampleRow, SnapshotName, Store, tables,
};
use roadwork::testdata::labelled_clusters;
use roadwork::train::{
    FitConfig, HeadConfig, Metrics, PromoteConfig, Registry, SplitConfig, Temperature, TrainConfig,
    TrainError, Trainer, Xy, encode_head, fit, promote, read_pointer, reliability,
};
use support::tmp_store;

const DIM: usize = 16;
const MODEL: &str = "test-emb-d16";

/// Writes `n` samples with clustered features and dataset labels (or only the given label).
async fn seed_store(store: &Store, n: usize, seed: u64, only: Option<u8>) -> Vec<SampleId> {
    let (x, y) = labelled_clusters(n, DIM, 8, seed);
    let mut samples = Vec::new();
    let mut labels = Vec::new();
    let mut vecs = Vec::new();
    for i in 0..n {
        let bytes = format!("sample-{seed}-{i}").into_bytes();
        let id = SampleId::of_bytes(&bytes);
        samples.push(SampleRow {
            sample_id: id.clone(),
            image: bytes,
            width: 8,
            height: 8,
            format: "png".into(),
            source: "dataset".into(),
            source_ref: format!("row {i}"),
            era: "fullres".into(),
            tags: vec![format!(
                "weather={}",
                if i % 3 == 0 { "rain" } else { "clear" }
            )],
            phash: i as u64,
            received_at: Utc::now(),
        });
        let l = only.unwrap_or(y[i]);
        labels.push(LabelRow {
            sample_id: id.clone(),
            label: if l == 1 {
                Label::Roadwork
            } else {
                Label::Clean
            },
            source: LabelSource::Dataset,
            confidence: 1.0,
            author: "test".into(),
            ts: Utc::now(),
        });
        vecs.push((id, x[i * DIM..(i + 1) * DIM].to_vec()));
    }
    store.insert_samples(&samples).await.unwrap();
    store.put_labels(&labels).await.unwrap();
    store.put_embeddings(MODEL, DIM, &vecs).await.unwrap();
    vecs.into_iter().map(|(id, _)| id).collect()
}

fn small_cfg() -> TrainConfig {
    TrainConfig {
        embedding_model: Some(MODEL.into()),
        folds: 3,
        head: HeadConfig {
            hidden: vec![16],
            dropout: 0.1,
        },
        fit: FitConfig {
            max_epochs: 25,
            batch_size: 64,
            learning_rate: 3e-3,
            patience: 5,
            ..Default::default()
        },
        split: SplitConfig {
            eval_share: 0.25,
            calib_share: 0.2,
            ..Default::default()
        },
        replay_queries: 500,
        ..Default::default()
    }
}

async fn trainer(dir: &std::path::Path, store: &Store, cfg: TrainConfig) -> (Registry, Trainer) {
    let reg = Registry::open(dir.join("models")).unwrap();
    let t = Trainer::new(store.clone(), reg.clone(), cfg)
        .unwrap()
        .quiet();
    (reg, t)
}

#[test]
fn fitting_is_deterministic_for_a_seed() {
    let (x, y) = labelled_clusters(400, DIM, 8, 3);
    let head = HeadConfig {
        hidden: vec![8],
        dropout: 0.2,
    };
    let cfg = FitConfig {
        max_epochs: 4,
        batch_size: 32,
        ..Default::default()
    };
    let run = |seed| {
        let f = fit::<Autodiff<Cpu>>(
            &head,
            &cfg,
            Xy {
                x: &x,
                y: &y,
                dim: DIM,
            },
            None,
            4,
            seed,
            &Default::default(),
        );
        let w: Vec<f32> = roadwork::train::head_values(&f.head);
        (w, f.history)
    };
    let (a, ha) = run(7);
    let (b, hb) = run(7);
    let (c, _) = run(8);
    // Same seed: the same head up to floating-point summation order in the CPU kernels
    // (SIMD reductions); a different seed: a different head.
    let max_diff = |p: &[f32], q: &[f32]| {
        p.iter()
            .zip(q)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        max_diff(&a, &b) < 1e-4,
        "same seed, weights differ by {}",
        max_diff(&a, &b)
    );
    for (x, y) in ha.iter().zip(&hb) {
        assert!(
            (x.train_loss - y.train_loss).abs() < 1e-5,
            "{ha:?} vs {hb:?}"
        );
    }
    assert!(
        max_diff(&a, &c) > 1e-2,
        "different seeds gave the same weights"
    );
    // It learned: the final training loss is well below the first epoch's.
    assert!(ha[3].train_loss < ha[0].train_loss, "{ha:?}");
}

#[test]
fn temperature_scaling_reduces_the_ece_of_an_overconfident_head() {
    // A decent head whose logits are then multiplied by 6: same ranking, overconfident.
    let (x, y) = labelled_clusters(3000, DIM, 8, 11);
    let cfg = FitConfig {
        max_epochs: 6,
        batch_size: 128,
        ..Default::default()
    };
    let f = fit::<Autodiff<Cpu>>(
        &HeadConfig {
            hidden: vec![],
            dropout: 0.0,
        },
        &cfg,
        Xy {
            x: &x[..2000 * DIM],
            y: &y[..2000],
            dim: DIM,
        },
        None,
        6,
        1,
        &Default::default(),
    );
    let z: Vec<f32> = roadwork::train::TrainedHead::<Cpu>::from_parts(
        card_for(&f.head),
        &encode_head(&f.head).unwrap(),
        &Default::default(),
    )
    .unwrap()
    .logits(&x[2000 * DIM..])
    .unwrap()
    .into_iter()
    .map(|z| z * 6.0)
    .collect();
    let yt = &y[2000..];
    let (calib_z, test_z) = z.split_at(500);
    let (calib_y, test_y) = yt.split_at(500);
    let raw: Vec<f32> = test_z
        .iter()
        .map(|&z| Temperature::default().served(z))
        .collect();
    let t = Temperature::fit(calib_z, calib_y);
    let cal: Vec<f32> = test_z.iter().map(|&z| t.served(z)).collect();
    let before = reliability(&raw, test_y, 15).ece;
    let after = reliability(&cal, test_y, 15).ece;
    assert!(t.t > 2.0, "T = {}", t.t);
    assert!(after < before * 0.6, "ECE {before} → {after}");
    // Calibration does not change the decisions' ranking: ROC-AUC is identical.
    assert_eq!(
        Metrics::compute(&raw, test_y).roc_auc,
        Metrics::compute(&cal, test_y).roc_auc
    );
}

/// A minimal card so a bare fitted head can be loaded through the public inference path.
fn card_for(head: &roadwork::train::Head<Cpu>) -> roadwork::train::ModelCard {
    support::linear_card("adhoc", MODEL, DIM, &encode_head(head).unwrap())
}

#[tokio::test]
async fn a_training_run_pins_registers_scores_and_evaluates() {
    let (dir, store) = tmp_store().await;
    let ids = seed_store(&store, 600, 1, None).await;
    let (reg, t) = trainer(dir.path(), &store, small_cfg()).await;
    let s = t.train(None).await.unwrap();
    let c = &s.card;

    // Pinned: the snapshot exists and names the embeddings table at the version read.
    let snap = SnapshotName::parse(&c.snapshot).unwrap();
    let snaps = store.snapshots().await.unwrap();
    let pinned = snaps.iter().find(|x| x.name == snap).unwrap();
    assert_eq!(pinned.versions, c.table_versions);
    assert!(
        c.table_versions
            .contains_key(&roadwork::store::embeddings_table(MODEL))
    );

    // Learned something real on separable clusters with 10 % label noise.
    let m = c.metrics.as_ref().unwrap();
    assert!(m.accuracy > 0.75 && m.mcc > 0.5, "{m:?}");
    assert!(c.replay.as_ref().unwrap().mean_reward > 0.2);
    assert_eq!(c.fold_best_epochs.len(), 3);
    assert!(c.calibration.skipped.is_none() && c.calibration.temperature.fitted_on > 50);

    // Registered completely: card + weights verify, a `models` row, an `evaluations` row.
    let (card, _) = reg.load(&c.model_version).unwrap();
    assert_eq!(
        (
            &card.model_version,
            &card.weights_sha256,
            &card.table_versions,
            &card.data
        ),
        (
            &c.model_version,
            &c.weights_sha256,
            &c.table_versions,
            &c.data
        )
    );
    let rows = store.models().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].model_version, c.model_version);
    assert_eq!(store.evaluations(&c.model_version).await.unwrap().len(), 1);

    // Every sample scored; train samples carry an out-of-fold probability, others do not.
    let scores = store.head_scores(&c.model_version).await.unwrap();
    assert_eq!(scores.len(), ids.len());
    for r in &scores {
        assert!(r.prob.is_finite() && (0.0..=1.0).contains(&r.prob) && r.prob != 0.5);
        assert_eq!(r.oof_prob.is_some(), r.split == "train", "{r:?}");
        assert!(r.ensemble_std >= 0.0 && r.ensemble_mi >= 0.0);
    }
    // Out-of-fold probabilities agree with the labels far more often than not.
    let oof: Vec<_> = scores
        .iter()
        .filter_map(|r| Some((r.oof_prob?, r.label?)))
        .collect();
    let right = oof.iter().filter(|(p, y)| (*p > 0.5) == (*y == 1)).count();
    assert!(right as f64 / oof.len() as f64 > 0.75);

    // The eval split never trains: no eval sample has an out-of-fold score.
    assert!(
        scores
            .iter()
            .filter(|r| r.split == "eval")
            .all(|r| r.oof_prob.is_none())
    );

    // The report renders.
    let e = roadwork::train::evaluate_version(
        &store,
        &reg,
        &c.model_version,
        &small_cfg().split,
        300,
        0,
    )
    .await
    .unwrap();
    let index = roadwork::train::write_report(&dir.path().join("report"), &e, Some(c)).unwrap();
    let html = std::fs::read_to_string(&index).unwrap();
    assert!(html.contains("weather=rain"));
    // Self-contained: every chart inline as SVG, nothing fetched from anywhere.
    for title in [
        "<title>ROC</title>",
        "<title>Precision-recall</title>",
        "<title>Reliability</title>",
        "<title>Confusion (rows: truth)</title>",
        "<title>Loss</title>",
    ] {
        assert!(html.contains(title), "{title} missing");
    }
    assert_eq!(html.matches("<svg").count(), 5);
    assert!(!html.contains("src=") && !html.contains("href="));
    assert_eq!(
        std::fs::read_dir(dir.path().join("report"))
            .unwrap()
            .count(),
        1
    );
}

#[tokio::test]
async fn the_gate_refuses_a_worse_challenger_and_rollback_restores_the_champion() {
    let (dir, store) = tmp_store().await;
    seed_store(&store, 600, 2, None).await;
    let cfg = small_cfg();
    let (reg, good) = trainer(dir.path(), &store, cfg.clone()).await;
    let a = good.train(None).await.unwrap().card.model_version;
    let gate = PromoteConfig::default();
    let d = promote(&store, &reg, &a, &gate, &cfg.split, 0, false)
        .await
        .unwrap();
    assert!(d.promoted && d.champion.is_none(), "{d:?}");

    // A crippled recipe: one epoch at a negligible learning rate.
    let mut bad_cfg = cfg.clone();
    bad_cfg.fit.max_epochs = 1;
    bad_cfg.fit.learning_rate = 1e-7;
    bad_cfg.seed = 99;
    let (_, bad) = trainer(dir.path(), &store, bad_cfg).await;
    let b = bad.train(None).await.unwrap().card.model_version;
    let d = promote(&store, &reg, &b, &gate, &cfg.split, 0, false)
        .await
        .unwrap();
    assert!(!d.promoted, "{d:?}");
    assert_eq!(d.champion.as_deref(), Some(a.as_str()));
    assert!(d.challenger_score < d.champion_score.unwrap());
    assert!(!d.reasons.is_empty());
    assert_eq!(reg.champion().unwrap().unwrap().version, a);

    // Forced in, then rolled back.
    let d = promote(&store, &reg, &b, &gate, &cfg.split, 0, true)
        .await
        .unwrap();
    assert!(d.promoted);
    let p = reg.champion().unwrap().unwrap();
    assert_eq!(
        (p.version.as_str(), p.previous.as_slice()),
        (b.as_str(), [a.clone()].as_slice())
    );
    let back = reg.rollback().unwrap();
    assert_eq!(back.version, a);
    assert!(matches!(reg.rollback(), Err(TrainError::NothingToRollBack)));
}

#[test]
fn the_champion_pointer_is_never_torn_and_a_crash_leaves_no_half_model() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    let (card, weights) = tiny_artifact();
    let mut versions = Vec::new();
    for i in 0..2 {
        let mut card = card.clone();
        card.model_version = format!("head-test-{i}");
        reg.register(&card, &weights).unwrap();
        versions.push(card.model_version);
    }
    // A crash mid-registration leaves only a staging directory; the next open removes it.
    let staging = dir.path().join(".staging-head-test-9");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("head.safetensors"), b"partial").unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    assert!(!staging.exists());
    assert_eq!(reg.list().unwrap().len(), 2);
    assert!(matches!(
        reg.load("head-test-9"),
        Err(TrainError::UnknownVersion(_))
    ));

    // A reader polling the pointer while it flips hundreds of times never sees a torn file.
    reg.set_champion(&versions[0]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let path = reg.champion_path();
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let p = read_pointer(&path).expect("torn or unreadable pointer");
                assert!(p.is_some());
                reads += 1;
            }
            reads
        })
    };
    for i in 0..300 {
        reg.set_champion(&versions[(i + 1) % 2]).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    // Corrupt weights are refused on load.
    std::fs::write(
        dir.path().join(&versions[1]).join("head.safetensors"),
        b"garbage",
    )
    .unwrap();
    assert!(matches!(
        reg.load(&versions[1]),
        Err(TrainError::Corrupt { .. })
    ));
    assert!(reg.set_champion(&versions[1]).is_err());
}

#[tokio::test]
async fn bad_training_input_fails_before_anything_is_trained_or_tagged() {
    // One class only.
    let (dir, store) = tmp_store().await;
    seed_store(&store, 200, 4, Some(1)).await;
    let (reg, t) = trainer(dir.path(), &store, small_cfg()).await;
    let err = t.train(None).await.unwrap_err();
    assert!(matches!(err, TrainError::NotEnoughData(_)), "{err}");
    assert!(err.to_string().contains("one class"), "{err}");
    assert!(
        store.snapshots().await.unwrap().is_empty(),
        "a failed run left a tag"
    );
    assert!(reg.list().unwrap().is_empty());

    // Too few labels.
    let (dir, store) = tmp_store().await;
    seed_store(&store, 12, 5, None).await;
    let (_, t) = trainer(dir.path(), &store, small_cfg()).await;
    let err = t.train(None).await.unwrap_err();
    assert!(err.to_string().contains("at least 10 of each"), "{err}");

    // No embeddings of that model / a snapshot taken for another model.
    let (dir, store) = tmp_store().await;
    let snap = SnapshotName::parse("before-embedding").unwrap();
    store.snapshot(&snap).await.unwrap();
    seed_store(&store, 200, 6, None).await;
    let mut cfg = small_cfg();
    cfg.embedding_model = Some("nope".into());
    let (_, t) = trainer(dir.path(), &store, cfg).await;
    let err = t.train(None).await.unwrap_err();
    assert!(matches!(err, TrainError::NoEmbeddings { .. }), "{err}");
    assert!(err.to_string().contains(MODEL), "lists what exists: {err}");
    let (_, t) = trainer(dir.path(), &store, small_cfg()).await;
    let err = t.train(Some(snap)).await.unwrap_err();
    assert!(
        matches!(err, TrainError::SnapshotLacksModel { .. }),
        "{err}"
    );

    // A configuration that cannot train is refused before any data is read.
    let mut cfg = small_cfg();
    cfg.folds = 1;
    assert!(
        Trainer::new(
            store.clone(),
            Registry::open(dir.path().join("m")).unwrap(),
            cfg
        )
        .is_err()
    );
}

#[tokio::test]
async fn non_finite_stored_features_are_refused() {
    let (dir, store) = tmp_store().await;
    let ids = seed_store(&store, 60, 7, None).await;
    // Bypass put_embeddings (which refuses NaN) the way a foreign writer could.
    let mut row = vec![0.5f32; DIM];
    row[3] = f32::INFINITY;
    support::append_raw_vector(&store, MODEL, DIM, &ids[0], &row).await;
    let (_, tr) = trainer(dir.path(), &store, small_cfg()).await;
    let err = tr.train(None).await.unwrap_err();
    assert!(
        matches!(err, TrainError::NonFinite { index: 3, .. }),
        "{err}"
    );
    assert_eq!(store.count_rows(tables::MODELS, None).await.unwrap(), 0);
}

/// A tiny linear head's card and weights, for registry tests.
fn tiny_artifact() -> (roadwork::train::ModelCard, Vec<u8>) {
    let head = fit::<Autodiff<Cpu>>(
        &HeadConfig {
            hidden: vec![],
            dropout: 0.0,
        },
        &FitConfig::default(),
        Xy {
            x: &labelled_clusters(20, DIM, 2, 1).0,
            y: &labelled_clusters(20, DIM, 2, 1).1,
            dim: DIM,
        },
        None,
        1,
        0,
        &Default::default(),
    )
    .head;
    (card_for(&head), encode_head(&head).unwrap())
}

#[test]
fn registering_while_models_list_runs_in_a_loop_loses_no_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let reg = Registry::open(&root).unwrap();
    let (card, weights) = tiny_artifact();
    let stop = Arc::new(AtomicBool::new(false));
    // `roadwork models list` = open (which sweeps stale staging directories) + list.
    let lister = {
        let (stop, root) = (stop.clone(), root.clone());
        std::thread::spawn(move || {
            let mut opens = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = Registry::open(&root).expect("open");
                r.list().expect("list");
                opens += 1;
            }
            opens
        })
    };
    let versions: Vec<String> = (0..40).map(|i| format!("head-concurrent-{i:02}")).collect();
    for v in &versions {
        let mut c = card.clone();
        c.model_version = v.clone();
        reg.register(&c, &weights)
            .expect("register while another process lists");
    }
    stop.store(true, Ordering::Relaxed);
    assert!(lister.join().unwrap() > 0);
    let listed: Vec<String> = reg
        .list()
        .unwrap()
        .into_iter()
        .map(|c| c.model_version)
        .collect();
    assert_eq!(listed, versions);
    for v in &versions {
        reg.load(v)
            .expect("every registered artifact loads and verifies");
    }
}

#[test]
fn a_staging_directory_whose_writer_holds_its_lock_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    Registry::open(dir.path()).unwrap();
    let staging = dir.path().join(".staging-head-live");
    std::fs::create_dir_all(&staging).unwrap();
    let lock = std::fs::File::create(dir.path().join(".staging-head-live.lock")).unwrap();
    lock.lock().unwrap();
    Registry::open(dir.path()).unwrap();
    assert!(
        staging.exists(),
        "a live writer's staging directory was removed"
    );
    lock.unlock().unwrap();
    drop(lock);
    assert_eq!(
        Registry::open(dir.path()).unwrap().sweep_stale().unwrap(),
        0
    );
    assert!(
        !staging.exists(),
        "the writer is gone: its staging directory is stale"
    );
}

#[test]
fn concurrent_promotions_lose_no_pointer_update() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    let (card, weights) = tiny_artifact();
    let versions: Vec<String> = (0..8).map(|i| format!("head-promo-{i}")).collect();
    for v in &versions {
        let mut c = card.clone();
        c.model_version = v.clone();
        reg.register(&c, &weights).unwrap();
    }
    let barrier = Arc::new(std::sync::Barrier::new(versions.len()));
    let threads: Vec<_> = versions
        .iter()
        .map(|v| {
            let (v, b, root) = (v.clone(), barrier.clone(), dir.path().to_path_buf());
            std::thread::spawn(move || {
                let r = Registry::open(&root).unwrap();
                b.wait();
                r.set_champion(&v).unwrap();
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let p = reg.champion().unwrap().unwrap();
    let mut seen = p.previous.clone();
    seen.push(p.version.clone());
    seen.sort();
    assert_eq!(seen, versions, "a promotion was lost from the history");
}

#[test]
fn version_names_that_escape_the_registry_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().join("models")).unwrap();
    let (mut card, weights) = tiny_artifact();
    for bad in ["../x", "/abs", "a/b", "..", ".staging-x", "", "a\\b"] {
        card.model_version = bad.to_string();
        assert!(
            matches!(
                reg.register(&card, &weights),
                Err(TrainError::BadVersion(_))
            ),
            "{bad:?} accepted"
        );
        assert!(matches!(reg.load(bad), Err(TrainError::BadVersion(_))));
        assert!(matches!(
            reg.set_champion(bad),
            Err(TrainError::BadVersion(_))
        ));
    }
    assert!(!dir.path().join("x").exists() && !dir.path().join("abs").exists());
    // A pointer written by hand that names a path outside the registry is refused, not followed.
    std::fs::write(
        reg.champion_path(),
        r#"{"version":"../../etc","previous":[],"updated_at":"2026-12-01T00:00:00Z"}"#,
    )
    .unwrap();
    assert!(matches!(reg.champion(), Err(TrainError::BadVersion(_))));
}

/// The JSON shape of a value: every key path with its type (`[]` for array elements), sorted.
pub(crate) fn json_shape(v: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, path: &str, out: &mut std::collections::BTreeSet<String>) {
        use serde_json::Value as V;
        let ty = match v {
            V::Null => "null",
            V::Bool(_) => "bool",
            V::Number(_) => "number",
            V::String(_) => "string",
            V::Array(a) => {
                a.iter().for_each(|x| walk(x, &format!("{path}[]"), out));
                "array"
            }
            V::Object(o) => {
                o.iter()
                    .for_each(|(k, x)| walk(x, &format!("{path}.{k}"), out));
                "object"
            }
        };
        out.insert(format!("{path}: {ty}"));
    }
    let mut out = std::collections::BTreeSet::new();
    walk(v, "", &mut out);
    out.into_iter().collect()
}

/// Compares `got` with the committed golden file (rewritten instead when ROADWORK_BLESS=1).
pub(crate) fn golden(name: &str, got: &str) {
    let path = support::root().join("tests/fixtures/golden").join(name);
    if std::env::var("ROADWORK_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with ROADWORK_BLESS=1 once)", path.display()));
    assert_eq!(
        got, want,
        "{name} changed: a format change is a migration (bump its version, keep the old fixture)"
    );
}

#[tokio::test]
async fn the_gate_decides_the_same_however_often_mining_runs_in_between() {
    use roadwork::mine::{Compute, MineConfig, Miner};
    let (dir, store) = tmp_store().await;
    seed_store(&store, 600, 1, None).await;
    let cfg = small_cfg();
    let mine = |clusters: usize| {
        let m = Miner::new(
            store.clone(),
            MineConfig {
                clusters: Some(clusters),
                ..Default::default()
            },
        )
        .unwrap();
        async move { m.run(Compute::<Cpu>::host(), None, None).await }
    };
    let first_mining = mine(4).await.unwrap();
    let (reg, t) = trainer(dir.path(), &store, cfg.clone()).await;
    let a = t.train(None).await.unwrap().card;
    promote(
        &store,
        &reg,
        &a.model_version,
        &PromoteConfig::default(),
        &cfg.split,
        0,
        true,
    )
    .await
    .unwrap();
    let b = t.train(None).await.unwrap().card;
    assert_eq!(b.slice_run.as_deref(), Some(first_mining.run_id.as_str()));
    // A gate that refuses and lists every shared slice, cluster slices included, with accuracies.
    let gate = PromoteConfig {
        min_gain: 10.0,
        slice_tolerance: -1.0,
        min_slice_n: 1,
        ..Default::default()
    };
    let d1 = promote(&store, &reg, &b.model_version, &gate, &cfg.split, 0, false)
        .await
        .unwrap();
    assert!(d1.reasons.iter().any(|r| r.contains("cluster=")), "{d1:?}");
    // Mining again with another cluster count rewrites what "the latest clusters" are.
    let second = mine(7).await.unwrap();
    assert_ne!(second.run_id, first_mining.run_id);
    let d2 = promote(&store, &reg, &b.model_version, &gate, &cfg.split, 0, false)
        .await
        .unwrap();
    assert_eq!(
        d1, d2,
        "the same head on the same snapshot got another decision"
    );
    // The ledger knows both mining runs and the training runs, with the versions they touched.
    let runs = store.runs().await.unwrap();
    let trains: Vec<_> = runs
        .iter()
        .filter(|r| r.kind == roadwork::store::RunKind::Train)
        .collect();
    assert_eq!(trains.len(), 2);
    assert!(trains.iter().all(|r| {
        r.status == roadwork::store::RunStatus::Ok
            && r.reads
                .contains_key(&roadwork::store::embeddings_table(MODEL))
            && r.writes.contains_key(tables::HEAD_SCORES)
    }));
    let mined = runs
        .iter()
        .find(|r| r.run_id.as_str() == second.run_id)
        .unwrap();
    assert!(mined.writes.contains_key(tables::MINE_SCORES));

    // card.json keeps its shape (what readers of the registry rely on); `recipe` is the training
    // config verbatim and follows `docs/CONFIG.md` instead.
    let v = serde_json::to_value(&b).unwrap();
    let shape: Vec<String> = json_shape(&v)
        .into_iter()
        .filter(|l| !l.starts_with(".recipe."))
        .collect();
    golden("card.shape.txt", &(shape.join("\n") + "\n"));
}
