//! The store from the Python data stack: Python `lancedb` opens every table of a demo store as
//! `roadwork store info --json` describes it, and every notebook runs top to bottom on it.
//!
//! The Python environment is the one `scripts/setup` builds from `notebooks/requirements.txt`
//! (`~/.cache/roadwork/venv-<digest>`). Without it the test says so and passes only outside CI;
//! in CI (`CI=true`) a missing environment fails it.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The notebooks and the figure files each must write.
const NOTEBOOK_FIGURES: [(&str, &[&str]); 6] = [
    ("store_tour", &["samples_by_day.png"]),
    ("clusters", &["cluster_map.png"]),
    ("hard_cases", &["hard_cases.png"]),
    ("models", &["model_mcc.png"]),
    ("drift", &["drift.png"]),
    ("traffic", &["traffic.png"]),
];

/// The venv's python, if `scripts/setup` built it.
fn python() -> Option<PathBuf> {
    let req = std::fs::read(support::root().join("notebooks/requirements.txt")).ok()?;
    let digest = hex::encode(Sha256::digest(&req));
    let cache = std::env::var_os("ROADWORK_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/roadwork")))?;
    let py = cache
        .join(format!("venv-{}", &digest[..12]))
        .join("bin/python");
    py.is_file().then_some(py)
}

fn roadwork(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_roadwork"));
    c.arg("--data").arg(data).env_remove("RUST_LOG");
    c
}

fn run(c: &mut Command) -> String {
    let out = c.output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{c:?}\n{text}");
    text
}

#[test]
fn python_reads_the_demo_store_as_store_info_says_and_every_notebook_runs() {
    let Some(py) = python() else {
        assert!(
            std::env::var("CI").is_err(),
            "CI must have the notebooks' Python environment: run scripts/setup"
        );
        eprintln!("skipped: no Python environment (run scripts/setup to build it)");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    run(roadwork(d.path()).args(["demo", "--n", "20"]));
    let store = d.path().join("store");
    let info = run(roadwork(d.path()).args(["store", "info", "--json"]));
    let json_start = info.find('{').unwrap();
    let parsed: serde_json::Value = serde_json::from_str(info[json_start..].trim_end())
        .unwrap_or_else(|e| panic!("{e}: {info}"));
    let tables = parsed["tables"].as_array().unwrap();
    // The demo store has every table, a vector table among them, and a head's snapshot.
    assert!(tables.len() >= 15, "{parsed}");
    assert!(
        tables.iter().any(|t| t["columns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["list_size"].is_number())),
        "{parsed}"
    );
    assert!(!parsed["snapshots"].as_array().unwrap().is_empty());
    let info_path = d.path().join("info.json");
    std::fs::write(&info_path, &info[json_start..]).unwrap();

    let check = run(Command::new(&py)
        .arg(support::root().join("notebooks/check_store.py"))
        .arg(&store)
        .arg(&info_path));
    assert!(check.contains("0 problems"), "{check}");

    let figures = d.path().join("figures");
    let executed = d.path().join("executed");
    let out = run(Command::new(&py)
        .arg(support::root().join("notebooks/run_all.py"))
        .arg("--store")
        .arg(&store)
        .arg("--figures")
        .arg(&figures)
        .arg("--out")
        .arg(&executed));
    for (nb, files) in NOTEBOOK_FIGURES {
        assert!(out.contains(&format!("ok   {nb}.ipynb")), "{out}");
        for f in files {
            let p = figures.join(nb).join(f);
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{p:?}: {e}\n{out}"));
            assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 2000, "{p:?}");
        }
        // The executed copy has outputs and no error output.
        let nb_json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(executed.join(format!("{nb}.ipynb"))).unwrap(),
        )
        .unwrap();
        let outputs: Vec<&serde_json::Value> = nb_json["cells"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["outputs"].as_array())
            .flatten()
            .collect();
        assert!(!outputs.is_empty(), "{nb}");
        assert!(outputs.iter().all(|o| o["output_type"] != "error"), "{nb}");
    }
    // Every notebook in the folder is one the test knows (a new one must say what it draws).
    let mut found: Vec<String> = std::fs::read_dir(support::root().join("notebooks"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".ipynb")
                .map(str::to_string)
        })
        .collect();
    found.sort();
    let mut known: Vec<String> = NOTEBOOK_FIGURES
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    known.sort();
    assert_eq!(found, known);
}
