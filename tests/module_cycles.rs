//! No import cycles between the top-level modules of a crate.
//!
//! For every crate of the workspace (`crates/*/src`, `xtask/src`) the test builds the graph of
//! `crate::<module>` references between its top-level modules — `use crate::a::...`,
//! `use crate::{a, b::c}` and paths `crate::a::...` in code, comments and string literals
//! left out — and fails naming every cycle, with where each of its edges comes from. A module
//! is a file `src/a.rs` or a directory `src/a/` (all its files count as `a`); `lib.rs` and
//! `main.rs` are the root and are left out (re-exports there make no edges). `super::` stays
//! inside a module (from `src/a/b.rs` it is `a`), so it is not counted. Plain text scanning,
//! no parser: enough for `use` lines and paths, which is what makes a cycle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level module → module it references → where (the first `file:line`).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// The top-level modules of the crate whose sources are in `src`, with their files.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(src) else { return out };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        if p.is_file() {
            if let Some(stem) = name.strip_suffix(".rs").filter(|s| *s != "lib" && *s != "main") {
                out.entry(stem.to_string()).or_default().push(p.clone());
            }
        } else if p.is_dir() && (p.join("mod.rs").is_file() || src.join(format!("{name}.rs")).is_file()) {
            // `src/bin/` and other directories that are not modules have neither.
            let files = out.entry(name).or_default();
            rust_files(&p, files);
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `code` with comments and the contents of string and character literals blanked out
/// (newlines kept, so line numbers stay).
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_at(&c, i) {
            // A raw string r#"..."#: ends at a quote followed by as many hashes.
            i += hashes + 2;
            while i < c.len()
                && !(c[i] == '"' && c[i + 1..].iter().take(hashes).filter(|&&h| h == '#').count() == hashes)
            {
                out.push(blank(c[i]));
                i += 1;
            }
            i += 1 + hashes;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = c.get(i) {
                    out.push(blank(ch));
                }
                i += 1;
            }
            i += 1;
        } else if c[i] == '\'' && (next == Some('\\') || c.get(i + 2) == Some(&'\'')) {
            // A character literal ('x', '\n', '\u{..}'); a lifetime ('a) is kept as code.
            i += 1;
            while i < c.len() && c[i] != '\'' {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The number of `#` of a raw string literal starting at `c[i]` (`r"`, `r#"`, ...), if one does.
fn raw_string_at(c: &[char], i: usize) -> Option<usize> {
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    if c[i] != 'r' || (i > 0 && ident(c[i - 1])) {
        return None;
    }
    let hashes = c[i + 1..].iter().take_while(|&&h| h == '#').count();
    (c.get(i + 1 + hashes) == Some(&'"')).then_some(hashes)
}

/// The first path segment after each `crate::` in `code`, with its 1-based line; a group
/// `crate::{a, b::c}` gives each of its members.
fn crate_references(code: &str) -> Vec<(usize, String)> {
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let first_segment = |s: &str| s.trim().chars().take_while(|&ch| ident(ch)).collect::<String>();
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].chars().next_back().is_some_and(ident) {
            continue; // e.g. `mycrate::`
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut member = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push((line, first_segment(&member)));
                        member.clear();
                        continue;
                    }
                    _ => {}
                }
                member.push(ch);
            }
            out.push((line, first_segment(&member)));
        } else {
            out.push((line, first_segment(rest)));
        }
    }
    out.retain(|(_, m)| !m.is_empty() && m != "self");
    out
}

/// The module graph of the crate whose sources are in `src`.
fn graph(src: &Path) -> Graph {
    let modules = modules(src);
    let mut g: Graph = modules.keys().map(|m| (m.clone(), BTreeMap::new())).collect();
    for (m, files) in &modules {
        for f in files {
            let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            for (line, target) in crate_references(&code_only(&text)) {
                if &target != m && modules.contains_key(&target) {
                    let at = format!("{}:{line}", f.strip_prefix(src).unwrap_or(f).display());
                    g.entry(m.clone()).or_default().entry(target).or_insert(at);
                }
            }
        }
    }
    g
}

/// Every elementary cycle of `g`, each once, starting at its smallest module.
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    fn walk(g: &Graph, start: &str, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        let Some(last) = path.last().cloned() else { return };
        for next in g.get(&last).into_iter().flat_map(|e| e.keys()) {
            if next == start {
                out.push(path.clone());
            } else if next.as_str() > start && !path.contains(next) && out.len() < 1000 {
                path.push(next.clone());
                walk(g, start, path, out);
                path.pop();
            }
        }
    }
    let mut out = Vec::new();
    for start in g.keys() {
        walk(g, start, &mut vec![start.clone()], &mut out);
    }
    out
}

/// A cycle on one line, with the place of each edge.
fn describe(g: &Graph, cycle: &[String]) -> String {
    let mut s = cycle.join(" → ");
    s.push_str(&format!(" → {} (", cycle[0]));
    let edges: Vec<String> = cycle
        .iter()
        .zip(cycle.iter().cycle().skip(1))
        .map(|(a, b)| format!("{}: crate::{b}", g[a][b]))
        .collect();
    s.push_str(&edges.join("; "));
    s.push(')');
    s
}

/// Every crate's source directory: `crates/*/src` and `xtask/src`.
fn crate_sources() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    crates.sort();
    crates.push(root.join("xtask"));
    for c in crates {
        let src = c.join("src");
        if src.join("lib.rs").is_file() || src.join("main.rs").is_file() {
            let name = c.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            out.push((name, src));
        }
    }
    out
}

#[test]
fn no_crate_has_an_import_cycle_between_its_modules() {
    let sources = crate_sources();
    assert!(sources.len() >= 10, "found the crates: {sources:?}");
    assert!(sources.iter().any(|(n, _)| n == "mappo-serve") && sources.iter().any(|(n, _)| n == "xtask"));
    let mut found = Vec::new();
    for (name, src) in &sources {
        let g = graph(src);
        for c in cycles(&g) {
            found.push(format!("{name}: {}", describe(&g, &c)));
        }
    }
    assert!(
        found.is_empty(),
        "{} import cycle(s) between modules (make one side depend on the other only, e.g. by \
         moving what both need into a module below them):\n  {}",
        found.len(),
        found.join("\n  ")
    );
}

/// The scanner on a made-up crate: groups, submodules, paths in code; not comments, strings,
/// `super::` or `pub(crate)`.
#[test]
fn the_scanner_finds_every_cycle_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path();
    let write = |path: &str, text: &str| {
        let p = src.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write("lib.rs", "mod a; mod b; mod c; mod d; mod e; mod f; mod g; mod h;\npub use crate::a::X;\n");
    // a → b (a group), b → a (from a file of b's directory): a cycle.
    write("a.rs", "use std::fmt;\nuse crate::{\n    b::{self, Y},\n    c as see,\n};\npub struct X;\n");
    write("b/mod.rs", "mod inner;\npub(crate) struct Y;\nuse super::*;\n");
    write("b/inner.rs", "fn f() -> crate::a::X { crate::a::X }\n");
    // c references a and d only in comments, strings and with `super::`: no edge.
    write(
        "c.rs",
        "// use crate::a;\n/* crate::d::x /* nested crate::d */ */\nconst S: &str = \"crate::a::X\";\n\
         const R: &str = r#\"crate::d\"#;\nconst Q: char = '\"';\nfn g<'a>(x: &'a str) -> &'a str { super::h(x) }\n\
         pub(crate) fn h() {}\nuse mycrate::d;\n",
    );
    // d → e, d → f, e → f, e → d, f → d: three cycles through d.
    write("d.rs", "pub fn x() { crate::e::y(); crate::f::z(); }\n");
    write("e.rs", "pub fn y() { crate::f::z() }\nuse crate::d;\n");
    write("f.rs", "pub fn z() { crate::d::x() }\n");
    // g → h only.
    write("g/mod.rs", "use crate::h::W;\n");
    write("h.rs", "pub struct W;\nuse crate::lib;\n");
    std::fs::create_dir_all(src.join("bin")).expect("bin");
    std::fs::write(src.join("bin/tool.rs"), "use crate::a;").expect("write");

    let g = graph(src);
    let names: Vec<&str> = g.keys().map(String::as_str).collect();
    assert_eq!(names, ["a", "b", "c", "d", "e", "f", "g", "h"], "modules; bin/ is none");
    let edges = |m: &str| g[m].keys().cloned().collect::<Vec<_>>();
    assert_eq!(edges("a"), ["b", "c"]);
    assert_eq!(edges("b"), ["a"]);
    assert_eq!(g["b"]["a"], "b/inner.rs:1");
    assert!(
        edges("c").is_empty(),
        "comments, strings, super:: and pub(crate) are not references: {:?}",
        g["c"]
    );
    assert_eq!(edges("g"), ["h"]);
    assert!(edges("h").is_empty());
    let found = cycles(&g);
    assert_eq!(
        found,
        [vec!["a", "b"], vec!["d", "e"], vec!["d", "e", "f"], vec!["d", "f"]],
        "every elementary cycle once"
    );
    assert_eq!(describe(&g, &found[0]), "a → b → a (a.rs:2: crate::b; b/inner.rs:1: crate::a)");
}
