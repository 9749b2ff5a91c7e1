//! From TOML text and `--set` arguments to a checked tree: syntax errors with
//! their line, unknown keys with the allowed ones and a "did you mean",
//! type checks, path resolution, and the file line of a key for errors.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use crate::{AgentSpec, Config, ConfigError, StageSpec};

/// The `env` keys that hold paths (see [`crate::EnvConfig`] for the rule).
pub(crate) const PATH_KEYS: [&str; 4] = ["corpus", "eval_corpus", "model_dir", "cache_dir"];

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

pub(crate) fn parse_toml(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Syntax {
        origin: origin.to_string(),
        line: e.span().map(|s| line_of(text, s.start)),
        message: e.message().to_string(),
    })
}

/// Where the keys of one TOML text are written: dotted key (array elements as
/// `env.agents[0]`) → line.
#[derive(Debug, Default)]
pub(crate) struct KeyLines {
    origin: String,
    lines: HashMap<String, usize>,
}

impl KeyLines {
    pub(crate) fn new(text: &str, origin: &str) -> Self {
        fn table(t: &toml::de::DeTable<'_>, prefix: &str, text: &str, out: &mut HashMap<String, usize>) {
            for (k, v) in t.iter() {
                let key = join(prefix, k.get_ref());
                out.entry(key.clone()).or_insert_with(|| line_of(text, k.span().start));
                value(v.get_ref(), &key, text, out);
            }
        }
        fn value(v: &toml::de::DeValue<'_>, key: &str, text: &str, out: &mut HashMap<String, usize>) {
            match v {
                toml::de::DeValue::Table(t) => table(t, key, text, out),
                toml::de::DeValue::Array(a) => {
                    for (i, item) in a.iter().enumerate() {
                        let k = format!("{key}[{i}]");
                        out.entry(k.clone()).or_insert_with(|| line_of(text, item.span().start));
                        value(item.get_ref(), &k, text, out);
                    }
                }
                _ => {}
            }
        }
        let mut lines = HashMap::new();
        if let Ok(doc) = toml::de::DeTable::parse(text) {
            table(doc.get_ref(), "", text, &mut lines);
        }
        Self { origin: origin.to_string(), lines }
    }

    /// Adds the file and line to an error about a key written in this text,
    /// unless a later `--set` (one of `overridden`) replaced that key.
    pub(crate) fn locate(&self, err: ConfigError, overridden: &[String]) -> ConfigError {
        let key = match &err {
            ConfigError::UnknownKey { key, .. } | ConfigError::Invalid { key, .. } => key.as_str(),
            _ => return err,
        };
        let replaced = overridden.iter().any(|o| {
            key == o || key.strip_prefix(o.as_str()).is_some_and(|r| r.starts_with('.') || r.starts_with('['))
        });
        if replaced {
            return err;
        }
        // `env.agents[1].description` may be missing from the file: point at the agent.
        let line = self.lines.get(key).or_else(|| {
            let end = key.rfind(']')?;
            self.lines.get(&key[..=end])
        });
        match line {
            Some(&line) => ConfigError::At { origin: self.origin.clone(), line, error: Box::new(err) },
            None => err,
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") }
}

pub(crate) fn default_table() -> toml::Table {
    toml::Table::try_from(Config::default()).unwrap_or_default()
}

/// The keys each element of an array-of-tables key may have.
fn element_schema(key: &str) -> Option<toml::Table> {
    match key {
        "env.agents" => toml::Table::try_from(AgentSpec::default()).ok(),
        "env.stages" => toml::Table::try_from(StageSpec::default()).ok(),
        k if k.starts_with("env.stages[") && k.ends_with("].agents") => {
            toml::Table::try_from(AgentSpec::default()).ok()
        }
        _ => None,
    }
}

/// The keys each value of a table keyed by free names (`[serve.upstreams.<agent>]`) may have.
fn map_schema(key: &str) -> Option<toml::Table> {
    match key {
        "serve.upstreams" => toml::Table::try_from(crate::Upstream::default()).ok(),
        _ => None,
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "a boolean (true or false)",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// The known key closest to `typed` (written under `prefix`), if one is close:
/// first among the keys allowed at that level (a typo, or a prefix such as
/// `desc` for `description`), then the same field in another section
/// (`train.lr_actor` → `ppo.lr_actor`).
fn suggestion(prefix: &str, typed: &str, here: &[&str]) -> Option<String> {
    let close = |a: &str, b: &str| {
        let d = strsim::damerau_levenshtein(a, b);
        let limit = (a.chars().count().max(b.chars().count()) / 3).max(1);
        (d <= limit || (a.len() >= 3 && b.starts_with(a))).then_some(d)
    };
    if let Some((_, k)) = here.iter().filter_map(|k| close(typed, k).map(|d| (d, *k))).min() {
        return Some(join(prefix, k));
    }
    if prefix.contains('[') {
        return None;
    }
    Config::known_keys()
        .into_iter()
        .filter_map(|k| {
            let leaf = k.rsplit('.').next().unwrap_or(&k);
            close(typed, leaf).map(|d| (d, k.clone()))
        })
        .min()
        .map(|(_, k)| k)
}

/// Checks that every key of `user` exists in `defaults` with a compatible type.
pub(crate) fn check_keys(
    user: &toml::Table,
    defaults: &toml::Table,
    prefix: &str,
) -> Result<(), ConfigError> {
    for (k, v) in user {
        let key = join(prefix, k);
        let Some(def) = defaults.get(k) else {
            let mut allowed: Vec<&str> = defaults.keys().map(String::as_str).collect();
            allowed.sort();
            let suggestion = suggestion(prefix, k, &allowed);
            return Err(ConfigError::UnknownKey { key, allowed: allowed.join(", "), suggestion });
        };
        match (def, v) {
            (toml::Value::Table(d), toml::Value::Table(u)) => match map_schema(&key) {
                Some(schema) => {
                    for (name, item) in u {
                        let at = join(&key, name);
                        match item {
                            toml::Value::Table(t) => check_keys(t, &schema, &at)?,
                            other => {
                                let mut fields: Vec<&str> = schema.keys().map(String::as_str).collect();
                                fields.sort();
                                return Err(ConfigError::Invalid {
                                    key: at,
                                    message: format!(
                                        "expected a table with keys {}, found {}",
                                        fields.join(", "),
                                        type_name(other)
                                    ),
                                });
                            }
                        }
                    }
                }
                None => check_keys(u, d, &key)?,
            },
            (toml::Value::Array(_), toml::Value::Array(items)) => {
                if let Some(schema) = element_schema(&key) {
                    for (i, item) in items.iter().enumerate() {
                        let at = format!("{key}[{i}]");
                        match item {
                            toml::Value::Table(t) => check_keys(t, &schema, &at)?,
                            other => {
                                let mut fields: Vec<&str> = schema.keys().map(String::as_str).collect();
                                fields.sort();
                                return Err(ConfigError::Invalid {
                                    key: at,
                                    message: format!(
                                        "expected a table with keys {}, found {}",
                                        fields.join(", "),
                                        type_name(other)
                                    ),
                                });
                            }
                        }
                    }
                }
            }
            (toml::Value::Float(_), toml::Value::Float(_) | toml::Value::Integer(_)) => {}
            (toml::Value::Integer(_), toml::Value::Integer(i)) if *i < 0 => {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{i} is not allowed: must be a non-negative integer"),
                });
            }
            (d, u) if std::mem::discriminant(d) == std::mem::discriminant(u) => {}
            (d, u) => {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("expected {}, found {}", type_name(d), type_name(u)),
                });
            }
        }
    }
    Ok(())
}

/// Deserialises a checked tree; a bad value (e.g. `env.reward = "cosin"`) is
/// reported with its dotted key.
pub(crate) fn deserialize(tree: toml::Table) -> Result<Config, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::Invalid {
            key: if path == "." { String::new() } else { path },
            message: e.into_inner().message().to_string(),
        }
    })
}

/// Applies one `a.b.c=value` override and returns its key. The value is read
/// as TOML (`1e-3`, `true`, `"text"`); anything that does not parse as TOML
/// is taken as a string.
pub(crate) fn apply_override(tree: &mut toml::Table, ov: &str) -> Result<String, ConfigError> {
    let Some((key, raw)) = ov.split_once('=') else {
        return Err(ConfigError::BadOverride { arg: ov.into() });
    };
    let key = key.trim();
    let raw = raw.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(ConfigError::BadOverride { arg: ov.into() });
    }
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = tree;
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            node.insert((*part).to_string(), value);
            break;
        }
        let entry = node.entry((*part).to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::Invalid {
                    key: parts[..=i].join("."),
                    message: "is a value, not a table".into(),
                });
            }
        };
    }
    Ok(key.to_string())
}

/// Makes the relative path keys of `tree`'s `env` section (only those named in
/// `only`, or all when `None`) absolute, taking them from `base`.
pub(crate) fn resolve_paths(
    tree: &mut toml::Table,
    base: &Path,
    only: Option<&str>,
) -> Result<(), ConfigError> {
    let Some(toml::Value::Table(env)) = tree.get_mut("env") else {
        return Ok(());
    };
    for k in PATH_KEYS {
        if only.is_some_and(|o| o != k) {
            continue;
        }
        if let Some(toml::Value::String(s)) = env.get_mut(k) {
            if s.is_empty() || Path::new(s.as_str()).is_absolute() {
                continue;
            }
            let key = format!("env.{k}");
            let resolved = resolve_path(s, base).map_err(|e| ConfigError::Invalid {
                key: key.clone(),
                message: format!("cannot resolve the relative path {s:?} from {}: {e}", base.display()),
            })?;
            *s = resolved.into_os_string().into_string().map_err(|p| ConfigError::Invalid {
                key,
                message: format!("the resolved path {} is not valid UTF-8", p.display()),
            })?;
        }
    }
    Ok(())
}

/// `base` (made canonical, so that `..` leaves the real directory even
/// through a symlink) joined with the relative `raw`, its leading `.`/`..`
/// applied.
fn resolve_path(raw: &str, base: &Path) -> std::io::Result<PathBuf> {
    let base = if base.as_os_str().is_empty() { Path::new(".") } else { base };
    let mut out = std::fs::canonicalize(base)?;
    let mut rest = Path::new(raw).components();
    loop {
        let before = rest.clone();
        match rest.next() {
            Some(Component::CurDir) => {}
            Some(Component::ParentDir) => {
                out.pop();
            }
            _ => {
                out.push(before.as_path());
                return Ok(out);
            }
        }
    }
}
