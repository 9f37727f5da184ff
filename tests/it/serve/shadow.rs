//! Shadow scoring: a challenger scores every answered image after the answer, never changing it;
//! its scores reach the query log and the store; under load the work is dropped and counted.

use std::collections::HashMap;

use super::*;
use roadwork::serve::{QueryLog, Shadow};
use roadwork::store::querylog::LogLine;

/// Tier 1 serving `head-a`, and the same encoder serving `head-b` (what the challenger must say).
fn pair() -> (Arc<Tier1>, Arc<Tier1>, TrainedHead<Cpu>) {
    let e = embedder();
    let a = head_for(e.as_ref(), "head-a", e.dim(), 1);
    let b = head_for(e.as_ref(), "head-b", e.dim(), 2);
    let b2 = head_for(e.as_ref(), "head-b", e.dim(), 2);
    let t_a = Arc::new(Tier1::new(e.clone(), a, DecodeLimits::default()).unwrap());
    let t_b = Arc::new(Tier1::new(e, b, DecodeLimits::default()).unwrap());
    (t_a, t_b, b2)
}

/// Every line of every segment under `dir` (active, sealed and done).
fn log_lines(dir: &Path) -> Vec<LogLine> {
    let mut out = Vec::new();
    for d in [dir.to_path_buf(), dir.join("done")] {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "jsonl") {
                for l in std::fs::read_to_string(&p).unwrap().lines() {
                    out.push(LogLine::parse(l).unwrap());
                }
            }
        }
    }
    out
}

fn shadows(lines: &[LogLine]) -> Vec<&roadwork::store::querylog::ShadowRecord> {
    lines
        .iter()
        .filter_map(|l| match l {
            LogLine::Shadow(s) => Some(s),
            LogLine::Answer(..) => None,
        })
        .collect()
}

/// Waits until the log under `dir` holds `n` shadow lines.
async fn wait_for_shadows(dir: &Path, n: usize) -> Vec<LogLine> {
    for _ in 0..200 {
        let lines = log_lines(dir);
        if shadows(&lines).len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("fewer than {n} shadow lines after 5 s");
}

/// `roadwork_shadow_total{outcome="…"}` of a profile's metrics text.
fn shadow_count(metrics: &str, outcome: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("roadwork_shadow_total") && l.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_challenger_is_scored_after_the_answer_and_never_changes_it() {
    use roadwork::ingest::Ingestor;
    use roadwork::pipeline::serve::move_querylog;
    use roadwork::store::tables;
    let (dir, store) = support::tmp_store().await;
    let (t_a, t_b, challenger) = pair();
    let images: Vec<Vec<u8>> = (0..12).map(|i| support::small_scene(21, i)).collect();
    let c = reqwest::Client::new();
    // The answers with no challenger anywhere.
    let plain = listen(AppState::new("speed", t_a.clone())).await;
    let mut before = Vec::new();
    for img in &images {
        before.push(predict_json(&c, &plain, img).await["prediction"].clone());
    }

    let ql = dir.path().join("querylog");
    let log = Arc::new(QueryLog::open(&ql, 1000, Duration::from_secs(3600)).unwrap());
    t_a.set_challenger(Some(challenger)).unwrap();
    let shadow = Arc::new(Shadow::start(t_a.clone(), log.clone(), 256).unwrap());
    let url = listen(AppState {
        querylog: Some(log.clone()),
        shadow: Some(shadow),
        ..AppState::new("speed", t_a.clone())
    })
    .await;
    let mut answers = Vec::new();
    for img in &images {
        let v = predict_json(&c, &url, img).await;
        assert_eq!(v["model_version"], "head-a");
        answers.push(v);
    }
    for (a, b) in before.iter().zip(&answers) {
        assert_eq!(a, &b["prediction"], "shadow scoring changed an answer");
    }

    let lines = wait_for_shadows(&ql, images.len()).await;
    let by_request: HashMap<String, &roadwork::store::querylog::QueryLogRecord> = lines
        .iter()
        .filter_map(|l| match l {
            LogLine::Answer(r, _) => Some((r.request_id.clone(), r.as_ref())),
            LogLine::Shadow(_) => None,
        })
        .collect();
    let sh = shadows(&lines);
    assert_eq!(sh.len(), images.len());
    let mut differ = 0;
    for s in &sh {
        let answer = by_request[&s.request_id];
        assert_eq!(s.image_sha256, answer.image_sha256);
        assert_eq!(
            (s.champion_version.as_str(), s.challenger_version.as_str()),
            ("head-a", "head-b")
        );
        assert_eq!(Some(s.champion_score), answer.tier_score(1));
        let img = images
            .iter()
            .find(|i| roadwork::store::SampleId::of_bytes(i).to_string() == s.image_sha256)
            .unwrap();
        // What head-b says serving the same image is what it said in shadow.
        let want = t_b.predict(img).unwrap().prob;
        assert!(
            (s.challenger_score - want).abs() < 1e-6,
            "{} vs {want}",
            s.challenger_score
        );
        assert!(s.tier1_ms >= s.champion_head_ms && s.challenger_head_ms >= 0.0);
        if (s.challenger_score - s.champion_score).abs() > 1e-3 {
            differ += 1;
        }
    }
    assert!(
        differ > 0,
        "the two heads must differ for this test to mean anything"
    );

    // Into Lance: one row per shadow line, and a second ingest of the same segment adds none.
    let ingestor =
        Ingestor::new(store.clone(), Default::default(), DecodeLimits::default()).quiet();
    move_querylog(&log, &ingestor).await.unwrap();
    let rows = store
        .shadow_scores(Some("head-b"), Some("head-a"))
        .await
        .unwrap();
    assert_eq!(rows.len(), images.len());
    assert_eq!(
        store.count_rows(tables::PREDICTIONS, None).await.unwrap(),
        12
    );
    let done = std::fs::read_dir(ql.join("done"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let again = ingestor.ingest_querylog(&done).await.unwrap();
    assert_eq!(again.shadow_scores_written, 0);
    assert_eq!(
        store.count_rows(tables::SHADOW_SCORES, None).await.unwrap(),
        12
    );
    let stats = roadwork::train::ShadowStats::of(&rows).unwrap();
    assert_eq!((stats.n, stats.images), (12, 12));
    assert!((stats.agreement + stats.flip_rate - 1.0).abs() < 1e-9);

    // Removing the challenger stops shadow scoring; answers stay the same.
    t_a.set_challenger(None).unwrap();
    let v = predict_json(&c, &url, &images[0]).await;
    assert_eq!(v["prediction"], before[0]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(shadows(&log_lines(&ql)).len(), images.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn under_a_burst_every_shadow_job_is_scored_or_counted_dropped_and_answers_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (t_a, _, challenger) = pair();
    let images: Vec<Vec<u8>> = (0..4).map(|i| support::small_scene(22, i)).collect();
    let c = reqwest::Client::new();
    let plain = listen(AppState::new("speed", t_a.clone())).await;
    let mut want = Vec::new();
    for img in &images {
        want.push(predict_json(&c, &plain, img).await["prediction"].clone());
    }
    let log = Arc::new(
        QueryLog::open(&dir.path().join("ql"), 10_000, Duration::from_secs(3600)).unwrap(),
    );
    t_a.set_challenger(Some(challenger)).unwrap();
    // A queue of one: a burst overflows it.
    let shadow = Arc::new(Shadow::start(t_a.clone(), log.clone(), 1).unwrap());
    let url = listen(AppState {
        querylog: Some(log),
        shadow: Some(shadow),
        ..AppState::new("speed", t_a.clone())
    })
    .await;
    let n = 48;
    let jobs: Vec<_> = (0..n)
        .map(|i| {
            let (c, url, img) = (c.clone(), url.clone(), images[i % 4].clone());
            tokio::spawn(async move { predict_json(&c, &url, &img).await })
        })
        .collect();
    for (i, j) in jobs.into_iter().enumerate() {
        let v = j.await.unwrap();
        assert_eq!(v["prediction"], want[i % 4], "request {i}");
    }
    // Every answer's shadow job ends as exactly one counted outcome.
    let mut total = 0;
    for _ in 0..200 {
        let m = metrics_of(&url).await;
        total = ["scored", "dropped_load", "dropped_queue_full"]
            .iter()
            .map(|o| shadow_count(&m, o))
            .sum::<u64>();
        if total == n as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(total, n as u64);
    let m = metrics_of(&url).await;
    assert!(shadow_count(&m, "scored") > 0, "{m}");
}
