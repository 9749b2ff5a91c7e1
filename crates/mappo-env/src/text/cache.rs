//! The embedding cache: a corpus is embedded once per model and set of texts.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use mappo_embed::{Embedder, MAX_SEQ_LEN};
use sha2::{Digest, Sha256};

use crate::EnvError;

/// The default embedding cache directory, `<user cache>/mappo/embeddings`, where the user
/// cache is the first of:
/// 1. `$XDG_CACHE_HOME` when set and non-empty (the XDG base-directory rule);
/// 2. `$HOME/.cache` when `HOME` is set and non-empty;
/// 3. `.cache` in the working directory.
///
/// So `~/.cache/mappo/embeddings` unless `XDG_CACHE_HOME` says otherwise; `env.cache_dir` in a
/// config overrides it all. The model files follow the same rule
/// ([`mappo_embed::default_model_dir`]: `<user cache>/mappo/all-MiniLM-L6-v2`, unless
/// `$MAPPO_MODEL_DIR` or `env.model_dir` is set).
pub fn default_cache_dir() -> PathBuf {
    mappo_embed::user_cache_dir().join("mappo").join("embeddings")
}

/// Embeddings from [`embed_cached`].
#[derive(Debug, Clone)]
pub struct CachedEmbeddings {
    /// Row-major `[n, dim]` unit embeddings.
    pub rows: Vec<f32>,
    /// They were read from the cache (nothing was embedded).
    pub from_cache: bool,
    /// The cache file (read, or written when it could be).
    pub path: PathBuf,
}

/// Seconds between progress log lines while embedding with stderr not a terminal.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(5);

/// Decides when a progress line is due: at most one per `every`.
#[derive(Debug)]
struct Throttle {
    every: Duration,
    last: Instant,
}

impl Throttle {
    fn new(every: Duration, now: Instant) -> Self {
        Self { every, last: now }
    }

    fn due(&mut self, now: Instant) -> bool {
        if now.duration_since(self.last) >= self.every {
            self.last = now;
            true
        } else {
            false
        }
    }
}

/// Embeds `texts` with a cache: the key is the sha256 of the model's hash,
/// the maximum sequence length and every text; the rows are stored as
/// `<cache_dir>/<key>.safetensors`.
///
/// On a cache miss it logs (tracing, info) `embedding N texts` before starting and, when
/// stderr is not a terminal (where a caller's progress bar would show nothing), a progress
/// line every 5 s; `progress(done, total)` is called after each batch.
pub fn embed_cached(
    embedder: &Embedder,
    texts: &[&str],
    cache_dir: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<CachedEmbeddings, EnvError> {
    let mut h = Sha256::new();
    h.update(embedder.model_hash().as_bytes());
    h.update(format!("|{MAX_SEQ_LEN}|{}|", texts.len()).as_bytes());
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
            && let Ok(rows) = t.flatten_all().and_then(|t| t.to_vec1::<f32>())
        {
            return Ok(CachedEmbeddings { rows, from_cache: true, path });
        }
        tracing::warn!("ignoring unusable cache file {}", path.display());
    }

    let n = texts.len();
    tracing::info!("embedding {n} texts with all-MiniLM-L6-v2 ({:?} backend)", embedder.backend());
    let start = Instant::now();
    let mut throttle = (!std::io::stderr().is_terminal()).then(|| Throttle::new(PROGRESS_LOG_EVERY, start));
    let t = embedder.embed_tensor_with_progress(texts, |done, total| {
        if let Some(th) = throttle.as_mut()
            && done < total
            && th.due(Instant::now())
        {
            let secs = start.elapsed().as_secs_f64();
            tracing::info!(
                "embedded {done}/{total} texts ({:.0}%, {:.0} texts/s)",
                100.0 * done as f64 / total.max(1) as f64,
                done as f64 / secs.max(1e-9)
            );
        }
        progress(done, total)
    })?;
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
    Ok(CachedEmbeddings { rows, from_cache: false, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_throttled() {
        let t0 = Instant::now();
        let mut th = Throttle::new(Duration::from_secs(5), t0);
        assert!(!th.due(t0 + Duration::from_secs(1)));
        assert!(th.due(t0 + Duration::from_secs(5)));
        assert!(!th.due(t0 + Duration::from_secs(9)), "5 s after the last line, not after the start");
        assert!(th.due(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn the_cache_follows_xdg_cache_home() {
        // The rule reads the environment: run this test binary again as a child with the
        // variables set (setting them here would race with other tests, and needs `unsafe`).
        let exe = std::env::current_exe().expect("test binary");
        if std::env::var_os("MAPPO_CACHE_DIR_CHILD").is_some() {
            println!("CACHE={}", default_cache_dir().display());
            return;
        }
        let run = |xdg: Option<&str>, home: &str| {
            let mut c = std::process::Command::new(&exe);
            c.args(["--exact", "text::cache::tests::the_cache_follows_xdg_cache_home", "--nocapture"])
                .env("MAPPO_CACHE_DIR_CHILD", "1")
                .env("HOME", home);
            match xdg {
                Some(x) => c.env("XDG_CACHE_HOME", x),
                None => c.env_remove("XDG_CACHE_HOME"),
            };
            let out = c.output().expect("run the child");
            let s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.lines().find_map(|l| l.strip_prefix("CACHE=")).map(str::to_string).expect("child output")
        };
        assert_eq!(run(Some("/x/cache"), "/home/u"), "/x/cache/mappo/embeddings");
        assert_eq!(run(Some(""), "/home/u"), "/home/u/.cache/mappo/embeddings");
        assert_eq!(run(None, "/home/u"), "/home/u/.cache/mappo/embeddings");
    }
}
