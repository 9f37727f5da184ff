//! The nightly job: the loop end to end, resume after a kill at every stage, a re-run that changes
//! nothing, the dry run, usage errors before any work, and the writer lock.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use roadwork::config::{Config, SourceConfig, SourceKind, Stage};
use roadwork::pipeline::nightly::{self, NightlyOptions, StageStatus};
use roadwork::store::{Label, LabelSource, RunKind, SampleId, SampleSource, Store, tables};
use roadwork::train::Registry;

use crate::support;

/// A pipeline over a small labelled NATIX shard and an unlabelled pool of scenes (whose true
/// labels the test knows), embedded with the weight-free baseline.
struct Fixture {
    _dir: tempfile::TempDir,
    cfg: Config,
    pipeline: PathBuf,
    truth: HashMap<String, Label>,
}

fn fixture(seed: u64) -> Fixture {
    fixture_with(seed, 48, 40)
}

fn fixture_with(seed: u64, labelled: u64, pool: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    roadwork::synth::scenes::write_natix_shard(
        &data.join("src/natix.parquet"),
        seed + 1,
        &(0..labelled).collect::<Vec<_>>(),
    )
    .unwrap();
    let mut truth = HashMap::new();
    for i in 0..pool {
        let jpg = support::small_scene(seed, i);
        let spec = roadwork::synth::scenes::SceneSpec::draw(seed, i);
        support::put(&data.join("src/pool"), &format!("{i:03}.jpg"), &jpg);
        truth.insert(SampleId::of_bytes(&jpg).to_string(), spec.label);
    }
    let mut cfg = Config::default();
    cfg.data.dir = data.clone();
    cfg.embed.encoder = roadwork::embed::EncoderKind::Baseline;
    cfg.embed.resolution = 112;
    cfg.pipeline.sources = vec![
        SourceConfig {
            kind: SourceKind::Natix,
            path: "src/natix.parquet".into(),
            source: None,
            author: None,
            labels: None,
            dataset_name: None,
        },
        SourceConfig {
            kind: SourceKind::Folder,
            path: "src/pool".into(),
            source: Some(SampleSource::Upload),
            author: None,
            labels: None,
            dataset_name: None,
        },
    ];
    cfg.pipeline.select.budget = 12;
    let t = &mut cfg.train;
    t.folds = 3;
    t.fit.max_epochs = 12;
    t.fit.batch_size = 32;
    t.replay_queries = 200;
    t.min_per_class = 3;
    t.min_calibration = 5;
    t.split.eval_share = 0.3;
    t.split.calib_share = 0.15;
    t.promote.min_slice_n = 1000;
    cfg.validate().unwrap();
    let pipeline = dir.path().join("pipeline.toml");
    std::fs::write(&pipeline, toml::to_string(&cfg).unwrap()).unwrap();
    Fixture {
        _dir: dir,
        cfg,
        pipeline,
        truth,
    }
}

fn roadwork(f: &Fixture) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_roadwork"));
    c.env_remove("RUST_LOG").env_remove("ROADWORK_CRASH_AT");
    c.arg("nightly").arg("--pipeline").arg(&f.pipeline);
    c
}

fn quiet() -> NightlyOptions {
    NightlyOptions {
        progress: false,
        ..NightlyOptions::default()
    }
}

async fn store(f: &Fixture) -> Store {
    Store::open(&f.cfg.data.store_uri()).await.unwrap()
}

/// What must be equal between two runs of the same job on the same inputs.
#[derive(Debug, PartialEq)]
struct Outcome {
    samples: BTreeSet<String>,
    labels: BTreeSet<(String, u8, String, String)>,
    /// sample id → vector bits.
    vectors: BTreeSet<(String, Vec<u32>)>,
    selected: BTreeSet<String>,
    champion_weights: Option<String>,
}

async fn outcome(f: &Fixture) -> Outcome {
    let s = store(f).await;
    let samples = s
        .samples(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.sample_id.to_string())
        .collect::<BTreeSet<_>>();
    let all = s.samples(None).await.unwrap().len();
    assert_eq!(all, samples.len(), "no duplicate samples");
    let labels = s
        .labels()
        .await
        .unwrap()
        .into_iter()
        .map(|l| {
            (
                l.sample_id.to_string(),
                l.label.as_u8(),
                l.source.as_str().to_string(),
                l.author,
            )
        })
        .collect();
    let model = roadwork::mine::resolve_embedding_model(&s, None)
        .await
        .unwrap();
    let table = roadwork::store::embeddings_table(&model);
    let batches = s.scan(&table, None, None, None).await.unwrap();
    let v = roadwork::store::collect_vectors(&table, &batches).unwrap();
    let vectors: BTreeSet<(String, Vec<u32>)> = (0..v.ids.len())
        .map(|i| {
            let bits = v.data[i * v.dim..(i + 1) * v.dim]
                .iter()
                .map(|x| x.to_bits())
                .collect();
            (v.ids[i].clone(), bits)
        })
        .collect();
    assert_eq!(vectors.len(), v.ids.len(), "no duplicate vectors");
    let mut selected = BTreeSet::new();
    for b in s
        .scan(tables::SELECTIONS, Some(&["sample_id"]), None, None)
        .await
        .unwrap()
    {
        let c = b
            .column_by_name("sample_id")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap();
        selected.extend(c.iter().flatten().map(str::to_string));
    }
    let reg = Registry::open(f.cfg.train.registry_dir(&f.cfg.data.dir)).unwrap();
    let champion_weights = reg
        .champion()
        .unwrap()
        .map(|p| reg.load(&p.version).unwrap().0.weights_sha256);
    Outcome {
        samples,
        labels,
        vectors,
        selected,
        champion_weights,
    }
}

#[test]
fn killed_at_every_stage_and_resumed_equals_an_uninterrupted_run() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = (fixture(5), fixture(5));
    let out = roadwork(&a).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, stage) in Stage::ALL.iter().enumerate() {
        let at = format!("{stage}:{}", if i % 2 == 0 { "start" } else { "end" });
        let out = roadwork(&b)
            .arg("--resume")
            .env("ROADWORK_CRASH_AT", &at)
            .output()
            .unwrap();
        assert!(
            !out.status.success() && out.status.code().is_none(),
            "a crash at {at} kills the process: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = roadwork(&b).arg("--resume").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("(resumed)"), "{text}");
    let (oa, ob) = rt.block_on(async { (outcome(&a).await, outcome(&b).await) });
    assert!(oa.champion_weights.is_some() && !oa.selected.is_empty());
    assert_eq!(oa, ob);
    // One job, resumed eleven times; every stage run it started names it as parent.
    let runs = rt.block_on(async { store(&b).await.runs().await.unwrap() });
    let jobs: Vec<_> = runs.iter().filter(|r| r.kind == RunKind::Nightly).collect();
    assert_eq!(jobs.len(), 1);
    assert!(
        runs.iter()
            .filter(|r| r.kind != RunKind::Nightly)
            .all(|r| r.parent.as_ref() == Some(&jobs[0].run_id)),
        "stage runs name their job"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_loop_closes_and_a_rerun_on_unchanged_inputs_changes_nothing() {
    let mut f = fixture(3);
    // One validator-augmented copy per labelled sample: the embed stage makes those of the
    // dataset labels, the train stage those of the labels bought since.
    f.cfg.embed.augment.copies = 1;
    // Night one: up to the export of the selection.
    let mut o = quiet();
    o.until = Some(Stage::Select);
    let r = nightly::run(&f.cfg, &o).await.unwrap();
    let sheet = PathBuf::from(
        r.progress
            .output(Stage::Select, "sheet")
            .and_then(|v| v.as_str())
            .unwrap(),
    );
    // A person labels the exported sheet.
    let text = std::fs::read_to_string(&sheet).unwrap();
    let mut filled = String::from("sample_id,file,label,author\n");
    let mut given = BTreeSet::new();
    for line in text.lines().skip(1) {
        let mut c = line.split(',');
        let (id, file) = (c.next().unwrap(), c.next().unwrap());
        let l = f.truth[id].as_u8();
        filled.push_str(&format!("{id},{file},{l},erin\n"));
        given.insert((id.to_string(), l));
    }
    assert_eq!(given.len(), 12);
    std::fs::write(&sheet, filled).unwrap();
    let s = store(&f).await;
    roadwork::labels::import_labels(&s, &sheet, &Default::default())
        .await
        .unwrap();
    // The rest of the night: train on them, evaluate, decide.
    let mut o = quiet();
    o.from = Some(Stage::Train);
    let r = nightly::run(&f.cfg, &o).await.unwrap();
    let version = r
        .progress
        .output(Stage::Train, "version")
        .and_then(|v| v.as_str())
        .unwrap()
        .to_string();
    let decision = r.progress.output(Stage::Promote, "decision").unwrap();
    assert_eq!(decision["challenger"], serde_json::json!(version));
    assert!(
        decision["n"].as_u64().unwrap() > 0,
        "the gate judged on eval samples"
    );
    // The head's training snapshot holds exactly those human labels.
    let reg = Registry::open(f.cfg.train.registry_dir(&f.cfg.data.dir)).unwrap();
    let (card, _) = reg.load(&version).unwrap();
    let snap = roadwork::store::SnapshotName::parse(&card.snapshot).unwrap();
    let batches = s.scan_at(&snap, tables::LABELS, None, None).await.unwrap();
    let mut human = BTreeSet::new();
    for b in &batches {
        for l in roadwork::store::rows::from_batch::<roadwork::store::LabelRow>(b).unwrap() {
            if l.source == LabelSource::Human {
                assert_eq!(l.author, "erin");
                human.insert((l.sample_id.to_string(), l.label.as_u8()));
            }
        }
    }
    assert_eq!(human, given);
    // Every labelled pool sample is in the training split: the card counts them there.
    let train_n: usize = card
        .data
        .iter()
        .filter(|(k, _)| k.starts_with("train/"))
        .map(|(_, n)| n)
        .sum();
    assert!(train_n >= 12, "{:?}", card.data);
    let am = card
        .metrics_augmented
        .as_ref()
        .expect("the head was measured on augmented copies");
    assert_eq!(
        am.trained_on as usize, train_n,
        "one copy of every training sample, the ones labelled tonight included"
    );

    // The next night mines and selects again (labels came in since mining ran). It trains again
    // only if synthesis filled gaps with new images: a new mining run alone is no reason.
    let r = nightly::run(&f.cfg, &quiet()).await.unwrap();
    let status = |r: &nightly::NightlyReport, st: Stage| {
        r.progress
            .stages
            .iter()
            .find(|x| x.stage == st)
            .unwrap()
            .status
    };
    assert_eq!(status(&r, Stage::Mine), StageStatus::Done);
    let synthesised = status(&r, Stage::Synth) == StageStatus::Done
        && r.progress
            .output(Stage::Synth, "accepted")
            .and_then(|v| v.as_u64())
            .unwrap_or(0)
            > 0;
    let expect = if synthesised {
        StageStatus::Done
    } else {
        StageStatus::Skipped
    };
    assert_eq!(status(&r, Stage::Train), expect);
    if synthesised {
        // The night after mines the new images, and nothing else happens: synthesis does not
        // run again on its own images, and the data training saw did not change.
        let r = nightly::run(&f.cfg, &quiet()).await.unwrap();
        assert_eq!(status(&r, Stage::Synth), StageStatus::Skipped);
        assert_eq!(status(&r, Stage::Train), StageStatus::Skipped);
    }
    // And again, on unchanged inputs: nothing is trained, mined or selected; no data table
    // changes.
    let data_tables = [
        tables::SAMPLES,
        tables::LABELS,
        tables::SELECTIONS,
        tables::MODELS,
        tables::HEAD_SCORES,
        tables::MINE_SCORES,
        tables::EVALUATIONS,
    ];
    let before = s.versions().await.unwrap();
    let runs_before = s.runs().await.unwrap().len();
    let r = nightly::run(&f.cfg, &quiet()).await.unwrap();
    let after = s.versions().await.unwrap();
    for t in data_tables {
        assert_eq!(before.get(t), after.get(t), "{t} changed on a re-run");
    }
    for st in [
        Stage::Mine,
        Stage::Select,
        Stage::Synth,
        Stage::Train,
        Stage::Eval,
        Stage::Promote,
    ] {
        let rec = r.progress.stages.iter().find(|x| x.stage == st).unwrap();
        assert_eq!(rec.status, StageStatus::Skipped, "{st}: {:?}", rec.note);
    }
    let new_runs: Vec<RunKind> = s.runs().await.unwrap()[runs_before..]
        .iter()
        .map(|r| r.kind)
        .collect();
    assert!(
        !new_runs.contains(&RunKind::Train) && !new_runs.contains(&RunKind::Mine),
        "{new_runs:?}"
    );
    assert!(r.progress.report.as_ref().unwrap().is_file());
}

#[test]
fn usage_errors_and_a_held_lock_stop_the_job_before_any_work() {
    let f = fixture(9);
    let code = |c: &mut Command| {
        let o = c.output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (c, e) = code(roadwork(&f).args(["--from", "train", "--until", "mine"]));
    assert_eq!(c, Some(2), "{e}");
    assert!(e.contains("--from train comes after --until mine"), "{e}");
    let (c, e) = code(roadwork(&f).args(["--from", "nightly"]));
    assert_eq!(c, Some(2), "{e}");
    let bad = f.pipeline.with_file_name("bad.toml");
    std::fs::write(&bad, "[pipeline]\nstages = [\"ingest\", \"bogus\"]\n").unwrap();
    let (c, e) = code(
        Command::new(env!("CARGO_BIN_EXE_roadwork"))
            .arg("nightly")
            .arg("--pipeline")
            .arg(&bad),
    );
    assert_eq!(c, Some(2), "{e}");
    assert!(e.contains("bogus"), "{e}");
    assert!(
        !f.cfg.data.dir.join("store").exists(),
        "nothing ran, so no store was created"
    );
    // The dry run writes nothing and says what each stage would touch.
    let o = roadwork(&f).arg("--dry-run").output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("dry run") && text.contains("writes: selections"),
        "{text}"
    );
    assert!(
        !f.cfg.data.dir.join("store").exists(),
        "a dry run does not even create an empty store"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (runs, samples) = rt.block_on(async {
        let s = store(&f).await;
        (
            s.runs().await.unwrap().len(),
            s.count_rows(tables::SAMPLES, None).await.unwrap(),
        )
    });
    assert_eq!((runs, samples), (0, 0));
    // Another writer holds the store: exit 75, naming it; `roadwork train` by hand too.
    let lock_path =
        roadwork::store::lock::WriterLock::path_for(&f.cfg.data.store_uri(), &f.cfg.data.dir);
    let held =
        roadwork::store::lock::WriterLock::acquire(&lock_path, "roadwork nightly (test)").unwrap();
    let (c, e) = code(&mut roadwork(&f));
    assert_eq!(c, Some(75), "{e}");
    assert!(e.contains("roadwork nightly (test)"), "{e}");
    let (c, e) = code(
        Command::new(env!("CARGO_BIN_EXE_roadwork"))
            .arg("--config")
            .arg(&f.pipeline)
            .arg("train"),
    );
    assert_eq!(c, Some(75), "{e}");
    drop(held);
    assert!(Path::new(&lock_path).exists());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Labels bought by the loop's selection train a better head than as many labels bought at
/// random, on average over seeds (same store, same budget, same frozen eval set).
#[tokio::test(flavor = "multi_thread")]
async fn select_label_retrain_beats_a_random_selection_of_the_same_size() {
    use roadwork::mine::{Compute, Miner, Strategy};
    use roadwork::train::{Split, Trainer, read_splits, slice_run};
    // Big enough for labels to matter: 100 frozen eval samples, 30 labelled training samples,
    // and a pool of 240 to choose 60 from.
    let mut f = fixture_with(21, 200, 240);
    f.cfg.train.split.eval_share = 0.5;
    f.cfg.train.fit.max_epochs = 40;
    f.cfg.embed.resolution = 224;
    let mut o = quiet();
    o.until = Some(Stage::Promote);
    nightly::run(&f.cfg, &o).await.unwrap();
    let reg = Registry::open(f.cfg.train.registry_dir(&f.cfg.data.dir)).unwrap();
    let champion = reg.champion().unwrap().unwrap().version;
    let night_one = reg.load(&champion).unwrap().0.metrics.unwrap().accuracy;
    let budget = 60;
    let mut acc: HashMap<&str, Vec<f64>> = HashMap::new();
    let scratch = tempfile::tempdir().unwrap();
    for seed in 0..3u64 {
        for (arm, strategy) in [("loop", Strategy::Auto), ("random", Strategy::Random)] {
            let mut cfg = f.cfg.clone();
            cfg.data.dir = scratch.path().join(format!("{arm}-{seed}"));
            copy_dir(&f.cfg.data.dir, &cfg.data.dir);
            cfg.mine.select.seed = seed;
            let s = Store::open(&cfg.data.store_uri()).await.unwrap();
            // The training split as training will draw it (groups, the latest mining run's
            // duplicate links).
            let run = slice_run(&s, None).await.unwrap();
            let only: std::collections::HashSet<String> =
                read_splits(&s, None, &cfg.train.split, run.as_ref())
                    .await
                    .unwrap()
                    .iter()
                    .filter(|(_, p)| p.split == Split::Train)
                    .map(|(id, _)| id.clone())
                    .collect();
            let miner = Miner::new(s.clone(), cfg.mine.clone()).unwrap();
            let (_, rows) = miner
                .select(
                    Compute::<roadwork::embed::Cpu>::host(),
                    Some(&champion),
                    arm,
                    budget,
                    strategy,
                    Some(&only),
                )
                .await
                .unwrap();
            assert_eq!(rows.len(), budget);
            let labels: Vec<roadwork::store::LabelRow> = rows
                .iter()
                .map(|r| roadwork::store::LabelRow {
                    sample_id: r.sample_id.parse().unwrap(),
                    label: f.truth[&r.sample_id],
                    source: LabelSource::Human,
                    confidence: 1.0,
                    author: "oracle".into(),
                    ts: chrono::Utc::now(),
                })
                .collect();
            s.put_labels(&labels).await.unwrap();
            let reg = Registry::open(cfg.train.registry_dir(&cfg.data.dir)).unwrap();
            let t = Trainer::new(s, reg, cfg.train.clone()).unwrap().quiet();
            let card = t.train(None).await.unwrap().card;
            acc.entry(arm)
                .or_default()
                .push(card.metrics.unwrap().accuracy);
        }
    }
    let mean = |a: &str| acc[a].iter().sum::<f64>() / acc[a].len() as f64;
    eprintln!("eval accuracy: night one {night_one:.4}, by arm after {budget} labels: {acc:?}");
    assert!(
        mean("loop") > night_one,
        "the labels improve the head: {night_one:.4} → {:.4}",
        mean("loop")
    );
    assert!(
        mean("loop") > mean("random"),
        "loop {:.4} vs random {:.4}: {acc:?}",
        mean("loop"),
        mean("random")
    );
}

/// Waits until the query log under `dir` holds `n` shadow lines (the scorer runs after replies).
async fn wait_for_shadow_lines(dir: &Path, n: usize) {
    for _ in 0..400 {
        let count: usize = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
            .map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap()
                    .lines()
                    .filter(|l| l.contains("\"kind\":\"shadow\""))
                    .count()
            })
            .sum();
        if count >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("fewer than {n} shadow lines in {}", dir.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_challenger_is_scored_in_shadow_on_live_traffic_before_it_is_promoted() {
    use roadwork::serve::{QueryLog, start};
    let mut f = fixture(9);
    // Every head passes the gate: this test is about what happens after it.
    f.cfg.train.promote.min_gain = -2.0;
    f.cfg.pipeline.min_shadow = 6;
    let reg = Registry::open(f.cfg.train.registry_dir(&f.cfg.data.dir)).unwrap();
    let promote_out = |r: &nightly::NightlyReport, key: &str| {
        r.progress
            .output(Stage::Promote, key)
            .cloned()
            .unwrap_or_default()
    };

    // Night one: nothing serves yet, so the first head becomes champion on the gate alone.
    let r = nightly::run(&f.cfg, &quiet()).await.unwrap();
    assert_eq!(promote_out(&r, "promoted"), serde_json::json!(true));
    let first = reg.champion().unwrap().unwrap().version;
    assert!(reg.challenger().unwrap().is_none());

    // Labels come in; night two trains a second head, which passes the gate and is named the
    // challenger, not the champion.
    let s = store(&f).await;
    let labels: Vec<roadwork::store::LabelRow> = s
        .samples(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.source == SampleSource::Upload.as_str())
        .take(12)
        .map(|r| roadwork::store::LabelRow {
            label: f.truth[r.sample_id.as_str()],
            sample_id: r.sample_id,
            source: LabelSource::Human,
            confidence: 1.0,
            author: "erin".into(),
            ts: chrono::Utc::now(),
        })
        .collect();
    s.put_labels(&labels).await.unwrap();
    let r = nightly::run(&f.cfg, &quiet()).await.unwrap();
    let second = reg.challenger().unwrap().expect("a challenger").version;
    assert_ne!(second, first);
    assert_eq!(reg.champion().unwrap().unwrap().version, first);
    assert_eq!(
        promote_out(&r, "named_challenger"),
        serde_json::json!(second)
    );
    assert_eq!(promote_out(&r, "promoted"), serde_json::json!(false));

    // Live traffic: the server answers with the champion and scores the challenger in shadow.
    let ql = f.cfg.data.dir.join("querylog");
    let serve = support::loopback_serve();
    let running = start(
        &serve,
        &f.cfg.embed,
        roadwork::imaging::DecodeLimits::default(),
        reg.clone(),
        &ql,
    )
    .await
    .unwrap();
    let url = format!("http://{}/v1/predict", running.addrs[0].1);
    let c = reqwest::Client::new();
    let served: Vec<Vec<u8>> = (100..108).map(|i| support::small_scene(9, i)).collect();
    for img in &served {
        let v: serde_json::Value = c
            .post(&url)
            .body(img.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["model_version"], serde_json::json!(first));
    }
    wait_for_shadow_lines(&ql, served.len()).await;
    running.shutdown().await;
    // The nightly job moves the log only once no server owns it.
    for _ in 0..200 {
        if QueryLog::open_if_unowned(&ql).unwrap().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }

    // Night three ingests the log: the challenger has its shadow answers and is promoted; the
    // head trained tonight becomes the next challenger.
    let r = nightly::run(&f.cfg, &quiet()).await.unwrap();
    assert_eq!(
        promote_out(&r, "promoted"),
        serde_json::json!(true),
        "{:?}",
        r.progress.stages
    );
    assert_eq!(reg.champion().unwrap().unwrap().version, second);
    let stats: roadwork::train::ShadowStats =
        serde_json::from_value(promote_out(&r, "shadow")).unwrap();
    assert_eq!((stats.n, stats.images), (served.len(), served.len()));
    assert_eq!(
        (stats.challenger.as_str(), stats.champion.as_str()),
        (second.as_str(), first.as_str())
    );
    assert!((0.0..=1.0).contains(&stats.agreement));
    assert!(stats.champion_tier1_ms.p50 > 0.0 && stats.challenger_tier1_ms.p50 > 0.0);
    let third = reg.challenger().unwrap().map(|c| c.version);
    assert!(third.is_some() && third.as_deref() != Some(second.as_str()));
    let html = std::fs::read_to_string(r.progress.report.as_ref().unwrap()).unwrap();
    assert!(
        html.contains("agreement at 0.5") && html.contains(&second),
        "report shows shadow"
    );

    // Images where the two heads disagreed at 0.5 are hard cases of the night's mining run.
    let run = r
        .progress
        .output(Stage::Mine, "run_id")
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let rows = s.shadow_scores(Some(&second), Some(&first)).await.unwrap();
    let flipped: BTreeSet<String> = rows
        .iter()
        .filter(|r| roadwork::train::flips(r))
        .map(|r| r.sample_id.clone())
        .collect();
    let batches = s
        .scan(
            tables::MINE_SCORES,
            Some(&["sample_id", "reasons"]),
            Some(&format!("run_id = '{run}'")),
            None,
        )
        .await
        .unwrap();
    let mut reasons: HashMap<String, String> = HashMap::new();
    for b in &batches {
        use arrow_array::cast::AsArray;
        let (id, why) = (
            b.column(0).as_string::<i32>(),
            b.column(1).as_string::<i32>(),
        );
        for i in 0..b.num_rows() {
            reasons.insert(id.value(i).to_string(), why.value(i).to_string());
        }
    }
    for id in &flipped {
        assert!(reasons[id].contains("shadow"), "{id}: {}", reasons[id]);
    }
    eprintln!(
        "{} of {} shadow answers flipped at 0.5: {}",
        flipped.len(),
        rows.len(),
        stats.summary()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn housekeeping_deletes_ingested_query_log_segments_past_their_retention_and_nothing_else() {
    let f = fixture(5);
    let ql = f.cfg.data.dir.join("querylog");
    std::fs::create_dir_all(ql.join("done")).unwrap();
    let month_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86_400);
    for (p, old) in [
        (ql.join("done/seg-1.jsonl"), true),
        (ql.join("done/seg-2.jsonl"), false),
        // Sealed but not yet ingested: never deleted, however old.
        (ql.join("seg-3.jsonl"), true),
    ] {
        std::fs::write(&p, b"{}\n").unwrap();
        if old {
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(month_ago)
                .unwrap();
        }
    }
    let mut o = quiet();
    o.from = Some(Stage::Housekeeping);
    o.until = Some(Stage::Housekeeping);
    let r = nightly::run(&f.cfg, &o).await.unwrap();
    let pruned = r
        .progress
        .output(Stage::Housekeeping, "querylog_done_pruned")
        .unwrap();
    assert_eq!(pruned["segments"], 1, "{pruned}");
    assert!(!ql.join("done/seg-1.jsonl").exists());
    assert!(ql.join("done/seg-2.jsonl").exists() && ql.join("seg-3.jsonl").exists());
}
