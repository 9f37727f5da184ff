//! The public axon against hostile clients: strangers' keys, caller-chosen timeouts, unbounded
//! uuids, stale allow-lists, slow and stalled connections. Each was measured against a live server
//! before the fix (issue "Harden the public axon").

use std::io::{Read, Write};
use std::net::TcpStream;

use super::*;
use roadwork::serve::{ConnLimits, Dendrite, ServeConfig, serve_with_limits};

#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_is_refused_without_an_allow_list_and_unverified_with_allow_any() {
    use roadwork::ingest::Ingestor;
    use roadwork::pipeline::serve::move_querylog;
    let (dir, store) = support::tmp_store().await;
    let (reg, embed) = registry_with_heads(dir.path());
    let axon = Dendrite::from_seed([7; 32]).unwrap();
    let stranger = Dendrite::from_seed([8; 32]).unwrap();
    let ql = dir.path().join("ql");
    let mut cfg = ServeConfig {
        axon_hotkey: Some(axon.hotkey().into()),
        ..support::loopback_serve()
    };
    // No allow-list: an axon profile does not start.
    let refused =
        roadwork::serve::start(&cfg, &embed, DecodeLimits::default(), reg.clone(), &ql).await;
    let why = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        why.contains("allow-list") && why.contains("allow_any_validator"),
        "{why}"
    );
    // Said explicitly: the stranger is answered, and its traffic is never `validator`.
    cfg.allow_any_validator = true;
    let running = roadwork::serve::start(&cfg, &embed, DecodeLimits::default(), reg, &ql)
        .await
        .unwrap();
    let url = format!("http://{}", running.addrs[0].1);
    use base64::Engine;
    let img = base64::engine::general_purpose::STANDARD.encode(support::small_scene(31, 0));
    let p = stranger
        .query(&url, axon.hotkey(), &img, Duration::from_secs(9))
        .await
        .unwrap();
    assert!((0.0..=1.0).contains(&p));
    let h = healthz_of(&url).await;
    assert_eq!(h["allow_any_validator"], true);
    let log = running.querylog.clone();
    let ingestor =
        Ingestor::new(store.clone(), Default::default(), DecodeLimits::default()).quiet();
    move_querylog(&log, &ingestor).await.unwrap();
    let rows = store.samples(None).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].source, "unverified");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_or_infinite_timeout_header_cannot_reopen_the_replay_window() {
    let req = captured();
    // 60 s after capture: stale for a 9 s (or even 12 s) timeout.
    let s = start(
        &[req["validator_ss58"].as_str().unwrap()],
        Clock::FixedNs(capture_time(&req) + 60_000_000_000),
    )
    .await;
    for t in ["1e12", "1e30", "inf", "NaN", "-1"] {
        let r = send(&s.url, &req, |h| {
            h.insert("timeout".into(), Value::from(t));
        })
        .await;
        assert_eq!(r.status(), 401, "timeout {t}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("older than the allowed window"),
            "timeout {t}: {body}"
        );
    }
    // The server is still there and answers the request at its capture time.
    let fresh = start(
        &[req["validator_ss58"].as_str().unwrap()],
        Clock::FixedNs(capture_time(&req) + 1_000_000_000),
    )
    .await;
    assert_eq!(send(&fresh.url, &req, |_| {}).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_long_uuids_leave_nothing_in_memory() {
    let req = captured();
    let dir = tempfile::tempdir().unwrap();
    let mg = write_metagraph(dir.path(), &[req["validator_ss58"].as_str().unwrap()]);
    let state = Arc::new(AppState {
        axon_hotkey: Some(req["miner_ss58"].as_str().unwrap().into()),
        metagraph: Some(Arc::new(Metagraph::open(&mg, 1000.0))),
        clock: Clock::FixedNs(capture_time(&req) + 1_000_000_000),
        ..AppState::new("test", tier1_a())
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = router(state.clone());
    tokio::spawn(async move {
        roadwork::serve::serve_with_peers(listener, app, std::future::pending()).await
    });
    let c = reqwest::Client::new();
    let long = "u".repeat(20_000);
    let mut refused = 0;
    for i in 0..10_000 {
        let uuid = format!("{long}{i}");
        let mut b = c.post(format!("{url}/ImageSynapse"));
        for (k, v) in req["headers"].as_object().unwrap() {
            if ["Host", "Content-Length", "Accept-Encoding"].contains(&k.as_str()) {
                continue;
            }
            let v = if k == "bt_header_dendrite_uuid" {
                uuid.clone()
            } else {
                v.as_str().map_or(v.to_string(), str::to_string)
            };
            b = b.header(k, v);
        }
        if b.body("{}").send().await.unwrap().status() == 401 {
            refused += 1;
        }
    }
    assert_eq!(refused, 10_000);
    assert!(
        state.nonces.is_empty(),
        "{} endpoints remembered",
        state.nonces.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_allow_list_refuses_everyone_and_health_says_degraded() {
    let req = captured();
    let dir = tempfile::tempdir().unwrap();
    let mg = write_metagraph(dir.path(), &[req["validator_ss58"].as_str().unwrap()]);
    let old = std::time::SystemTime::now() - Duration::from_secs(48 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&mg)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let url = listen(AppState {
        axon_hotkey: Some(req["miner_ss58"].as_str().unwrap().into()),
        metagraph: Some(Arc::new(
            Metagraph::open(&mg, 1000.0).with_max_age(Some(Duration::from_secs(6 * 3600))),
        )),
        clock: Clock::FixedNs(capture_time(&req) + 1_000_000_000),
        ..AppState::new("test", tier1_a())
    })
    .await;
    let r = send(&url, &req, |_| {}).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("old"));
    let h = healthz_of(&url).await;
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["metagraph"]["stale"], true);
    let m = metrics_of(&url).await;
    assert!(
        m.contains("roadwork_metagraph_stale{profile=\"test\"} 1"),
        "{m}"
    );
}

/// Opens a connection and writes `head` (request line and headers, no blank line yet).
fn raw(addr: &str, head: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// Whether the server closed `s` (a read returns 0 or fails) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off_a_real_request_is_answered_and_shutdown_finishes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = ConnLimits {
        max_connections: 64,
        header_timeout: Duration::from_millis(800),
        drain: Duration::from_secs(2),
    };
    let app = router(Arc::new(AppState::new("speed", tier1_a())));
    let server = tokio::spawn(serve_with_limits(
        listener,
        app,
        async move {
            let _ = stop_rx.await;
        },
        limits,
    ));
    // 40 slowloris sockets, one header byte each so far; they never finish.
    let slow: Vec<TcpStream> = (0..40)
        .map(|_| raw(&addr, "POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Slow: a"))
        .collect();
    // A real request is answered meanwhile.
    let c = reqwest::Client::new();
    let t = std::time::Instant::now();
    let v = predict_json(&c, &format!("http://{addr}"), &support::small_scene(32, 0)).await;
    assert!(v["prediction"].as_f64().is_some() && t.elapsed() < Duration::from_secs(5));
    // Past the header timeout every slow socket is closed.
    let mut slow = slow;
    let cut = tokio::task::spawn_blocking(move || {
        slow.iter_mut()
            .map(|s| closed_within(s, Duration::from_secs(3)))
            .filter(|c| *c)
            .count()
    })
    .await
    .unwrap();
    assert_eq!(cut, 40, "slow sockets closed by the header timeout");
    // Shutdown with a client holding a connection mid-request finishes within the drain bound.
    let _holder = raw(
        &addr,
        "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab",
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("shutdown finished")
        .unwrap()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_is_not_read_before_the_headers_authenticate_and_a_stalled_body_times_out() {
    let s = start(&[], Clock::System).await;
    let addr = s.url.trim_start_matches("http://").to_string();
    // 32 MiB announced, no axon headers: refused at once, without waiting for the body.
    let t = std::time::Instant::now();
    let mut c = raw(
        &addr,
        "POST /ImageSynapse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 33554432\r\n\r\n{\"image\":\"",
    );
    let mut head = [0u8; 12];
    c.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 401", "{}", String::from_utf8_lossy(&head));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // A local request whose body stalls gets 408 after serve.body_timeout_ms, not a held slot.
    let url = listen(AppState {
        body_timeout: Duration::from_millis(300),
        ..AppState::new("speed", tier1_a())
    })
    .await;
    let addr = url.trim_start_matches("http://").to_string();
    let t = std::time::Instant::now();
    let mut c = raw(
        &addr,
        "POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc",
    );
    c.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 408", "{}", String::from_utf8_lossy(&head));
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_images_hold_at_most_the_decode_slots_and_every_answer_is_finite() {
    let e = embedder();
    let head = head_for(e.as_ref(), "head-a", e.dim(), 1);
    let tier1 = Arc::new(
        Tier1::new(e, head, DecodeLimits::default())
            .unwrap()
            .with_decode_slots(2),
    );
    let url = listen(AppState {
        deadline: Duration::from_millis(300),
        ..AppState::new("speed", tier1.clone())
    })
    .await;
    // Just under the pixel cap: slow to decode, but allowed.
    let mut big = Vec::new();
    image::DynamicImage::ImageLuma8(image::GrayImage::new(7000, 7000))
        .write_to(&mut std::io::Cursor::new(&mut big), image::ImageFormat::Png)
        .unwrap();
    let c = reqwest::Client::new();
    let jobs: Vec<_> = (0..8)
        .map(|_| {
            let (c, url, big) = (c.clone(), url.clone(), big.clone());
            tokio::spawn(async move { predict_json(&c, &url, &big).await })
        })
        .collect();
    for j in jobs {
        let v = j.await.unwrap();
        let p = v["prediction"].as_f64().unwrap();
        assert!(p.is_finite() && (0.0..=1.0).contains(&p) && p != 0.5, "{v}");
    }
    // The decodes the deadline answered for keep their slots until they end, then give them back.
    let slots = tier1.decode_slots();
    for _ in 0..400 {
        if slots.available_permits() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(slots.available_permits(), 2);
    assert!(
        tier1.decode_peak() <= 2,
        "{} decodes ran at once",
        tier1.decode_peak()
    );
    assert!(tier1.decode_peak() >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_limit_is_refused_with_413() {
    let url = listen(AppState {
        body_limit_bytes: 1024,
        ..AppState::new("speed", tier1_a())
    })
    .await;
    let r = post_image(&reqwest::Client::new(), &url, &vec![7u8; 4096]).await;
    assert_eq!(r.status(), 413);
}
