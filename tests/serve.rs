//! The server with real HTTP on 127.0.0.1: the captured bittensor 9.12.2 request and its tampered
//! copies, the local predict route, health and metrics, and head swaps.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use roadwork::embed::{Cpu, DinoV3Config, EmbedConfig, Embedder};
use roadwork::imaging::DecodeLimits;
use roadwork::serve::{AppState, Clock, Metagraph, NonceTracker, Tier1, router};
use roadwork::train::{Head, HeadConfig, ModelCard, TrainedHead, encode_head};
use serde_json::Value;

fn captured() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/protocol/imagesynapse_request_bittensor_9.12.2.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn embedder() -> Arc<Embedder<Cpu>> {
    let cfg = EmbedConfig {
        resolution: 32,
        ..Default::default()
    };
    Arc::new(
        Embedder::load_with(
            &cfg,
            DinoV3Config::new(32, 2, 2, 64),
            None,
            &Default::default(),
        )
        .unwrap(),
    )
}

/// A random linear head for `e`'s features, registered under `version`.
fn head_for(e: &Embedder<Cpu>, version: &str, dim: usize, seed: u64) -> TrainedHead<Cpu> {
    let (card, w) = head_parts(e, version, dim, seed);
    TrainedHead::from_parts(card, &w, &Default::default()).unwrap()
}

/// The model card and safetensors bytes of such a head.
fn head_parts(e: &Embedder<Cpu>, version: &str, dim: usize, seed: u64) -> (ModelCard, Vec<u8>) {
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
    let e = embedder();
    let head = head_for(&e, "head-a", e.dim(), 1);
    let tier1 = Arc::new(Tier1::new(e, head, DecodeLimits::default()).unwrap());
    let req = captured();
    let state = Arc::new(AppState {
        profile: "test".into(),
        tier1: tier1.clone(),
        axon_hotkey: Some(req["miner_ss58"].as_str().unwrap().into()),
        metagraph: Some(Arc::new(Metagraph::open(&mg, 1000.0))),
        nonces: NonceTracker::default(),
        clock,
        deadline: Duration::from_secs(7),
        body_limit_bytes: 32 << 20,
        max_inflight: 64,
        metrics: Default::default(),
        querylog: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    Server {
        url,
        tier1,
        _dir: dir,
    }
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
        let g: Value = c
            .post(format!("{}/v1/predict", s.url))
            .body(garbage)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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
    let h: Value = reqwest::get(format!("{}/healthz", s.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["model_version"], "head-a");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_swap_takes_effect_and_a_mismatched_head_is_refused() {
    let s = start(&[], Clock::System).await;
    let e = embedder();
    // Wrong feature width: refused, the old head keeps serving.
    assert!(
        s.tier1
            .swap_head(head_for(&e, "head-wide", e.dim() * 2, 3))
            .is_err()
    );
    assert_eq!(s.tier1.model_version(), "head-a");
    s.tier1
        .swap_head(head_for(&e, "head-b", e.dim(), 2))
        .unwrap();
    let h: Value = reqwest::get(format!("{}/healthz", s.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["model_version"], "head-b");
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_follows_the_champion_pointer_and_refuses_a_head_that_does_not_fit() {
    use roadwork::serve::{ProfileConfig, ServeConfig, start};
    use roadwork::train::Registry;
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path().join("models")).unwrap();
    let embed = EmbedConfig {
        resolution: 32,
        ..Default::default()
    };
    // The server loads the configured encoder itself: the production path. A tiny one keeps the
    // test fast, so the heads are made for the default ViT-S/16 random encoder's id and dim.
    let e = Arc::new(Embedder::<Cpu>::load(&embed, None, &Default::default()).unwrap());
    for (v, dim, seed) in [
        ("head-1", e.dim(), 1),
        ("head-2", e.dim(), 2),
        ("head-bad", e.dim() + 1, 3),
    ] {
        let (card, w) = head_parts(&e, v, dim, seed);
        reg.register(&card, &w).unwrap();
    }
    reg.set_champion("head-1").unwrap();
    let cfg = ServeConfig {
        watch_ms: 50,
        profiles: vec![
            ProfileConfig {
                name: "speed".into(),
                bind: "127.0.0.1".into(),
                port: 0,
                axon_hotkey: None,
            },
            ProfileConfig {
                name: "accuracy".into(),
                bind: "127.0.0.1".into(),
                port: 0,
                axon_hotkey: None,
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
        let h: Value = reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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
    let e = embedder();
    let head = head_for(&e, "head-a", e.dim(), 1);
    let tier1 = Arc::new(Tier1::new(e, head, DecodeLimits::default()).unwrap());
    let state = Arc::new(AppState {
        profile: "speed".into(),
        tier1,
        axon_hotkey: None,
        metagraph: None,
        nonces: NonceTracker::default(),
        clock: Clock::System,
        deadline: Duration::from_secs(7),
        body_limit_bytes: 32 << 20,
        max_inflight: 64,
        metrics: Default::default(),
        querylog: Some(log.clone()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
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
