//! The real-text environment: a corpus of prompts, embedded once with
//! all-MiniLM-L6-v2 (and cached), served in batches; the reward of routing a
//! prompt to an agent comes from a reward model (label match or cosine to the
//! agent's description), plus optional noise. The learner only ever sees the
//! reward of the agent it chose.
//!
//! [`DatasetEnv`] is the environment proper: any fixed set of observation
//! rows with a known expected reward for every (row, action). Prompts are
//! drawn in passes: each pass is a fresh permutation of the corpus derived
//! from the seed and the pass number, so the position in the stream (one
//! integer, saved in checkpoints) is the environment's whole state.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use mappo_config::{AgentSpec, Rng};
use sha2::{Digest, Sha256};

use crate::embed::{EmbedError, Embedder};
use crate::{Env, EnvError, EnvSpec, KnownRewards, Step};

/// One prompt of a corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The text.
    pub text: String,
    /// Index of its labelled agent, if labelled.
    pub label: Option<usize>,
}

/// Reads a JSON-lines corpus: one `{"text": "...", "label": "<agent>"}` per
/// line (`label` optional; blank lines skipped). Errors name the file and line.
pub fn load_corpus(path: &Path, agents: &[AgentSpec]) -> Result<Vec<Prompt>, EnvError> {
    let file = std::fs::File::open(path).map_err(|e| EnvError::Corpus {
        path: path.display().to_string(),
        line: None,
        problem: format!("cannot open: {e}"),
    })?;
    let index: HashMap<&str, usize> = agents.iter().enumerate().map(|(i, a)| (a.name.as_str(), i)).collect();
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let err = |problem: String| EnvError::Corpus {
            path: path.display().to_string(),
            line: Some(n + 1),
            problem,
        };
        let line = line.map_err(|e| err(format!("cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| err("expected a JSON object".into()))?;
        let text = match obj.get("text") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => return Err(err("`text` must be a string".into())),
            None => return Err(err("missing `text`".into())),
        };
        let label = match obj.get("label") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(l)) => Some(*index.get(l.as_str()).ok_or_else(|| {
                let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
                err(format!("label `{l}` is not an agent (agents: {})", names.join(", ")))
            })?),
            Some(_) => return Err(err("`label` must be a string".into())),
        };
        out.push(Prompt { text, label });
    }
    if out.is_empty() {
        return Err(EnvError::Corpus {
            path: path.display().to_string(),
            line: None,
            problem: "the corpus is empty: expected JSON lines {\"text\": ..., \"label\": ...}".into(),
        });
    }
    Ok(out)
}

/// The default embedding cache directory: `$XDG_CACHE_HOME/mappo/embeddings`,
/// else `$HOME/.cache/mappo/embeddings`, else `.mappo-cache/embeddings`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("mappo/embeddings");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(h).join(".cache/mappo/embeddings");
    }
    PathBuf::from(".mappo-cache/embeddings")
}

/// Embeds `texts` with a cache: the key is the sha256 of the model's hash,
/// the maximum sequence length and every text; the rows are stored as
/// `<cache_dir>/<key>.safetensors`. Returns row-major `[n, dim]`.
pub fn embed_cached(
    embedder: &Embedder,
    texts: &[&str],
    cache_dir: &Path,
    progress: impl FnMut(usize, usize),
) -> Result<(Vec<f32>, bool), EnvError> {
    let mut h = Sha256::new();
    h.update(embedder.model_hash().as_bytes());
    h.update(format!("|{}|{}|", crate::embed::MAX_SEQ_LEN, texts.len()).as_bytes());
    for t in texts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    let key: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let path = cache_dir.join(format!("{key}.safetensors"));
    let dim = embedder.dim();
    if let Ok(map) = candle_core::safetensors::load(&path, &Device::Cpu) {
        if let Some(t) = map.get("embeddings")
            && t.dims() == [texts.len(), dim]
            && let Ok(v) = t.flatten_all().and_then(|t| t.to_vec1::<f32>())
        {
            tracing::info!(rows = texts.len(), "embeddings from cache {}", path.display());
            return Ok((v, true));
        }
        tracing::warn!("ignoring unusable cache file {}", path.display());
    }
    let t = embedder.embed_tensor_with_progress(texts, progress)?;
    let t = t.to_device(&Device::Cpu)?;
    let rows = t.flatten_all()?.to_vec1::<f32>()?;
    if let Err(e) = std::fs::create_dir_all(cache_dir).and_then(|_| {
        let tmp = cache_dir.join(format!(".{key}.tmp-{}", std::process::id()));
        candle_core::safetensors::save(&HashMap::from([("embeddings".to_string(), t)]), &tmp)
            .map_err(std::io::Error::other)?;
        std::fs::rename(&tmp, &path)
    }) {
        tracing::warn!("could not write the embedding cache {}: {e}", path.display());
    }
    Ok((rows, false))
}

/// Expected rewards `[n, agents]` of the label model: 1 for the labelled
/// agent, 0 otherwise (rows without a label get 0 everywhere).
pub fn label_rewards(prompts: &[Prompt], num_agents: usize) -> Vec<f32> {
    let mut r = vec![0f32; prompts.len() * num_agents];
    for (i, p) in prompts.iter().enumerate() {
        if let Some(l) = p.label {
            r[i * num_agents + l] = 1.0;
        }
    }
    r
}

/// Expected rewards `[n, agents]` of the cosine model: dot products of unit
/// prompt embeddings `[n, dim]` and unit agent-description embeddings `[agents, dim]`.
pub fn cosine_rewards(prompts: &[f32], agents: &[f32], dim: usize) -> Vec<f32> {
    let mut r = Vec::with_capacity(prompts.len() / dim * (agents.len() / dim));
    for p in prompts.chunks(dim) {
        for a in agents.chunks(dim) {
            r.push(p.iter().zip(a).map(|(x, y)| x * y).sum());
        }
    }
    r
}

/// A bandit over a fixed set of observation rows with known expected rewards.
#[derive(Debug)]
pub struct DatasetEnv {
    obs: Tensor,
    expected: Vec<f32>,
    rows: usize,
    num_actions: usize,
    num_envs: usize,
    noise: f32,
    seed: u64,
    drawn: u64,
    pass: Option<(u64, Vec<u32>)>,
    current: Vec<u32>,
    device: Device,
}

impl DatasetEnv {
    /// `obs` is row-major `[rows, dim]`, `expected` `[rows, num_actions]`.
    pub fn new(
        obs: &[f32],
        dim: usize,
        expected: Vec<f32>,
        num_actions: usize,
        num_envs: usize,
        noise: f64,
        seed: u64,
        device: &Device,
    ) -> Result<Self, EnvError> {
        let rows = obs.len() / dim.max(1);
        if rows == 0 || expected.len() != rows * num_actions {
            return Err(EnvError::Setup(format!(
                "{rows} observation rows but {} expected rewards for {num_actions} actions",
                expected.len()
            )));
        }
        Ok(Self {
            obs: Tensor::from_slice(obs, (rows, dim), device)?,
            expected,
            rows,
            num_actions,
            num_envs,
            noise: noise as f32,
            seed,
            drawn: 0,
            pass: None,
            current: Vec::new(),
            device: device.clone(),
        })
    }

    /// Number of rows in the data set.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Prompts drawn so far (passes × rows + position).
    pub fn drawn(&self) -> u64 {
        self.drawn
    }

    /// The current batch's row indices.
    pub fn current_rows(&self) -> &[u32] {
        &self.current
    }

    /// All observations `[rows, dim]`.
    pub fn observations(&self) -> &Tensor {
        &self.obs
    }

    fn next_row(&mut self) -> u32 {
        let pass = self.drawn / self.rows as u64;
        let pos = (self.drawn % self.rows as u64) as usize;
        if self.pass.as_ref().is_none_or(|(p, _)| *p != pass) {
            let mut perm: Vec<u32> = (0..self.rows as u32).collect();
            Rng::derived(self.seed ^ pass.wrapping_mul(0x9E37_79B9_7F4A_7C15), "dataset-pass")
                .shuffle(&mut perm);
            self.pass = Some((pass, perm));
        }
        self.drawn += 1;
        self.pass.as_ref().map_or(0, |(_, perm)| perm[pos])
    }
}

impl Env for DatasetEnv {
    fn kind(&self) -> &str {
        mappo_config::EnvKind::Text.as_str()
    }

    fn spec(&self) -> EnvSpec {
        EnvSpec { obs_dim: self.obs.dims()[1], num_actions: self.num_actions, num_envs: self.num_envs }
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn reset(&mut self, _rng: &mut Rng) -> Result<Tensor, EnvError> {
        self.current = (0..self.num_envs).map(|_| self.next_row()).collect();
        let idx = Tensor::from_slice(&self.current, self.num_envs, &self.device)?;
        Ok(self.obs.index_select(&idx, 0)?)
    }

    fn step(&mut self, actions: &[u32], rng: &mut Rng) -> Result<Step, EnvError> {
        if self.current.is_empty() {
            return Err(EnvError::NotReset);
        }
        if actions.len() != self.num_envs {
            return Err(EnvError::ActionCount { expected: self.num_envs, got: actions.len() });
        }
        let mut reward = Vec::with_capacity(self.num_envs);
        for (row, (&a, &i)) in actions.iter().zip(&self.current).enumerate() {
            if a as usize >= self.num_actions {
                return Err(EnvError::BadAction { row, action: a, num_actions: self.num_actions });
            }
            let noise = if self.noise > 0.0 { self.noise * rng.normal() as f32 } else { 0.0 };
            reward.push(self.expected[i as usize * self.num_actions + a as usize] + noise);
        }
        self.current.clear();
        Ok(Step::all_done(reward))
    }

    fn state(&self) -> Vec<u64> {
        vec![self.drawn]
    }

    fn restore_state(&mut self, state: &[u64]) -> Result<(), EnvError> {
        match state {
            [d] => {
                self.drawn = *d;
                Ok(())
            }
            _ => Err(EnvError::Setup(format!("dataset env state must be one number, got {state:?}"))),
        }
    }
}

impl KnownRewards for DatasetEnv {
    fn expected_rewards(&self) -> Vec<f32> {
        let a = self.num_actions;
        self.current
            .iter()
            .flat_map(|&i| self.expected[i as usize * a..(i as usize + 1) * a].iter().copied())
            .collect()
    }
}

impl From<EmbedError> for EnvError {
    fn from(e: EmbedError) -> Self {
        EnvError::Embed(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents() -> Vec<AgentSpec> {
        ["code", "math"]
            .iter()
            .map(|n| AgentSpec { name: n.to_string(), description: String::new() })
            .collect()
    }

    fn write(lines: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        std::io::Write::write_all(&mut f, lines.as_bytes()).expect("write");
        f
    }

    #[test]
    fn corpus_parses_and_errors_name_file_and_line() {
        let f = write(
            "{\"text\": \"fix my loop\", \"label\": \"code\"}\n\n{\"text\": \"\"}\n{\"text\": \"2+2\", \"label\": \"math\"}\n",
        );
        let c = load_corpus(f.path(), &agents()).expect("corpus");
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].label, Some(0));
        assert_eq!(c[1], Prompt { text: String::new(), label: None });
        for (body, needle, line) in [
            ("{\"text\": \"a\"}\nnot json\n", "not valid JSON", 2),
            ("{\"label\": \"code\"}\n", "missing `text`", 1),
            ("{\"text\": \"a\", \"label\": \"cooking\"}\n", "`cooking` is not an agent", 1),
            ("{\"text\": 3}\n", "must be a string", 1),
        ] {
            let f = write(body);
            let e = load_corpus(f.path(), &agents()).expect_err(body).to_string();
            assert!(e.contains(needle) && e.contains(&format!("line {line}")), "{e}");
            assert!(e.contains(&f.path().display().to_string()), "{e}");
        }
        let f = write("\n");
        assert!(load_corpus(f.path(), &agents()).expect_err("empty").to_string().contains("empty"));
    }

    #[test]
    fn dataset_env_walks_passes_and_resumes_from_its_state() {
        let obs: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let expected: Vec<f32> =
            (0..10).flat_map(|i| [f32::from(i % 2 == 0), f32::from(i % 2 == 1)]).collect();
        let mut env = DatasetEnv::new(&obs, 1, expected, 2, 4, 0.0, 3, &Device::Cpu).expect("env");
        let mut rng = Rng::new(0);
        let mut seen = Vec::new();
        for _ in 0..5 {
            let o = env.reset(&mut rng).expect("reset");
            let rows: Vec<f32> = o.flatten_all().and_then(|t| t.to_vec1()).expect("host");
            let exp = env.expected_rewards();
            let oracle = env.oracle_actions();
            let s = env.step(&oracle, &mut rng).expect("step");
            for (k, r) in rows.iter().enumerate() {
                assert_eq!(exp[k * 2 + oracle[k] as usize], 1.0);
                assert_eq!(s.reward[k], 1.0);
                assert_eq!(oracle[k], (*r as u32) % 2);
            }
            seen.extend(rows);
        }
        let mut first: Vec<f32> = seen[..10].to_vec();
        first.sort_by(f32::total_cmp);
        assert_eq!(first, obs, "each pass visits every row once");
        assert_ne!(seen[..10], seen[10..20], "passes are reshuffled");
        let mut resumed = DatasetEnv::new(&obs, 1, vec![0.0; 20], 2, 4, 0.0, 3, &Device::Cpu).expect("env");
        resumed.restore_state(&[8]).expect("restore");
        let o = resumed.reset(&mut rng).expect("reset");
        let rows: Vec<f32> = o.flatten_all().and_then(|t| t.to_vec1()).expect("host");
        assert_eq!(rows, seen[8..12]);
    }

    #[test]
    fn reward_models() {
        let p = vec![Prompt { text: "a".into(), label: Some(1) }, Prompt { text: "b".into(), label: None }];
        assert_eq!(label_rewards(&p, 3), vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        let r = cosine_rewards(&[1.0, 0.0, 0.6, 0.8], &[0.0, 1.0, 1.0, 0.0], 2);
        assert_eq!(r, vec![0.0, 1.0, 0.8, 0.6]);
    }
}
