//! The dependency direction ARCHITECTURE.md promises.

use std::path::Path;

fn manifest(krate: &str) -> toml::Table {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("crates").join(krate).join("Cargo.toml")).expect("manifest");
    text.parse().expect("toml")
}

fn deps(krate: &str) -> Vec<String> {
    manifest(krate)
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

/// The normal dependencies of `krate` that are marked `optional = true`.
fn optional_deps(krate: &str) -> Vec<String> {
    let m = manifest(krate);
    let Some(t) = m.get("dependencies").and_then(|d| d.as_table()) else { return Vec::new() };
    t.iter()
        .filter(|(_, v)| v.get("optional").and_then(|o| o.as_bool()) == Some(true))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Every library crate of the workspace (all but the binary, mappo-cli).
const LIBRARIES: &[&str] = &[
    "mappo-config",
    "mappo-embed",
    "mappo-env",
    "mappo-nn",
    "mappo-buffer",
    "mappo-train",
    "mappo-eval",
    "mappo-log",
    "mappo-serve",
    "mappo-learn",
    "mappo-client",
];

/// The mappo crates `krate` depends on.
fn internal(krate: &str) -> Vec<String> {
    deps(krate).into_iter().filter(|d| d.starts_with("mappo-")).collect()
}

/// None of `crates` depends on `target` (`what` names it in the message).
fn none_depends_on(target: &str, crates: &[&str], what: &str) {
    for k in crates.iter().filter(|k| **k != target) {
        assert!(!internal(k).contains(&target.to_string()), "{k} must not depend on {what}");
    }
}

#[test]
fn crates_depend_only_downwards() {
    assert!(internal("mappo-config").is_empty());
    assert!(!deps("mappo-config").iter().any(|d| d.starts_with("candle")), "config has no candle");
    // The embedder is a leaf: model files, tokenizer and BERT, no mappo crate.
    assert!(internal("mappo-embed").is_empty(), "{:?}", internal("mappo-embed"));
    for k in ["mappo-nn", "mappo-buffer"] {
        assert_eq!(internal(k), vec!["mappo-config".to_string()], "{k}");
    }
    let mut env = internal("mappo-env");
    env.sort();
    assert_eq!(env, ["mappo-config", "mappo-embed"]);
    assert!(
        optional_deps("mappo-env").contains(&"mappo-embed".to_string()),
        "mappo-env reaches the embedder only through its `text` feature"
    );
    let mut train = internal("mappo-train");
    train.sort();
    assert_eq!(train, ["mappo-buffer", "mappo-config", "mappo-env", "mappo-nn"]);
    // The decision log knows no model code; the service sits above mappo-train and the log.
    assert_eq!(internal("mappo-log"), Vec::<String>::new(), "mappo-log depends on no mappo crate");
    assert!(!deps("mappo-log").iter().any(|d| d.starts_with("candle")), "mappo-log has no candle");
    let serve = internal("mappo-serve");
    for k in ["mappo-log", "mappo-train"] {
        assert!(serve.contains(&k.to_string()), "mappo-serve uses {k}: {serve:?}");
    }
    none_depends_on("mappo-serve", LIBRARIES, "the service");
    // Evaluation sits on mappo-train, between it and its users (the CLI, the learner's OPE);
    // nothing below it, and not the service, knows it.
    let mut eval = internal("mappo-eval");
    eval.sort();
    assert_eq!(eval, ["mappo-config", "mappo-env", "mappo-train"]);
    let below_eval = ["mappo-config", "mappo-embed", "mappo-env", "mappo-nn", "mappo-buffer", "mappo-train"];
    none_depends_on("mappo-eval", &below_eval, "mappo-eval");
    none_depends_on("mappo-eval", &["mappo-log", "mappo-serve", "mappo-client"], "mappo-eval");
    assert!(
        internal("mappo-cli").contains(&"mappo-eval".to_string()),
        "the CLI evaluates through mappo-eval"
    );
    // The learner sits above mappo-train and the log, beside the service (it knows no HTTP).
    let learn = internal("mappo-learn");
    for k in ["mappo-log", "mappo-train"] {
        assert!(learn.contains(&k.to_string()), "mappo-learn uses {k}: {learn:?}");
    }
    assert!(!deps("mappo-learn").iter().any(|d| ["axum", "reqwest", "tower-http"].contains(&d.as_str())));
    none_depends_on("mappo-learn", LIBRARIES, "the learner");
    // The HTTP clients (load generator, simulated users) know neither the service nor model code.
    assert_eq!(internal("mappo-client"), ["mappo-config"], "mappo-client uses only mappo-config");
    none_depends_on("mappo-client", LIBRARIES, "the clients");
    for k in LIBRARIES {
        assert!(!deps(k).contains(&"anyhow".to_string()), "{k} is a library: typed errors, no anyhow");
    }
}

/// `cargo tree` of `krate` (normal dependencies, no prefix), with `args` added.
fn cargo_tree(krate: &str, args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none", "-p", krate])
        .args(args)
        .current_dir(&root)
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A workspace with its own `Env` depends on mappo-train with `default-features = false` and
/// compiles no embedder, BERT model or oniguruma. (candle-core 0.11 itself depends on
/// `tokenizers`, for its gguf support: that one stays, with the pure-Rust regex backend.)
#[test]
fn train_without_default_features_has_no_text_stack() {
    let tree = cargo_tree("mappo-train", &["--no-default-features"]);
    for banned in [
        "mappo-embed ",
        "candle-transformers ",
        "onig ",
        "onig_sys ",
        "hf-hub ",
        "ureq ",
        "axum ",
        "hyper ",
        "reqwest ",
        "sqlx ",
        "mappo-log ",
    ] {
        assert!(!tree.lines().any(|l| l.starts_with(banned)), "{banned}in:\n{tree}");
    }
    let who = cargo_tree("mappo-train", &["--no-default-features", "-i", "tokenizers", "--depth", "1"]);
    let dependents: Vec<&str> = who.lines().skip(1).filter(|l| !l.trim().is_empty()).collect();
    assert!(
        dependents.iter().all(|l| l.starts_with("candle-core ")),
        "tokenizers only via candle-core: {who}"
    );
    // And with the default features the text stack is there, with a single tokenizers.
    let full = cargo_tree("mappo-train", &[]);
    assert!(full.lines().any(|l| l.starts_with("mappo-embed ")), "{full}");
    let mut versions: Vec<&str> = full.lines().filter(|l| l.starts_with("tokenizers ")).collect();
    versions.sort();
    versions.dedup_by(|a, b| a.split(' ').nth(1) == b.split(' ').nth(1));
    assert_eq!(versions.len(), 1, "one tokenizers version: {versions:?}");
}

/// The client crate compiles no model code and no server: HTTP, JSON and mappo-config only.
#[test]
fn client_has_no_model_code() {
    let tree = cargo_tree("mappo-client", &[]);
    assert!(tree.lines().any(|l| l.starts_with("reqwest ")), "{tree}");
    for banned in [
        "candle-core ",
        "candle-nn ",
        "tokenizers ",
        "mappo-nn ",
        "mappo-serve ",
        "mappo-log ",
        "axum ",
        "sqlx ",
    ] {
        assert!(!tree.lines().any(|l| l.starts_with(banned)), "{banned}in:\n{tree}");
    }
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// One observation layout: whether λ is a policy input (`EnvConfig::cost_input`) is read only
/// where the layout (`ObservationSpec`) and the env's reward are defined, and no library code
/// concatenates an extra column onto a policy input elsewhere.
#[test]
fn the_observation_layout_is_decided_in_one_place() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let allowed = [
        "crates/mappo-config/src/lib.rs",      // the definition
        "crates/mappo-env/src/observation.rs", // the layout
        "crates/mappo-env/src/text/mod.rs",    // the text env's reward (cost term) and λ draws
    ];
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    assert!(files.len() > 50, "found only {} files", files.len());
    let mut offenders = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap_or(f).to_string_lossy().replace('\\', "/");
        if !rel.contains("/src/") {
            continue; // integration tests and examples may build what they check by hand
        }
        let text = std::fs::read_to_string(f).expect("read");
        for (i, line) in text.lines().enumerate() {
            if line.contains("cost_input()") && !allowed.contains(&rel.as_str()) {
                offenders.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "λ's presence decided outside the layout:\n{}", offenders.join("\n"));
}

/// ARCHITECTURE.md's codemap names every crate of the workspace, and only those.
#[test]
fn the_codemap_names_every_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut named: Vec<String> = doc
        .split("**`crates/")
        .skip(1)
        .filter_map(|rest| rest.split('`').next().map(str::to_string))
        .collect();
    named.sort();
    let mut crates: Vec<String> = std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    crates.sort();
    assert_eq!(named, crates, "ARCHITECTURE.md's codemap vs crates/");
}
