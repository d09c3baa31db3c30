//! The crate's modules form layers: no top-level module of `crate/src` reaches back to itself through
//! the others (issue 22). Core (config, weights, models, schedulers, pipeline, image) never imports the
//! device or web layers' callers, and the web layer depends on core, never the reverse. Test modules
//! (`#[cfg(test)] mod tests`) and comments are left out: they may look at anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules its code names (`crate::x`, `use crate::{x, ..}`;
/// `crate::Error` is the `error` module's).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(&src).unwrap();
        let module =
            relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if module == "lib" || module == "bin" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines().peekable();
        let mut names = BTreeSet::new();
        while let Some(line) = lines.next() {
            if line.trim() == "#[cfg(test)]"
                && lines.peek().is_some_and(|next| next.trim_start().starts_with("mod tests"))
            {
                break;
            }
            let code = line.split("//").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                if let Some(group) = rest.strip_prefix('{') {
                    // `use crate::{a::B, c, ..}`: the first segment of each path.
                    let group = group.split('}').next().unwrap_or("");
                    names.extend(group.split(',').map(|p| p.trim().split("::").next().unwrap_or("").to_string()));
                } else {
                    names.insert(
                        rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("").to_string(),
                    );
                }
            }
        }
        let names = names.into_iter().filter(|n| !n.is_empty()).map(|n| if n == "Error" { "error".into() } else { n });
        graph.entry(module.clone()).or_default().extend(names.filter(|n| *n != module));
    }
    graph
}

/// A path from `from` back to itself, if there is one.
fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in graph.get(last).into_iter().flatten() {
            if next == from {
                return Some([path.clone(), vec![from.to_string()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push([path.clone(), vec![next.clone()]].concat());
            }
        }
    }
    None
}

#[test]
fn crate_modules_have_no_import_cycle() {
    let graph = imports();
    assert!(graph.len() > 10, "crate/src was not read: {graph:?}");
    assert!(graph["pipeline"].contains("models"), "the scan misses imports: {:?}", graph["pipeline"]);
    let cycles: Vec<String> = graph.keys().filter_map(|m| cycle_through(&graph, m)).map(|c| c.join(" -> ")).collect();
    assert!(cycles.is_empty(), "import cycles between crate/src's modules:\n{}", cycles.join("\n"));
}

/// The scan itself finds a planted cycle (so the test above can fail).
#[test]
fn a_planted_cycle_is_found() {
    let mut graph = imports();
    graph.entry("config".into()).or_default().insert("web".into());
    assert!(cycle_through(&graph, "config").is_some());
}
