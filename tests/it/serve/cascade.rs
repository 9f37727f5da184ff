//! The tier-2 cascade against a fake VLM, the in-flight limit, and load shedding.

use super::*;

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
