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
