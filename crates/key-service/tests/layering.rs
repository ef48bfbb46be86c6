//! The key service is layered one way (ARCHITECTURE.md): no file of `src/` imports, directly or
//! through others, a file that imports it. This test reads the sources, resolves every
//! `crate::…`, `super::…` and child-module path outside tests and comments to the file that
//! defines it, and fails on any circle, naming its files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

fn modules(dir: &Path, at: &Module, out: &mut BTreeMap<Module, String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            let mut m = at.clone();
            m.push(name);
            modules(&p, &m, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let mut m = at.clone();
            if !matches!(stem, "mod" | "lib" | "main") {
                m.push(stem.to_string());
            }
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            out.insert(m, code_of(&text));
        }
    }
}

/// The text before the unit tests, without comments.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every path that starts with `crate`, `super` or `self`, with `a::{b, c::d}` expanded one level.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .find(|s| code_at(&bytes, i, s))
            .filter(|_| i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != ':');
        let Some(_) = starts else {
            i += 1;
            continue;
        };
        let mut j = i;
        let mut head = String::new();
        while j < bytes.len() && (is_ident(bytes[j]) || bytes[j] == ':') {
            head.push(bytes[j]);
            j += 1;
        }
        let group = head.ends_with("::") && bytes.get(j) == Some(&'{');
        let head = head.trim_end_matches(':').to_string();
        let base: Vec<String> = head.split("::").map(str::to_string).collect();
        if group {
            let close = (j..bytes.len())
                .find(|&k| bytes[k] == '}')
                .unwrap_or(bytes.len());
            let inner: String = bytes[j + 1..close].iter().collect();
            for part in inner.split(',') {
                let part = part.trim();
                if !part.is_empty() {
                    let mut p = base.clone();
                    p.extend(part.split("::").map(|s| s.trim().to_string()));
                    out.push(p);
                }
            }
            j = close;
        } else {
            out.push(base);
        }
        i = j.max(i + 1);
    }
    out
}

fn code_at(text: &[char], i: usize, s: &str) -> bool {
    s.chars()
        .enumerate()
        .all(|(k, c)| text.get(i + k) == Some(&c))
}

fn edges(files: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let resolve = |path: &[String]| -> Option<Module> {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| files.contains_key(m))
    };
    let mut graph = BTreeMap::new();
    for (module, code) in files {
        let mut deps = BTreeSet::new();
        for p in paths(code) {
            let mut at: Vec<String> = Vec::new();
            let mut rest = &p[..];
            if rest.first().map(String::as_str) == Some("crate") {
                rest = &rest[1..];
            } else {
                at = module.clone();
                while let Some(first) = rest.first() {
                    match first.as_str() {
                        "super" => {
                            at.pop();
                        }
                        "self" => {}
                        _ => break,
                    }
                    rest = &rest[1..];
                }
            }
            at.extend(rest.iter().cloned());
            if let Some(target) = resolve(&at) {
                if &target != module {
                    deps.insert(target);
                }
            }
        }
        // A child module named in its parent (`keys::list`) is a dependency too.
        for child in files.keys() {
            if child.len() == module.len() + 1 && child.starts_with(module) {
                let name = format!("{}::", child[module.len()]);
                let named = code.match_indices(&name).any(|(k, _)| {
                    let before = code[..k].chars().next_back();
                    !before.is_some_and(|c| is_ident(c) || c == ':')
                });
                if named {
                    deps.insert(child.clone());
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// The circles of `graph`: its strongly connected components of more than one file.
fn circles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    let reach = |from: &Module| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(m) = todo.pop() {
            for d in graph.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&Module, BTreeSet<Module>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut out: Vec<Vec<Module>> = Vec::new();
    for m in graph.keys() {
        if out.iter().any(|c| c.contains(m)) || !reached[m].contains(m) {
            continue;
        }
        let circle: Vec<Module> = graph
            .keys()
            .filter(|o| reached[m].contains(*o) && reached[*o].contains(m))
            .cloned()
            .collect();
        out.push(circle);
    }
    out
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "lib.rs".into()
    } else {
        m.join("::")
    }
}

#[test]
fn no_file_imports_itself_through_others() {
    let mut files = BTreeMap::new();
    modules(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &Vec::new(),
        &mut files,
    );
    assert!(files.len() > 10, "the sources were not found");
    let graph = edges(&files);
    let found = circles(&graph);
    let report: Vec<String> = found
        .iter()
        .map(|c| {
            c.iter()
                .map(|m| {
                    let deps: Vec<String> = graph[m]
                        .iter()
                        .filter(|d| c.contains(d))
                        .map(name)
                        .collect();
                    format!("  {} → {}", name(m), deps.join(", "))
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    assert!(found.is_empty(), "import circles:\n{}", report.join("\n\n"));
}

#[test]
fn the_checker_sees_a_circle() {
    let files: BTreeMap<Module, String> = [
        (vec![], "mod a; mod b;".to_string()),
        (vec!["a".into()], "use crate::b::thing;".to_string()),
        (vec!["b".into()], "use super::a::{x, y::z};".to_string()),
        (vec!["c".into()], "use crate::a; // crate::c".to_string()),
    ]
    .into_iter()
    .collect();
    let graph = edges(&files);
    assert_eq!(
        circles(&graph),
        vec![vec![vec!["a".to_string()], vec!["b".to_string()]]]
    );
    assert!(graph[&vec!["c".to_string()]].contains(&vec!["a".to_string()]));
}
