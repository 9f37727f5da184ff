//! Labels out and in: export a selection, fill the sheet, import it (also Label Studio's JSON and
//! JSONL), refuse bad files whole, and the VLM teacher against a local chat-completions server.

use std::collections::HashMap;
use std::sync::Arc;

use roadwork::labels::{
    ExportOptions, ImportOptions, LabelsError, TeachConfig, TeachTargets, Teacher,
    export_selection, import_labels,
};
use roadwork::store::{Label, LabelSource, SampleId, SelectionRow, Store, tables};
use serde_json::{Value, json};

use crate::support;

/// A store holding `n` unlabelled scenes; returns their ids and true labels.
async fn pool(n: u64) -> (tempfile::TempDir, Store, Vec<(SampleId, Label)>) {
    let (dir, store) = support::tmp_store().await;
    let folder = dir.path().join("pool");
    let mut truth = Vec::new();
    for i in 0..n {
        let spec = roadwork::synth::scenes::SceneSpec::draw(11, i);
        let jpg = support::small_scene(11, i);
        support::put(&folder, &format!("{i:03}.jpg"), &jpg);
        truth.push((SampleId::of_bytes(&jpg), spec.label));
    }
    support::ingestor(&store, 64)
        .ingest_folder(&folder, &Default::default())
        .await
        .unwrap();
    (dir, store, truth)
}

async fn select(store: &Store, name: &str, ids: &[SampleId]) {
    let rows: Vec<SelectionRow> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| SelectionRow {
            name: name.into(),
            created_at: chrono::Utc::now(),
            sample_id: id.to_string(),
            rank: i as u32,
            score: 1.0 - i as f32 / 100.0,
            strategy: "random".into(),
            reasons: "test".into(),
        })
        .collect();
    store.put_selection(&rows).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exported_selection_comes_back_as_human_labels_and_reimport_changes_nothing() {
    let (dir, store, truth) = pool(12).await;
    let chosen: Vec<SampleId> = truth.iter().take(8).map(|t| t.0.clone()).collect();
    select(&store, "night-1", &chosen).await;
    let out = dir.path().join("to-label");
    let e = export_selection(
        &store,
        &ExportOptions {
            selection: "night-1".into(),
            out: out.clone(),
            image_url_prefix: None,
            model_version: None,
        },
    )
    .await
    .unwrap();
    assert_eq!((e.images, e.missing), (8, 0));
    // Images are named by sample id and are the original bytes.
    for id in &chosen {
        let bytes = std::fs::read(out.join(format!("images/{id}.jpg"))).unwrap();
        assert_eq!(&SampleId::of_bytes(&bytes), id);
    }
    let sheet = std::fs::read_to_string(out.join("sheet.csv")).unwrap();
    let lines: Vec<&str> = sheet.lines().collect();
    assert_eq!(lines[0], "sample_id,file,label,author");
    assert_eq!(lines.len(), 9, "{sheet}");
    assert!(
        lines[1].starts_with(&format!("{},images/{}.jpg,,", chosen[0], chosen[0])),
        "rank order: {sheet}"
    );
    let tasks: Value =
        serde_json::from_slice(&std::fs::read(out.join("label-studio-tasks.json")).unwrap())
            .unwrap();
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 8);
    assert_eq!(
        tasks[0]["data"]["image"],
        json!(format!(
            "/data/local-files/?d=to-label/images/{}.jpg",
            chosen[0]
        ))
    );
    let xml = std::fs::read_to_string(out.join("label-studio-config.xml")).unwrap();
    assert!(
        xml.contains(r#"<Choices name="label" toName="image""#),
        "{xml}"
    );

    // A person fills the sheet (two rows left blank: not labelled yet).
    let labels: HashMap<&SampleId, Label> = truth.iter().map(|(i, l)| (i, *l)).collect();
    let mut filled = String::from("sample_id,file,label,author\n");
    for id in &chosen[..6] {
        filled.push_str(&format!("{id},images/{id}.jpg,{},\n", labels[id].as_u8()));
    }
    for id in &chosen[6..] {
        filled.push_str(&format!("{id},images/{id}.jpg,,\n"));
    }
    let path = out.join("sheet.csv");
    std::fs::write(&path, &filled).unwrap();
    let opts = ImportOptions {
        author: Some("alice".into()),
        ..ImportOptions::default()
    };
    let s = import_labels(&store, &path, &opts).await.unwrap();
    assert_eq!((s.labels, s.blank, s.inserted), (6, 2, 6), "{s}");
    let rows = store.labels().await.unwrap();
    assert_eq!(rows.len(), 6);
    for r in &rows {
        assert_eq!(r.source, LabelSource::Human);
        assert_eq!(r.author, "alice");
        assert_eq!(r.label, labels[&r.sample_id]);
    }
    let before = store.versions().await.unwrap()[tables::LABELS];
    let again = import_labels(&store, &path, &opts).await.unwrap();
    assert_eq!((again.inserted, again.updated, again.unchanged), (0, 0, 6));
    assert_eq!(store.versions().await.unwrap()[tables::LABELS], before);
    // The import is in the ledger.
    let runs = store.runs().await.unwrap();
    assert_eq!(
        runs.iter()
            .filter(|r| r.kind == roadwork::store::RunKind::LabelsImport)
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_label_file_with_bad_rows_writes_nothing_and_lists_every_bad_row() {
    let (dir, store, truth) = pool(4).await;
    let (a, b) = (&truth[0].0, &truth[1].0);
    let unknown = "ab".repeat(32);
    let csv = format!(
        "sample_id,label,author\n{a},1,bob\n{unknown},0,bob\n{b},2,bob\n{a},0,bob\nnot-an-id,1,bob\n{b},1,\n"
    );
    let path = dir.path().join("bad.csv");
    std::fs::write(&path, csv).unwrap();
    let e = import_labels(&store, &path, &ImportOptions::default())
        .await
        .unwrap_err();
    let LabelsError::BadRows { rows, .. } = &e else {
        panic!("{e}")
    };
    let at: Vec<&str> = rows.iter().map(|r| r.at.as_str()).collect();
    // line 2 is fine on its own; every other line is wrong in its own way.
    assert_eq!(at.len(), 5, "{e}");
    for (line, what) in [
        ("line 3", "not in the store"),
        ("line 4", "is not 1/0"),
        ("line 5", "labelled"),
        ("line 6", "64 hex"),
        ("line 7", "no author"),
    ] {
        assert!(
            rows.iter().any(|r| r.at == line && r.why.contains(what)),
            "{line} ({what}) missing in {e}"
        );
    }
    assert!(store.labels().await.unwrap().is_empty(), "nothing written");
}

#[tokio::test(flavor = "multi_thread")]
async fn label_studio_exports_and_jsonl_name_samples_by_url_sha256_and_path() {
    let (dir, store, truth) = pool(5).await;
    let id = |i: usize| truth[i].0.to_string();
    // Label Studio's JSON export: two annotators on one task, a cancelled one, an empty task.
    let ls = json!([
        {"id": 1, "data": {"image": format!("/data/local-files/?d=x/images/{}.jpg", id(0))},
         "annotations": [
            {"completed_by": 3, "result": [{"type": "choices", "from_name": "label", "to_name": "image",
              "value": {"choices": ["roadwork"]}}], "updated_at": "2026-12-01T09:00:00Z"},
            {"completed_by": {"id": 4, "email": "ann@example.com"}, "result": [{"type": "choices",
              "from_name": "label", "to_name": "image", "value": {"choices": ["clean"]}}]},
            {"completed_by": 5, "was_cancelled": true, "result": []}]},
        {"id": 2, "data": {"sample_id": id(1)}, "annotations": []}
    ]);
    let p = dir.path().join("project-1.json");
    std::fs::write(&p, ls.to_string()).unwrap();
    let s = import_labels(&store, &p, &ImportOptions::default())
        .await
        .unwrap();
    assert_eq!((s.labels, s.blank), (2, 1), "{s}");
    let by_author: HashMap<String, Label> = store
        .labels()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.author, l.label))
        .collect();
    assert_eq!(by_author["label-studio-user-3"], Label::Roadwork);
    assert_eq!(by_author["ann@example.com"], Label::Clean);
    // JSONL by sha256, and a CSV naming an image file next to it (its bytes are hashed).
    let p = dir.path().join("more.jsonl");
    std::fs::write(
        &p,
        format!(
            "{{\"sha256\": \"{}\", \"label\": 1, \"author\": \"carol\"}}\n\n",
            id(2)
        ),
    )
    .unwrap();
    assert_eq!(
        import_labels(&store, &p, &ImportOptions::default())
            .await
            .unwrap()
            .labels,
        1
    );
    std::fs::copy(dir.path().join("pool/003.jpg"), dir.path().join("copy.jpg")).unwrap();
    let p = dir.path().join("by-path.csv");
    std::fs::write(&p, "file,label\ncopy.jpg,clean\n").unwrap();
    let opts = ImportOptions {
        author: Some("dave".into()),
        ..ImportOptions::default()
    };
    import_labels(&store, &p, &opts).await.unwrap();
    let dave: Vec<_> = store
        .labels()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.author == "dave")
        .collect();
    assert_eq!(dave.len(), 1);
    assert_eq!(dave[0].sample_id, truth[3].0);
}

/// A local server speaking OpenAI chat completions that answers per image (by the sha256 of the
/// `data:` URI's bytes): P(yes) from log-probabilities, or HTTP 500.
async fn fake_vlm(
    answers: HashMap<String, Option<f64>>,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::extract::State;
    use axum::response::IntoResponse;
    use base64::Engine as _;
    type St = (
        Arc<HashMap<String, Option<f64>>>,
        Arc<std::sync::atomic::AtomicUsize>,
    );
    async fn chat(
        State((answers, hits)): State<St>,
        axum::Json(body): axum::Json<Value>,
    ) -> axum::response::Response {
        hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let uri = body
            .pointer("/messages/0/content/0/image_url/url")
            .and_then(Value::as_str)
            .unwrap_or("");
        let b64 = uri.split_once("base64,").map_or("", |x| x.1);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
        match answers
            .get(&SampleId::of_bytes(&bytes).to_string())
            .copied()
            .flatten()
        {
            Some(p) => {
                let tok = if p >= 0.5 { "Yes" } else { "No" };
                axum::Json(json!({
                    "id": "c", "object": "chat.completion", "model": "fake-vl",
                    "choices": [{"index": 0, "finish_reason": "length",
                        "message": {"role": "assistant", "content": tok},
                        "logprobs": {"content": [{"token": tok, "logprob": p.max(1.0 - p).ln(),
                            "top_logprobs": [{"token": "Yes", "logprob": p.ln()},
                                             {"token": "No", "logprob": (1.0 - p).ln()}]}]}}]
                }))
                .into_response()
            }
            None => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        }
    }
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(chat))
        .with_state((Arc::new(answers), hits.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_teacher_labels_confident_answers_skips_failures_and_keeps_its_budget() {
    let (_dir, store, truth) = pool(7).await;
    let id = |i: usize| truth[i].0.to_string();
    // 0: sure yes, 1: sure no, 2: unsure, 3: server error, 4: sure yes, 5: over budget, 6: human.
    let answers: HashMap<String, Option<f64>> = [
        (id(0), Some(0.97)),
        (id(1), Some(0.02)),
        (id(2), Some(0.6)),
        (id(3), None),
        (id(4), Some(0.95)),
        (id(5), Some(0.99)),
        (id(6), Some(0.99)),
    ]
    .into();
    let (url, hits) = fake_vlm(answers).await;
    // A person already labelled sample 6: the teacher does not ask about it.
    store
        .put_labels(&[roadwork::store::LabelRow {
            sample_id: truth[6].0.clone(),
            label: Label::Clean,
            source: LabelSource::Human,
            confidence: 1.0,
            author: "alice".into(),
            ts: chrono::Utc::now(),
        }])
        .await
        .unwrap();
    let order: Vec<SampleId> = [6, 0, 1, 2, 3, 4, 5]
        .iter()
        .map(|&i| truth[i].0.clone())
        .collect();
    select(&store, "teach-me", &order).await;
    let vlm = roadwork::serve::Tier2Config {
        url,
        model: "fake-vl".into(),
        ..Default::default()
    };
    let cfg = TeachConfig {
        min_confidence: 0.9,
        budget: 5,
        max_concurrent: 2,
        timeout_ms: 5000,
    };
    let t = Teacher::new(store.clone(), vlm, cfg).unwrap();
    let s = t
        .teach(&TeachTargets::Selection("teach-me".into()))
        .await
        .unwrap();
    assert_eq!(
        (s.candidates, s.already_labelled, s.asked, s.over_budget),
        (7, 1, 5, 1),
        "{s}"
    );
    assert_eq!((s.roadwork, s.clean, s.unsure), (2, 1, 1), "{s}");
    assert_eq!(s.failed.get("http_error"), Some(&1), "{s}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 5);
    let taught: HashMap<SampleId, (Label, f32)> = store
        .labels()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.source == LabelSource::Teacher)
        .map(|l| {
            assert_eq!(l.author, "fake-vl");
            (l.sample_id, (l.label, l.confidence))
        })
        .collect();
    assert_eq!(taught.len(), 3);
    let (l, c) = taught[&truth[1].0];
    assert_eq!(l, Label::Clean);
    assert!((c - 0.98).abs() < 1e-3, "confidence is P(no): {c}");
    assert!(taught[&truth[0].0].1 > 0.96);
    // Again: what it labelled is not asked about twice; the unsure, failed and unasked are.
    let again = t
        .teach(&TeachTargets::Selection("teach-me".into()))
        .await
        .unwrap();
    assert_eq!((again.already_labelled, again.asked), (4, 3), "{again}");
}
