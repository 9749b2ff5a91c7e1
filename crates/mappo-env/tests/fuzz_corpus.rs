//! Property-based fuzzing of the corpus parser: any bytes give a corpus or an
//! error naming the file, never a panic.
//! Longer runs: `PROPTEST_CASES=100000 cargo test -p mappo-env --test fuzz_corpus`.

use mappo_config::AgentSpec;
use mappo_env::load_corpus;
use proptest::prelude::*;

fn agents() -> Vec<AgentSpec> {
    ["code", "math"]
        .iter()
        .map(|n| AgentSpec { name: n.to_string(), description: String::new(), cost: 0.0 })
        .collect()
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}".prop_map(|t| serde_json::json!({"text": t, "label": "code"}).to_string()),
        "\\PC{0,40}".prop_map(|t| serde_json::json!({"text": t}).to_string()),
        "\\PC{0,10}".prop_map(|l| serde_json::json!({"text": "x", "label": l}).to_string()),
        Just("{\"text\": null}".to_string()),
        Just("[1,2,3]".to_string()),
        Just(String::new()),
        "\\PC{0,60}",
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(f.path(), &bytes).expect("write");
        if let Err(e) = load_corpus(f.path(), &agents()) {
            prop_assert!(e.to_string().contains(&f.path().display().to_string()));
        }
    }

    #[test]
    fn json_lines_never_panic(lines in proptest::collection::vec(line(), 0..12)) {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(f.path(), lines.join("\n")).expect("write");
        match load_corpus(f.path(), &agents()) {
            Ok(c) => prop_assert!(!c.is_empty()),
            Err(e) => prop_assert!(e.to_string().contains(&f.path().display().to_string())),
        }
    }
}
