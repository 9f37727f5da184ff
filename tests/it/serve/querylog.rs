//! The durable query log: logged before the reply, moved into Lance once, and kill -9 safe.

use super::*;

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
    // (A crashed server's directory: the live one above is still owned by its server.)
    let crashed = dir.path().join("crashed");
    std::fs::create_dir_all(&crashed).unwrap();
    std::fs::write(
        crashed.join("active-1.jsonl"),
        format!("{first}\n{}", &first[..first.len() / 2]),
    )
    .unwrap();
    let reopened = QueryLog::open(&crashed, 1000, Duration::from_secs(3600)).unwrap();
    assert_eq!(reopened.sealed().unwrap().len(), 1);
    move_querylog(&reopened, &ingestor).await.unwrap();
    assert_eq!(
        store.count_rows(tables::PREDICTIONS, None).await.unwrap(),
        3
    );
    assert_eq!(store.count_rows(tables::SAMPLES, None).await.unwrap(), 3);
    assert!(reopened.sealed().unwrap().is_empty());
}

/// Every line of every segment file under `dir` (active, sealed, done).
fn segment_lines(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for d in [dir.to_path_buf(), dir.join("done")] {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "jsonl") {
                out.extend(
                    std::fs::read_to_string(e.path())
                        .unwrap()
                        .lines()
                        .map(str::to_string),
                );
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_append_is_cut_back_and_the_next_record_is_whole() {
    use roadwork::serve::QueryLog;
    use roadwork::store::querylog::LogLine;
    let dir = tempfile::tempdir().unwrap();
    let ql = dir.path().join("ql");
    let log = Arc::new(QueryLog::open(&ql, 1000, Duration::from_secs(3600)).unwrap());
    let url = listen(AppState {
        querylog: Some(log.clone()),
        ..AppState::new("speed", tier1_a())
    })
    .await;
    let c = reqwest::Client::new();
    predict_json(&c, &url, &support::small_scene(41, 0)).await;
    // The disk fills mid-record: 700 bytes of the next line reach the file, then the write fails.
    log.inject_write_fault(700);
    let v = predict_json(&c, &url, &support::small_scene(41, 1)).await;
    assert!(
        v["prediction"].as_f64().is_some(),
        "the answer is still sent"
    );
    assert!(
        metrics_of(&url)
            .await
            .contains("roadwork_querylog_errors_total{profile=\"speed\"} 1")
    );
    predict_json(&c, &url, &support::small_scene(41, 2)).await;
    let lines = segment_lines(&ql);
    assert_eq!(lines.len(), 2, "the failed record left nothing behind");
    for l in &lines {
        assert!(
            matches!(LogLine::parse(l), Ok(LogLine::Answer(..))),
            "{}",
            &l[..80.min(l.len())]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_segment_is_quarantined_and_the_segments_after_it_still_move() {
    use roadwork::ingest::Ingestor;
    use roadwork::pipeline::serve::move_querylog;
    use roadwork::serve::QueryLog;
    use roadwork::store::tables;
    let (dir, store) = support::tmp_store().await;
    // Two good records from a real server's log.
    let src = dir.path().join("src");
    let log = Arc::new(QueryLog::open(&src, 1000, Duration::from_secs(3600)).unwrap());
    let url = listen(AppState {
        querylog: Some(log.clone()),
        ..AppState::new("speed", tier1_a())
    })
    .await;
    let c = reqwest::Client::new();
    predict_json(&c, &url, &support::small_scene(42, 0)).await;
    predict_json(&c, &url, &support::small_scene(42, 1)).await;
    let good = segment_lines(&src);
    assert_eq!(good.len(), 2);
    // seg-1: invalid UTF-8 and a torn line around a good record; seg-2: the other good record.
    let ql = dir.path().join("ql");
    std::fs::create_dir_all(&ql).unwrap();
    let mut poison = b"\xff\xfe not text\n".to_vec();
    poison.extend_from_slice(good[0].as_bytes());
    poison.extend_from_slice(b"\n{\"v\":2,\"request_id\":\"torn");
    std::fs::write(ql.join("seg-1.jsonl"), &poison).unwrap();
    std::fs::write(ql.join("seg-2.jsonl"), format!("{}\n", good[1])).unwrap();
    let log = QueryLog::open(&ql, 1000, Duration::from_secs(3600)).unwrap();
    let ingestor =
        Ingestor::new(store.clone(), Default::default(), DecodeLimits::default()).quiet();
    let m = move_querylog(&log, &ingestor).await.unwrap();
    assert_eq!(
        (m.segments, m.records, m.quarantined, m.failed),
        (2, 2, 2, 0)
    );
    assert!(log.sealed().unwrap().is_empty());
    assert_eq!(
        store.count_rows(tables::PREDICTIONS, None).await.unwrap(),
        2
    );
    let kept = std::fs::read(ql.join("bad/seg-1.jsonl")).unwrap();
    assert!(kept.starts_with(b"\xff\xfe not text\n") && kept.ends_with(b"torn\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_on_the_same_query_log_is_refused() {
    use roadwork::serve::{QueryLog, start};
    let dir = tempfile::tempdir().unwrap();
    let (reg, embed) = registry_with_heads(dir.path());
    let ql = dir.path().join("ql");
    let cfg = support::loopback_serve();
    let first = start(&cfg, &embed, DecodeLimits::default(), reg.clone(), &ql)
        .await
        .unwrap();
    let c = reqwest::Client::new();
    predict_json(
        &c,
        &format!("http://{}", first.addrs[0].1),
        &support::small_scene(43, 0),
    )
    .await;
    let active = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("active-"))
            .count()
    };
    assert_eq!(active(&ql), 1);
    let second = start(&cfg, &embed, DecodeLimits::default(), reg, &ql).await;
    let why = second.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(why.contains("another process"), "{why}");
    assert!(QueryLog::open(&ql, 10, Duration::from_secs(60)).is_err());
    assert!(QueryLog::open_if_unowned(&ql).unwrap().is_none());
    // The first server's live segment was not sealed under it.
    assert_eq!(active(&ql), 1);
    first.shutdown().await;
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
async fn below_the_disk_floor_answers_are_logged_without_images_and_junk_keeps_its_first_bytes() {
    use base64::Engine as _;
    use roadwork::ingest::Ingestor;
    use roadwork::pipeline::serve::move_querylog;
    use roadwork::serve::QueryLog;
    use roadwork::store::querylog::{ImageCut, QueryLogRecord};
    use roadwork::store::tables;
    let (dir, store) = support::tmp_store().await;
    let ql = dir.path().join("ql");
    let log = Arc::new(QueryLog::open(&ql, 1000, Duration::from_secs(3600)).unwrap());
    log.set_image_limits(0, 4096);
    let url = listen(AppState {
        querylog: Some(log.clone()),
        ..AppState::new("speed", tier1_a())
    })
    .await;
    let c = reqwest::Client::new();
    // 1 MiB that is not an image: answered -1, logged with its first 4 KiB only.
    let junk = vec![b'<'; 1 << 20];
    let v = predict_json(&c, &url, &junk).await;
    assert_eq!(v["prediction"].as_f64(), Some(-1.0));
    // The disk "fills": a floor above any free space. Answers go on, images are not logged.
    log.set_image_limits(u64::MAX, 4096);
    let v = predict_json(&c, &url, &support::small_scene(44, 0)).await;
    let p = v["prediction"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&p), "{v}");
    let h = healthz_of(&url).await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["querylog"]["below_floor"], true, "{h}");
    let m = metrics_of(&url).await;
    for want in [
        "roadwork_querylog_images_cut_total{profile=\"speed\",outcome=\"undecodable\"} 1",
        "roadwork_querylog_images_cut_total{profile=\"speed\",outcome=\"disk_floor\"} 1",
        "roadwork_querylog_below_floor{profile=\"speed\"} 1",
    ] {
        assert!(m.contains(want), "{want} not in\n{m}");
    }
    // Space comes back: the next image is logged whole.
    log.set_image_limits(0, 4096);
    let whole = support::small_scene(44, 1);
    predict_json(&c, &url, &whole).await;
    let recs: Vec<(QueryLogRecord, Vec<u8>)> = segment_lines(&ql)
        .iter()
        .map(|l| QueryLogRecord::parse_line(l).unwrap())
        .collect();
    let cuts: Vec<_> = recs
        .iter()
        .map(|(r, b)| (r.image_cut, r.image_len, b.len()))
        .collect();
    assert_eq!(
        cuts,
        [
            (Some(ImageCut::Undecodable), Some(1 << 20), 4096),
            (
                Some(ImageCut::DiskFloor),
                Some(support::small_scene(44, 0).len() as u64),
                0
            ),
            (None, None, whole.len()),
        ]
    );
    assert_eq!(
        recs[0].0.image_sha256,
        roadwork::store::SampleId::of_bytes(&junk).to_string()
    );
    assert!(recs[0].0.image_b64.len() < 6000);
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&recs[1].0.image_b64)
            .unwrap()
            .len(),
        0
    );
    // In Lance: three predictions, one sample (only the whole image is one).
    let ingestor =
        Ingestor::new(store.clone(), Default::default(), DecodeLimits::default()).quiet();
    let moved = move_querylog(&log, &ingestor).await.unwrap();
    assert_eq!((moved.records, moved.quarantined), (3, 0));
    assert_eq!(
        store.count_rows(tables::PREDICTIONS, None).await.unwrap(),
        3
    );
    assert_eq!(store.count_rows(tables::SAMPLES, None).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_sent_at_once_are_each_logged_once_before_their_replies() {
    use roadwork::serve::QueryLog;
    let dir = tempfile::tempdir().unwrap();
    let ql = dir.path().join("ql");
    let log = Arc::new(QueryLog::open(&ql, 100_000, Duration::from_secs(3600)).unwrap());
    let url = listen(AppState {
        querylog: Some(log.clone()),
        ..AppState::new("speed", tier1_a())
    })
    .await;
    let c = reqwest::Client::new();
    let image = support::small_scene(45, 0);
    let answers = futures::future::join_all((0..24).map(|_| predict_json(&c, &url, &image))).await;
    assert_eq!(answers.len(), 24);
    let lines = segment_lines(&ql);
    assert_eq!(lines.len(), 24);
    let ids: std::collections::HashSet<String> = lines
        .iter()
        .map(|l| {
            roadwork::store::querylog::QueryLogRecord::parse_line(l)
                .unwrap()
                .0
                .request_id
        })
        .collect();
    assert_eq!(ids.len(), 24, "each answer once");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_slow_clients_connected_exits_in_bounded_time_after_the_final_move() {
    use tokio::io::AsyncWriteExt as _;
    let dir = tempfile::tempdir().unwrap();
    registry_with_heads(dir.path());
    let port = free_port();
    let config = dir.path().join("serve.toml");
    // The mover never runs on its own here: only the final move at shutdown can store the answer.
    std::fs::write(
        &config,
        format!(
            "[data]\ndir = {:?}\n\n[embed]\nresolution = 32\n\n[serve]\ningest_every_s = 3600\n\n\
             [[serve.profiles]]\nname = \"speed\"\nbind = \"127.0.0.1\"\nport = {port}\n",
            dir.path()
        ),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let server = spawn_server(&config, &url).await;
    let addr = format!("127.0.0.1:{port}");
    // 16 slowloris sockets, one header byte per second, and one client stalled mid-body.
    let mut slow = Vec::new();
    for _ in 0..16 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        slow.push(tokio::spawn(async move {
            for b in b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n" {
                if s.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled
        .write_all(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    // A real request is answered meanwhile.
    let c = reqwest::Client::new();
    let v = predict_json(&c, &url, &support::small_scene(13, 0)).await;
    let id = v["request_id"].as_str().unwrap().to_string();
    // SIGTERM: the process drains, moves its last segment and exits 0 in bounded time (the
    // bound is the deadline + 2 s; the margin is for a loaded machine).
    let t = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || server.wait_with_output().unwrap()),
    )
    .await
    .expect("roadwork serve did not exit within 30 s of SIGTERM")
    .unwrap();
    let took = t.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(took < Duration::from_secs(20), "exit took {took:?}");
    for s in slow {
        s.abort();
    }
    drop(stalled);
    let store = roadwork::store::Store::open(&dir.path().join("store").to_string_lossy())
        .await
        .unwrap();
    let preds = store.predictions().await.unwrap();
    assert!(
        preds.iter().any(|p| p.request_id == id),
        "the answered request was not moved into Lance at shutdown"
    );
}
