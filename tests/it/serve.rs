//! The server with real HTTP on 127.0.0.1: the captured bittensor 9.12.2 request and its tampered
//! copies, the local predict route, health and metrics, and head swaps.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use roadwork::embed::{Cpu, CpuEncoder, DinoV3Config, EmbedConfig, ImageEncoder};
use roadwork::imaging::DecodeLimits;
use roadwork::serve::{AppState, Clock, Metagraph, Tier1, router};
use roadwork::train::{Head, HeadConfig, ModelCard, TrainedHead, encode_head};
use serde_json::Value;

fn captured() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/protocol/imagesynapse_request_bittensor_9.12.2.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn embedder() -> Arc<CpuEncoder> {
    let cfg = EmbedConfig {
        resolution: 32,
        ..Default::default()
    };
    Arc::new(CpuEncoder::load_with(&cfg, DinoV3Config::new(32, 2, 2, 64), None).unwrap())
}

/// A random linear head for `e`'s features, registered under `version`.
fn head_for(e: &dyn ImageEncoder, version: &str, dim: usize, seed: u64) -> TrainedHead<Cpu> {
    let (card, w) = head_parts(e, version, dim, seed);
    TrainedHead::from_parts(card, &w, &Default::default()).unwrap()
}

/// Tier 1 with the tiny encoder and random head `head-a`, no batching.
fn tier1_a() -> Arc<Tier1> {
    let e = embedder();
    let head = head_for(e.as_ref(), "head-a", e.dim(), 1);
    Arc::new(Tier1::new(e, head, DecodeLimits::default()).unwrap())
}

/// The model card and safetensors bytes of such a head.
fn head_parts(e: &dyn ImageEncoder, version: &str, dim: usize, seed: u64) -> (ModelCard, Vec<u8>) {
    let hc = HeadConfig {
        hidden: vec![],
        dropout: 0.0,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let h = Head::<Cpu>::init(
        &hc,
        &vec![0.0; dim],
        &vec![0.05; dim],
        &mut rng,
        &Default::default(),
    );
    let w = encode_head(&h).unwrap();
    let mut card = support::linear_card(version, e.model_id(), dim, &w);
    card.seed = seed;
    (card, w)
}

struct Server {
    url: String,
    tier1: Arc<Tier1>,
    _dir: tempfile::TempDir,
}

/// Starts a server whose metagraph allows `allowed` hotkeys, with the given clock.
async fn start(allowed: &[&str], clock: Clock) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mg = dir.path().join("metagraph.json");
    let neurons: Vec<Value> = allowed
        .iter()
        .map(|h| serde_json::json!({"hotkey": h, "stake": 5000.0, "validator_permit": true}))
        .collect();
    std::fs::write(&mg, serde_json::to_string(&neurons).unwrap()).unwrap();
    let tier1 = tier1_a();
    let req = captured();
    let state = AppState {
        axon_hotkey: Some(req["miner_ss58"].as_str().unwrap().into()),
        metagraph: Some(Arc::new(Metagraph::open(&mg, 1000.0))),
        clock,
        ..AppState::new("test", tier1.clone())
    };
    let url = listen(state).await;
    Server {
        url,
        tier1,
        _dir: dir,
    }
}

/// The `/healthz` JSON of the server at `url`.
async fn healthz_of(url: &str) -> Value {
    reqwest::get(format!("{url}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The Prometheus text of the server at `url`.
async fn metrics_of(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Serves `state` on a free loopback port; returns its base URL.
async fn listen(state: AppState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        roadwork::serve::serve_with_peers(listener, router(Arc::new(state)), std::future::pending())
            .await
    });
    url
}

fn capture_time(req: &Value) -> u128 {
    req["headers"]["bt_header_dendrite_nonce"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Sends the captured request with `edit` applied to its headers.
async fn send(
    url: &str,
    req: &Value,
    edit: impl Fn(&mut serde_json::Map<String, Value>),
) -> reqwest::Response {
    let mut headers = req["headers"].as_object().unwrap().clone();
    edit(&mut headers);
    let mut b = reqwest::Client::new().post(format!("{url}/ImageSynapse"));
    for (k, v) in &headers {
        if ["Host", "Content-Length", "Accept-Encoding"].contains(&k.as_str()) {
            continue;
        }
        b = b.header(k, v.as_str().map_or(v.to_string(), str::to_string));
    }
    b.body(req["body"].to_string()).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_captured_request_is_answered_once_and_tampered_copies_are_refused() {
    let req = captured();
    let alice = req["validator_ss58"].as_str().unwrap();
    let s = start(&[alice], Clock::FixedNs(capture_time(&req) + 1_000_000_000)).await;

    let r = send(&s.url, &req, |_| {}).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.unwrap();
    let p = body["prediction"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p) && p != 0.5, "{p}");
    assert_eq!(body["testnet_label"], -1, "unknown fields are echoed");
    assert_eq!(body["name"], "ImageSynapse");

    // The same request again is a replay.
    assert_eq!(send(&s.url, &req, |_| {}).await.status(), 401);
    // A flipped signature byte, another axon, a missing header: 401.
    let flip = |h: &mut serde_json::Map<String, Value>| {
        let sig = h["bt_header_dendrite_signature"]
            .as_str()
            .unwrap()
            .to_string();
        let (head, last) = sig.split_at(sig.len() - 1);
        h["bt_header_dendrite_signature"] =
            Value::from(format!("{head}{}", if last == "0" { "1" } else { "0" }));
        let n: u128 = h["bt_header_dendrite_nonce"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        h["bt_header_dendrite_nonce"] = Value::from((n + 5).to_string());
    };
    assert_eq!(send(&s.url, &req, flip).await.status(), 401);
    let other_axon = |h: &mut serde_json::Map<String, Value>| {
        h["bt_header_axon_hotkey"] = Value::from(alice);
    };
    assert_eq!(send(&s.url, &req, other_axon).await.status(), 401);
    let missing = |h: &mut serde_json::Map<String, Value>| {
        h.remove("bt_header_dendrite_signature");
    };
    let r = send(&s.url, &req, missing).await;
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("bt_header_dendrite_signature")
    );

    // Metrics saw one answer and the refusals.
    let m = reqwest::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("route=\"/ImageSynapse\",status=\"200\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("route=\"/ImageSynapse\",status=\"401\"} 4"),
        "{m}"
    );
    assert!(
        m.contains("roadwork_model_info{profile=\"test\",version=\"head-a\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("roadwork_tier_latency_seconds_count{profile=\"test\",tier=\"1\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_nonce_and_an_unlisted_validator_are_refused() {
    let req = captured();
    // Against the real clock the capture is long stale.
    let alice = req["validator_ss58"].as_str().unwrap();
    let s = start(&[alice], Clock::System).await;
    assert_eq!(send(&s.url, &req, |_| {}).await.status(), 401);
    // At capture time but Alice is not in the metagraph: 403.
    let s = start(
        &["5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy"],
        Clock::FixedNs(capture_time(&req)),
    )
    .await;
    let r = send(&s.url, &req, |_| {}).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("not in the metagraph"));
    assert_eq!(
        reqwest::get(format!("{}/nope", s.url))
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn local_predictions_are_deterministic_finite_and_minus_one_for_garbage() {
    let s = start(&[], Clock::System).await;
    let c = reqwest::Client::new();
    let jpg = support::small_scene(5, 1);
    let raw: Value = c
        .post(format!("{}/v1/predict", s.url))
        .header("content-type", "image/jpeg")
        .body(jpg.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p = raw["prediction"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p) && p != 0.5);
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&jpg);
    let js: Value = c
        .post(format!("{}/v1/predict", s.url))
        .json(&serde_json::json!({ "image": format!("data:image/jpeg;base64,{b64}") }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        js["prediction"], raw["prediction"],
        "same image, same answer"
    );
    for garbage in [
        b"not an image".to_vec(),
        jpg[..jpg.len() / 3].to_vec(),
        vec![],
    ] {
        let g = predict_json(&c, &s.url, &garbage).await;
        assert_eq!(g["prediction"], -1.0);
        assert!(g["error"].as_str().is_some());
    }
    let bad = c
        .post(format!("{}/v1/predict", s.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let h = healthz_of(&s.url).await;
    assert_eq!(h["model_version"], "head-a");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_swap_takes_effect_and_a_mismatched_head_is_refused() {
    let s = start(&[], Clock::System).await;
    let e = embedder();
    // Wrong feature width: refused, the old head keeps serving.
    assert!(
        s.tier1
            .swap_head(head_for(e.as_ref(), "head-wide", e.dim() * 2, 3))
            .is_err()
    );
    assert_eq!(s.tier1.model_version(), "head-a");
    s.tier1
        .swap_head(head_for(e.as_ref(), "head-b", e.dim(), 2))
        .unwrap();
    let h = healthz_of(&s.url).await;
    assert_eq!(h["model_version"], "head-b");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_follows_the_champion_pointer_and_refuses_a_head_that_does_not_fit() {
    use roadwork::serve::{ProfileConfig, ServeConfig, start};
    let dir = tempfile::tempdir().unwrap();
    // The server loads the configured encoder itself: the production path.
    let (reg, embed) = registry_with_heads(dir.path());
    let cfg = ServeConfig {
        watch_ms: 50,
        profiles: vec![
            ProfileConfig {
                name: "speed".into(),
                bind: "127.0.0.1".into(),
                port: 0,
                axon_hotkey: None,
                tier2: false,
            },
            ProfileConfig {
                name: "accuracy".into(),
                bind: "127.0.0.1".into(),
                port: 0,
                axon_hotkey: None,
                tier2: false,
            },
        ],
        ..Default::default()
    };
    let ql = dir.path().join("querylog");
    let running = start(&cfg, &embed, DecodeLimits::default(), reg.clone(), &ql)
        .await
        .unwrap();
    assert_eq!(running.addrs.len(), 2);
    let version = |addr: std::net::SocketAddr| async move {
        let h = healthz_of(&format!("http://{addr}")).await;
        h["model_version"].as_str().unwrap().to_string()
    };
    let (a, b) = (running.addrs[0].1, running.addrs[1].1);
    assert_eq!(version(a).await, "head-1");
    reg.set_champion("head-2").unwrap();
    let mut seen = String::new();
    for _ in 0..100 {
        seen = version(b).await;
        if seen == "head-2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, "head-2", "both profiles share the swapped head");
    assert_eq!(version(a).await, "head-2");
    // A champion for other features is refused; head-2 keeps serving.
    reg.set_champion("head-bad").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(version(a).await, "head-2");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_are_logged_before_the_reply_and_moved_into_lance_exactly_once() {
    use roadwork::ingest::Ingestor;
    use roadwork::pipeline::serve::move_querylog;
    use roadwork::serve::QueryLog;
    use roadwork::store::tables;
    let (dir, store) = support::tmp_store().await;
    let ql = dir.path().join("querylog");
    let log = Arc::new(QueryLog::open(&ql, 1000, Duration::from_secs(3600)).unwrap());
    let tier1 = tier1_a();
    let url = listen(AppState {
        querylog: Some(log.clone()),
        ..AppState::new("speed", tier1)
    })
    .await;
    let c = reqwest::Client::new();
    for i in 0..3 {
        let r = c
            .post(format!("{url}/v1/predict"))
            .body(support::small_scene(6, i))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // Acknowledged ⇒ already on disk: count the lines now, before any mover ran.
        let lines: usize = std::fs::read_dir(&ql)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("active-"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap().lines().count())
            .sum();
        assert_eq!(lines, i as usize + 1);
    }
    let ingestor =
        Ingestor::new(store.clone(), Default::default(), DecodeLimits::default()).quiet();
    let m = move_querylog(&log, &ingestor).await.unwrap();
    assert_eq!((m.segments, m.records), (1, 3));
    assert_eq!(
        store.count_rows(tables::PREDICTIONS, None).await.unwrap(),
        3
    );
    assert_eq!(store.count_rows(tables::SAMPLES, None).await.unwrap(), 3);

    // A crash: a segment left active holding an already-ingested line and a torn last line. The
    // next open seals it; moving it adds nothing twice and skips the torn line.
    let done = std::fs::read_dir(ql.join("done"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let first = std::fs::read_to_string(&done)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(
        ql.join("active-1.jsonl"),
        format!("{first}\n{}", &first[..first.len() / 2]),
    )
    .unwrap();
    let reopened = QueryLog::open(&ql, 1000, Duration::from_secs(3600)).unwrap();
    assert_eq!(reopened.sealed().unwrap().len(), 1);
    move_querylog(&reopened, &ingestor).await.unwrap();
    assert_eq!(
        store.count_rows(tables::PREDICTIONS, None).await.unwrap(),
        3
    );
    assert_eq!(store.count_rows(tables::SAMPLES, None).await.unwrap(), 3);
    assert!(reopened.sealed().unwrap().is_empty());
}

/// How the fake VLM behaves.
#[derive(Clone)]
enum Vlm {
    /// Token log-probabilities with P(yes) = the value over yes + no.
    LogProbs(f64),
    /// A bare text answer, no log-probabilities.
    Text(&'static str),
    /// Sleeps this long before answering.
    Stall(Duration),
    Status500,
    /// 200 with a body that is not a chat completion.
    Garbage,
}

/// A local server speaking the OpenAI chat-completions wire format, recording what it was sent.
struct FakeVlm {
    url: String,
    mode: Arc<std::sync::Mutex<Vlm>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
    last: Arc<std::sync::Mutex<Option<Value>>>,
}

impl FakeVlm {
    async fn start() -> Self {
        use axum::extract::State;
        type St = (
            Arc<std::sync::Mutex<Vlm>>,
            Arc<std::sync::atomic::AtomicUsize>,
            Arc<std::sync::Mutex<Option<Value>>>,
        );
        async fn chat(
            State((mode, hits, last)): State<St>,
            axum::Json(body): axum::Json<Value>,
        ) -> axum::response::Response {
            use axum::response::IntoResponse;
            hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            *last.lock().unwrap() = Some(body);
            let m = mode.lock().unwrap().clone();
            let completion = |content: &str, top: Value| {
                axum::Json(serde_json::json!({
                    "id": "chatcmpl-1", "object": "chat.completion", "model": "fake-vl",
                    "choices": [{"index": 0, "finish_reason": "length",
                        "message": {"role": "assistant", "content": content},
                        "logprobs": top}],
                }))
                .into_response()
            };
            match m {
                Vlm::LogProbs(p) => {
                    let tok = if p >= 0.5 { "Yes" } else { "No" };
                    let top = serde_json::json!({"content": [{"token": tok, "logprob": p.max(1.0 - p).ln(),
                        "top_logprobs": [
                            {"token": "Yes", "logprob": (p * 0.9).ln()},
                            {"token": "No", "logprob": ((1.0 - p) * 0.9).ln()},
                            {"token": "The", "logprob": (0.05f64).ln()}]}]});
                    completion(tok, top)
                }
                Vlm::Text(t) => completion(t, Value::Null),
                Vlm::Stall(d) => {
                    tokio::time::sleep(d).await;
                    completion("Yes", Value::Null)
                }
                Vlm::Status500 => {
                    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
                }
                Vlm::Garbage => "<html>not json</html>".into_response(),
            }
        }
        let st: St = (
            Arc::new(std::sync::Mutex::new(Vlm::Text("Yes"))),
            Default::default(),
            Default::default(),
        );
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(chat))
            .with_state(st.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeVlm {
            url,
            mode: st.0,
            hits: st.1,
            last: st.2,
        }
    }

    fn set(&self, m: Vlm) {
        *self.mode.lock().unwrap() = m;
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn tier2_config(url: &str) -> roadwork::serve::Tier2Config {
    roadwork::serve::Tier2Config {
        url: url.to_string(),
        model: "fake-vl".into(),
        // Every tier-1 answer is "unsure", so every image escalates.
        low: 0.0,
        high: 1.0,
        weight: 0.5,
        text_confidence: 0.8,
        reserve_ms: 100,
        ..Default::default()
    }
}

/// Raw image bytes to `/v1/predict`.
async fn post_image(c: &reqwest::Client, url: &str, image: &[u8]) -> reqwest::Response {
    c.post(format!("{url}/v1/predict"))
        .body(image.to_vec())
        .send()
        .await
        .unwrap()
}

/// The JSON answer to `{"image": field}`.
async fn predict_field(c: &reqwest::Client, url: &str, field: &str) -> Value {
    c.post(format!("{url}/v1/predict"))
        .json(&serde_json::json!({ "image": field }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The JSON answer to raw image bytes, which must be a 200.
async fn predict_json(c: &reqwest::Client, url: &str, image: &[u8]) -> Value {
    let r = post_image(c, url, image).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cascade_escalates_to_the_vlm_and_falls_back_to_tier_1_when_it_fails() {
    use roadwork::serve::Tier2;
    let vlm = FakeVlm::start().await;
    let tier1 = tier1_a();
    let t2 = Arc::new(Tier2::new(tier2_config(&vlm.url)).unwrap());
    let deadline = Duration::from_millis(1500);
    let accuracy = listen(AppState {
        tier2: Some(t2.clone()),
        deadline,
        ..AppState::new("accuracy", tier1.clone())
    })
    .await;
    let speed = listen(AppState::new("speed", tier1.clone())).await;
    let c = reqwest::Client::new();
    let jpg = support::small_scene(7, 1);

    // The speed profile never asks.
    let s = predict_json(&c, &speed, &jpg).await;
    assert_eq!((s["decided_by"].as_u64(), vlm.hits()), (Some(1), 0));
    let p1 = s["prediction"].as_f64().unwrap();

    // Log-probabilities: P(yes) = 0.9, blended half and half with tier 1.
    vlm.set(Vlm::LogProbs(0.9));
    let a = predict_json(&c, &accuracy, &jpg).await;
    assert_eq!(a["decided_by"], 2);
    assert_eq!(a["tiers"][0]["score"].as_f64().unwrap(), p1, "same tier 1");
    let p2 = a["tiers"][1]["score"].as_f64().unwrap();
    assert!((p2 - 0.9).abs() < 1e-4, "{p2}");
    assert!((a["prediction"].as_f64().unwrap() - (0.5 * p1 + 0.45)).abs() < 1e-4);
    // What the VLM was sent: the question and the very image as a data URI, asking for logprobs.
    let sent = vlm.last.lock().unwrap().clone().unwrap();
    assert_eq!(sent["model"], "fake-vl");
    assert_eq!(sent["logprobs"], true);
    let parts = sent["messages"][0]["content"].as_array().unwrap();
    let uri = parts
        .iter()
        .find_map(|p| p["image_url"]["url"].as_str())
        .unwrap();
    use base64::Engine;
    let b64 = uri.strip_prefix("data:image/jpeg;base64,").unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        jpg
    );
    assert!(
        parts
            .iter()
            .any(|p| p["text"].as_str().is_some_and(|t| t.contains("yes or no")))
    );

    // Text only: "No" counts as 1 − text_confidence.
    vlm.set(Vlm::Text("No."));
    let a = predict_json(&c, &accuracy, &jpg).await;
    assert!((a["tiers"][1]["score"].as_f64().unwrap() - 0.2).abs() < 1e-6);
    assert_eq!(a["decided_by"], 2);

    // Failures keep tier 1's answer: 500, garbage, a non-answer, and a stall past the deadline.
    for (mode, why) in [
        (Vlm::Status500, "HTTP 500"),
        (Vlm::Garbage, "not JSON"),
        (
            Vlm::Text("Perhaps, it is hard to say"),
            "neither yes nor no",
        ),
        (Vlm::Stall(Duration::from_secs(30)), "no answer within"),
    ] {
        vlm.set(mode);
        let t = std::time::Instant::now();
        let a = predict_json(&c, &accuracy, &jpg).await;
        assert!(
            t.elapsed() < deadline + Duration::from_millis(500),
            "{why}: {:?}",
            t.elapsed()
        );
        assert_eq!(a["decided_by"], 1, "{why}");
        assert_eq!(a["prediction"].as_f64().unwrap(), p1, "{why}");
        let err = a["tiers"][1]["error"].as_str().unwrap();
        assert!(err.contains(why), "{err}");
    }

    // An endpoint nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/v1", l.local_addr().unwrap())
    };
    let gone = listen(AppState {
        tier2: Some(Arc::new(Tier2::new(tier2_config(&closed)).unwrap())),
        deadline,
        ..AppState::new("gone", tier1.clone())
    })
    .await;
    let a = predict_json(&c, &gone, &jpg).await;
    assert_eq!(
        (a["decided_by"].as_u64(), a["prediction"].as_f64()),
        (Some(1), Some(p1))
    );

    let m = metrics_of(&accuracy).await;
    for want in [
        "roadwork_tier2_total{profile=\"accuracy\",outcome=\"answered\"} 2",
        "roadwork_tier2_total{profile=\"accuracy\",outcome=\"http_error\"} 1",
        "roadwork_tier2_total{profile=\"accuracy\",outcome=\"garbage\"} 2",
        "roadwork_tier2_total{profile=\"accuracy\",outcome=\"timeout\"} 1",
        "roadwork_tier_latency_seconds_count{profile=\"accuracy\",tier=\"2\"} 2",
        "roadwork_early_exit_ratio{profile=\"accuracy\"} 0",
    ] {
        assert!(m.contains(want), "{want}\n{m}");
    }
    let m = metrics_of(&speed).await;
    assert!(
        m.contains("roadwork_early_exit_ratio{profile=\"speed\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_server_answers_503_and_then_recovers() {
    use roadwork::serve::Tier2;
    // A stalling VLM holds the one allowed request in flight.
    let vlm = FakeVlm::start().await;
    vlm.set(Vlm::Stall(Duration::from_secs(30)));
    let tier1 = tier1_a();
    let url = listen(AppState {
        tier2: Some(Arc::new(Tier2::new(tier2_config(&vlm.url)).unwrap())),
        deadline: Duration::from_millis(1500),
        max_inflight: 1,
        ..AppState::new("accuracy", tier1)
    })
    .await;
    let c = reqwest::Client::new();
    let jpg = support::small_scene(8, 1);
    let first = tokio::spawn({
        let (c, url, jpg) = (c.clone(), url.clone(), jpg.clone());
        async move { predict_json(&c, &url, &jpg).await }
    });
    while vlm.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(post_image(&c, &url, &jpg).await.status(), 503);
    let q = metrics_of(&url).await;
    assert!(
        q.contains("roadwork_queue_depth{profile=\"accuracy\"} 1"),
        "{q}"
    );
    // The held request still gets its (tier 1) answer, and the slot frees.
    let a = first.await.unwrap();
    assert_eq!(a["decided_by"], 1);
    vlm.set(Vlm::LogProbs(0.2));
    assert_eq!(predict_json(&c, &url, &jpg).await["decided_by"], 2);
}

/// CRC-32 (IEEE) for hand-made PNG chunks.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in bytes {
        c ^= *b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG that declares `w`×`h` (8-bit, `color` type) but carries one tiny IDAT: a header bomb.
fn png_header_bomb(w: u32, h: u32, color: u8, depth: u8) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        c.extend_from_slice(&body);
        c.extend_from_slice(&crc32(&body).to_be_bytes());
        c
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

/// `jpeg` with an EXIF APP1 segment saying "rotate 90° clockwise to view" (orientation 6).
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\x00\x08\x00\x00\x00".to_vec();
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one IFD entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// The bad-image list of the serving issue: odd colour models, containers and metadata that must
/// get an answer, and bombs, truncations and garbage that must get -1 — quickly, in bounded memory.
fn bad_images() -> Vec<(&'static str, Vec<u8>, bool)> {
    use image::{DynamicImage, ImageFormat};
    use jpeg_encoder::SamplingFactor::{F_1_1, F_2_2};
    let rgb = roadwork::synth::scenes::render(&{
        let mut s = roadwork::synth::scenes::SceneSpec::draw(9, 3);
        (s.width, s.height) = (96, 64);
        s
    });
    let img = DynamicImage::ImageRgb8(rgb.clone());
    let enc = |i: &DynamicImage, f: ImageFormat| {
        let mut v = std::io::Cursor::new(Vec::new());
        i.write_to(&mut v, f).unwrap();
        v.into_inner()
    };
    let jpg = enc(&img, ImageFormat::Jpeg);
    let cmyk = |color, sampling| {
        let px: Vec<u8> = rgb
            .pixels()
            .flat_map(|p| {
                let [r, g, b] = p.0.map(|c| c as f32 / 255.0);
                let k = 1.0 - r.max(g).max(b);
                let d = (1.0 - k).max(1e-6);
                [(1.0 - r - k) / d, (1.0 - g - k) / d, (1.0 - b - k) / d, k]
                    .map(|c| (c * 255.0) as u8)
            })
            .collect();
        let mut out = Vec::new();
        let mut e = jpeg_encoder::Encoder::new(&mut out, 85);
        // libjpeg's layout for CMYK: no subsampling. (Subsampled 4-channel JPEGs decode with
        // wrong colours in the decoder we use; they still get a finite answer, tested below.)
        e.set_sampling_factor(sampling);
        e.encode(&px, 96, 64, color).unwrap();
        out
    };
    // A genuine decompression bomb: 8000×8000 of zeros, 64 MB decoded from a file 200× smaller.
    let bomb = enc(
        &DynamicImage::ImageLuma8(image::GrayImage::new(8000, 8000)),
        ImageFormat::Png,
    );
    assert!(bomb.len() < 64_000_000 / 200, "{}", bomb.len());
    let big = enc(
        &DynamicImage::ImageRgb8(image::imageops::resize(
            &rgb,
            3000,
            2000,
            image::imageops::FilterType::Nearest,
        )),
        ImageFormat::Jpeg,
    );
    let mut gif_bomb = b"GIF89a".to_vec();
    gif_bomb.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x3B]);
    vec![
        (
            "grayscale jpeg",
            enc(&img.grayscale(), ImageFormat::Jpeg),
            true,
        ),
        (
            "cmyk jpeg",
            cmyk(jpeg_encoder::ColorType::Cmyk, F_1_1),
            true,
        ),
        (
            "ycck jpeg",
            cmyk(jpeg_encoder::ColorType::CmykAsYcck, F_1_1),
            true,
        ),
        (
            "subsampled cmyk jpeg",
            cmyk(jpeg_encoder::ColorType::Cmyk, F_2_2),
            true,
        ),
        ("exif-rotated jpeg", with_exif_orientation(&jpg, 6), true),
        ("gray png", enc(&img.grayscale(), ImageFormat::Png), true),
        (
            "gray+alpha png",
            enc(
                &DynamicImage::ImageLumaA8(img.to_luma_alpha8()),
                ImageFormat::Png,
            ),
            true,
        ),
        (
            "rgba png",
            enc(&DynamicImage::ImageRgba8(img.to_rgba8()), ImageFormat::Png),
            true,
        ),
        (
            "16-bit png",
            enc(&DynamicImage::ImageRgb16(img.to_rgb16()), ImageFormat::Png),
            true,
        ),
        (
            "webp",
            enc(&DynamicImage::ImageRgba8(img.to_rgba8()), ImageFormat::WebP),
            true,
        ),
        ("bmp", enc(&img, ImageFormat::Bmp), true),
        (
            "gif",
            enc(&DynamicImage::ImageRgba8(img.to_rgba8()), ImageFormat::Gif),
            true,
        ),
        ("8000x8000 png bomb", bomb, true),
        ("3000x2000 jpeg", big, true),
        (
            "png claiming 40000x40000",
            png_header_bomb(40_000, 40_000, 2, 8),
            false,
        ),
        (
            "png claiming 16000x16000 rgba16",
            png_header_bomb(16_000, 16_000, 6, 16),
            false,
        ),
        ("gif claiming 65535x65535", gif_bomb, false),
        ("truncated jpeg", jpg[..jpg.len() / 2].to_vec(), false),
        ("jpeg header only", jpg[..20].to_vec(), false),
        ("html", b"<html><body>hi</body></html>".to_vec(), false),
        (
            "random bytes",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            false,
        ),
        ("empty", vec![], false),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_image_gets_a_finite_answer_or_minus_one() {
    let limits = DecodeLimits::default();
    let s = start(&[], Clock::System).await;
    let c = reqwest::Client::new();
    for (name, bytes, answerable) in bad_images() {
        let t = std::time::Instant::now();
        let v = predict_json(&c, &s.url, &bytes).await;
        let p = v["prediction"].as_f64().unwrap_or(f64::NAN);
        if answerable {
            assert!((0.0..=1.0).contains(&p) && p != 0.5, "{name}: {v}");
        } else {
            assert_eq!(p, -1.0, "{name}: {v}");
            assert!(
                v["error"].as_str().is_some(),
                "{name}: the reason is returned"
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(7),
            "{name}: {:?}",
            t.elapsed()
        );
        // Same image, same answer (the JSON/base64 route too).
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let again = predict_field(&c, &s.url, &b64).await;
        assert_eq!(again["prediction"], v["prediction"], "{name}");
        assert_eq!(
            roadwork::imaging::decode(&bytes, &limits).is_ok(),
            answerable,
            "{name}"
        );
    }
    // EXIF orientation is applied: a 96×64 photo tagged "rotate 90°" is 64×96 upright.
    let (_, rotated, _) = bad_images()
        .into_iter()
        .find(|b| b.0 == "exif-rotated jpeg")
        .unwrap();
    let d = roadwork::imaging::decode(&rotated, &limits).unwrap();
    assert_eq!((d.image.width(), d.image.height()), (64, 96));
    // CMYK comes out as the colours it encodes (not inverted, not garbled).
    let (_, cmyk, _) = bad_images()
        .into_iter()
        .find(|b| b.0 == "cmyk jpeg")
        .unwrap();
    let (_, gray, _) = bad_images()
        .into_iter()
        .find(|b| b.0 == "gray png")
        .unwrap();
    let (_, bmp, _) = bad_images().into_iter().find(|b| b.0 == "bmp").unwrap();
    let rgb = |b: &[u8]| {
        roadwork::imaging::decode(b, &limits)
            .unwrap()
            .image
            .to_rgb8()
    };
    let mad = |a: &image::RgbImage, b: &image::RgbImage| {
        a.as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| x.abs_diff(*y) as f64)
            .sum::<f64>()
            / a.as_raw().len() as f64
    };
    let truth = rgb(&bmp);
    let (_, ycck, _) = bad_images()
        .into_iter()
        .find(|b| b.0 == "ycck jpeg")
        .unwrap();
    assert!(
        mad(&rgb(&ycck), &truth) < 12.0,
        "{}",
        mad(&rgb(&ycck), &truth)
    );
    assert!(
        mad(&rgb(&cmyk), &truth) < 12.0,
        "{}",
        mad(&rgb(&cmyk), &truth)
    );
    assert!(
        mad(&rgb(&gray), &truth) > mad(&rgb(&cmyk), &truth),
        "the check can tell colours apart"
    );
    // Not a base64 string at all: -1 through the JSON route.
    let v = predict_field(&c, &s.url, "%%% not base64 %%%").await;
    assert_eq!(v["prediction"], -1.0);
}

/// A registry under `dir/models` with two heads for the random ViT-S/16 encoder at 32² (a small
/// input keeps the tests fast) and one for other features; `head-1` is the champion. Returns the
/// encoder configuration the server must load.
fn registry_with_heads(dir: &Path) -> (roadwork::train::Registry, EmbedConfig) {
    let reg = roadwork::train::Registry::open(dir.join("models")).unwrap();
    let embed = EmbedConfig {
        resolution: 32,
        ..Default::default()
    };
    let e = CpuEncoder::load(&embed, None).unwrap();
    for (v, dim, seed) in [
        ("head-1", e.dim(), 1),
        ("head-2", e.dim(), 2),
        ("head-bad", e.dim() + 1, 3),
    ] {
        let (card, w) = head_parts(&e, v, dim, seed);
        reg.register(&card, &w).unwrap();
    }
    reg.set_champion("head-1").unwrap();
    (reg, embed)
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_swaps_under_load_fail_no_request() {
    use roadwork::serve::{Dendrite, ProfileConfig, ServeConfig, start};
    let dir = tempfile::tempdir().unwrap();
    let (reg, embed) = registry_with_heads(dir.path());
    // Half the clients are signed validators (one each: the axon refuses a nonce that is not
    // newer than the last one of that dendrite, so one dendrite's requests go one at a time),
    // half local clients.
    let validators: Vec<Arc<Dendrite>> = (0..8u8)
        .map(|i| Arc::new(Dendrite::from_seed([i + 10; 32]).unwrap()))
        .collect();
    let axon = Dendrite::from_seed([99; 32]).unwrap();
    let mg = dir.path().join("metagraph.json");
    let neurons: Vec<Value> = validators
        .iter()
        .map(|d| serde_json::json!({"hotkey": d.hotkey(), "stake": 5000.0, "validator_permit": true}))
        .collect();
    std::fs::write(&mg, Value::from(neurons).to_string()).unwrap();
    let cfg = ServeConfig {
        watch_ms: 20,
        axon_hotkey: Some(axon.hotkey().into()),
        metagraph: Some(mg),
        profiles: vec![ProfileConfig {
            name: "speed".into(),
            bind: "127.0.0.1".into(),
            port: 0,
            axon_hotkey: None,
            tier2: false,
        }],
        ..Default::default()
    };
    let running = start(
        &cfg,
        &embed,
        DecodeLimits::default(),
        reg.clone(),
        &dir.path().join("ql"),
    )
    .await
    .unwrap();
    let url = format!("http://{}", running.addrs[0].1);
    let images: Arc<Vec<Vec<u8>>> = Arc::new((0..8).map(|i| support::small_scene(11, i)).collect());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    const CLIENTS: usize = 16;
    for k in 0..CLIENTS {
        let (url, images, stop, done) = (url.clone(), images.clone(), stop.clone(), done.clone());
        let signer = (k % 2 == 0).then(|| validators[k / 2].clone());
        let axon_key = axon.hotkey().to_string();
        clients.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            let mut seen = Vec::new();
            let mut i = k;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let img = &images[i % images.len()];
                i += 1;
                let (p, version) = match &signer {
                    Some(d) => {
                        use base64::Engine;
                        let b64 = base64::engine::general_purpose::STANDARD.encode(img);
                        let p = d.query(&url, &axon_key, &b64, Duration::from_secs(9)).await;
                        (p.map_err(|e| e.to_string()), None)
                    }
                    None => {
                        let r = c
                            .post(format!("{url}/v1/predict"))
                            .body(img.clone())
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status() == 200 => {
                                let v: Value = r.json().await.unwrap();
                                (
                                    v["prediction"].as_f64().ok_or(v.to_string()),
                                    v["model_version"].as_str().map(str::to_string),
                                )
                            }
                            Ok(r) => (Err(format!("HTTP {}", r.status())), None),
                            Err(e) => (Err(e.to_string()), None),
                        }
                    }
                };
                seen.push((p, version));
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            seen
        }));
    }
    // Swap the champion back and forth under traffic, and offer a head that must be refused, for
    // at least 8 rounds and 96 answered requests.
    let mut round = 0;
    while round < 8 || done.load(std::sync::atomic::Ordering::Relaxed) < 96 {
        round += 1;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let v = match round % 3 {
            0 => "head-2",
            1 => "head-bad",
            _ => "head-1",
        };
        reg.set_champion(v).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    let mut versions = std::collections::BTreeSet::new();
    for c in clients {
        for (p, v) in c.await.unwrap() {
            let p = p.unwrap_or_else(|e| panic!("a request failed under load: {e}"));
            assert!((0.0..=1.0).contains(&p) && p != 0.5, "{p}");
            versions.extend(v);
            total += 1;
        }
    }
    assert!(total >= 96, "{total} requests");
    assert!(
        versions.contains("head-1") && versions.contains("head-2"),
        "{versions:?}"
    );
    assert!(!versions.contains("head-bad"));
    let m = metrics_of(&url).await;
    let ok: usize = m
        .lines()
        .filter(|l| l.starts_with("roadwork_requests_total") && l.contains("status=\"200\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(ok, total, "{m}");
    assert!(!m.contains("status=\"5"), "{m}");
    running.shutdown().await;
}

/// A free loopback port (released at once; the server binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `roadwork serve` and waits for its health check.
async fn spawn_server(config: &Path, url: &str) -> std::process::Child {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roadwork"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if let Ok(r) = reqwest::get(format!("{url}/healthz")).await
            && r.status() == 200
        {
            return child;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("roadwork serve exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    panic!("roadwork serve did not come up");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_a_burst_loses_no_acknowledged_request() {
    let dir = tempfile::tempdir().unwrap();
    registry_with_heads(dir.path());
    let port = free_port();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!(
            "[data]\ndir = {:?}\n\n[embed]\nresolution = 32\n\n[serve]\nquerylog_segment_records = 5\n\
             ingest_every_s = 1\n\n[[serve.profiles]]\nname = \"speed\"\nbind = \"127.0.0.1\"\nport = {port}\n",
            dir.path()
        ),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = spawn_server(&config, &url).await;

    // A burst of distinct images from 8 clients; the server is killed once 30 are acknowledged.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let mut clients = Vec::new();
    for k in 0..8u64 {
        let (url, acked) = (url.clone(), acked.clone());
        clients.push(tokio::spawn(async move {
            let c = reqwest::Client::new();
            for i in 0..1000u64 {
                let img = support::small_scene(12, k * 1000 + i);
                let Ok(r) = c
                    .post(format!("{url}/v1/predict"))
                    .body(img.clone())
                    .send()
                    .await
                else {
                    return;
                };
                let Ok(v) = r.json::<Value>().await else {
                    return;
                };
                let id = v["request_id"].as_str().unwrap().to_string();
                let sha = roadwork::store::SampleId::of_bytes(&img).to_string();
                acked.lock().unwrap().push((id, sha));
            }
        }));
    }
    while acked.lock().unwrap().len() < 30 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill().unwrap(); // SIGKILL: no drain, no final move
    server.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 30);

    // Restart: the dead process's active segment is sealed and moved; then a clean stop.
    let server = spawn_server(&config, &url).await;
    std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let out = server.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let store = roadwork::store::Store::open(&dir.path().join("store").to_string_lossy())
        .await
        .unwrap();
    let preds = store.predictions().await.unwrap();
    let mut count = std::collections::HashMap::<&str, usize>::new();
    for p in &preds {
        *count.entry(p.request_id.as_str()).or_default() += 1;
    }
    assert!(count.values().all(|n| *n == 1), "a request landed twice");
    let samples: std::collections::HashSet<String> = store
        .samples(None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.sample_id.to_string())
        .collect();
    for (id, sha) in &acked {
        assert_eq!(
            count.get(id.as_str()),
            Some(&1),
            "acknowledged {id} is not in Lance"
        );
        assert!(samples.contains(sha), "the image of {id} is not in Lance");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overloaded_encoder_sheds_what_is_past_its_deadline_and_stays_responsive() {
    // A burst of ViT-S/16 224² requests worth three deadlines of encoder work (deadline and burst
    // come from this machine's measured time per image). Without shedding, the unanswerable rest would
    // still be encoded afterwards and the next request would wait behind seconds of backlog.
    let embed = EmbedConfig::default();
    let e = Arc::new(CpuEncoder::load(&embed, None).unwrap());
    let probe = image::load_from_memory(&support::small_scene(13, 1000)).unwrap();
    let per_image = (0..3)
        .map(|_| {
            let t = std::time::Instant::now();
            e.embed_images(std::slice::from_ref(&probe)).unwrap();
            t.elapsed()
        })
        .min()
        .unwrap();
    let head = head_for(e.as_ref(), "head-a", e.dim(), 1);
    let tier1 = Tier1::new(e, head, DecodeLimits::default())
        .unwrap()
        .with_batching(1, 1, false);
    // A deadline of 21 images' encoder time (≥ 0.5 s) and a burst of 64: three deadlines of work
    // (more simultaneous connections would measure the HTTP stack on two cores, not shedding).
    let deadline = (per_image * 21).max(Duration::from_millis(500));
    let url = listen(AppState {
        deadline,
        max_inflight: 512,
        ..AppState::new("speed", Arc::new(tier1))
    })
    .await;
    let c = reqwest::Client::new();
    let burst_size =
        (3 * deadline.as_millis() / per_image.as_millis().max(1)).clamp(16, 64) as usize;
    let burst: Vec<_> = (0..burst_size as u64)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                let v = predict_json(&c, &url, &support::small_scene(13, i)).await;
                (v, t.elapsed())
            })
        })
        .collect();
    let mut decided = 0;
    for t in burst {
        let (v, took) = t.await.unwrap();
        let p = v["prediction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p) && p != 0.5, "{v}");
        assert!(
            took < deadline + Duration::from_millis(500),
            "{took:?} for a {deadline:?} deadline ({burst_size} requests, {per_image:?} per image)"
        );
        if v["tiers"][0]["score"].is_number() {
            decided += 1;
        } else {
            assert!(v["tiers"][0]["error"].as_str().is_some(), "{v}");
        }
    }
    assert!(
        (1..burst_size).contains(&decided),
        "{decided} of {burst_size} decided ({per_image:?} per image)"
    );
    let m = metrics_of(&url).await;
    assert!(
        m.contains(&format!(
            "roadwork_tier1_shed_total{{profile=\"speed\"}} {}",
            burst_size - decided
        )),
        "{m}"
    );
    // The shed images were never encoded, so there is no backlog: the next request is decided.
    let next = predict_json(&c, &url, &support::small_scene(13, 99)).await;
    assert!(next["tiers"][0]["score"].is_number(), "{next}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_unauthenticated_predict_route_answers_loopback_clients_only() {
    // This host's address on its primary interface (no packet is sent by a UDP connect).
    let own_ip = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|u| u.connect("10.255.255.255:9").map(|_| u))
        .and_then(|u| u.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
    let Some(own_ip) = own_ip else {
        eprintln!("skipped: this host has no non-loopback address to connect from");
        return;
    };
    let open = |local_only| async move {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = AppState {
            predict_local_only: local_only,
            ..AppState::new("speed", tier1_a())
        };
        tokio::spawn(async move {
            roadwork::serve::serve_with_peers(
                listener,
                router(Arc::new(state)),
                std::future::pending(),
            )
            .await
        });
        port
    };
    let c = reqwest::Client::new();
    let jpg = support::small_scene(14, 1);
    let port = open(true).await;
    let r = post_image(&c, &format!("http://{own_ip}:{port}"), &jpg).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("local clients only"));
    let local = predict_json(&c, &format!("http://127.0.0.1:{port}"), &jpg).await;
    assert!(local["prediction"].is_number());
    // Opened up by configuration (a miner whose Python side runs on another private host).
    let port = open(false).await;
    let v = predict_json(&c, &format!("http://{own_ip}:{port}"), &jpg).await;
    assert_eq!(v["prediction"], local["prediction"]);
}
