//! Self-describing safetensors checkpoints: weights, optimizer moments, RNG
//! state, update count and the resolved config, written atomically.
//!
//! Tensor names: `policy.<param>`, `adam.actor.{m,v}.<param>`,
//! `adam.critic.{m,v}.<param>`. Metadata (string map in the safetensors
//! header): `format` = [`FORMAT`], `config` (TOML), `update`, `rng`
//! (four hex words), `adam_actor_step`, `adam_critic_step`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use mappo_config::Config;

use crate::TrainError;

/// The value of the `format` metadata key.
pub const FORMAT: &str = "mappo-checkpoint/1";

/// A checkpoint in memory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The run's resolved config.
    pub config: Config,
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
}

fn ckpt_err(path: &Path, problem: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint { path: path.display().to_string(), problem: problem.to_string() }
}

impl Checkpoint {
    /// Writes the checkpoint atomically: a temporary file in the same
    /// directory, flushed and fsynced, then renamed over `path` (and the
    /// directory fsynced), so a crash leaves the old file or the new one.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("config".to_string(), self.config.to_toml_string());
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
        let bytes = safetensors::serialize(data, Some(meta)).map_err(|e| ckpt_err(path, e))?;
        write_atomic(path, &bytes).map_err(|e| ckpt_err(path, format!("cannot write: {e}")))
    }

    /// Reads and checks a checkpoint (tensors on `device`).
    pub fn load(path: &Path, device: &Device) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(|e| ckpt_err(path, format!("cannot read: {e}")))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
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
        let tensors = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| ckpt_err(path, format!("corrupt tensor data ({e})")))?;
        Ok(Self { config, update, rng_state, adam_steps, env_state, tensors })
    }

    /// Takes tensor `name`, checking its shape.
    pub fn tensor(&self, path: &Path, name: &str, dims: &[usize]) -> Result<Tensor, TrainError> {
        let t = self.tensors.get(name).ok_or_else(|| ckpt_err(path, format!("missing tensor `{name}`")))?;
        if t.dims() != dims {
            return Err(ckpt_err(
                path,
                format!("tensor `{name}` has shape {:?} but the config's model needs {dims:?}", t.dims()),
            ));
        }
        Ok(t.clone())
    }
}

/// Writes `bytes` to `path` via a fsynced temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The checkpoint file name for an update count.
pub fn checkpoint_name(update: u64) -> String {
    format!("update-{update:07}.safetensors")
}

/// The checkpoints of a run directory, newest (highest update) first.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
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
    found.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(found.into_iter().map(|(_, p)| p).collect())
}
