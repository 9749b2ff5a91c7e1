//! The dependency direction ARCHITECTURE.md promises.

use std::path::Path;

fn deps(krate: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("crates").join(krate).join("Cargo.toml")).expect("manifest");
    let doc: toml::Table = text.parse().expect("toml");
    doc.get("dependencies")
        .and_then(|d| d.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn crates_depend_only_downwards() {
    let internal = |k: &str| deps(k).into_iter().filter(|d| d.starts_with("mappo-")).collect::<Vec<_>>();
    assert!(internal("mappo-config").is_empty());
    assert!(!deps("mappo-config").iter().any(|d| d.starts_with("candle")), "config has no candle");
    for k in ["mappo-env", "mappo-nn", "mappo-buffer"] {
        assert_eq!(internal(k), vec!["mappo-config".to_string()], "{k}");
    }
    let mut train = internal("mappo-train");
    train.sort();
    assert_eq!(train, ["mappo-buffer", "mappo-config", "mappo-env", "mappo-nn"]);
    for k in ["mappo-config", "mappo-env", "mappo-nn", "mappo-buffer", "mappo-train"] {
        assert!(!deps(k).contains(&"anyhow".to_string()), "{k} is a library: typed errors, no anyhow");
    }
}
