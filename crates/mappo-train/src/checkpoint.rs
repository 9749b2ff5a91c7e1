//! Self-describing safetensors checkpoints: weights, optimizer moments, RNG
//! state, update count and the resolved config, written atomically. All
//! checkpoint I/O of the crate lives here.
//!
//! Tensor names: `policy.<param>`, `adam.actor.{m,v}.<param>`, `value_norm` (with
//! `ppo.value_norm`: the running return statistics, f64 `[mean, mean square, debias]`),
//! `adam.critic.{m,v}.<param>`. Metadata (string map in the safetensors
//! header): `format` = [`FORMAT`], `config` (TOML), `env_kind` (the
//! environment's own [`mappo_env::Env::kind`]), `update`, `rng` (four hex
//! words), `adam_actor_step`, `adam_critic_step`, `env_state`.
//!
//! The same state gives the same bytes: the header's keys are written in
//! sorted order (safetensors itself writes its metadata map in hash order).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use mappo_config::{Config, Rng};
use mappo_env::ObservationSpec;
use mappo_nn::Policy;

use crate::TrainError;

/// The value of the `format` metadata key.
pub const FORMAT: &str = "mappo-checkpoint/1";

/// A checkpoint in memory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The run's resolved config.
    pub config: Config,
    /// The kind of environment it was trained on (`synthetic`, `text`, or a
    /// library user's own [`mappo_env::Env::kind`]).
    pub env_kind: String,
    /// Updates completed when it was written.
    pub update: u64,
    /// The trainer RNG's state.
    pub rng_state: [u64; 4],
    /// Adam step counts (actor, critic).
    pub adam_steps: (u64, u64),
    /// The environment's state (see `Env::state`), e.g. its position in the corpus.
    pub env_state: Vec<u64>,
    /// Every tensor, by name.
    pub tensors: HashMap<String, Tensor>,
    /// The file it was loaded from or last saved to.
    pub path: Option<PathBuf>,
}

pub(crate) fn ckpt_err(path: &Path, problem: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint { path: path.display().to_string(), problem: problem.to_string() }
}

impl Checkpoint {
    fn where_(&self) -> PathBuf {
        self.path.clone().unwrap_or_else(|| PathBuf::from("<checkpoint in memory>"))
    }

    /// The file's bytes: the same checkpoint always gives the same bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("config".to_string(), self.config.to_toml_string());
        meta.insert("env_kind".to_string(), self.env_kind.clone());
        meta.insert("update".to_string(), self.update.to_string());
        let rng = self.rng_state.iter().map(|w| format!("{w:016x}")).collect::<Vec<_>>().join(",");
        meta.insert("rng".to_string(), rng);
        meta.insert("adam_actor_step".to_string(), self.adam_steps.0.to_string());
        meta.insert("adam_critic_step".to_string(), self.adam_steps.1.to_string());
        let env_state = self.env_state.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        meta.insert("env_state".to_string(), env_state);
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let data: Vec<(&str, &Tensor)> = names.iter().map(|n| (n.as_str(), &self.tensors[*n])).collect();
        let bytes = safetensors::serialize(data, Some(meta)).map_err(|e| ckpt_err(&self.where_(), e))?;
        canonical_header(bytes).map_err(|e| ckpt_err(&self.where_(), e))
    }

    /// Writes the checkpoint atomically and durably (see
    /// [`mappo_config::write_atomic`]): a crash leaves the old file or the new one.
    pub fn save(&mut self, path: &Path) -> Result<(), TrainError> {
        let bytes = self.to_bytes()?;
        mappo_config::write_atomic(path, &bytes).map_err(|e| ckpt_err(path, format!("cannot write: {e}")))?;
        self.path = Some(path.to_path_buf());
        Ok(())
    }

    /// Reads and checks a checkpoint file (tensors on `device`).
    pub fn load(path: &Path, device: &Device) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(|e| {
            let hint = if path.is_dir() {
                " (a directory: give a checkpoint file, or a run directory where a command accepts one)"
            } else {
                ""
            };
            ckpt_err(path, format!("cannot read: {e}{hint}"))
        })?;
        let mut c = Self::parse(&bytes, path, device)?;
        c.path = Some(path.to_path_buf());
        Ok(c)
    }

    /// Reads and checks a checkpoint from its bytes (as [`Checkpoint::to_bytes`] wrote them, or
    /// as a decision log stores a policy version), tensors on `device`. `path` stays `None`.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self, TrainError> {
        Self::parse(bytes, Path::new("<checkpoint in memory>"), device)
    }

    fn parse(bytes: &[u8], path: &Path, device: &Device) -> Result<Self, TrainError> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| ckpt_err(path, format!("not a safetensors file or truncated ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| ckpt_err(path, format!("not a mappo checkpoint (no `{k}` in its metadata)")))
        };
        if get("format")? != FORMAT {
            return Err(ckpt_err(
                path,
                format!("unsupported format `{}` (this mappo reads {FORMAT})", get("format")?),
            ));
        }
        let config = Config::from_toml_str(get("config")?, &format!("{} (embedded config)", path.display()))
            .map_err(|e| ckpt_err(path, e))?;
        let parse_u64 = |k: &str| -> Result<u64, TrainError> {
            get(k)?.parse::<u64>().map_err(|_| ckpt_err(path, format!("metadata `{k}` is not an integer")))
        };
        let update = parse_u64("update")?;
        let adam_steps = (parse_u64("adam_actor_step")?, parse_u64("adam_critic_step")?);
        let words: Vec<u64> = get("rng")?
            .split(',')
            .map(|w| u64::from_str_radix(w, 16))
            .collect::<Result<_, _>>()
            .map_err(|_| ckpt_err(path, "metadata `rng` is malformed"))?;
        let rng_state: [u64; 4] =
            words.try_into().map_err(|_| ckpt_err(path, "metadata `rng` must hold four words"))?;
        let env_state = match meta.get("env_state").map(String::as_str) {
            None | Some("") => Vec::new(),
            Some(s) => s
                .split(',')
                .map(str::parse::<u64>)
                .collect::<Result<_, _>>()
                .map_err(|_| ckpt_err(path, "metadata `env_state` is malformed"))?,
        };
        // Checkpoints written before `env_kind` existed: the config's kind.
        let env_kind = meta.get("env_kind").cloned().unwrap_or_else(|| config.env.kind.to_string());
        let tensors = candle_core::safetensors::load_buffer(bytes, device)
            .map_err(|e| ckpt_err(path, format!("corrupt tensor data ({e})")))?;
        Ok(Self { config, env_kind, update, rng_state, adam_steps, env_state, tensors, path: None })
    }

    /// A checkpoint file, or the newest loadable checkpoint of a run directory
    /// (as `--resume RUN_DIR` takes it).
    pub fn open(path_or_run_dir: &Path, device: &Device) -> Result<Self, TrainError> {
        if path_or_run_dir.is_dir() {
            Self::latest(path_or_run_dir, device)
        } else {
            Self::load(path_or_run_dir, device)
        }
    }

    /// Takes tensor `name`, checking its shape.
    pub fn tensor(&self, name: &str, dims: &[usize]) -> Result<Tensor, TrainError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ckpt_err(&self.where_(), format!("missing tensor `{name}`")))?;
        if t.dims() != dims {
            return Err(ckpt_err(
                &self.where_(),
                format!("tensor `{name}` has shape {:?} but the config's model needs {dims:?}", t.dims()),
            ));
        }
        Ok(t.clone())
    }

    /// Copies the `policy.*` tensors into `policy`, checking names and shapes.
    pub fn load_weights_into<P: Policy + ?Sized>(&self, policy: &P) -> Result<(), TrainError> {
        for nv in policy.all_vars() {
            let t = self.tensor(&format!("policy.{}", nv.name), nv.var.dims())?;
            nv.var.set(&t.to_device(nv.var.device())?.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }

    /// The input width of the stored network (its first layer's: the projection when it has
    /// one, else the first encoder layer): [`Checkpoint::observation_spec`]'s width.
    pub fn input_width(&self) -> Result<usize, TrainError> {
        ["policy.encoder.projection.weight", "policy.encoder.0.weight"]
            .iter()
            .find_map(|n| self.tensors.get(*n))
            .and_then(|t| t.dims().get(1).copied())
            .ok_or_else(|| {
                ckpt_err(
                    &self.where_(),
                    "missing tensor `policy.encoder.0.weight` (the first layer, whose width is the observation's)",
                )
            })
    }

    /// The layout of the stored policy's input (the embedding, then λ for a cost-aware
    /// router), from its config and its [`input width`](Checkpoint::input_width).
    pub fn observation_spec(&self) -> Result<ObservationSpec, TrainError> {
        ObservationSpec::for_input_width(&self.config.env, self.input_width()?)
            .map_err(|e| ckpt_err(&self.where_(), e))
    }

    /// A checkpoint holding only `policy`'s weights (no optimizer moments; update 0; the RNG of
    /// stream `train` of `cfg.train.seed`), as `mappo serve --config` publishes a fresh policy:
    /// the same config and weights always give the same bytes.
    pub fn weights_only<P: Policy + ?Sized>(
        cfg: &Config,
        env_kind: &str,
        policy: &P,
    ) -> Result<Self, TrainError> {
        let mut tensors = HashMap::new();
        for nv in policy.all_vars() {
            tensors.insert(format!("policy.{}", nv.name), nv.var.as_tensor().copy()?);
        }
        Ok(Checkpoint {
            config: cfg.clone(),
            env_kind: env_kind.to_string(),
            update: 0,
            rng_state: Rng::derived(cfg.train.seed, "train").state(),
            adam_steps: (0, 0),
            env_state: Vec::new(),
            tensors,
            path: None,
        })
    }

    /// Whether it holds both optimizers' moments (a freshly initialised policy published by
    /// `mappo serve --config` holds only weights).
    pub fn has_optimizer_state(&self) -> bool {
        self.tensors.keys().any(|k| k.starts_with("adam.actor."))
            && self.tensors.keys().any(|k| k.starts_with("adam.critic."))
    }
}

/// Rewrites a safetensors file's JSON header with its keys in sorted order
/// (same length: the same keys and values, only reordered).
fn canonical_header(mut bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let n = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or("serialised checkpoint has no header")? as usize;
    let header = bytes.get(8..8 + n).ok_or("serialised checkpoint header is truncated")?;
    let mut top: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("serialised checkpoint header: {e}"))?;
    if let Some(meta) = top.get_mut("__metadata__") {
        let sorted: BTreeMap<String, serde_json::Value> = serde_json::from_value(meta.take())
            .map_err(|e| format!("serialised checkpoint metadata: {e}"))?;
        *meta = serde_json::to_value(sorted).map_err(|e| e.to_string())?;
    }
    let mut text = serde_json::to_string(&top).map_err(|e| e.to_string())?;
    if text.len() > n {
        return Err(format!("canonical header is longer ({}) than the original ({n})", text.len()));
    }
    // safetensors pads the header with spaces to keep the data aligned.
    text.extend(std::iter::repeat_n(' ', n - text.len()));
    bytes[8..8 + n].copy_from_slice(text.as_bytes());
    Ok(bytes)
}

impl Checkpoint {
    /// The checkpoint file name for an update count.
    pub fn file_name(update: u64) -> String {
        format!("update-{update:07}.safetensors")
    }

    /// The checkpoints of a run directory, newest (highest update) first.
    pub fn list(run_dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
        let dir = run_dir.join("checkpoints");
        let rd = std::fs::read_dir(&dir).map_err(|e| TrainError::Io {
            path: dir.display().to_string(),
            message: format!("cannot list checkpoints: {e}"),
        })?;
        let mut found: Vec<(u64, PathBuf)> = rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n = name.strip_prefix("update-")?.strip_suffix(".safetensors")?.parse::<u64>().ok()?;
                Some((n, e.path()))
            })
            .collect();
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        Ok(found.into_iter().map(|(_, p)| p).collect())
    }

    /// The newest checkpoint of a run directory that loads; unreadable ones are
    /// skipped with a warning. Errors when none is usable.
    pub fn latest(run_dir: &Path, device: &Device) -> Result<Checkpoint, TrainError> {
        let mut problems = Vec::new();
        for path in Self::list(run_dir)? {
            match Checkpoint::load(&path, device) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!("skipping unusable checkpoint: {e}");
                    problems.push(e.to_string());
                }
            }
        }
        Err(TrainError::Checkpoint {
            path: run_dir.join("checkpoints").display().to_string(),
            problem: if problems.is_empty() {
                "no checkpoint in this run directory".into()
            } else {
                format!("no usable checkpoint: {}", problems.join("; "))
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_header_sorts_metadata_and_keeps_the_length() {
        let t = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).expect("tensor");
        let mut a = HashMap::new();
        let mut b = HashMap::new();
        for k in ["zeta", "alpha", "mid", "beta", "omega", "gamma"] {
            a.insert(k.to_string(), format!("value of {k}"));
        }
        for k in ["gamma", "omega", "beta", "mid", "alpha", "zeta"] {
            b.insert(k.to_string(), format!("value of {k}"));
        }
        let sa = safetensors::serialize(vec![("w", &t)], Some(a)).expect("serialise a");
        let sb = safetensors::serialize(vec![("w", &t)], Some(b)).expect("serialise b");
        let (ca, cb) = (canonical_header(sa.clone()).expect("a"), canonical_header(sb).expect("b"));
        assert_eq!(ca, cb);
        assert_eq!(ca.len(), sa.len());
        let (_, meta) = safetensors::SafeTensors::read_metadata(&ca).expect("still safetensors");
        assert_eq!(meta.metadata().as_ref().map(HashMap::len), Some(6));
    }
}
