//! Ingest: each source, bad input, idempotence, and a crash in the middle.

use crate::support;

use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use base64::Engine as _;
use chrono::Utc;
use roadwork::ingest::{FolderOptions, IngestError, NatixOptions};
use roadwork::store::querylog::{QUERY_LOG_VERSION, QueryLogRecord, TierOutput};
use roadwork::store::{Label, LabelSource, SampleId, tables};
use roadwork::synth::scenes::{generate_scenes, write_natix_shard};
use support::{assert_samples_consistent, ingestor, put, small_scene, tmp_store};

#[tokio::test]
async fn folder_labels_from_subfolders_and_skips_bad_files_with_reasons() {
    let (dir, store) = tmp_store().await;
    let root = dir.path().join("photos");
    for i in 0..3 {
        put(&root, &format!("roadwork/r{i}.jpg"), &small_scene(1, 2 * i));
        put(
            &root,
            &format!("clean/c{i}.jpg"),
            &small_scene(1, 2 * i + 1),
        );
    }
    put(&root, "unlabelled.jpg", &small_scene(1, 99));
    // Bad input: a text file, an empty file, a truncated JPEG, a PNG header with garbage after it.
    put(&root, "notes.txt", b"not an image at all");
    put(&root, "clean/empty.jpg", b"");
    let jpg = small_scene(1, 50);
    put(&root, "roadwork/truncated.jpg", &jpg[..jpg.len() / 3]);
    put(&root, "bad.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDRgarbage");

    let s = ingestor(&store, 4)
        .ingest_folder(&root, &FolderOptions::default())
        .await
        .unwrap();
    assert_eq!(s.scanned, 11);
    assert_eq!(s.accepted, 7);
    assert_eq!(s.new_samples, 7);
    assert_eq!(s.labels_written, 6);
    let mut skipped: Vec<(&str, &str)> = s
        .skipped
        .iter()
        .map(|k| (k.item.as_str(), k.reason.as_str()))
        .collect();
    skipped.sort();
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    assert_eq!(skipped[0].0, "bad.png");
    assert!(skipped[0].1.contains("png"), "{skipped:?}");
    assert_eq!(skipped[1], ("clean/empty.jpg", "empty file"));
    assert!(skipped[2].1.contains("not a supported image format"));
    assert_eq!(
        skipped[3],
        (
            "roadwork/truncated.jpg",
            "truncated jpeg image: no end-of-image marker"
        )
    );

    let eff = store.effective_labels().await.unwrap();
    assert_eq!(eff.len(), 6);
    assert!(
        eff.iter()
            .all(|e| e.source == LabelSource::Dataset && e.author == "photos")
    );
    let roadwork = eff.iter().filter(|e| e.label == Label::Roadwork).count();
    assert_eq!(roadwork, 3);
    let samples = store.samples(None).await.unwrap();
    assert!(
        samples
            .iter()
            .all(|s| s.source == "upload" && s.format == "jpeg")
    );
    assert!(samples.iter().any(|s| s.source_ref == "unlabelled.jpg"));
    assert_eq!(assert_samples_consistent(&store).await, 7);

    // Re-running adds nothing.
    let again = ingestor(&store, 4)
        .ingest_folder(&root, &FolderOptions::default())
        .await
        .unwrap();
    assert_eq!((again.new_samples, again.labels_written), (0, 0));
    assert_eq!(again.duplicates, 7);
    assert_eq!(store.count_rows(tables::SAMPLES, None).await.unwrap(), 7);
    assert_eq!(store.count_rows(tables::LABELS, None).await.unwrap(), 6);
    let runs = store.runs().await.unwrap();
    assert_eq!(runs.len(), 2);
    assert!(
        runs.iter()
            .all(|r| r.status == roadwork::store::RunStatus::Ok)
    );
}

#[tokio::test]
async fn folder_labels_from_csv_and_exact_duplicates_collapse() {
    let (dir, store) = tmp_store().await;
    let root = dir.path().join("flat");
    let a = small_scene(2, 0);
    put(&root, "a.jpg", &a);
    put(&root, "copy-of-a.jpg", &a);
    put(&root, "b.jpg", &small_scene(2, 1));
    let csv = put(
        dir.path(),
        "labels.csv",
        b"path,label\nflat/a.jpg,roadwork\nb.jpg,0\n",
    );
    let opts = FolderOptions {
        labels_csv: Some(csv),
        author: Some("alice".into()),
        ..Default::default()
    };
    let s = ingestor(&store, 100)
        .ingest_folder(&root, &opts)
        .await
        .unwrap();
    assert_eq!((s.accepted, s.new_samples, s.duplicates), (3, 2, 1));
    let eff = store.effective_labels().await.unwrap();
    let of = |bytes: &[u8]| {
        let id = SampleId::of_bytes(bytes);
        eff.iter()
            .find(|e| e.sample_id == id)
            .map(|e| (e.label, e.author.clone()))
    };
    assert_eq!(of(&a), Some((Label::Roadwork, "alice".into())));
    assert_eq!(of(&small_scene(2, 1)), Some((Label::Clean, "alice".into())));
}

#[tokio::test]
async fn a_malformed_label_csv_is_one_clear_error_and_nothing_is_written() {
    let (dir, store) = tmp_store().await;
    let root = dir.path().join("imgs");
    put(&root, "a.jpg", &small_scene(3, 0));
    let csv = put(dir.path(), "l.csv", b"a.jpg,1\na.jpg,maybe\n");
    let opts = FolderOptions {
        labels_csv: Some(csv),
        ..Default::default()
    };
    let err = ingestor(&store, 10)
        .ingest_folder(&root, &opts)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, IngestError::LabelFile { line: 2, why, .. } if why.contains("maybe")),
        "{err}"
    );
    assert_eq!(store.count_rows(tables::SAMPLES, None).await.unwrap(), 0);
}

#[tokio::test]
async fn generated_folder_uses_its_manifest() {
    let (dir, store) = tmp_store().await;
    let root = dir.path().join("scenes");
    generate_scenes(&root, 8, 11, false).unwrap();
    let s = ingestor(&store, 3)
        .ingest_folder(&root, &FolderOptions::default())
        .await
        .unwrap();
    assert!(s.skipped.is_empty(), "{:?}", s.skipped);
    assert_eq!(s.new_samples, 8);
    let samples = store.samples(None).await.unwrap();
    assert!(samples.iter().all(|s| s.source == "synthetic"));
    assert!(
        samples
            .iter()
            .all(|s| s.source_ref.starts_with("procedural-v1:seed=11:"))
    );
    assert!(
        samples
            .iter()
            .all(|s| s.tags.iter().any(|t| t.starts_with("daytime=")))
    );
    let eff = store.effective_labels().await.unwrap();
    assert_eq!(eff.len(), 8);
    assert!(eff.iter().all(|e| e.source == LabelSource::Synthetic));
    assert_eq!(eff.iter().filter(|e| e.label == Label::Roadwork).count(), 4);
}

#[tokio::test]
async fn natix_shard_brings_samples_tags_and_dataset_labels() {
    let (dir, store) = tmp_store().await;
    let shard = dir.path().join("train-00000.parquet");
    write_natix_shard(&shard, 5, &[0, 1, 2, 3, 4, 5]).unwrap();
    let s = ingestor(&store, 4)
        .ingest_natix(std::slice::from_ref(&shard), &NatixOptions::default())
        .await
        .unwrap();
    assert_eq!((s.scanned, s.new_samples, s.labels_written), (6, 6, 6));
    let samples = store.samples(None).await.unwrap();
    assert!(samples.iter().all(|s| s.source == "dataset"));
    let refs: Vec<&str> = samples.iter().map(|s| s.source_ref.as_str()).collect();
    assert!(refs.contains(&"natix-roadwork:5000003"), "{refs:?}");
    for s in &samples {
        for key in [
            "daytime=",
            "environment=",
            "weather=",
            "travel_alteration=",
            "city=",
            "seq_id=",
            "vid_id=",
            "frame_id=",
            "gps=",
        ] {
            assert!(
                s.tags.iter().any(|t| t.starts_with(key)),
                "{key} missing: {:?}",
                s.tags
            );
        }
    }
    // Frames of one drive share a seq_id (three per drive in generated shards); roadwork frames
    // carry their scene description.
    let mut drives = std::collections::HashMap::new();
    for s in &samples {
        if let Some(seq) = s.tags.iter().find(|t| t.starts_with("seq_id=")) {
            *drives.entry(seq.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(drives.len(), 2, "{drives:?}");
    assert!(drives.values().all(|&n| n == 3));
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.tags.iter().any(|t| t.starts_with("scene_description=")))
            .count(),
        3
    );
    let eff = store.effective_labels().await.unwrap();
    assert!(
        eff.iter()
            .all(|e| e.source == LabelSource::Dataset && e.author == "natix-roadwork")
    );
    assert_eq!(eff.iter().filter(|e| e.label == Label::Roadwork).count(), 3);
    let again = ingestor(&store, 4)
        .ingest_natix(&[shard], &NatixOptions::default())
        .await
        .unwrap();
    assert_eq!((again.new_samples, again.labels_written), (0, 0));
}

#[tokio::test]
async fn natix_without_a_required_column_names_it_and_writes_nothing() {
    let (dir, store) = tmp_store().await;
    let good = dir.path().join("good.parquet");
    write_natix_shard(&good, 6, &[0, 1]).unwrap();
    // A shard with ids and descriptions but no `label` column.
    let bad = dir.path().join("bad.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("scene_description", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(StringArray::from(vec!["cones"])),
        ],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&bad).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let err = ingestor(&store, 4)
        .ingest_natix(&[good, bad.clone()], &NatixOptions::default())
        .await
        .unwrap_err();
    match &err {
        IngestError::MissingColumn { path, column, .. } => {
            assert_eq!(path, &bad);
            assert_eq!(column, "image");
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("nothing was written"));
    for t in [tables::SAMPLES, tables::LABELS, tables::RUNS] {
        assert_eq!(store.count_rows(t, None).await.unwrap(), 0, "{t}");
    }
}

fn record(i: u64, bytes: &[u8], score: f32) -> QueryLogRecord {
    QueryLogRecord {
        v: QUERY_LOG_VERSION,
        request_id: format!("req-{i}"),
        received_at: Utc::now(),
        answered_at: Utc::now(),
        validator_hotkey: Some("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY".into()),
        unverified: false,
        profile: "speed".into(),
        image_b64: base64::engine::general_purpose::STANDARD.encode(bytes),
        image_sha256: SampleId::of_bytes(bytes).to_string(),
        image_cut: None,
        image_len: None,
        model_version: "head-test".into(),
        tiers: vec![TierOutput {
            tier: 1,
            score: Some(score),
            latency_ms: 12.5,
            error: None,
        }],
        decided_by: 1,
        final_score: score,
        latency_ms: 14.0,
        decode_error: None,
    }
}

#[tokio::test]
async fn query_log_brings_validator_samples_and_predictions() {
    let (dir, store) = tmp_store().await;
    let mut lines = Vec::new();
    for i in 0..5 {
        let r = record(i, &small_scene(8, i), 0.1 + 0.2 * i as f32);
        lines.push(serde_json::to_string(&r).unwrap());
    }
    // The same image asked twice: one sample, two predictions.
    let mut repeat = record(5, &small_scene(8, 0), 0.3);
    repeat.request_id = "req-repeat".into();
    lines.push(serde_json::to_string(&repeat).unwrap());
    // An undecodable image answered -1: the prediction is kept, no sample is made.
    let mut broken = record(6, b"\xff\xd8\xffnot really a jpeg", -1.0);
    broken.decode_error = Some("corrupt jpeg".into());
    lines.push(serde_json::to_string(&broken).unwrap());
    // Bad lines: not JSON, a hash that lies, a NaN-free but out-of-range score.
    lines.push("{not json".into());
    let mut liar = record(7, &small_scene(8, 7), 0.5);
    liar.image_sha256 = SampleId::of_bytes(b"other").to_string();
    lines.push(serde_json::to_string(&liar).unwrap());
    let oob = record(8, &small_scene(8, 8), 1.5);
    lines.push(serde_json::to_string(&oob).unwrap());
    let log = put(dir.path(), "q.jsonl", (lines.join("\n") + "\n").as_bytes());

    let s = ingestor(&store, 3).ingest_querylog(&log).await.unwrap();
    assert_eq!(s.scanned, 10);
    assert_eq!(s.accepted, 7);
    assert_eq!(s.new_samples, 5);
    assert_eq!(s.predictions_written, 7);
    let reasons: Vec<String> = s
        .skipped
        .iter()
        .map(|k| format!("{}: {}", k.item, k.reason))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("q.jsonl:8") && reasons[0].contains("not a query-log record"));
    assert!(reasons[1].contains("does not match"));
    assert!(reasons[2].contains("1.5"));
    let samples = store.samples(None).await.unwrap();
    assert!(
        samples
            .iter()
            .all(|s| s.source == "validator" && s.source_ref.starts_with("5Grw"))
    );
    let preds = store.predictions().await.unwrap();
    let b = preds.iter().find(|p| p.request_id == "req-6").unwrap();
    assert_eq!(b.final_score, -1.0);
    assert!(preds.iter().all(|p| p.model_version == "head-test"));
    let again = ingestor(&store, 3).ingest_querylog(&log).await.unwrap();
    assert_eq!((again.new_samples, again.predictions_written), (0, 0));
}

/// A crash (SIGKILL) in the middle of an ingest leaves the store at its last commit, readable and
/// consistent; re-running finishes the job without duplicates.
#[tokio::test]
async fn killed_mid_ingest_leaves_a_consistent_store_and_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("many");
    let n = 120u64;
    for i in 0..n {
        let class = if i % 2 == 0 { "roadwork" } else { "clean" };
        put(&root, &format!("{class}/{i:04}.jpg"), &small_scene(21, i));
    }
    let cfg = put(dir.path(), "cfg.toml", b"[ingest]\nbatch_rows = 2\n");
    let store_uri = dir.path().join("store").to_string_lossy().into_owned();
    let store = roadwork::store::Store::open(&store_uri).await.unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roadwork"))
        .args(["--store", &store_uri, "--config"])
        .arg(&cfg)
        .args(["ingest", "folder"])
        .arg(&root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until a few batches are committed, then kill without warning.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let rows = store.count_rows(tables::SAMPLES, None).await.unwrap();
        if rows >= 10 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ingest made no progress"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "ingest exited before it could be killed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let reopened = roadwork::store::Store::open(&store_uri).await.unwrap();
    let after_kill = assert_samples_consistent(&reopened).await;
    assert!(
        after_kill >= 10 && (after_kill as u64) < n,
        "{after_kill} of {n}"
    );
    let running: Vec<_> = reopened.runs().await.unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(
        running[0].status,
        roadwork::store::RunStatus::Running,
        "the killed run never finished"
    );

    let s = ingestor(&reopened, 16)
        .ingest_folder(&root, &FolderOptions::default())
        .await
        .unwrap();
    assert_eq!(s.new_samples as usize, n as usize - after_kill);
    assert_eq!(assert_samples_consistent(&reopened).await, n as usize);
    assert_eq!(
        reopened.count_rows(tables::LABELS, None).await.unwrap(),
        n as usize
    );
}

/// An ingestor whose file and Parquet-cell cap is 1 MiB.
fn capped_ingestor(store: &roadwork::store::Store) -> roadwork::ingest::Ingestor {
    let mut cfg = roadwork::config::Config::default();
    cfg.ingest.max_file_mib = 1;
    roadwork::ingest::Ingestor::new(store.clone(), cfg.ingest, cfg.decode).quiet()
}

#[tokio::test]
async fn folder_ingest_follows_no_link_opens_no_fifo_reads_no_huge_file_and_labels_only_from_the_class_folder()
 {
    let (dir, store) = tmp_store().await;
    let root = dir.path().join("photos");
    put(&root, "roadwork/a.jpg", &small_scene(9, 0));
    put(&root, "train/clean/b.jpg", &small_scene(9, 1));
    // A folder named like a class deeper down is a year's folder, not a label.
    put(&root, "2024/1/c.jpg", &small_scene(9, 2));
    // 2 MiB of bytes: over the 1 MiB cap, refused by its size.
    put(&root, "huge.jpg", &vec![0xffu8; 2 << 20]);
    std::os::unix::fs::symlink("/", root.join("root-link")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", root.join("zero.jpg")).unwrap();
    let fifo = std::ffi::CString::new(root.join("pipe.jpg").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    put(
        &root,
        "labels.csv",
        b"path,label\n2024/1/c.jpg,0\nmissing.jpg,1\n",
    );
    let s = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        capped_ingestor(&store).ingest_folder(&root, &FolderOptions::default()),
    )
    .await
    .expect("the walk ends (no FIFO read, no link followed)")
    .unwrap();
    assert_eq!((s.accepted, s.new_samples), (3, 3));
    let mut skipped: Vec<(String, String)> = s
        .skipped
        .iter()
        .map(|k| (k.item.clone(), k.reason.clone()))
        .collect();
    skipped.sort();
    let why = |item: &str| {
        skipped
            .iter()
            .find(|(i, _)| i.ends_with(item))
            .map(|(_, r)| r.as_str())
            .unwrap_or_else(|| panic!("{item} not reported in {skipped:?}"))
    };
    assert!(why("huge.jpg").contains("over ingest.max_file_mib"));
    assert_eq!(why("root-link"), "symbolic link, not followed");
    assert_eq!(why("zero.jpg"), "symbolic link, not followed");
    assert!(why("pipe.jpg").contains("not a regular file"));
    assert!(why("labels.csv:3").contains("missing.jpg"), "{skipped:?}");
    assert_eq!(skipped.len(), 5, "{skipped:?}");
    // Labels: the class folder under the root, a split's class folder, and the CSV row for c.
    let labels: std::collections::BTreeMap<String, u8> = store
        .labels()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.sample_id.to_string(), l.label.as_u8()))
        .collect();
    let id = |i| SampleId::of_bytes(&small_scene(9, i)).to_string();
    assert_eq!(labels.get(&id(0)), Some(&1));
    assert_eq!(labels.get(&id(1)), Some(&0));
    assert_eq!(
        labels.get(&id(2)),
        Some(&0),
        "from the CSV, not from 2024/1/"
    );
    assert_eq!(labels.len(), 3);
}

#[tokio::test]
async fn folder_ingest_without_a_csv_leaves_a_deep_class_named_folder_unlabelled() {
    let (dir, store) = tmp_store().await;
    let root = dir.path().join("photos");
    put(&root, "2024/1/c.jpg", &small_scene(10, 0));
    put(&root, "2024/0/d.jpg", &small_scene(10, 1));
    let s = ingestor(&store, 4)
        .ingest_folder(&root, &FolderOptions::default())
        .await
        .unwrap();
    assert_eq!((s.accepted, s.labels_written), (2, 0));
}

#[tokio::test]
async fn a_parquet_image_cell_over_the_cap_is_skipped_by_its_size_and_the_rest_is_stored() {
    use arrow_array::BinaryArray;
    let (dir, store) = tmp_store().await;
    let path = dir.path().join("big.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("image", DataType::Binary, true),
        Field::new("label", DataType::Int64, true),
    ]));
    let ok = small_scene(11, 0);
    let big = vec![0u8; (1 << 20) + 1];
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(BinaryArray::from(vec![Some(&ok[..]), Some(&big[..])])),
            Arc::new(Int64Array::from(vec![1, 0])),
        ],
    )
    .unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let s = capped_ingestor(&store)
        .ingest_natix(&[path], &NatixOptions::default())
        .await
        .unwrap();
    assert_eq!((s.scanned, s.accepted), (2, 1));
    assert_eq!(s.skipped.len(), 1);
    assert!(
        s.skipped[0].reason.contains("over ingest.max_file_mib"),
        "{:?}",
        s.skipped
    );
}

/// Samples written before the `image_quality` table (here: rows put straight into `samples`)
/// get their scores from the backfill the nightly ingest stage runs: a black frame is dark, a
/// scene is scored brighter, an undecodable one is reported and
/// kept, and a second pass has only that one left.
#[tokio::test]
async fn the_quality_backfill_scores_samples_from_before_the_table() {
    let (_d, store) = tmp_store().await;
    let png = |img: image::RgbImage| {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let black = png(image::RgbImage::new(64, 48));
    let scene = small_scene(71, 0);
    let junk = b"not an image at all".to_vec();
    let row = |bytes: &Vec<u8>| roadwork::store::SampleRow {
        sample_id: SampleId::of_bytes(bytes),
        image: bytes.clone(),
        width: 64,
        height: 48,
        format: "png".into(),
        source: "dataset".into(),
        source_ref: "old".into(),
        era: "fullres".into(),
        tags: vec![],
        phash: 0,
        received_at: Utc::now(),
    };
    store
        .insert_samples(&[row(&black), row(&scene), row(&junk)])
        .await
        .unwrap();
    assert!(store.image_quality().await.unwrap().is_empty());
    let ing = ingestor(&store, 100);
    let b = ing.backfill_quality().await.unwrap();
    assert_eq!((b.missing, b.scored, b.skipped.len()), (3, 2, 1));
    assert_eq!(b.skipped[0].item, SampleId::of_bytes(&junk).to_string());
    let rows = store.image_quality().await.unwrap();
    let of = |bytes: &Vec<u8>| {
        let id = SampleId::of_bytes(bytes).to_string();
        rows.iter().find(|r| r.sample_id == id).cloned().unwrap()
    };
    assert!(
        of(&black).issues.contains(&"dark".to_string()),
        "{:?}",
        of(&black)
    );
    assert!(of(&scene).brightness > of(&black).brightness + 0.05);
    let again = ing.backfill_quality().await.unwrap();
    assert_eq!(
        (again.missing, again.scored, again.skipped.len()),
        (1, 0, 1)
    );
    assert_eq!(store.image_quality().await.unwrap().len(), 2);
}
