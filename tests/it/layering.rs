//! The layering of `src/`: nothing in the library imports `bench` or the binary's `cli`, and no two
//! top-level modules import each other, directly or through others (a cycle means one of them holds
//! a concept that belongs in a lower module).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support;

/// `crate::<name>` references in the Rust files under `path`, comments skipped.
fn references(path: &Path, out: &mut BTreeSet<String>) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap().flatten() {
            references(&e.path(), out);
        }
        return;
    }
    if path.extension().is_none_or(|e| e != "rs") {
        return;
    }
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = support::root().join("src");
    let mut graph = BTreeMap::new();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        let p = e.path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "main" || name == "lib" {
            continue;
        }
        let mut refs = BTreeSet::new();
        references(&p, &mut refs);
        refs.remove(&name);
        graph.insert(name, refs);
    }
    graph
}

#[test]
fn the_library_never_imports_bench_or_cli() {
    for (m, refs) in module_graph() {
        if m == "bench" || m == "cli" {
            continue;
        }
        assert!(
            !refs.contains("bench") && !refs.contains("cli"),
            "src/{m} imports {refs:?}"
        );
    }
}

#[test]
fn no_import_cycle_between_the_folders_of_src() {
    let g = module_graph();
    assert!(g.len() > 10, "{g:?}");
    // Depth-first search with the path on a stack; a back edge is a cycle.
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        m: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if !done.insert(m.to_string()) {
            return None;
        }
        path.push(m.to_string());
        for d in g.get(m).into_iter().flatten() {
            if let Some(c) = visit(g, d, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        if let Some(c) = visit(&g, m, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", c.join(" → "));
        }
    }
}
