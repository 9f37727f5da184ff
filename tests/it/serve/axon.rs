//! The axon route: the captured bittensor request, tampered copies, stale nonces, the allow-list,
//! and the unauthenticated route refused to strangers.

use super::*;

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
