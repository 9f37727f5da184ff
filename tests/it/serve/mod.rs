//! The server with real HTTP on 127.0.0.1, by area; this file holds the helpers they share.

mod axon;
mod cascade;
mod heads;
mod hostile;
mod images;
mod querylog;
mod shadow;

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

/// A metagraph snapshot under `dir` allowing `hotkeys` (permit, 5000 TAO each).
fn write_metagraph(dir: &Path, hotkeys: &[&str]) -> std::path::PathBuf {
    let mg = dir.join("metagraph.json");
    let neurons: Vec<Value> = hotkeys
        .iter()
        .map(|h| serde_json::json!({"hotkey": h, "stake": 5000.0, "validator_permit": true}))
        .collect();
    std::fs::write(&mg, serde_json::to_string(&neurons).unwrap()).unwrap();
    mg
}

/// Starts a server whose metagraph allows `allowed` hotkeys, with the given clock.
async fn start(allowed: &[&str], clock: Clock) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mg = write_metagraph(dir.path(), allowed);
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
