//! The one download helper of `fetch-data`: a data set's public files, fetched into a local
//! directory after a reachability probe, so that an unreachable source fails in seconds and the
//! data set can fall back to `--from`.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// Largest file accepted from a public source (RouteLLM's largest CSV is a few MB).
const MAX_FILE_BYTES: u64 = 64 << 20;

/// The base URL of a data set's public files: `explicit` (`--url`), else the environment
/// variable `env` when it is set and not blank (a mirror), else `default`.
pub fn public_url(explicit: Option<&str>, env: &str, default: &str) -> String {
    explicit
        .map(str::to_owned)
        .or_else(|| std::env::var(env).ok().filter(|u| !u.trim().is_empty()))
        .unwrap_or_else(|| default.to_string())
}

/// Downloads `<url>/<file>` to `dir/<file>` for every file of `files` (paths relative to both;
/// subdirectories are created). First a reachability probe of the URL's host (or of the proxy
/// the environment names), bounded by `timeout`; then each request is bounded by 12 × `timeout`
/// and each file by 64 MiB.
pub fn download<S: AsRef<str>>(url: &str, files: &[S], dir: &Path, timeout: Duration) -> Result<()> {
    let url = url.trim_end_matches('/');
    let proxy = crate::fetch_model::proxy_for(url);
    crate::fetch_model::probe(proxy.as_deref().unwrap_or(url), timeout)?;
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(timeout * 12)).build().into();
    fetch_all(&agent, url, files, dir)
}

/// The requests of [`download`], with `agent`, showing a progress bar.
fn fetch_all<S: AsRef<str>>(agent: &ureq::Agent, url: &str, files: &[S], dir: &Path) -> Result<()> {
    let bar = indicatif::ProgressBar::new(files.len() as u64);
    for rel in files.iter().map(AsRef::as_ref) {
        let mut body = Vec::new();
        agent
            .get(&format!("{url}/{rel}"))
            .call()
            .with_context(|| format!("GET {url}/{rel}"))?
            .into_body()
            .with_config()
            .limit(MAX_FILE_BYTES)
            .reader()
            .read_to_end(&mut body)
            .with_context(|| format!("reading {url}/{rel}"))?;
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A one-thread HTTP server on the loopback answering `files` (path → body), 404 otherwise,
    /// until `requests` requests were served. Returns its base URL.
    fn serve(files: &'static [(&'static str, &'static str)], requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().take(requests) {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                let mut header = String::new();
                while reader.read_line(&mut header).unwrap() > 2 {
                    header.clear();
                }
                let path = request.split(' ').nth(1).unwrap_or_default();
                let (status, body) = match files.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => ("200 OK", *body),
                    None => ("404 Not Found", ""),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes())).unwrap();
            }
        });
        url
    }

    /// An agent that goes to the loopback directly, whatever proxy the environment names.
    fn direct() -> ureq::Agent {
        ureq::Agent::config_builder().proxy(None).timeout_global(Some(Duration::from_secs(10))).build().into()
    }

    #[test]
    fn downloads_every_file_into_its_subdirectory() {
        let url = serve(&[("/data/a.json", "{\"a\": 1}"), ("/data/sub/b.csv", "x,y\n1,2\n")], 2);
        let dir = tempfile::tempdir().unwrap();
        fetch_all(&direct(), &format!("{url}/data"), &["a.json", "sub/b.csv"], dir.path()).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("a.json")).unwrap(), "{\"a\": 1}");
        assert_eq!(fs::read_to_string(dir.path().join("sub/b.csv")).unwrap(), "x,y\n1,2\n");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_its_url() {
        let url = serve(&[("/data/a.json", "{}")], 2);
        let dir = tempfile::tempdir().unwrap();
        let e =
            fetch_all(&direct(), &format!("{url}/data"), &["a.json", "gone.json"], dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains(&format!("GET {url}/data/gone.json")), "{e:#}");
        assert!(format!("{e:#}").contains("404"), "{e:#}");
    }

    #[test]
    fn an_unreachable_host_fails_the_probe() {
        // Port 9 (discard) on the loopback: refused at once.
        let dir = tempfile::tempdir().unwrap();
        assert!(
            download("http://127.0.0.1:9/data", &["a.json"], dir.path(), Duration::from_secs(1)).is_err()
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "nothing written");
    }

    #[test]
    fn the_url_is_the_flag_else_the_default() {
        let env = "MAPPO_TEST_UNSET_URL_VARIABLE";
        assert_eq!(public_url(Some("http://m/x"), env, "http://d"), "http://m/x");
        assert_eq!(public_url(None, env, "http://d"), "http://d");
    }
}
