//! The crate's layers (docs/architecture.md, ../shared/STYLE.md), checked on the source: a
//! module names (`crate::x`) only modules of layers below its own, or of its own layer; `asof`
//! never names `storage` (the engine injects what it needs); the CLI and the network surfaces
//! name only the engine, the settings, the error type and the core helpers (`parallel`) of the
//! library (and surfaces below them). A comment may name anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module and its layer.
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("config", 0),
    ("memory", 0),
    ("parallel", 0),
    ("storage", 1),
    ("asof", 1),
    ("planner", 2),
    ("frontend", 2),
    ("registry", 2),
    ("engine", 3),
    ("flight", 4),
    ("http", 4),
    ("cluster", 4),
    ("cli", 5),
];

/// Pairs of one layer that may not name each other in this direction.
const FORBIDDEN: &[(&str, &str)] = &[("asof", "storage")];

/// Modules that reach the library through the engine only.
const THROUGH_THE_ENGINE: &[&str] = &["flight", "http", "cluster", "cli"];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file names as `crate::<module>`, outside comments.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let module: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !module.is_empty() {
                named.insert(module);
            }
        }
    }
    named
}

#[test]
fn every_module_names_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(own) = layer(&module) else {
            broken.push(format!(
                "{}: module `{module}` has no layer; add it to LAYERS and docs/architecture.md",
                relative.display()
            ));
            continue;
        };
        checked += 1;
        for named in named_modules(&std::fs::read_to_string(&file).unwrap()) {
            if named == module {
                continue;
            }
            let Some(theirs) = layer(&named) else {
                continue;
            };
            let why = if theirs > own {
                Some(format!("layer {own} names layer {theirs}"))
            } else if FORBIDDEN.contains(&(module.as_str(), named.as_str())) {
                Some("a forbidden pair".to_string())
            } else if THROUGH_THE_ENGINE.contains(&module.as_str())
                && theirs < 3
                && !["error", "config", "parallel"].contains(&named.as_str())
            {
                Some("a surface reaches past the engine".to_string())
            } else {
                None
            };
            if let Some(why) = why {
                broken.push(format!(
                    "{} names `crate::{named}` ({why})",
                    relative.display()
                ));
            }
        }
    }
    assert!(checked > 50, "only {checked} files were checked");
    assert!(broken.is_empty(), "layers broken:\n{}", broken.join("\n"));
}

#[test]
fn the_check_sees_through_comments_but_not_code() {
    let text =
        "use crate::storage::X; // crate::cli\n/// [`crate::engine`]\nlet a = crate::asof::f();";
    let named: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(named, ["asof", "storage"]);
}

// ---------------------------------------------------------------------------------------------
// Cycles between the files of one module
// ---------------------------------------------------------------------------------------------

/// Cycles between sibling files that exist and are known; each names its owner. A cycle not
/// listed here fails the test, and so does a listed one that no longer exists.
const CYCLES_ALLOWED: &[&[&str]] = &[];

/// A file's module path: `src/storage/log.rs` is `storage::log`, `src/storage/mod.rs` is
/// `storage`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut path: Vec<String> = relative
        .iter()
        .map(|c| c.to_string_lossy().to_string())
        .collect();
    let last = path.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        path.push(stem.to_string());
    }
    path
}

/// The code of a file without its comments (line comments; doc comments are line comments).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A file's production code for the cycle check: its code without its unit-test modules
/// (`#[cfg(test)]` then `mod … {`, up to the `}` that closes it at the start of a line). A
/// module's unit tests may drive their file through the module's entry points (the parser's
/// tests parse SQL); that is no dependency of the file's code.
fn production_code(text: &str) -> String {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let test_module = line.trim() == "#[cfg(test)]"
            && lines.peek().is_some_and(|next| {
                let next = next.trim_start();
                next.starts_with("mod ") || next.starts_with("pub mod ")
            });
        if test_module {
            for inner in lines.by_ref() {
                if inner == "}" {
                    break;
                }
            }
            continue;
        }
        out.push(line);
    }
    code_of(&out.join("\n"))
}

/// Parses one use tree (`a::b`, `a::{b, c::d}`, `a as b`) starting at `at`; appends every path
/// it names to `out` (an alias becomes the path's last segment) and returns where it stopped.
fn use_tree(chars: &[char], mut at: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let skip_space = |at: &mut usize| {
        while *at < chars.len() && chars[*at].is_whitespace() {
            *at += 1;
        }
    };
    skip_space(&mut at);
    if chars.get(at) == Some(&'{') {
        at += 1;
        loop {
            skip_space(&mut at);
            match chars.get(at) {
                Some('}') => return at + 1,
                Some(',') => at += 1,
                None => return at,
                Some(_) => {
                    let before = at;
                    at = use_tree(chars, at, prefix, out);
                    if at == before {
                        return at;
                    }
                }
            }
        }
    }
    let ident: String = chars[at..]
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
        .collect();
    if ident.is_empty() {
        return at;
    }
    at += ident.chars().count();
    let mut path = prefix.to_vec();
    path.push(ident);
    if chars.get(at) == Some(&':') && chars.get(at + 1) == Some(&':') {
        return use_tree(chars, at + 2, &path, out);
    }
    let rest: String = chars[at..].iter().take(5).collect();
    if rest.trim_start().starts_with("as ") {
        at += rest.len() - rest.trim_start().len() + 3;
        skip_space(&mut at);
        let alias: String = chars[at..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
            .collect();
        at += alias.chars().count();
        path.push(alias);
    }
    out.push(path);
    at
}

/// Every path that follows `marker` in `code` (`crate::` or `super::`), groups expanded.
fn paths_after(code: &str, marker: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut rest = code;
    let mut offset = 0;
    while let Some(found) = rest.find(marker) {
        let start = offset + found + marker.len();
        // `marker` must start a path, not end an identifier (`my_crate::`).
        let boundary = code[..offset + found]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if boundary {
            let char_start = code[..start].chars().count();
            use_tree(&chars, char_start, &[], &mut out);
        }
        offset = start;
        rest = &code[start..];
    }
    out
}

/// The items a module file re-exports (`pub use file::{A, B as C}`), each with the child file it
/// comes from.
fn re_exports(code: &str) -> Vec<(String, String)> {
    let mut items = Vec::new();
    for marker in ["pub use ", "pub(crate) use ", "pub(super) use "] {
        for path in paths_after(code, marker) {
            if let [file, .., item] = path.as_slice() {
                items.push((item.clone(), file.clone()));
            }
        }
    }
    items
}

/// The sibling files a file names: `crate::<module>::<file>`, `super::<file>`, or an item its
/// module re-exports from `<file>` (`crate::storage::TableName`, `super::TableName`).
fn sibling_edges(
    module: &[String],
    code: &str,
    siblings: &BTreeSet<String>,
    exported: &[(String, String)],
) -> BTreeSet<String> {
    let parent = &module[..module.len() - 1];
    let mut named = Vec::new();
    for path in paths_after(code, "crate::") {
        if path.len() > parent.len() && path[..parent.len()] == *parent {
            named.push(path[parent.len()].clone());
        }
    }
    for path in paths_after(code, "super::") {
        if let Some(first) = path.first() {
            named.push(first.clone());
        }
    }
    let own = module.last().cloned().unwrap_or_default();
    named
        .into_iter()
        .filter_map(|name| {
            if siblings.contains(&name) {
                Some(name)
            } else {
                exported
                    .iter()
                    .find(|(item, _)| *item == name)
                    .map(|(_, file)| file.clone())
            }
        })
        .filter(|file| *file != own && siblings.contains(file))
        .collect()
}

/// The strongly connected parts of a graph with more than one node (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a str) {
            let at = self.index.len();
            self.index.insert(node, at);
            self.low.insert(node, at);
            self.stack.push(node);
            let graph = self.graph;
            for next in graph.get(node).into_iter().flatten() {
                if !self.index.contains_key(next.as_str()) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next.as_str()]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next.as_str()) {
                    let low = self.low[node].min(self.index[next.as_str()]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut part = Vec::new();
                while let Some(top) = self.stack.pop() {
                    part.push(top.to_string());
                    if top == node {
                        break;
                    }
                }
                if part.len() > 1 {
                    part.sort();
                    self.found.push(part);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            walk.visit(node);
        }
    }
    walk.found
}

/// The cycles between sibling files of every module under `src`, each as `module: a.rs, b.rs`
/// with the edges between them.
fn file_cycles(src: &Path) -> Vec<(Vec<String>, String)> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    // Module path -> code, for every file.
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|file| {
            let relative = file.strip_prefix(src).unwrap();
            let text = std::fs::read_to_string(file).unwrap();
            (module_path(relative), production_code(&text))
        })
        .collect();
    let mut graphs: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (module, code) in &modules {
        let Some((_, parent)) = module.split_last() else {
            continue;
        };
        if parent.is_empty() {
            continue;
        }
        let siblings: BTreeSet<String> = modules
            .keys()
            .filter(|m| m.len() == module.len() && m[..parent.len()] == *parent)
            .map(|m| m[parent.len()].clone())
            .collect();
        let exported = modules
            .get(parent)
            .map(|c| re_exports(c))
            .unwrap_or_default();
        let edges = sibling_edges(module, code, &siblings, &exported);
        graphs
            .entry(parent.to_vec())
            .or_default()
            .insert(module[parent.len()].clone(), edges);
    }
    let mut found = Vec::new();
    for (parent, graph) in &graphs {
        for part in cycles(graph) {
            let edges: Vec<String> = part
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|to| part.contains(to))
                        .map(move |to| format!("{from}.rs -> {to}.rs"))
                })
                .collect();
            let described = format!("src/{}/: {}", parent.join("/"), edges.join(", "));
            found.push((
                part.iter()
                    .map(|f| format!("{}::{f}", parent.join("::")))
                    .collect(),
                described,
            ));
        }
    }
    found
}

#[test]
fn no_cycles_between_the_files_of_a_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = file_cycles(&src);
    let unexpected: Vec<&str> = found
        .iter()
        .filter(|(files, _)| !CYCLES_ALLOWED.iter().any(|allowed| allowed == files))
        .map(|(_, described)| described.as_str())
        .collect();
    assert!(
        unexpected.is_empty(),
        "files of one module import each other in a cycle (move what both need into a file of \
         its own):\n{}",
        unexpected.join("\n")
    );
    let gone: Vec<String> = CYCLES_ALLOWED
        .iter()
        .filter(|allowed| !found.iter().any(|(files, _)| files == *allowed))
        .map(|allowed| allowed.join(", "))
        .collect();
    assert!(
        gone.is_empty(),
        "allowed cycles that no longer exist; remove them from CYCLES_ALLOWED:\n{}",
        gone.join("\n")
    );
}

#[test]
fn the_cycle_check_follows_groups_aliases_and_re_exports() {
    let paths = paths_after(
        "use crate::storage::{log::{A, B as C}, warehouse};\nlet x = my_crate::no;",
        "crate::",
    );
    assert_eq!(
        paths,
        [
            vec!["storage", "log", "A"],
            vec!["storage", "log", "B", "C"],
            vec!["storage", "warehouse"],
        ]
    );
    let exported = re_exports("mod a;\npub use a::{X, Y as Z};\npub(crate) use b::W;");
    let siblings: BTreeSet<String> = ["a", "b", "c"].map(String::from).into();
    let module = ["m".to_string(), "c".to_string()];
    let edges = sibling_edges(
        &module,
        "use super::Z;\nuse crate::m::W;",
        &siblings,
        &exported,
    );
    assert_eq!(edges, ["a", "b"].map(String::from).into());

    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(cycles(&graph), [vec!["a", "b", "c"]]);
}
