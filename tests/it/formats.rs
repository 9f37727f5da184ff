//! Golden tests for the files people and other programs read: `CHAMPION.json` (the server and
//! operators follow it), the `head.safetensors` tensor names and shapes (any loader of our heads),
//! and one query-log line (the durable log replayed into the store). `card.json`'s shape is pinned
//! by the training test that produces a real card. A change to any of them is a migration: bump the
//! format's version and keep the old fixture readable.

use crate::support;
use burn::backend::Autodiff;
use chrono::{DateTime, Utc};
use roadwork::embed::Cpu;
use roadwork::store::querylog::{QUERY_LOG_VERSION, QueryLogRecord, TierOutput};
use roadwork::train::{ChampionPointer, FitConfig, HeadConfig, Xy, encode_head, fit};

use crate::train::golden;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn champion_pointer_file_is_pinned() {
    let p = ChampionPointer {
        version: "head-20261201T101530-3fa2c1".into(),
        previous: vec!["head-20261130T020000-00aa11".into()],
        updated_at: at("2026-12-01T10:15:30.5Z"),
    };
    let text = String::from_utf8(serde_json::to_vec_pretty(&p).unwrap()).unwrap() + "\n";
    golden("CHAMPION.json", &text);
    let back: ChampionPointer = serde_json::from_str(&text).unwrap();
    assert_eq!(back, p);
}

#[test]
fn head_safetensors_names_shapes_and_metadata_are_pinned() {
    let mut lines = Vec::new();
    for hidden in [vec![], vec![8, 4]] {
        let head = fit::<Autodiff<Cpu>>(
            &HeadConfig {
                hidden: hidden.clone(),
                dropout: 0.0,
            },
            &FitConfig::default(),
            Xy {
                x: &[0.0, 1.0, 1.0, 0.0, 0.5, 0.5],
                y: &[0, 1, 1],
                dim: 2,
            },
            None,
            1,
            0,
            &Default::default(),
        )
        .head;
        let bytes = encode_head(&head).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| format!("{n} {:?} {:?}", t.dtype(), t.shape()))
            .collect();
        names.sort();
        lines.push(format!("hidden {hidden:?}: metadata {:?}", meta.metadata()));
        lines.extend(names.into_iter().map(|n| format!("  {n}")));
    }
    golden("head.safetensors.txt", &(lines.join("\n") + "\n"));
}

#[test]
fn one_query_log_line_is_pinned() {
    let r = QueryLogRecord {
        v: QUERY_LOG_VERSION,
        request_id: "5f2c-uuid-1733048130000000000".into(),
        received_at: at("2026-12-01T10:15:30.123456Z"),
        answered_at: at("2026-12-01T10:15:30.173456Z"),
        validator_hotkey: Some("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY".into()),
        unverified: true,
        profile: "speed".into(),
        image_b64: "/9j/4AAQ".into(),
        image_sha256: "ab".repeat(32),
        image_cut: None,
        image_len: None,
        model_version: "head-20261201T101530-3fa2c1".into(),
        tiers: vec![
            TierOutput {
                tier: 1,
                score: Some(0.75),
                latency_ms: 48.5,
                error: None,
            },
            TierOutput {
                tier: 2,
                score: None,
                latency_ms: 1500.0,
                error: Some("timeout".into()),
            },
        ],
        decided_by: 1,
        final_score: 0.75,
        latency_ms: 50.0,
        decode_error: None,
    };
    // Version 3: beside a whole record, one whose undecodable payload was cut to its first bytes.
    let cut = QueryLogRecord {
        request_id: "5f2c-uuid-1733048131000000000".into(),
        image_b64: "PGh0bWw+".into(),
        image_cut: Some(roadwork::store::querylog::ImageCut::Undecodable),
        image_len: Some(1_048_576),
        final_score: -1.0,
        decode_error: Some("not an image".into()),
        ..r.clone()
    };
    let whole = serde_json::to_string(&r).unwrap() + "\n";
    let line = whole.clone() + &serde_json::to_string(&cut).unwrap() + "\n";
    golden("querylog.v3.line.jsonl", &line);
    let back: QueryLogRecord = serde_json::from_str(whole.trim_end()).unwrap();
    assert_eq!(back, r);
    let (back, kept) = QueryLogRecord::parse_line(line.lines().nth(1).unwrap()).unwrap();
    assert_eq!((back, kept), (cut, b"<html>".to_vec()));
    // A version-2 line (no cut) still reads.
    let v2 = std::fs::read_to_string(
        support::root().join("tests/fixtures/golden/querylog.v2.line.jsonl"),
    )
    .unwrap();
    let old: QueryLogRecord = serde_json::from_str(v2.trim_end()).unwrap();
    assert_eq!((old.v, old.unverified, old.image_cut), (2, true, None));
    // A version-1 line (no `unverified`) still reads, as verified traffic.
    let v1 = std::fs::read_to_string(
        support::root().join("tests/fixtures/golden/querylog.v1.line.jsonl"),
    )
    .unwrap();
    let old: QueryLogRecord = serde_json::from_str(v1.trim_end()).unwrap();
    assert_eq!((old.v, old.unverified), (1, false));
    // The shadow line beside it.
    let sh = roadwork::store::querylog::ShadowRecord {
        v: QUERY_LOG_VERSION,
        kind: roadwork::store::querylog::SHADOW_KIND.into(),
        request_id: r.request_id.clone(),
        image_sha256: r.image_sha256.clone(),
        validator_hotkey: r.validator_hotkey.clone(),
        champion_version: r.model_version.clone(),
        champion_score: 0.75,
        challenger_version: "head-20261202T101530-9ab0c2".into(),
        challenger_score: 0.25,
        tier1_ms: 48.5,
        champion_head_ms: 0.5,
        challenger_head_ms: 0.75,
        scored_at: at("2026-12-01T10:15:30.180000Z"),
    };
    let line = serde_json::to_string(&sh).unwrap() + "\n";
    golden("querylog.shadow.line.jsonl", &line);
    match roadwork::store::querylog::LogLine::parse(line.trim_end()).unwrap() {
        roadwork::store::querylog::LogLine::Shadow(back) => assert_eq!(back, sh),
        other => panic!("{other:?}"),
    }
}
