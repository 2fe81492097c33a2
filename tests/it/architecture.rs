//! The module map in src/lib.rs holds: arrows between lookout's top-level
//! modules (`use crate::X`) never form a circle, and the config is read by
//! `main` and turned into the stages' types, never imported by a stage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its files import.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = crate::common::root().join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut visit = vec![src.clone()];
    while let Some(dir) = visit.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                visit.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let module = module_of(rel);
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Tests may reach anywhere; only the code's own arrows count.
            let code = text.split("#[cfg(test)]").next().unwrap();
            let edges = graph.entry(module.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if name != module && !name.is_empty() {
                    edges.insert(name);
                }
            }
        }
    }
    graph
}

fn module_of(rel: &Path) -> String {
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_owned()
}

#[test]
fn the_modules_import_each_other_without_circles() {
    let graph = imports();
    assert!(graph.len() >= 12, "{graph:?}");
    // Depth-first search for a back edge.
    fn visit<'a>(
        n: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if let Some(i) = path.iter().position(|p| *p == n) {
            return Some(format!("{} -> {n}", path[i..].join(" -> ")));
        }
        if !done.insert(n) {
            return None;
        }
        path.push(n);
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        let circle = visit(n, &graph, &mut vec![], &mut done);
        assert!(circle.is_none(), "a circle: {}", circle.unwrap());
    }
    let into_config: Vec<&String> = graph.iter().filter(|(_, e)| e.contains("config")).map(|(m, _)| m).collect();
    assert!(into_config.is_empty(), "stages import the config: {into_config:?}");
}
