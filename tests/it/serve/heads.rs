//! Head swaps: explicit, following the champion pointer, and under load.

use super::*;

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
async fn serve_follows_the_challenger_pointer_and_promotion_retires_it() {
    use roadwork::serve::start;
    let dir = tempfile::tempdir().unwrap();
    let (reg, embed) = registry_with_heads(dir.path());
    // The pointer refuses the champion, unknown heads and names outside the registry.
    assert!(reg.set_challenger("head-1", "t").is_err());
    assert!(reg.set_challenger("head-9", "t").is_err());
    assert!(reg.set_challenger("../head-2", "t").is_err());
    reg.set_challenger("head-2", "t").unwrap();
    let cfg = support::loopback_serve();
    let running = start(
        &cfg,
        &embed,
        DecodeLimits::default(),
        reg.clone(),
        &dir.path().join("ql"),
    )
    .await
    .unwrap();
    let challenger = |t: &Tier1| t.challenger().map(|h| h.card.model_version.clone());
    assert_eq!(challenger(&running.tier1).as_deref(), Some("head-2"));
    let until = |want: Option<&'static str>| {
        let t = running.tier1.clone();
        async move {
            for _ in 0..100 {
                if challenger(&t).as_deref() == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("challenger is {:?}, want {want:?}", challenger(&t));
        }
    };
    // A head for other features is refused: no challenger rather than a wrong one.
    reg.set_challenger("head-bad", "t").unwrap();
    until(None).await;
    reg.set_challenger("head-2", "t").unwrap();
    until(Some("head-2")).await;
    reg.clear_challenger().unwrap();
    until(None).await;
    // Promoting the challenger retires its pointer: it serves now.
    reg.set_challenger("head-2", "t").unwrap();
    until(Some("head-2")).await;
    reg.set_champion("head-2").unwrap();
    assert!(reg.challenger().unwrap().is_none());
    until(None).await;
    let url = format!("http://{}", running.addrs[0].1);
    for _ in 0..100 {
        if healthz_of(&url).await["model_version"] == "head-2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(running.tier1.model_version(), "head-2");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_swaps_under_load_fail_no_request() {
    use roadwork::serve::{Dendrite, ServeConfig, start};
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
        ..support::loopback_serve()
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
