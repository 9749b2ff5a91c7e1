//! Config files as users write them: typed values, the errors a mistake gets
//! (key, file, line, "did you mean"), paths relative to the file, and configs
//! saved by earlier versions (run directories, checkpoints).

use std::path::{Path, PathBuf};

use mappo_config::{Config, ConfigError, Device, EnvKind, RewardModel};

fn set(kv: &[&str]) -> Result<Config, ConfigError> {
    let v: Vec<String> = kv.iter().map(|s| s.to_string()).collect();
    Config::load(None, &v)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().expect("has a parent")).expect("mkdir");
    std::fs::write(&p, text).expect("write");
    p
}

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const AGENTS: &str = "[[env.agents]]\nname = \"code\"\ndescription = \"writes code\"\n\n\
                      [[env.agents]]\nname = \"math\"\ndescription = \"solves equations\"\n";

/// The `[serve]` and `[learn]` sections as written after every other section (they came after
/// 0.1.0).
fn serve_section(c: &Config) -> String {
    #[derive(serde::Serialize)]
    struct Only<'a> {
        serve: &'a mappo_config::ServeConfig,
        learn: &'a mappo_config::LearnConfig,
    }
    format!("\n{}", toml::to_string_pretty(&Only { serve: &c.serve, learn: &c.learn }).expect("toml"))
}

/// What 0.1.0's text becomes when written again: its bytes with only the keys that came
/// later added, at their defaults — `env.cost_weight_range` and the episode keys after
/// `cache_dir`, each agent's `cost` after its `description`, `model.critic` after
/// `init_gain_value`, `ppo.input_dropout` after `target_kl` — then the `[serve]` and `[learn]`
/// sections.
fn rewritten(old: &str, c: &Config) -> String {
    let mut out = String::new();
    for line in old.lines() {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("cache_dir = ") {
            out.push_str("cost_weight_range = [\n    0.0,\n    1.0,\n]\n");
            out.push_str(
                "stages = []\ninteraction = 0.0\ncost_weight = 0.0\nturns = 8\np_stay = 0.8\n\
                 continuity_bonus = 0.0\nreward_at = \"turn\"\n",
            );
        }
        if line.starts_with("init_gain_value = ") {
            out.push_str("critic = \"shared\"\n");
        }
        if line.starts_with("description = ") {
            out.push_str("cost = 0.0\n");
        }
        if line.starts_with("target_kl = ") {
            out.push_str("input_dropout = 0.0\nvalue_norm = false\ndecoupled_max_weight = 0.0\n");
        }
    }
    format!("{out}{}", serve_section(c))
}

/// The config 0.1.0 wrote into `config.toml` and checkpoints reads back the
/// same and is written back byte for byte, with only the keys and sections
/// that came later added (at their defaults).
#[test]
fn configs_saved_by_earlier_versions_read_and_write_the_same_bytes() {
    let old = fixture("default-v0.1.toml");
    let c = Config::from_toml_str(&old, "default-v0.1.toml").expect("old default config");
    assert_eq!(c, Config::default());
    assert_eq!(c.to_toml_string(), rewritten(&old, &c));

    let old = fixture("text-cosine-cuda1-v0.1.toml");
    let c = Config::from_toml_str(&old, "text-v0.1.toml").expect("old text config");
    assert_eq!(c.env.kind, EnvKind::Text);
    assert_eq!(c.env.reward, RewardModel::Cosine);
    assert_eq!(c.train.device, Device::Cuda(1));
    assert_eq!(c.env.agents.len(), 2);
    assert_eq!(c.to_toml_string(), rewritten(&old, &c));
}

#[test]
fn typed_values_parse_from_the_config_strings() {
    let c = set(&["train.device=cuda:2"]).expect("cuda:2");
    assert_eq!(c.train.device, Device::Cuda(2));
    assert_eq!(set(&["train.device=cuda"]).expect("cuda").train.device, Device::Cuda(0));
    assert_eq!(set(&["train.device=\"cpu\""]).expect("cpu").train.device, Device::Cpu);
    assert!(c.to_toml_string().contains("device = \"cuda:2\""));
    for (kv, key, allowed) in [
        ("env.kind=texts", "env.kind", "`synthetic`, `text`"),
        ("train.device=tpu", "train.device", "`auto`, `cpu`, `cuda`, `cuda:N`"),
        ("train.device=cuda:x", "train.device", "`auto`, `cpu`, `cuda`, `cuda:N`"),
    ] {
        let msg = set(&[kv]).expect_err(kv).to_string();
        assert!(msg.contains(&format!("`{key}`")) && msg.contains(allowed), "{kv}: {msg}");
    }
}

/// Issue 10 #6: a misspelt reward is refused whatever the env.
#[test]
fn a_misspelt_reward_is_refused_even_for_the_synthetic_env() {
    let msg = set(&["env.reward=cosin"]).expect_err("cosin").to_string();
    assert!(msg.contains("`env.reward`") && msg.contains("`cosin`"), "{msg}");
    assert!(msg.contains("`label`, `cosine`"), "{msg}");
}

/// Issue 10 #6: the cosine reward embeds each agent's description, so every
/// agent needs one.
#[test]
fn the_cosine_reward_needs_every_agents_description() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = write(
        tmp.path(),
        "c.toml",
        "[env]\nkind = \"text\"\ncorpus = \"p.jsonl\"\nreward = \"cosine\"\n\n\
         [[env.agents]]\nname = \"code\"\ndescription = \"writes code\"\n\n\
         [[env.agents]]\nname = \"math\"\n",
    );
    let msg = Config::load(Some(&file), &[]).expect_err("no description").to_string();
    assert!(msg.contains("env.agents[1].description") && msg.contains("`math`"), "{msg}");
    assert!(msg.contains("c.toml, line 10: "), "{msg}"); // the agent's `name` line
    // The label reward does not need descriptions.
    Config::load(Some(&file), &["env.reward=label".into()]).expect("label reward");
}

/// Issue 10 #9: an unknown agent field names its key, the allowed fields and
/// the file and line.
#[test]
fn an_unknown_agent_field_names_key_file_line_and_the_allowed_fields() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = write(
        tmp.path(),
        "agents.toml",
        "[env]\nkind = \"text\"\ncorpus = \"p.jsonl\"\n\n[[env.agents]]\nname = \"a\"\ndesc = \"x\"\n",
    );
    let e = Config::load(Some(&file), &[]).expect_err("desc");
    let msg = e.to_string();
    assert!(msg.contains("unknown config key `env.agents[0].desc`"), "{msg}");
    assert!(msg.contains("allowed here: cost, description, name"), "{msg}");
    assert!(msg.contains("did you mean `env.agents[0].description`?"), "{msg}");
    assert!(msg.starts_with(&format!("{}, line 7: ", file.display())), "{msg}");
    assert!(matches!(e, ConfigError::At { line: 7, .. }), "{e:?}");

    // A value where a table belongs, and a missing name, are named too.
    let msg = set(&["env.agents=[1]"]).expect_err("not a table").to_string();
    assert!(msg.contains("`env.agents[0]`") && msg.contains("name"), "{msg}");
    let msg = set(&["env.agents=[{description = \"x\"}]"]).expect_err("no name").to_string();
    assert!(msg.contains("`env.agents[0]`") && msg.contains("missing field `name`"), "{msg}");
}

/// Key and value errors in a file name the file and the line; an error in
/// a `--set` value does not point into the file.
#[test]
fn key_errors_in_a_file_name_the_file_and_line() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = write(tmp.path(), "k.toml", "[ppo]\nlr_actor = 1e-3\n\n[train]\nseed = 1\nbatch_sise = 4\n");
    let msg = Config::load(Some(&file), &[]).expect_err("typo").to_string();
    assert!(msg.contains("k.toml, line 6: unknown config key `train.batch_sise`"), "{msg}");

    let file = write(tmp.path(), "v.toml", "[env]\nreward = \"cosin\"\n");
    let msg = Config::load(Some(&file), &[]).expect_err("bad value").to_string();
    assert!(msg.contains("v.toml, line 2: ") && msg.contains("`env.reward`"), "{msg}");
    let msg = Config::load(Some(&file), &["env.reward=cosinus".into()]).expect_err("bad set").to_string();
    assert!(!msg.contains("v.toml") && msg.contains("`cosinus`"), "{msg}");

    let file = write(tmp.path(), "r.toml", "[ppo]\ngamma = 1.5\n");
    let msg = Config::load(Some(&file), &[]).expect_err("range").to_string();
    assert!(msg.contains("r.toml, line 2: ") && msg.contains("ppo.gamma"), "{msg}");
}

/// Issue 10 #15: a typo gets a suggestion besides the list of allowed keys.
#[test]
fn a_key_typo_gets_a_did_you_mean() {
    for (kv, want) in [
        ("ppo.lr_actr=1e-3", "ppo.lr_actor"),
        ("ppo.lr_atcor=1e-3", "ppo.lr_actor"),
        ("train.lr_actor=1e-3", "ppo.lr_actor"),
        ("trian.seed=3", "train"),
        ("env.rewrd=label", "env.reward"),
    ] {
        let msg = set(&[kv]).expect_err(kv).to_string();
        assert!(msg.contains(&format!("did you mean `{want}`?")), "{kv}: {msg}");
        assert!(msg.contains("allowed here: "), "{kv}: {msg}");
    }
    let msg = set(&["ppo.learning_rate=0.1"]).expect_err("far").to_string();
    assert!(!msg.contains("did you mean") && msg.contains("lr_actor"), "{msg}");
}

/// Issue 10 #16: paths in a file are relative to the file, `--set` paths to
/// the current directory; both end up absolute, so a run's saved config
/// works from anywhere.
#[test]
fn paths_in_a_file_are_relative_to_the_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().canonicalize().expect("canonical tmp");
    let file = write(
        &root,
        "configs/p.toml",
        &format!(
            "[env]\nkind = \"text\"\ncorpus = \"../data/p.jsonl\"\neval_corpus = \"./val.jsonl\"\n\
             model_dir = \"{}\"\ncache_dir = \"\"\n\n{AGENTS}",
            root.join("model").display()
        ),
    );
    let c = Config::load(Some(&file), &[]).expect("paths");
    assert_eq!(Path::new(&c.env.corpus), root.join("data/p.jsonl"));
    assert_eq!(Path::new(&c.env.eval_corpus), root.join("configs/val.jsonl"));
    assert_eq!(Path::new(&c.env.model_dir), root.join("model"), "absolute paths are kept");
    assert_eq!(c.env.cache_dir, "", "empty means the default");

    // The saved config reads back to the same files (no second resolution).
    let back = Config::from_toml_str(&c.to_toml_string(), "config.toml").expect("saved");
    assert_eq!(back, c);

    // `--set` is relative to the current directory, even over a file's key.
    let cwd = std::env::current_dir().expect("cwd").canonicalize().expect("canonical cwd");
    let c = Config::load(Some(&file), &["env.corpus=x/q.jsonl".into()]).expect("set path");
    assert_eq!(Path::new(&c.env.corpus), cwd.join("x/q.jsonl"));
    assert_eq!(Path::new(&c.env.eval_corpus), root.join("configs/val.jsonl"));
}

/// The shipped text configs name corpora that exist, from any directory.
#[test]
fn shipped_prompts_config_finds_its_corpus() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/prompts.toml");
    let c = Config::load(Some(&file), &[]).expect("configs/prompts.toml");
    assert!(Path::new(&c.env.corpus).is_absolute(), "{}", c.env.corpus);
    assert!(Path::new(&c.env.corpus).is_file(), "{}", c.env.corpus);
    assert!(c.env.corpus.ends_with("data/prompts.jsonl"), "{}", c.env.corpus);
}
