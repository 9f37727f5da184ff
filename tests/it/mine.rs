//! Mining against reference implementations (scikit-learn, cleanlab; fixtures made by
//! `scripts/make_mining_fixtures.py`) and on the committed digits data.

use crate::support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use chrono::Utc;
use roadwork::mine::{MineConfig, MineError, Miner, write_selection_csv};
use roadwork::store::{Label, LabelRow, LabelSource, SampleId, SampleRow, Store, tables};
use roadwork::train::{Registry, SplitConfig, TrainConfig, Trainer, split_of};

use roadwork::embed::Cpu;
use roadwork::mine::{
    Compute, KMeansConfig, KMeansMode, KnnConfig, KnnMethod, Metric, Pool, SelectConfig, Strategy,
    find_label_issues, kmeans, knn_graph, lloyd, recall_at, select,
};
use roadwork::testdata::load_digits;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> Value {
    let p = root().join("tests/fixtures/mining").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).expect("fixture")).expect("json")
}

/// The committed digits, as mining vectors.
struct Digits {
    x: roadwork::mine::Vectors,
    y: Vec<usize>,
}

fn digits() -> Digits {
    let d = load_digits(&root().join("datasets/digits/digits.csv")).expect("digits");
    Digits {
        x: roadwork::mine::Vectors::new(d.x, roadwork::testdata::DIGITS_DIM).unwrap(),
        y: d.y,
    }
}

fn cpu() -> Compute<Cpu> {
    Compute::new(Default::default())
}

/// The digits as scikit-learn saw them: raw pixel values 0..16.
fn raw_pixels() -> roadwork::mine::Vectors {
    let d = digits();
    let v: Vec<f32> = d.x.as_slice().iter().map(|p| p * 16.0).collect();
    roadwork::mine::Vectors::new(v, 64).unwrap()
}

#[test]
fn lloyd_from_sklearns_init_reaches_sklearns_inertia() {
    let f = fixture("kmeans_digits.json");
    let init: Vec<f32> = f["init"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
        })
        .collect();
    let want = f["inertia_from_init"].as_f64().unwrap();
    let x = raw_pixels();
    let fit = lloyd(&cpu(), &x, init, 300, 0.0).unwrap();
    let rel = (fit.inertia - want).abs() / want;
    eprintln!(
        "inertia {:.1} vs scikit-learn {want:.1} ({:.4} %)",
        fit.inertia,
        rel * 100.0
    );
    assert!(
        rel < 0.01,
        "inertia {} vs scikit-learn {want} ({:.3} %)",
        fit.inertia,
        rel * 100.0
    );
}

#[test]
fn kmeans_plus_plus_with_restarts_is_as_good_as_sklearn() {
    let f = fixture("kmeans_digits.json");
    let best = f["best_inertia_n_init_10"].as_f64().unwrap();
    let x = raw_pixels();
    for mode in [KMeansMode::Lloyd, KMeansMode::MiniBatch] {
        let cfg = KMeansConfig {
            mode,
            restarts: 10,
            max_iter: if mode == KMeansMode::Lloyd { 300 } else { 500 },
            batch_size: 256,
            ..Default::default()
        };
        let fit = kmeans(&cpu(), &x, 10, &cfg).unwrap();
        let limit = if mode == KMeansMode::Lloyd {
            1.01
        } else {
            1.03
        };
        assert!(
            fit.inertia <= best * limit,
            "{mode:?}: inertia {} vs scikit-learn best of 10 {best}",
            fit.inertia
        );
        assert_eq!(fit.sizes().iter().sum::<usize>(), x.len());
    }
}

fn jaccard(a: &HashSet<usize>, b: &HashSet<usize>) -> f64 {
    let i = a.intersection(b).count() as f64;
    let u = a.union(b).count() as f64;
    if u == 0.0 { 1.0 } else { i / u }
}

fn cleanlab_case(name: &str) {
    let f = fixture(name);
    let classes = f["classes"].as_u64().unwrap() as usize;
    let labels: Vec<usize> = f["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let probs: Vec<f64> = f["pred_probs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    let want: HashSet<usize> = f["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let got = find_label_issues(&probs, &labels, classes).unwrap();
    let got: HashSet<usize> = (0..labels.len()).filter(|&i| got.is_issue[i]).collect();
    let j = jaccard(&got, &want);
    eprintln!(
        "{name}: Jaccard {j:.3} (ours {}, cleanlab {})",
        got.len(),
        want.len()
    );
    assert!(
        j >= 0.9,
        "{name}: Jaccard {j:.3} (ours {}, cleanlab {})",
        got.len(),
        want.len()
    );
    // And they are mostly the labels the script flipped.
    let flipped: HashSet<usize> = f["flipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let precision = got.intersection(&flipped).count() as f64 / got.len().max(1) as f64;
    assert!(precision > 0.5, "{name}: precision {precision:.2}");
}

#[test]
fn confident_learning_agrees_with_cleanlab_on_ten_classes() {
    cleanlab_case("cleanlab_digits.json");
}

#[test]
fn confident_learning_agrees_with_cleanlab_on_a_binary_task() {
    cleanlab_case("cleanlab_binary.json");
}

#[test]
fn ivf_knn_graph_recall_on_clustered_384d_vectors() {
    let x = roadwork::mine::Vectors::new(roadwork::testdata::clustered(20_000, 384, 64, 11), 384)
        .unwrap();
    let cfg = KnnConfig {
        k: 10,
        method: KnnMethod::Ivf,
        ..Default::default()
    };
    let g = knn_graph(&cpu(), &x, &cfg).unwrap();
    let r = recall_at(&cpu(), &x, &g, 10, 300, 2).unwrap();
    assert!(r >= 0.9, "recall@10 {r:.3} with {}", g.method);
}

#[test]
fn cold_start_typicality_covers_the_digit_classes() {
    // Ten picks with no labels: random covers ~6.5 of 10 classes on average; TypiClust should
    // find nearly all of them.
    let d = digits();
    let candidates: Vec<usize> = (0..d.y.len()).collect();
    let mut covered = Vec::new();
    for seed in 0..3 {
        let pool = Pool {
            x: &d.x,
            labelled: &[],
            candidates: &candidates,
            probs: None,
            classes: 10,
            metric: Metric::Euclidean,
            competence: None,
        };
        let cfg = SelectConfig {
            strategy: Strategy::Auto,
            seed,
            ..Default::default()
        };
        let sel = select(&cpu(), &pool, 10, &cfg).unwrap();
        assert_eq!(sel.used, Strategy::Typiclust);
        let classes: HashSet<usize> = sel.items.iter().map(|i| d.y[i.row]).collect();
        covered.push(classes.len());
    }
    let mean = covered.iter().sum::<usize>() as f64 / covered.len() as f64;
    assert!(mean >= 8.0, "classes covered by 10 picks: {covered:?}");
}

#[test]
fn digits_file_is_the_full_dataset() {
    let d = digits();
    assert_eq!(d.y.len(), 1797);
    let mut counts = [0usize; 10];
    d.y.iter().for_each(|&y| counts[y] += 1);
    assert!(
        counts.iter().all(|&c| (174..=183).contains(&c)),
        "{counts:?}"
    );
    assert!(load_digits(Path::new("/nonexistent/digits.csv")).is_err());
}

const DIM: usize = 16;
const MODEL: &str = "test-emb-mine";

fn sample(bytes: Vec<u8>, source: &str, phash: u64) -> SampleRow {
    SampleRow {
        sample_id: SampleId::of_bytes(&bytes),
        image: bytes,
        width: 8,
        height: 8,
        format: "png".into(),
        source: source.into(),
        source_ref: String::new(),
        era: "fullres".into(),
        tags: vec![],
        phash,
        received_at: Utc::now(),
    }
}

fn label(id: &SampleId, y: u8) -> LabelRow {
    LabelRow {
        sample_id: id.clone(),
        label: if y == 1 {
            Label::Roadwork
        } else {
            Label::Clean
        },
        source: LabelSource::Dataset,
        confidence: 1.0,
        author: "test".into(),
        ts: Utc::now(),
    }
}

/// 400 labelled samples (10 % noisy labels), an eval sample whose near-twin is in training, and
/// 60 validator queries concentrated in one region the training set barely covers.
async fn mining_store(store: &Store, split: &SplitConfig) -> (SampleId, SampleId) {
    let (x, y) = roadwork::testdata::labelled_clusters(400, DIM, 8, 3);
    let (mut samples, mut labels, mut vecs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..400 {
        let s = sample(
            format!("m-{i}").into_bytes(),
            "dataset",
            (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        labels.push(label(&s.sample_id, y[i]));
        vecs.push((s.sample_id.clone(), x[i * DIM..(i + 1) * DIM].to_vec()));
        samples.push(s);
    }
    // A training sample and a re-encoded twin that lands in the eval split.
    let orig = (0..400)
        .find(|&i| {
            split_of(&samples[i].sample_id, "dataset", split) == roadwork::train::Split::Train
        })
        .unwrap();
    let twin = (0..10_000)
        .map(|j| {
            sample(
                format!("twin-{j}").into_bytes(),
                "dataset",
                samples[orig].phash ^ 0b11,
            )
        })
        .find(|s| split_of(&s.sample_id, "dataset", split) == roadwork::train::Split::Eval)
        .unwrap();
    let mut tv = vecs[orig].1.clone();
    tv[0] += 1e-4;
    labels.push(label(&twin.sample_id, y[orig]));
    vecs.push((twin.sample_id.clone(), tv));
    let pair = (samples[orig].sample_id.clone(), twin.sample_id.clone());
    samples.push(twin);
    // Validator traffic: all near one far-away point.
    for j in 0..60 {
        let s = sample(
            format!("q-{j}").into_bytes(),
            "validator",
            0xABCD_0000 + j * 0x1_0001_0001,
        );
        let v: Vec<f32> = (0..DIM)
            .map(|e| 3.0 + ((j as usize * 7 + e) % 5) as f32 * 0.05)
            .collect();
        vecs.push((s.sample_id.clone(), v));
        samples.push(s);
    }
    store.insert_samples(&samples).await.unwrap();
    store.put_labels(&labels).await.unwrap();
    store.put_embeddings(MODEL, DIM, &vecs).await.unwrap();
    pair
}

#[test]
fn a_mining_run_finds_issues_leakage_drift_and_selects_from_traffic() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (dir, store) = support::tmp_store().await;
        let mut tcfg = TrainConfig {
            embedding_model: Some(MODEL.into()),
            folds: 3,
            ..Default::default()
        };
        tcfg.head.hidden = vec![];
        tcfg.fit.max_epochs = 20;
        tcfg.split.eval_share = 0.2;
        let (orig, twin) = mining_store(&store, &tcfg.split).await;
        let reg = Registry::open(dir.path().join("models")).unwrap();
        let t = Trainer::new(store.clone(), reg.clone(), tcfg.clone())
            .unwrap()
            .quiet();
        let head = t.train(None).await.unwrap().card.model_version;

        let cfg = MineConfig {
            embedding_model: Some(MODEL.into()),
            clusters: Some(8),
            ..Default::default()
        };
        let miner = Miner::new(store.clone(), cfg).unwrap();
        let s = miner
            .run(cpu(), Some(&head), Some(dir.path()))
            .await
            .unwrap();
        assert_eq!(s.n, 461);
        assert!(s.label_issues.unwrap() > 0, "{:?}", s.label_issues);
        assert!(!s.leakage.leaked_eval.is_empty(), "{:?}", s.leakage);
        let dups = store
            .scan(tables::DUPLICATES, None, None, None)
            .await
            .unwrap();
        let a = |b: &arrow_array::RecordBatch, c: &str, i: usize| {
            b.column_by_name(c)
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap()
                .value(i)
                .to_string()
        };
        let mut found = HashSet::new();
        for b in &dups {
            for i in 0..b.num_rows() {
                let (x, y) = (a(b, "sample_a", i), a(b, "sample_b", i));
                if [x.clone(), y.clone()].contains(&orig.to_string())
                    && [x, y].contains(&twin.to_string())
                {
                    found.insert(a(b, "kind", i));
                }
            }
        }
        assert_eq!(
            found,
            HashSet::from(["near".to_string(), "re-encoded".to_string()])
        );
        let drift = s.drift.as_ref().unwrap();
        assert!(drift.p_value < 0.05, "{drift:?}");
        assert!(!s.under_covered.is_empty());
        assert!(s.under_covered[0].traffic_n >= 30);
        assert_eq!(
            store.count_rows(tables::MINE_SCORES, None).await.unwrap(),
            461
        );
        assert_eq!(
            store.count_rows(tables::MINE_CLUSTERS, None).await.unwrap(),
            8
        );
        assert!(s.report.as_ref().unwrap().exists());
        assert!(!s.top_hard.is_empty() && s.top_hard.iter().all(|h| h.hardness.is_finite()));
        // A head trained after this run is judged on its clusters (its card names the run); the
        // head trained before keeps being judged without them.
        let sliced = t.train(None).await.unwrap().card;
        assert_eq!(sliced.slice_run.as_deref(), Some(s.run_id.as_str()));
        let ev = roadwork::train::evaluate_version(
            &store,
            &reg,
            &sliced.model_version,
            &tcfg.split,
            200,
            0,
        )
        .await
        .unwrap();
        assert!(
            ev.slices.iter().any(|sl| sl.slice.starts_with("cluster=")),
            "{:?}",
            ev.slices.iter().map(|s| &s.slice).collect::<Vec<_>>()
        );
        let before = roadwork::train::evaluate_version(&store, &reg, &head, &tcfg.split, 200, 0)
            .await
            .unwrap();
        assert!(
            !before
                .slices
                .iter()
                .any(|sl| sl.slice.starts_with("cluster="))
        );

        // Selection: only unlabelled (traffic) samples, within budget, stored and exported.
        let (sel, rows) = miner
            .select(cpu(), Some(&head), "night-1", 10, Strategy::Auto, None)
            .await
            .unwrap();
        assert_eq!(rows.len(), 10);
        assert!(!sel.items.is_empty());
        let traffic: HashSet<String> = (0..60)
            .map(|j| SampleId::of_bytes(format!("q-{j}").as_bytes()).to_string())
            .collect();
        assert!(rows.iter().all(|r| traffic.contains(&r.sample_id)));
        assert_eq!(
            store.count_rows(tables::SELECTIONS, None).await.unwrap(),
            10
        );
        let csv = dir.path().join("sel.csv");
        write_selection_csv(&rows, &csv).unwrap();
        assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 11);
        // A budget beyond the pool is clamped, zero is refused.
        let (sel, rows) = miner
            .select(cpu(), Some(&head), "all", 1000, Strategy::Random, None)
            .await
            .unwrap();
        assert_eq!(rows.len(), 60);
        assert!(sel.clamped.is_some());
        assert!(matches!(
            miner
                .select(cpu(), Some(&head), "zero", 0, Strategy::Auto, None)
                .await,
            Err(MineError::Config(_))
        ));
    });
}

#[tokio::test]
async fn mining_an_empty_store_is_a_clear_error() {
    let (_dir, store) = support::tmp_store().await;
    let miner = Miner::new(store, MineConfig::default()).unwrap();
    let e = miner.run(cpu(), None, None).await.unwrap_err();
    assert!(matches!(e, MineError::Empty(_)), "{e}");
    assert!(e.to_string().contains("roadwork embed"));
}

#[test]
fn one_class_labels_and_non_finite_vectors_do_not_stop_a_run() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (dir, store) = support::tmp_store().await;
        let (x, _) = roadwork::testdata::labelled_clusters(120, DIM, 4, 8);
        let (mut samples, mut labels, mut vecs) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..120 {
            let s = sample(format!("one-{i}").into_bytes(), "dataset", i as u64 * 7919);
            labels.push(label(&s.sample_id, 0));
            vecs.push((s.sample_id.clone(), x[i * DIM..(i + 1) * DIM].to_vec()));
            samples.push(s);
        }
        let bad = sample(b"inf-vector".to_vec(), "dataset", 1);
        let bad_id = bad.sample_id.clone();
        samples.push(bad);
        store.insert_samples(&samples).await.unwrap();
        store.put_labels(&labels).await.unwrap();
        store.put_embeddings(MODEL, DIM, &vecs).await.unwrap();
        let mut row = vec![0.1f32; DIM];
        row[2] = f32::INFINITY;
        support::append_raw_vector(&store, MODEL, DIM, &bad_id, &row).await;

        let cfg = MineConfig {
            embedding_model: Some(MODEL.into()),
            clusters: Some(500), // more than the samples: clamped to n
            ..Default::default()
        };
        let miner = Miner::new(store.clone(), cfg).unwrap();
        let s = miner.run(cpu(), None, Some(dir.path())).await.unwrap();
        assert_eq!((s.n, s.skipped_non_finite), (120, 1));
        assert_eq!(s.clusters, 120);
        assert_eq!(s.label_issues, None);
        assert!(
            s.notes.iter().any(|n| n.contains("no head scores")),
            "{:?}",
            s.notes
        );
        assert!(s.drift.is_none());
        // Nothing unlabelled to select from: a clear error.
        let e = miner
            .select(cpu(), None, "none", 5, Strategy::Auto, None)
            .await
            .unwrap_err();
        assert!(matches!(e, MineError::Empty(_)), "{e}");
        // Bad configuration is refused before any work.
        let bad = MineConfig {
            phash_max_hamming: 40,
            ..Default::default()
        };
        assert!(matches!(
            Miner::new(store.clone(), bad),
            Err(MineError::Config(_))
        ));
    });
}

/// The competence switch and ProbCover on the digits, through the same rounds `roadwork bench al`
/// runs: `auto` covers while there is no model, turns to margin once the model is confident on
/// the candidates, in every seed and without flipping back; ProbCover's first ten picks beat
/// random ones.
#[test]
fn on_the_digits_auto_switches_once_and_probcover_beats_random() {
    use roadwork::bench::al::{AlConfig, run};
    let data = load_digits(&root().join("datasets/digits/digits.csv")).expect("digits");
    let budgets = [10, 50, 100, 150, 300];
    let cfg = AlConfig {
        budgets: budgets.to_vec(),
        seeds: 3,
        strategies: vec![Strategy::Auto, Strategy::Probcover, Strategy::Random],
        ..Default::default()
    };
    let rows = run(&cpu(), &data, &cfg, |_| {}).unwrap();
    let get = |s: &str, b: usize| {
        rows.iter()
            .find(|r| r.strategy == s && r.budget == b)
            .unwrap_or_else(|| panic!("{s} at {b}"))
    };
    for r in &rows {
        eprintln!(
            "{} {}: {:.3} ± {:.3} (uncertainty rounds {})",
            r.strategy, r.budget, r.mean, r.se, r.uncertainty_rounds
        );
    }
    assert!(get("auto", 10).mean >= get("random", 10).mean + 0.12);
    let switched: Vec<usize> = budgets
        .iter()
        .map(|&b| get("auto", b).uncertainty_rounds)
        .collect();
    assert_eq!(
        switched[0], 0,
        "no model before the first round: {switched:?}"
    );
    assert_eq!(*switched.last().unwrap(), 3, "{switched:?}");
    assert!(
        switched.windows(2).all(|w| w[0] <= w[1]),
        "the regime flipped back: {switched:?}"
    );
    assert!(get("probcover", 10).mean > get("random", 10).mean);
    assert!(get("auto", 300).mean > get("random", 300).mean);
}
