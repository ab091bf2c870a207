//! The crate's layers (docs/architecture.md, ../shared/STYLE.md), checked on the source: a
//! module names (`crate::x`) only modules of layers below its own, or of its own layer; `asof`
//! never names `storage` (the engine injects what it needs); the CLI and the network surfaces
//! name only the engine, the settings and the error type of the library (and surfaces below
//! them). A comment may name anything.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module and its layer.
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("config", 0),
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
                && !["error", "config"].contains(&named.as_str())
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
