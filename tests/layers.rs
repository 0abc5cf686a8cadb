//! The floor plan, checked: no module of any crate of the workspace imports one
//! that imports it back, however long the way round. Each `.rs` file is a module;
//! an edge is a `crate::a::b` or `super::` path in its non-test code, resolved to
//! the longest module that exists. A circle fails the test with its members.
//! Beside it: no source file over 600 lines, and the domain crate
//! (`credvault-core`) free of gRPC, HTTP servers and the metrics exporter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path inside its crate (`["provider", "fleetio"]`; the root is `[]`).
type Module = Vec<String>;

/// Every `.rs` file under `dir`, however deep.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir)
            .expect("a source directory")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    files
}

/// The `src` of the server and of each crate of the workspace.
fn source_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src")];
    for entry in std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .flatten()
    {
        if entry.path().join("src").is_dir() {
            dirs.push(entry.path().join("src"));
        }
    }
    dirs
}

/// Every module of the crate whose sources are under `src`, with its file.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    rust_files(src)
        .into_iter()
        .map(|file| {
            let rel = file
                .strip_prefix(src)
                .expect("under src")
                .with_extension("");
            let mut module: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            (module, file)
        })
        .collect()
}

/// The text without comments and without `#[cfg(test)] mod ... { ... }` blocks.
fn non_test_code(text: &str) -> String {
    let text: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_mod = trimmed.starts_with("mod ")
            || trimmed.starts_with("pub mod ")
            || trimmed.starts_with("pub(crate) mod ");
        match (is_mod, after.find('{')) {
            (true, Some(open)) => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (i, c) in after[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &after[end..];
            }
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// Each module's imports of the crate's other modules.
fn edges(mods: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeSet<Module>> {
    let resolve = |path: &[String]| -> Option<Module> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| mods.contains_key(m))
    };
    let mut graph = BTreeMap::new();
    for (module, file) in mods {
        let text = non_test_code(&std::fs::read_to_string(file).expect("a source file"));
        let is_dir_module = matches!(
            file.file_stem().and_then(|s| s.to_str()),
            Some("mod" | "lib" | "main")
        );
        let here: Module = if is_dir_module {
            module.clone()
        } else {
            module[..module.len().saturating_sub(1)].to_vec()
        };
        let mut targets = BTreeSet::new();
        let bytes = text.as_bytes();
        for keyword in ["crate::", "super::"] {
            let mut from = 0;
            while let Some(at) = text[from..].find(keyword) {
                let start = from + at;
                from = start + keyword.len();
                // A whole word only (not `credvault_crate::`).
                if start > 0
                    && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_')
                {
                    continue;
                }
                let tail: String = text[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let parts: Vec<String> = tail
                    .split("::")
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect();
                let path: Module = if parts[0] == "crate" {
                    parts[1..].to_vec()
                } else {
                    let mut base = here.clone();
                    let mut k = 0;
                    while parts.get(k).is_some_and(|p| p == "super") {
                        base.pop();
                        k += 1;
                    }
                    base.extend(parts[k..].iter().cloned());
                    base
                };
                if let Some(target) = resolve(&path) {
                    if &target != module && !target.is_empty() {
                        targets.insert(target);
                    }
                }
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// The strongly connected components with more than one module (Tarjan).
fn circles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        next: usize,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a Module) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in &self.graph[v] {
                let Some((w, _)) = self.graph.get_key_value(w) else {
                    continue;
                };
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let sources = source_dirs();
    let mut report = Vec::new();
    let mut counted = 0;
    for src in &sources {
        let mods = modules(src);
        counted += mods.len();
        for circle in circles(&edges(&mods)) {
            let names: Vec<String> = circle.iter().map(|m| m.join("::")).collect();
            report.push(format!(
                "{}: a circle of {}: {}",
                src.display(),
                names.len(),
                names.join(", ")
            ));
        }
    }
    assert!(
        counted > 50,
        "only {counted} modules found: is the walk right?"
    );
    assert!(report.is_empty(), "import circles:\n{}", report.join("\n"));
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let m = |s: &str| -> Module { s.split("::").map(str::to_owned).collect() };
    let graph: BTreeMap<Module, BTreeSet<Module>> = [
        (m("a"), [m("b")].into()),
        (m("b"), [m("c")].into()),
        (m("c"), [m("a")].into()),
        (m("d"), [m("a")].into()),
    ]
    .into();
    assert_eq!(circles(&graph), vec![vec![m("a"), m("b"), m("c")]]);
    let code = "use crate::x::Y;\n// use crate::z;\n#[cfg(test)]\nmod tests { use crate::w; }\n";
    let text = non_test_code(code);
    assert!(text.contains("crate::x") && !text.contains("crate::z") && !text.contains("crate::w"));
}

/// One job per file: none grows past 600 lines (generated code lives in `OUT_DIR`).
#[test]
fn no_source_file_is_over_600_lines() {
    let files: Vec<PathBuf> = source_dirs().iter().flat_map(|d| rust_files(d)).collect();
    assert!(files.len() > 100, "only {} files found", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).ok()?.lines().count();
            (lines > 600).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split by concern: {long:?}");
}

/// The domain crate depends on no gRPC, no HTTP server and no metrics exporter, so
/// nothing in it can reach the server: read from Cargo's own resolution of the
/// workspace (normal dependencies, however deep). Its one HTTP stack is reqwest's
/// client, for the providers' checks, so hyper is there only beneath reqwest.
#[test]
fn the_core_crate_depends_on_no_grpc_server_or_exporter() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // This machine's platform only: the others' packages need not be downloaded.
    let rustc = std::process::Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc runs");
    let rustc = String::from_utf8_lossy(&rustc.stdout).into_owned();
    let host = rustc
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc names its host");
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", host, "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let nodes = meta["resolve"]["nodes"]
        .as_array()
        .expect("a resolved graph");
    let name_of = |id: &str| -> String {
        meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["id"] == id)
            .and_then(|p| p["name"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let node = |id: &str| nodes.iter().find(|n| n["id"] == id);
    let core = nodes
        .iter()
        .find(|n| name_of(n["id"].as_str().unwrap_or_default()) == "credvault-core")
        .expect("credvault-core in the workspace");
    let normal = |n: &serde_json::Value| -> Vec<String> {
        n["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k["kind"].is_null())
            })
            .filter_map(|d| d["pkg"].as_str().map(str::to_owned))
            .collect()
    };
    let direct: Vec<String> = normal(core).iter().map(|id| name_of(id)).collect();
    let mut seen = BTreeSet::new();
    let mut queue = normal(core);
    while let Some(id) = queue.pop() {
        if seen.insert(id.clone()) {
            if let Some(n) = node(&id) {
                queue.extend(normal(n));
            }
        }
    }
    let all: BTreeSet<String> = seen.iter().map(|id| name_of(id)).collect();
    assert!(all.contains("sled") && all.contains("aes-gcm"), "{all:?}");
    for banned in [
        "credvault",
        "tonic",
        "tonic-health",
        "tonic-reflection",
        "axum",
        "metrics-exporter-prometheus",
        "maud",
    ] {
        assert!(!all.contains(banned), "credvault-core depends on {banned}");
    }
    for banned in ["hyper", "hyper-util", "tower", "h2"] {
        assert!(
            !direct.contains(&banned.to_owned()),
            "credvault-core depends on {banned} itself"
        );
    }
}
