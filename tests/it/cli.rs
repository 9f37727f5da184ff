//! The binary end to end (every `--help` example is checked by the parser walk in `src/main.rs`):
//! the demo, and `roadwork query` on what the demo stored.

use crate::support;

use std::process::Command;

fn roadwork(data: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_roadwork"));
    c.arg("--data").arg(data).env_remove("RUST_LOG");
    c
}

#[test]
fn demo_then_query_then_demo_again_adds_nothing() {
    let d = tempfile::tempdir().unwrap();
    let out = roadwork(d.path())
        .args(["demo", "--n", "20"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("samples by source and effective label"),
        "{text}"
    );
    // 60 NATIX rows, 20 pool scenes, 20 validator-traffic crops, and the 12 images the demo
    // validator sent the served champion (moved from the query log into Lance).
    let total: usize = text
        .lines()
        .find_map(|l| l.strip_suffix(" samples in the store")?.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    let synthetic = total.checked_sub(112).unwrap_or_else(|| panic!("{text}"));
    // The synth stage filled gaps with procedural images each night, within its cap.
    assert!(text.contains("synth: "), "{text}");
    // Two nights, the annotator's labels in between, and a run report per night.
    assert!(
        text.contains("== night 1 ==") && text.contains("== night 2 =="),
        "{text}"
    );
    assert!(text.contains("the demo annotator answered"), "{text}");
    assert_eq!(text.matches("report: ").count(), 2, "{text}");
    for line in text.lines().filter(|l| l.starts_with("report: ")) {
        let p = std::path::Path::new(line.trim_start_matches("report: "));
        let html = std::fs::read_to_string(p).unwrap();
        assert!(
            html.contains("<h2>Promotion</h2>") && html.contains("<svg"),
            "{p:?}"
        );
    }
    assert!(
        text.contains("served the champion at http://127.0.0.1:"),
        "{text}"
    );
    let answers: Vec<f64> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("scene "))
        .filter_map(|l| l.rsplit("prediction ").next()?.trim().parse().ok())
        .collect();
    assert_eq!(answers.len(), 12, "{text}");
    assert!(answers.iter().all(|p| (0.0..=1.0).contains(p) && *p != 0.5));
    assert!(
        text.contains("prediction -1.0000"),
        "the corrupt image: {text}"
    );
    assert!(
        text.contains(
            "roadwork_requests_total{profile=\"speed\",route=\"/ImageSynapse\",status=\"200\"} 13"
        ),
        "{text}"
    );
    assert!(
        text.contains("query log: 13 answers moved into Lance"),
        "{text}"
    );
    assert!(
        text.contains("baseline encoder (colour + gradient histograms), not DINOv3"),
        "the demo says it runs the baseline, not DINOv3: {text}"
    );

    let per_source = || {
        roadwork(d.path())
            .args([
                "query",
                "--format",
                "csv",
                "SELECT source, count(*) AS n FROM samples GROUP BY source ORDER BY source",
            ])
            .output()
            .unwrap()
    };
    let by_source = |out: &[u8]| {
        String::from_utf8_lossy(out)
            .lines()
            .filter(|l| !l.starts_with("synthetic,"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let q = per_source();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    assert_eq!(
        by_source(&q.stdout),
        "source,n\ndataset,60\nupload,20\nvalidator,32"
    );
    assert!(
        String::from_utf8_lossy(&q.stdout).contains(&format!("synthetic,{synthetic}\n"))
            || synthetic == 0
    );

    let again = roadwork(d.path())
        .args(["demo", "--n", "20"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("reusing"), "{text}");
    // No real image is added twice; synthesis may fill more of a gap on the new nights (never
    // past its per-cluster cap).
    let q = per_source();
    assert_eq!(
        by_source(&q.stdout),
        "source,n\ndataset,60\nupload,20\nvalidator,32"
    );

    // similar: by sample id, and by an image file that is not in the store (embedded on the fly
    // with the encoder the demo used).
    let ids = roadwork(d.path())
        .args([
            "query",
            "--format",
            "csv",
            "SELECT sample_id FROM samples ORDER BY sample_id LIMIT 1",
        ])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&ids.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .to_string();
    let sim = roadwork(d.path())
        .args(["similar", &id, "-k", "5"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&sim.stdout);
    assert!(
        sim.status.success(),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(
        !text.contains(&id),
        "a sample is not its own neighbour:\n{text}"
    );
    let photo = d.path().join("new.jpg");
    std::fs::write(&photo, support::small_scene(99, 3)).unwrap();
    let sim = roadwork(d.path())
        .args([
            "similar",
            photo.to_str().unwrap(),
            "-k",
            "3",
            "--where",
            "source = 'validator'",
        ])
        .output()
        .unwrap();
    assert!(
        sim.status.success(),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&sim.stdout).lines().count(), 4);
    // mine select → CSV of unlabelled (validator) samples.
    let csv = d.path().join("to_label.csv");
    let sel = roadwork(d.path())
        .args([
            "mine",
            "select",
            "--budget",
            "5",
            "--name",
            "t1",
            "--out",
            csv.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        sel.status.success(),
        "{}",
        String::from_utf8_lossy(&sel.stderr)
    );
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 6);

    // models challenger: name the other head for shadow scoring, show it, clear it.
    let run = |args: &[&str]| {
        let o = roadwork(d.path()).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let list = run(&["models", "list"]);
    let other = list
        .lines()
        .find(|l| l.starts_with(' '))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("the demo's two nights leave two heads:\n{list}"))
        .to_string();
    assert!(run(&["models", "challenger", &other]).contains("is the challenger"));
    assert!(run(&["models", "list"]).contains(&format!("~ {other}")));
    let shown = run(&["models", "challenger"]);
    assert!(
        shown.contains(&other) && shown.contains("no shadow answers"),
        "{shown}"
    );
    assert!(run(&["models", "challenger", "--clear"]).contains("stopped"));
    assert!(run(&["models", "challenger"]).contains("no challenger named"));

    let bad = roadwork(d.path())
        .args(["query", "SELECT nope FROM samples"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("error: query failed"));
}

/// Every committed pipeline configuration loads and validates.
#[test]
fn pipeline_configs_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            roadwork::config::Config::load(Some(&p))
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 1);
}
