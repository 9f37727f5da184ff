//! Synthetic gap filling: plan → generate → check → write on a real store, the procedural backend
//! end to end, the checks one by one, and the real AWS SDK client against a local server that
//! speaks Bedrock's InvokeModel wire format (status, `x-amzn-ErrorType`, JSON bodies).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use roadwork::embed::{BaselineEncoder, Cpu, EmbedConfig, EncoderKind, ImageEncoder, embed_store};
use roadwork::mine::{Compute, MineConfig, Miner};
use roadwork::store::manifest::{MANIFEST_FILE, ManifestEntry};
use roadwork::store::{Label, LabelSource, SampleSource, Store, SynthStatus, tables};
use roadwork::synth::backend::GenError;
use roadwork::synth::check::{Candidate, check, context};
use roadwork::synth::config::CheckConfig;
use roadwork::synth::load::load;
use roadwork::synth::plan::{Job, JobModel, SourceFrame};
use roadwork::synth::scenes::{Daytime, SceneSpec, Weather, scene_jpeg};
use roadwork::synth::{
    Backend, BackendKind, Bedrock, BedrockConfig, BedrockModel, GapKind, ModelFamily, Procedural,
    SynthConfig, Synthesizer, Task, make_plan,
};
use roadwork::train::SplitConfig;
use serde_json::{Value, json};

use crate::support;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn baseline() -> (EmbedConfig, Arc<dyn ImageEncoder>) {
    let cfg = EmbedConfig {
        encoder: EncoderKind::Baseline,
        ..EmbedConfig::default()
    };
    let e: Arc<dyn ImageEncoder> = Arc::new(BaselineEncoder::new(&cfg).unwrap());
    (cfg, e)
}

/// A store with 72 labelled daytime scenes (a dataset, procedural provenance) and 36 unlabelled
/// night-fog validator crops, embedded with the baseline encoder and mined (6 clusters): the
/// night traffic is an under-covered cluster and `daytime=night` has no positives.
async fn gapped_store() -> (tempfile::TempDir, Store) {
    gapped_store_with(usize::MAX).await
}

/// [`gapped_store`] keeping only the first `roadwork` of its roadwork day scenes.
async fn gapped_store_with(roadwork: usize) -> (tempfile::TempDir, Store) {
    let (dir, store) = support::tmp_store().await;
    let data = dir.path().join("dataset");
    let mut manifest = String::new();
    let mut kept_roadwork = 0;
    for i in 0..72u64 {
        let mut spec = SceneSpec::draw(21, i);
        if spec.label == Label::Roadwork {
            if kept_roadwork == roadwork {
                continue;
            }
            kept_roadwork += 1;
        }
        spec.daytime = Daytime::Day;
        spec.width = 192;
        spec.height = 144;
        let file = format!("{i:03}.jpg");
        support::put(&data, &file, &scene_jpeg(&spec).unwrap());
        let e = ManifestEntry {
            file,
            label: Some(spec.label),
            label_source: Some(LabelSource::Dataset),
            label_author: Some("test-dataset".into()),
            source: Some(SampleSource::Dataset),
            source_ref: Some(format!("procedural-v1:seed=21:index={i}")),
            tags: spec.tags(),
        };
        manifest.push_str(&serde_json::to_string(&e).unwrap());
        manifest.push('\n');
    }
    std::fs::write(data.join(MANIFEST_FILE), manifest).unwrap();
    support::ingestor(&store, 64)
        .ingest_folder(&data, &Default::default())
        .await
        .unwrap();
    let traffic = dir.path().join("traffic");
    let mut manifest = String::new();
    for i in 0..36u64 {
        let mut spec = SceneSpec::draw(33, i);
        spec.daytime = Daytime::Night;
        spec.weather = Weather::Fog;
        spec.width = 224;
        spec.height = 224;
        let file = format!("{i:03}.jpg");
        support::put(&traffic, &file, &scene_jpeg(&spec).unwrap());
        let e = ManifestEntry {
            file,
            label: None,
            label_source: None,
            label_author: None,
            source: Some(SampleSource::Validator),
            source_ref: Some("5Validator".into()),
            tags: vec!["daytime=night".into(), "weather=fog".into()],
        };
        manifest.push_str(&serde_json::to_string(&e).unwrap());
        manifest.push('\n');
    }
    std::fs::write(traffic.join(MANIFEST_FILE), manifest).unwrap();
    support::ingestor(&store, 64)
        .ingest_folder(&traffic, &Default::default())
        .await
        .unwrap();
    let (cfg, enc) = baseline();
    embed_store(&store, enc, &cfg, Default::default(), false)
        .await
        .unwrap();
    let mine = MineConfig {
        clusters: Some(6),
        ..MineConfig::default()
    };
    Miner::new(store.clone(), mine)
        .unwrap()
        .run(Compute::<Cpu>::host(), None, None)
        .await
        .unwrap();
    (dir, store)
}

fn procedural_cfg() -> SynthConfig {
    SynthConfig {
        max_images: 40,
        per_gap: 12,
        ..SynthConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn procedural_synthesis_fills_the_gaps_and_a_rerun_adds_nothing() {
    // Eight roadwork day frames against 36 clean ones: the night traffic clusters hold no
    // labelled frames to edit, the imbalanced day stratum does.
    let (dir, store) = gapped_store_with(8).await;
    let (_, enc) = baseline();
    let split = SplitConfig::default();
    let cfg = procedural_cfg();
    let before = store.count_rows(tables::SAMPLES, None).await.unwrap();
    let s = Synthesizer::new(
        store.clone(),
        cfg.clone(),
        split.clone(),
        Arc::new(Procedural),
        enc.clone(),
    )
    .unwrap()
    .with_report_dir(dir.path().join("reports"));
    let plan = s.plan().await.unwrap();
    assert!(
        plan.gaps.iter().any(|g| g.kind == GapKind::UnderCovered),
        "{plan}"
    );
    assert!(
        plan.gaps.iter().any(|g| g.key == "imbalance:daytime=day")
            || plan.gaps.iter().any(|g| g.kind == GapKind::UnderCovered),
        "{plan}"
    );
    let first = s.run().await.unwrap();
    assert!(first.accepted > 0, "{first}");
    assert_eq!(first.spent_usd, 0.0);
    assert_eq!(first.sent, plan.jobs.len(), "{first}\n{first:?}");
    // Accepted images are stored samples with a synthetic label, an embedding and provenance.
    let synth = store.samples(Some("source = 'synthetic'")).await.unwrap();
    assert_eq!(synth.len(), first.accepted);
    assert_eq!(
        store.count_rows(tables::SAMPLES, None).await.unwrap(),
        before + first.accepted
    );
    let labels = store.labels().await.unwrap();
    let embedded = store.embedded_ids(enc.model_id()).await.unwrap();
    let jobs = store.synth_images(Some(&first.run_id)).await.unwrap();
    assert_eq!(jobs.len(), first.sent);
    for smp in &synth {
        let id = smp.sample_id.to_string();
        assert!(
            smp.source_ref
                .starts_with("synth:procedural:procedural-v1:")
        );
        assert!(smp.tags.iter().any(|t| t.starts_with("synth_gap=")));
        let l = labels
            .iter()
            .find(|l| l.sample_id == smp.sample_id)
            .unwrap();
        assert_eq!(l.source, LabelSource::Synthetic);
        assert_eq!(l.author, "procedural-v1");
        assert!(embedded.contains(&id));
        let job = jobs
            .iter()
            .find(|j| j.sample_id.as_deref() == Some(id.as_str()))
            .unwrap();
        assert_eq!(job.status, SynthStatus::Accepted);
        assert_eq!(job.label, l.label);
        assert!(
            job.distance.unwrap() <= job.land_limit.unwrap()
                || (job.cluster.is_some() && job.nearest_cluster == job.cluster),
            "{job:?}"
        );
    }
    // Every job not accepted says why.
    assert!(
        jobs.iter()
            .filter(|j| j.status != SynthStatus::Accepted)
            .all(|j| !j.reason.is_empty())
    );
    // Edits of procedural frames were used, from real training frames: the day stratum has
    // too few roadwork frames, and roadwork is drawn into its clean ones.
    assert!(
        plan.gaps.iter().any(|g| g.key == "imbalance:daytime=day"),
        "{plan}"
    );
    assert!(
        jobs.iter()
            .any(|j| j.task == "add-element" && j.source_sample.is_some())
    );
    // The report is written and names the audit.
    let html = std::fs::read_to_string(first.report.as_ref().unwrap()).unwrap();
    assert!(html.contains("Shortcut audit") && html.contains("data:image/jpeg;base64,"));
    // The run is in the ledger; re-running the same plan + seed makes nothing.
    let again = s.run().await.unwrap();
    assert_eq!(again.sent, 0, "{again}");
    assert_eq!(again.already_done, first.sent);
    assert_eq!(
        store.count_rows(tables::SAMPLES, None).await.unwrap(),
        before + first.accepted
    );
    // Another seed asks for other images.
    let other = Synthesizer::new(
        store.clone(),
        SynthConfig { seed: 9, ..cfg },
        split,
        Arc::new(Procedural),
        enc,
    )
    .unwrap();
    let p = other.plan().await.unwrap();
    assert!(!p.jobs.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn checks_refuse_copies_leaks_misses_blanks_and_the_cap() {
    let (_dir, store) = gapped_store().await;
    let (_, enc) = baseline();
    let split = SplitConfig::default();
    let loaded = load(&store, None, &split).await.unwrap();
    let cfg = procedural_cfg();
    let plan = make_plan(&cfg, &loaded.plan);
    // A stored training image and a stored held-out image.
    let samples = store.samples(Some("source = 'dataset'")).await.unwrap();
    let held = samples
        .iter()
        .find(|s| loaded.held_out.contains(&s.sample_id.to_string()))
        .expect("a held-out sample");
    let train = samples
        .iter()
        .find(|s| !loaded.held_out.contains(&s.sample_id.to_string()))
        .unwrap();
    let reencode = |bytes: &[u8]| {
        let img = image::load_from_memory(bytes).unwrap().to_rgb8();
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 60)
            .encode_image(&img)
            .unwrap();
        out
    };
    let blank = {
        let img = image::RgbImage::from_pixel(224, 224, image::Rgb([90, 90, 90]));
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
        out
    };
    // A bright clear-day highway at full size is far from the night-fog crops.
    let mut far = SceneSpec::draw(77, 0);
    far.daytime = Daytime::Day;
    far.weather = Weather::Clear;
    // What the procedural backend draws for the job: the gap's conditions at its size.
    // Some job of the under-covered gaps draws a scene that lands in its own cluster.
    let landing = plan
        .jobs
        .iter()
        .filter(|j| j.gap.starts_with("under-covered"))
        .find_map(|j| {
            let c = Candidate {
                job: j.clone(),
                bytes: scene_jpeg(&roadwork::synth::backend::scene_for(j)).unwrap(),
                model_id: "test".into(),
                cost_usd: 0.0,
            };
            let defaults = CheckConfig::default();
            let ctx = context(&loaded, &plan.gaps, &defaults, 0.9, "procedural");
            let v = check(&ctx, enc.as_ref(), vec![c.clone()]).unwrap();
            (v[0].status == SynthStatus::Accepted).then_some(c)
        })
        .expect("a procedural scene lands in an under-covered cluster");
    let job = landing.job.clone();
    let cand = |bytes: Vec<u8>| Candidate {
        job: job.clone(),
        bytes,
        model_id: "test".into(),
        cost_usd: 0.0,
    };
    let cands = vec![
        cand(train.image.clone()),
        cand(reencode(&train.image)),
        cand(held.image.clone()),
        cand(reencode(&held.image)),
        cand(blank),
        cand(b"not an image".to_vec()),
        cand(scene_jpeg(&far).unwrap()),
        landing.clone(),
    ];
    let checks = CheckConfig::default();
    let ctx = context(&loaded, &plan.gaps, &checks, 0.9, "procedural");
    let v = check(&ctx, enc.as_ref(), cands.clone()).unwrap();
    let reasons: Vec<&str> = v.iter().map(|v| v.reason.as_str()).collect();
    assert!(reasons[0].starts_with("duplicate: exact"), "{reasons:?}");
    assert!(
        reasons[1].starts_with("duplicate: re-encoded"),
        "{reasons:?}"
    );
    assert!(reasons[2].starts_with("leak: exact"), "{reasons:?}");
    assert!(reasons[3].starts_with("leak: re-encoded"), "{reasons:?}");
    assert!(reasons[4].starts_with("blank"), "{reasons:?}");
    assert!(reasons[5].starts_with("undecodable"), "{reasons:?}");
    assert!(reasons[6].starts_with("missed gap"), "{reasons:?}");
    assert_eq!(v[7].status, SynthStatus::Accepted, "{reasons:?}");
    assert!(v[7].sample.is_some() && v[7].vector.is_some());
    // The same image twice in one batch: the second is a duplicate of the first.
    let twice = vec![cands[7].clone(), cands[7].clone()];
    let v = check(&ctx, enc.as_ref(), twice).unwrap();
    assert_eq!(v[0].status, SynthStatus::Accepted, "{}", v[0].reason);
    assert!(v[1].reason.starts_with("duplicate"), "{}", v[1].reason);
    // With no room for synthetic images, the cap refuses it.
    let capped = CheckConfig {
        max_synthetic_ratio: 0.0,
        ..CheckConfig::default()
    };
    let ctx = context(&loaded, &plan.gaps, &capped, 0.9, "procedural");
    let v = check(&ctx, enc.as_ref(), vec![cands[7].clone()]).unwrap();
    assert!(v[0].reason.starts_with("cap"), "{}", v[0].reason);
    // A near twin in embedding space (not in hash) of a stored image is refused too.
    let loose = CheckConfig {
        near_dup_distance: Some(2.0),
        ..CheckConfig::default()
    };
    let ctx = context(&loaded, &plan.gaps, &loose, 0.9, "procedural");
    let v = check(&ctx, enc.as_ref(), vec![cands[7].clone()]).unwrap();
    assert!(
        v[0].reason.starts_with("leak: near twin")
            || v[0].reason.starts_with("duplicate: near twin"),
        "{}",
        v[0].reason
    );
}

// ---------------------------------------------------------------------------------------------
// Bedrock: the real SDK against a local InvokeModel server.

#[derive(Clone, Default)]
struct Wire {
    /// `(raw path, model id, body)` of every call.
    calls: Arc<Mutex<Vec<(String, String, Value)>>>,
    served: Arc<Mutex<u64>>,
}

impl Wire {
    fn calls_to(&self, model: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.1 == model)
            .map(|c| c.2.clone())
            .collect()
    }
}

fn aws_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [
            ("x-amzn-ErrorType", kind.to_string()),
            ("content-type", "application/json".to_string()),
        ],
        json!({ "message": message }).to_string(),
    )
        .into_response()
}

fn image_answer(wire: &Wire, amazon: bool) -> Response {
    let n = {
        let mut s = wire.served.lock().unwrap();
        *s += 1;
        *s
    };
    let mut spec = SceneSpec::draw(99, n);
    spec.width = 224;
    spec.height = 224;
    let img = B64.encode(scene_jpeg(&spec).unwrap());
    let body = if amazon {
        json!({ "images": [img] })
    } else {
        json!({ "seeds": [n], "finish_reasons": [null], "images": [img] })
    };
    ([("content-type", "application/json")], body.to_string()).into_response()
}

/// `/model/{percent-encoded id}/invoke`, behaving by model id.
async fn invoke(State(w): State<Wire>, uri: Uri, _h: HeaderMap, body: Bytes) -> Response {
    let raw = uri.path().to_string();
    let Some(id) = raw
        .strip_prefix("/model/")
        .and_then(|r| r.strip_suffix("/invoke"))
    else {
        return aws_error(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            "no such path",
        );
    };
    let id = id.replace("%3A", ":");
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let nth = {
        let mut c = w.calls.lock().unwrap();
        c.push((raw.clone(), id.clone(), v));
        c.iter().filter(|x| x.1 == id).count()
    };
    match id.split('.').nth(1).unwrap_or("") {
        "throttle-once-v1:0" if nth == 1 => aws_error(
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        ),
        "not-ready-once-v1:0" if nth == 1 => aws_error(
            StatusCode::TOO_MANY_REQUESTS,
            "ModelNotReadyException",
            "Model is not ready",
        ),
        "filter-input-v1:0" => aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "This request has been blocked by our content filters.",
        ),
        "invalid-v1:0" => aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "Malformed input request: seed out of range",
        ),
        "denied-v1:0" => aws_error(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        ),
        "boom-v1:0" => aws_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            "internal error",
        ),
        "filter-prompt-v1:0" => (
            [("content-type", "application/json")],
            r#"{"seeds":[42],"finish_reasons":["Filter reason: prompt"]}"#,
        )
            .into_response(),
        "garbage-v1:0" => {
            ([("content-type", "application/json")], "{\"images\": [\"").into_response()
        }
        "slow-v1:0" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            image_answer(&w, false)
        }
        m if m.starts_with("nova") => image_answer(&w, true),
        _ => image_answer(&w, false),
    }
}

async fn wire() -> (Wire, String) {
    let w = Wire::default();
    let app = axum::Router::new()
        .fallback(axum::routing::post(invoke))
        .with_state(w.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.ok() });
    (w, url)
}

fn model(name: &str, id: &str, family: ModelFamily, price: f64) -> BedrockModel {
    BedrockModel {
        name: name.into(),
        id: id.into(),
        family,
        price_usd: price,
    }
}

fn bedrock_cfg(url: &str) -> BedrockConfig {
    BedrockConfig {
        endpoint_url: Some(url.into()),
        max_attempts: 3,
        initial_backoff_ms: 5,
        timeout_ms: 1_500,
        attempt_timeout_ms: 600,
        ..BedrockConfig::default()
    }
}

fn job(id: &str, family: ModelFamily, task: Task, source: bool) -> Job {
    Job {
        synth_id: format!("job-{id}"),
        request_id: "req".into(),
        gap: "under-covered:c1".into(),
        cluster: Some(1),
        index: 0,
        label: Label::Roadwork,
        task,
        model: JobModel {
            id: id.into(),
            family: Some(family),
            price_usd: 0.08,
        },
        prompt: "a dash-cam photo of a city street at night, a row of orange traffic cones".into(),
        negative_prompt: "cartoon, aerial view".into(),
        search_prompt: source.then(|| "empty asphalt road surface".into()),
        seed: 1234,
        source: source.then(|| SourceFrame {
            sample_id: "s".into(),
            label: Label::Clean,
            source_ref: "x".into(),
        }),
        attributes: Default::default(),
        width: 224,
        height: 224,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bedrock_families_send_their_documented_bodies_and_get_images() {
    let (w, url) = wire().await;
    let b = Bedrock::with_credentials(&bedrock_cfg(&url), "AKIDTEST", "secret");
    let frame = support::small_scene(5, 2);
    let cases = [
        (
            "stability.sd3-5-large-v1:0",
            ModelFamily::StabilitySd3,
            Task::TextToImage,
            false,
        ),
        (
            "stability.sd3-i2i-v1:0",
            ModelFamily::StabilitySd3,
            Task::ImageToImage,
            true,
        ),
        (
            "stability.stable-image-core-v1:1",
            ModelFamily::StabilityImage,
            Task::TextToImage,
            false,
        ),
        (
            "stability.stable-image-search-replace-v1:0",
            ModelFamily::StabilitySearchReplace,
            Task::AddElement,
            true,
        ),
        (
            "stability.stable-image-inpaint-v1:0",
            ModelFamily::StabilityInpaint,
            Task::AddElement,
            true,
        ),
        (
            "amazon.nova-canvas-v1:0",
            ModelFamily::AmazonImage,
            Task::TextToImage,
            false,
        ),
        (
            "amazon.nova-variation-v1:0",
            ModelFamily::AmazonImage,
            Task::ImageToImage,
            true,
        ),
        (
            "amazon.nova-inpaint-v1:0",
            ModelFamily::AmazonImage,
            Task::RemoveElement,
            true,
        ),
    ];
    for (id, family, task, src) in cases {
        let j = job(id, family, task, src);
        let g = b
            .generate(&j, src.then_some(frame.as_slice()))
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert!(image::load_from_memory(&g.bytes).is_ok(), "{id}");
        assert_eq!(g.model_id, id);
    }
    let calls = w.calls.lock().unwrap().clone();
    // The SDK percent-encodes the model id in the path.
    assert_eq!(calls[0].0, "/model/stability.sd3-5-large-v1%3A0/invoke");
    let body = |id: &str| w.calls_to(id).remove(0);
    let t2i = body("stability.sd3-5-large-v1:0");
    assert_eq!(t2i["mode"], "text-to-image");
    assert_eq!(t2i["aspect_ratio"], "1:1");
    assert_eq!(t2i["seed"], 1234);
    assert_eq!(t2i["output_format"], "jpeg");
    assert!(t2i["prompt"].as_str().unwrap().contains("traffic cones"));
    assert_eq!(t2i["negative_prompt"], "cartoon, aerial view");
    let i2i = body("stability.sd3-i2i-v1:0");
    assert_eq!(i2i["mode"], "image-to-image");
    assert_eq!(B64.decode(i2i["image"].as_str().unwrap()).unwrap(), frame);
    assert!(i2i["strength"].as_f64().unwrap() > 0.0);
    assert!(i2i.get("aspect_ratio").is_none());
    let core = body("stability.stable-image-core-v1:1");
    assert!(core.get("mode").is_none());
    let sr = body("stability.stable-image-search-replace-v1:0");
    assert_eq!(sr["search_prompt"], "empty asphalt road surface");
    assert!(sr["image"].is_string());
    let ip = body("stability.stable-image-inpaint-v1:0");
    let mask = image::load_from_memory(&B64.decode(ip["mask"].as_str().unwrap()).unwrap()).unwrap();
    let src = image::load_from_memory(&frame).unwrap();
    assert_eq!((mask.width(), mask.height()), (src.width(), src.height()));
    let nova = body("amazon.nova-canvas-v1:0");
    assert_eq!(nova["taskType"], "TEXT_IMAGE");
    assert_eq!(nova["imageGenerationConfig"]["width"], 320);
    assert_eq!(nova["imageGenerationConfig"]["numberOfImages"], 1);
    assert_eq!(
        body("amazon.nova-variation-v1:0")["taskType"],
        "IMAGE_VARIATION"
    );
    let inpaint = body("amazon.nova-inpaint-v1:0");
    assert_eq!(inpaint["taskType"], "INPAINTING");
    assert_eq!(
        inpaint["inPaintingParams"]["maskPrompt"],
        "empty asphalt road surface"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bedrock_errors_are_retried_or_classified() {
    let (w, url) = wire().await;
    let b = Bedrock::with_credentials(&bedrock_cfg(&url), "AKIDTEST", "secret");
    let t2i = |id: &str| job(id, ModelFamily::StabilitySd3, Task::TextToImage, false);
    // Throttling and model-not-ready (429) are retried by the SDK, then succeed.
    for id in ["test.throttle-once-v1:0", "test.not-ready-once-v1:0"] {
        b.generate(&t2i(id), None)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(w.calls_to(id).len(), 2, "{id}");
    }
    let err = |id: &'static str| {
        let b = b.clone();
        async move { b.generate(&t2i(id), None).await.unwrap_err() }
    };
    let e = err("test.filter-input-v1:0").await;
    assert!(matches!(e, GenError::Filtered { billed: false, .. }), "{e}");
    let e = err("test.filter-prompt-v1:0").await;
    assert!(matches!(e, GenError::Filtered { .. }), "{e}");
    assert!(e.to_string().contains("Filter reason: prompt"));
    let e = err("test.invalid-v1:0").await;
    assert!(matches!(e, GenError::Refused(_)) && e.stops_model(), "{e}");
    let e = err("test.denied-v1:0").await;
    assert!(matches!(e, GenError::Refused(_)), "{e}");
    // A 500 is retried up to max_attempts, then reported.
    let e = err("test.boom-v1:0").await;
    assert!(matches!(e, GenError::Server(_)), "{e}");
    assert_eq!(w.calls_to("test.boom-v1:0").len(), 3);
    let e = err("test.garbage-v1:0").await;
    assert!(matches!(e, GenError::Malformed(_)) && e.billed(), "{e}");
    let started = std::time::Instant::now();
    let e = err("test.slow-v1:0").await;
    assert!(matches!(e, GenError::Timeout(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bedrock_run_stays_within_its_budget_under_concurrency() {
    let (_dir, store) = gapped_store().await;
    let (w, url) = wire().await;
    let (_, enc) = baseline();
    let mut b = bedrock_cfg(&url);
    b.models = vec![
        model(
            "t2i",
            "stability.sd3-5-large-v1:0",
            ModelFamily::StabilitySd3,
            0.08,
        ),
        model(
            "sr",
            "stability.stable-image-search-replace-v1:0",
            ModelFamily::StabilitySearchReplace,
            0.07,
        ),
        model(
            "ip",
            "test.filter-prompt-v1:0",
            ModelFamily::StabilityInpaint,
            0.07,
        ),
    ];
    b.text_to_image = Some("t2i".into());
    b.image_to_image = Some("t2i".into());
    b.add_element = Some("ip".into());
    b.remove_element = Some("sr".into());
    let cfg = SynthConfig {
        backend: BackendKind::Bedrock,
        max_usd: 0.50,
        max_images: 100,
        max_concurrent: 8,
        bedrock: b.clone(),
        ..procedural_cfg()
    };
    let backend = Arc::new(Bedrock::with_credentials(&b, "AKIDTEST", "secret"));
    let s = Synthesizer::new(
        store.clone(),
        cfg.clone(),
        SplitConfig::default(),
        backend,
        enc,
    )
    .unwrap();
    let first = s.run().await.unwrap();
    // Never one cent over: what was sent costs at most the budget, and the server saw no more.
    let calls = w.calls.lock().unwrap().len();
    assert!(first.spent_usd <= 0.50 + 1e-9, "{first}");
    assert!(first.over_budget > 0, "{first}");
    assert_eq!(calls, first.sent, "{first}");
    let jobs = store.synth_images(Some(&first.run_id)).await.unwrap();
    let recorded: f64 = jobs.iter().map(|j| j.cost_usd).sum();
    assert!(
        (recorded - first.spent_usd).abs() < 1e-6,
        "{recorded} vs {}",
        first.spent_usd
    );
    // Filtered answers are recorded as such, with the model's reason, and cost nothing here
    // (a prompt filter is not billed).
    for j in jobs
        .iter()
        .filter(|j| j.model_id == "test.filter-prompt-v1:0")
    {
        assert_eq!(j.status, SynthStatus::Filtered);
        assert!(j.reason.contains("Filter reason: prompt"));
        assert_eq!(j.cost_usd, 0.0);
    }
    for j in jobs.iter().filter(|j| j.status == SynthStatus::Accepted) {
        assert_eq!(j.backend, "bedrock");
        assert!(!j.prompt.is_empty() && j.seed >= 1);
    }
    // A re-run with the same plan + seed does not pay twice for what was made.
    let again = s.run().await.unwrap();
    let redone: Vec<_> = store
        .synth_images(Some(&again.run_id))
        .await
        .unwrap()
        .into_iter()
        .filter(|j| {
            jobs.iter()
                .any(|k| k.synth_id == j.synth_id && k.status.is_final())
        })
        .collect();
    assert!(redone.is_empty(), "{redone:?}");
    assert!(again.spent_usd <= 0.50 + 1e-9);
}

/// The Bedrock block of docs/SYNTH.md is a valid roadwork config, and so are the pipelines.
#[test]
fn the_documented_bedrock_config_parses_and_validates() {
    let doc = std::fs::read_to_string(support::root().join("docs/SYNTH.md")).unwrap();
    let block = doc
        .split("```toml")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block");
    let cfg: roadwork::config::Config = toml::from_str(block).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.synth.backend, BackendKind::Bedrock);
    assert_eq!(cfg.synth.bedrock.region, "us-west-2");
    assert_eq!(cfg.synth.bedrock.models.len(), 3);
    for p in ["pipelines/nightly.toml", "pipelines/demo.toml"] {
        roadwork::config::Config::load(Some(&support::root().join(p))).unwrap();
    }
}
