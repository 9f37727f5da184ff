//! Export and import: every layout written from a store and read back into a fresh one keeps what
//! the layout can carry and duplicates nothing; scopes narrow the set; tampered exports are caught.

use crate::support;

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{TimeZone, Utc};
use roadwork::export::{ExportPlan, Images, LabelFilter, Layout, Scope, export};
use roadwork::ingest::FolderOptions;
use roadwork::store::{
    Label, LabelRow, LabelSource, MineScoreRow, RunKind, RunLedger, SelectionRow, SnapshotName,
    Store,
};
use support::{ingestor, put, small_scene, tmp_store};

/// A store with labelled, disputed and unlabelled samples, tags, and a mining run's scores.
async fn source_store(dir: &Path) -> Store {
    let store = Store::open(&dir.join("src-store").to_string_lossy())
        .await
        .unwrap();
    let root = dir.join("photos");
    for i in 0..4 {
        put(&root, &format!("roadwork/r{i}.jpg"), &small_scene(3, 2 * i));
        put(
            &root,
            &format!("clean/c{i}.jpg"),
            &small_scene(3, 2 * i + 1),
        );
    }
    for i in 0..3 {
        put(&root, &format!("pool/u{i}.jpg"), &small_scene(3, 50 + i));
    }
    ingestor(&store, 4)
        .ingest_folder(&root, &FolderOptions::default())
        .await
        .unwrap();
    let samples = store.samples(None).await.unwrap();
    assert_eq!(samples.len(), 11);
    // A person disagrees with the folder about one image and agrees about another; a teacher
    // labels a pool image.
    let by_ref = |r: &str| {
        samples
            .iter()
            .find(|s| s.source_ref == r)
            .unwrap()
            .sample_id
            .clone()
    };
    let ts = Utc.with_ymd_and_hms(2026, 11, 30, 8, 15, 0).unwrap();
    let human = |id, label, conf| LabelRow {
        sample_id: id,
        label,
        source: LabelSource::Human,
        confidence: conf,
        author: "erin".into(),
        ts,
    };
    store
        .put_labels(&[
            human(by_ref("roadwork/r0.jpg"), Label::Clean, 0.9),
            human(by_ref("clean/c1.jpg"), Label::Clean, 1.0),
            LabelRow {
                source: LabelSource::Teacher,
                author: "qwen2.5-vl".into(),
                ..human(by_ref("pool/u0.jpg"), Label::Roadwork, 0.625)
            },
        ])
        .await
        .unwrap();
    // Mining scores, as the mining stage records them.
    let run = RunLedger::start(&store, RunKind::Mine, serde_json::json!({}))
        .await
        .unwrap();
    let run_id = run.id().to_string();
    let scores: Vec<MineScoreRow> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| MineScoreRow {
            run_id: run_id.clone(),
            sample_id: s.sample_id.to_string(),
            cluster: i as u32 % 3,
            hardness: i as f32 / 10.0,
            reasons: format!("uncertain ({:.2})", i as f32 / 10.0),
            prob: Some(0.5),
            label_issue: i == 2,
            outlier: false,
            knn_mean: 0.1,
            typicality: 1.0,
            dup_group: None,
            sets: "train".into(),
        })
        .collect();
    store.put_mine_scores(&scores).await.unwrap();
    run.finish(&serde_json::json!({"ok": true})).await.unwrap();
    store
}

/// (sample id, source, source_ref, era, tags, received_at) of a sample.
type SampleKey = (String, String, String, String, Vec<String>, i64);

async fn sample_facts(s: &Store) -> BTreeSet<SampleKey> {
    s.samples(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.sample_id.to_string(),
                r.source,
                r.source_ref,
                r.era,
                r.tags,
                r.received_at.timestamp_micros(),
            )
        })
        .collect()
}

type LabelKey = (String, u8, String, String, u32, i64);

async fn label_facts(s: &Store) -> BTreeSet<LabelKey> {
    s.labels()
        .await
        .unwrap()
        .into_iter()
        .map(|l| {
            (
                l.sample_id.to_string(),
                l.label.as_u8(),
                l.source.as_str().to_string(),
                l.author,
                l.confidence.to_bits(),
                l.ts.timestamp_micros(),
            )
        })
        .collect()
}

fn plan(layout: Layout, out: &Path) -> ExportPlan {
    ExportPlan {
        layout,
        images: Images::Files,
        scope: Scope::default(),
        out: out.to_path_buf(),
    }
}

async fn read_back(layout: Layout, out: &Path, into: &Store) -> roadwork::ingest::IngestSummary {
    let ing = ingestor(into, 5);
    match layout {
        Layout::Parquet => ing
            .ingest_parquet(&[out.join(roadwork::export::SAMPLES_PARQUET)])
            .await
            .unwrap(),
        Layout::Natix => ing
            .ingest_natix(
                &[out.join(roadwork::export::NATIX_SHARD)],
                &roadwork::ingest::NatixOptions::default(),
            )
            .await
            .unwrap(),
        Layout::Imagefolder | Layout::Fiftyone => ing
            .ingest_folder(out, &FolderOptions::default())
            .await
            .unwrap(),
    }
}

#[tokio::test]
async fn every_layout_round_trips_what_it_can_carry_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let src = source_store(dir.path()).await;
    let (all_samples, all_labels) = (sample_facts(&src).await, label_facts(&src).await);
    let labelled: BTreeSet<String> = src
        .effective_labels()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.sample_id.to_string())
        .collect();
    assert_eq!(labelled.len(), 9);
    let effective: BTreeSet<(String, u8)> = src
        .effective_labels()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.sample_id.to_string(), l.label.as_u8()))
        .collect();
    // Exports read a snapshot: a sample stored after it is in none of them.
    let snap = SnapshotName::parse("train/round-trip").unwrap();
    src.snapshot(&snap).await.unwrap();
    put(
        &dir.path().join("later"),
        "clean/late.jpg",
        &small_scene(9, 1),
    );
    ingestor(&src, 4)
        .ingest_folder(&dir.path().join("later"), &FolderOptions::default())
        .await
        .unwrap();
    for (layout, images) in [
        (Layout::Parquet, Images::Files),
        (Layout::Parquet, Images::Inline),
        (Layout::Imagefolder, Images::Files),
        (Layout::Fiftyone, Images::Files),
        (Layout::Natix, Images::Files),
    ] {
        let what = format!("{layout:?}/{images:?}");
        let out = dir.path().join(format!("out-{what}").replace('/', "-"));
        let s = export(
            &src,
            ExportPlan {
                images,
                scope: Scope {
                    snapshot: Some(snap.clone()),
                    ..Default::default()
                },
                ..plan(layout, &out)
            },
        )
        .await
        .unwrap();
        assert!(s.mine_run.is_some(), "{what}");
        let expected = if layout == Layout::Natix { 9 } else { 11 };
        assert_eq!((s.samples, s.labelled), (expected, 9), "{what}");
        assert!(out.join(roadwork::export::EXPORT_INFO).is_file(), "{what}");
        // Nothing is left beside the export under a temporary name.
        let stray: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".partial-"))
            .collect();
        assert!(stray.is_empty(), "{what}: {stray:?}");

        let (_d, fresh) = tmp_store().await;
        let r = read_back(layout, &out, &fresh).await;
        assert!(r.skipped.is_empty(), "{what}: {:?}", r.skipped);
        let (got_samples, got_labels) = (sample_facts(&fresh).await, label_facts(&fresh).await);
        let ids = |s: &BTreeSet<SampleKey>| s.iter().map(|r| r.0.clone()).collect::<BTreeSet<_>>();
        match layout {
            // These carry everything: the samples' provenance, every label and its author.
            Layout::Parquet | Layout::Imagefolder => {
                assert_eq!(got_samples, all_samples, "{what}");
                assert_eq!(got_labels, all_labels, "{what}");
            }
            // FiftyOne keeps attributes on labelled samples only; unlabelled ones come back
            // as images.
            Layout::Fiftyone => {
                assert_eq!(ids(&got_samples), ids(&all_samples), "{what}");
                let lab: BTreeSet<_> = all_samples
                    .iter()
                    .filter(|r| labelled.contains(&r.0))
                    .cloned()
                    .collect();
                let got: BTreeSet<_> = got_samples
                    .iter()
                    .filter(|r| labelled.contains(&r.0))
                    .cloned()
                    .collect();
                assert_eq!(got, lab, "{what}");
                assert_eq!(got_labels, all_labels, "{what}");
            }
            // NATIX carries the image, the effective label and its scene tags; labels come back
            // as the dataset's.
            Layout::Natix => {
                assert_eq!(ids(&got_samples), labelled, "{what}");
                let want = &effective;
                let got: BTreeSet<(String, u8)> =
                    got_labels.iter().map(|l| (l.0.clone(), l.1)).collect();
                assert_eq!(&got, want, "{what}");
                assert!(got_labels.iter().all(|l| l.2 == "dataset"), "{what}");
            }
        }
        // Reading the export back into the store it came from adds nothing.
        let again = read_back(layout, &out, &src).await;
        assert_eq!(again.new_samples, 0, "{what}");
        if layout != Layout::Natix {
            assert_eq!(again.labels_written, 0, "{what}");
        }
        if layout == Layout::Natix {
            // NATIX carries no provenance: its labels come back as the dataset's, one row each.
            assert_eq!(again.labels_written, 9, "{what}");
        }
    }
}

#[tokio::test]
async fn scores_and_provenance_are_in_the_exported_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = source_store(dir.path()).await;
    let out = dir.path().join("hf");
    export(&src, plan(Layout::Imagefolder, &out)).await.unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metadata.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 11);
    for l in &lines {
        let file = l["file_name"].as_str().unwrap();
        assert!(out.join(file).is_file(), "{file}");
        // The class folder agrees with the effective label.
        let class = file.split('/').next().unwrap();
        match l["label"].as_u64() {
            Some(1) => assert_eq!(class, "roadwork"),
            Some(0) => assert_eq!(class, "clean"),
            _ => assert_eq!(class, "unlabelled"),
        }
        assert!(l["hardness"].is_number() && l["cluster"].is_number(), "{l}");
    }
    // The disputed image: folder said roadwork, a person said clean; the person wins and both
    // labels travel.
    let disputed = lines
        .iter()
        .find(|l| l["source_ref"] == "roadwork/r0.jpg")
        .unwrap();
    assert_eq!(disputed["label"], 0);
    assert_eq!(disputed["label_source"], "human");
    assert_eq!(disputed["labels"].as_array().unwrap().len(), 2);

    let out = dir.path().join("fo");
    export(&src, plan(Layout::Fiftyone, &out)).await.unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("labels.json")).unwrap()).unwrap();
    assert_eq!(doc["classes"], serde_json::json!(["clean", "roadwork"]));
    let labels = doc["labels"].as_object().unwrap();
    assert_eq!(labels.len(), 11);
    let teacher = labels
        .values()
        .find(|v| v["attributes"]["label_source"] == "teacher")
        .unwrap();
    assert_eq!(teacher["label"], 1);
    assert_eq!(teacher["confidence"], 0.625);
    assert!(teacher["attributes"]["hardness"].is_number());
    assert_eq!(labels.values().filter(|v| v.is_null()).count(), 2);
    for id in labels.keys() {
        assert!(out.join("data").join(format!("{id}.jpg")).is_file(), "{id}");
    }
}

#[tokio::test]
async fn scopes_narrow_the_export_and_existing_folders_are_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let src = source_store(dir.path()).await;
    let count = |out: &Path| {
        std::fs::read_to_string(out.join("metadata.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    let with = |scope: Scope, name: &str| ExportPlan {
        scope,
        ..plan(Layout::Imagefolder, &dir.path().join(name))
    };
    let s = export(
        &src,
        with(
            Scope {
                label: Some(LabelFilter::Roadwork),
                ..Default::default()
            },
            "pos",
        ),
    )
    .await
    .unwrap();
    // r1..r3 (r0 became clean) and the teacher-labelled pool image.
    assert_eq!((s.samples, count(&dir.path().join("pos"))), (4, 4));
    let s = export(
        &src,
        with(
            Scope {
                filter: Some("source_ref LIKE 'pool/%'".into()),
                label: Some(LabelFilter::Unlabelled),
                ..Default::default()
            },
            "pool",
        ),
    )
    .await
    .unwrap();
    assert_eq!(s.samples, 2);
    let s = export(
        &src,
        with(
            Scope {
                limit: Some(3),
                ..Default::default()
            },
            "three",
        ),
    )
    .await
    .unwrap();
    assert_eq!(s.samples, 3);

    // A selection: only its samples, with rank and score.
    let picked: Vec<_> = src
        .samples(None)
        .await
        .unwrap()
        .into_iter()
        .take(2)
        .collect();
    let rows: Vec<SelectionRow> = picked
        .iter()
        .enumerate()
        .map(|(i, p)| SelectionRow {
            name: "review-1".into(),
            created_at: Utc::now(),
            sample_id: p.sample_id.to_string(),
            rank: i as u32,
            score: 1.0 - i as f32 / 4.0,
            strategy: "margin".into(),
            reasons: "uncertain".into(),
        })
        .collect();
    src.put_selection(&rows).await.unwrap();
    let out = dir.path().join("sel");
    let s = export(
        &src,
        ExportPlan {
            scope: Scope {
                selection: Some("review-1".into()),
                ..Default::default()
            },
            ..plan(Layout::Parquet, &out)
        },
    )
    .await
    .unwrap();
    assert_eq!(s.samples, 2);
    let err = export(
        &src,
        with(
            Scope {
                selection: Some("no-such".into()),
                ..Default::default()
            },
            "none",
        ),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no-such"), "{err}");
    assert!(!dir.path().join("none").exists());

    // A snapshot: samples added after it are not exported.
    src.snapshot(&SnapshotName::parse("train/before").unwrap())
        .await
        .unwrap();
    let root = dir.path().join("later");
    put(&root, "clean/late.jpg", &small_scene(9, 1));
    ingestor(&src, 4)
        .ingest_folder(&root, &FolderOptions::default())
        .await
        .unwrap();
    let s = export(
        &src,
        with(
            Scope {
                snapshot: Some(SnapshotName::parse("train/before").unwrap()),
                ..Default::default()
            },
            "snap",
        ),
    )
    .await
    .unwrap();
    assert_eq!(s.samples, 11);
    let s = export(&src, with(Scope::default(), "now")).await.unwrap();
    assert_eq!(s.samples, 12);

    // The destination exists: refused, and what is there is untouched.
    let err = export(&src, with(Scope::default(), "now"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(count(&dir.path().join("now")), 12);
    // Inline images need a Parquet layout.
    let err = export(
        &src,
        ExportPlan {
            images: Images::Inline,
            ..plan(Layout::Fiftyone, &dir.path().join("x"))
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("Parquet"), "{err}");
}

#[tokio::test]
async fn a_tampered_export_is_reported_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let src = source_store(dir.path()).await;
    // imagefolder: one image replaced after export keeps its metadata line.
    let out = dir.path().join("hf");
    export(&src, plan(Layout::Imagefolder, &out)).await.unwrap();
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(out.join("metadata.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let victim = first["file_name"].as_str().unwrap();
    std::fs::write(out.join(victim), small_scene(77, 7)).unwrap();
    // A metadata line pointing out of the folder describes nothing that is read.
    let mut meta = std::fs::read_to_string(out.join("metadata.jsonl")).unwrap();
    meta.push_str("{\"file_name\": \"../../etc/passwd\", \"label\": 1}\n");
    std::fs::write(out.join("metadata.jsonl"), meta).unwrap();
    let (_d, fresh) = tmp_store().await;
    let r = ingestor(&fresh, 5)
        .ingest_folder(&out, &FolderOptions::default())
        .await
        .unwrap();
    assert_eq!(r.new_samples, 10);
    let reasons: Vec<String> = r
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.item, s.reason))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with(victim) && r.contains("hash")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("../../etc/passwd")),
        "{reasons:?}"
    );

    // parquet: a file_name that leads out of the table's folder is refused per row.
    let out = dir.path().join("pq");
    export(&src, plan(Layout::Parquet, &out)).await.unwrap();
    let outside = dir.path().join("outside.jpg");
    std::fs::write(&outside, small_scene(5, 5)).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("images/link.jpg")).unwrap();
    let table = out.join(roadwork::export::SAMPLES_PARQUET);
    rewrite_file_names(
        &table,
        &["../outside.jpg", "/etc/passwd", "images/link.jpg"],
    );
    let (_d, fresh) = tmp_store().await;
    let r = ingestor(&fresh, 5).ingest_parquet(&[table]).await.unwrap();
    assert_eq!(r.new_samples, 8);
    assert_eq!(r.skipped.len(), 3, "{:?}", r.skipped);
    assert!(
        r.skipped
            .iter()
            .all(|s| s.reason.contains("file_name") || s.reason.contains("link")),
        "{:?}",
        r.skipped
    );
}

/// Replaces the first `names.len()` `file_name` cells of an exported table.
fn rewrite_file_names(table: &Path, names: &[&str]) {
    use arrow_array::{Array, RecordBatch, StringArray};
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(table).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let schema = batches[0].schema();
    let idx = schema.index_of("file_name").unwrap();
    let mut out = Vec::new();
    let mut left = names.to_vec();
    for b in batches {
        let col = b
            .column(idx)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let vals: Vec<Option<String>> = (0..col.len())
            .map(|i| {
                if left.is_empty() {
                    Some(col.value(i).to_string())
                } else {
                    Some(left.remove(0).to_string())
                }
            })
            .collect();
        let mut cols = b.columns().to_vec();
        cols[idx] = std::sync::Arc::new(StringArray::from(vals));
        out.push(RecordBatch::try_new(schema.clone(), cols).unwrap());
    }
    let mut w = ArrowWriter::try_new(std::fs::File::create(table).unwrap(), schema, None).unwrap();
    for b in &out {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}
