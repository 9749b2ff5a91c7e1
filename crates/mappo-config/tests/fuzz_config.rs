//! Property-based fuzzing of the config parser: any TOML text and any
//! `--set` argument give a config or a `ConfigError`, never a panic.
//! Longer runs: `PROPTEST_CASES=100000 cargo test -p mappo-config --test fuzz_config`.

use mappo_config::Config;
use proptest::prelude::*;

fn key() -> impl Strategy<Value = String> {
    let known = Config::known_keys();
    prop_oneof![
        proptest::sample::select(known),
        "[a-z_.]{0,20}",
        proptest::sample::select(vec!["ppo".to_string(), "train.".into(), ".x".into(), "env.agents".into()]),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:e}")),
        Just("true".to_string()),
        Just("nan".to_string()),
        Just("inf".to_string()),
        Just("-0.0".to_string()),
        "\\PC{0,12}",
        Just("[1, 2]".to_string()),
        Just("{a = 1}".to_string()),
        Just("[{name = \"a\"}, {name = \"a\"}]".to_string()),
    ]
}

proptest! {
    #[test]
    fn overrides_never_panic(k in key(), v in value(), k2 in key(), v2 in value()) {
        let _ = Config::load(None, &[format!("{k}={v}"), format!("{k2}={v2}")]);
    }

    #[test]
    fn arbitrary_toml_never_panics(text in "\\PC{0,200}") {
        let _ = Config::from_toml_str(&text, "fuzz.toml");
    }

    #[test]
    fn structured_toml_never_panics(sec in "(env|model|ppo|train|x)", k in "[a-z_]{1,14}", v in value()) {
        let _ = Config::from_toml_str(&format!("[{sec}]\n{k} = {v}\n"), "fuzz.toml");
    }

    #[test]
    fn accepted_configs_validate_and_round_trip(k in key(), v in value()) {
        if let Ok(c) = Config::load(None, &[format!("{k}={v}")]) {
            prop_assert!(c.validate().is_ok());
            let back = Config::from_toml_str(&c.to_toml_string(), "saved");
            prop_assert!(back.is_ok(), "{:?}", back.err().map(|e| e.to_string()));
        }
    }
}
