//! Shared helpers: a text config, a server running in-process on 127.0.0.1:0, an HTTP client.
//! The model comes from `cargo xtask fetch-model` (`cargo xtask test` fetches it first).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mappo_config::Config;
use mappo_serve::{ServeOptions, Server};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The four agents of configs/prompts.toml, in order.
pub const AGENTS: [&str; 4] = ["code", "math", "writing", "support"];

/// configs/prompts.toml with overrides; `model.init_gain_policy = 2` makes a freshly initialised
/// policy far from uniform, so that sampling and argmax can be told apart.
pub fn config(sets: &[&str]) -> Config {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut all = vec![
        format!("env.corpus={:?}", root.join("data/prompts.jsonl").display().to_string()),
        "model.init_gain_policy=2.0".to_string(),
        "serve.addr=\"127.0.0.1:0\"".to_string(),
    ];
    all.extend(sets.iter().map(|s| s.to_string()));
    match Config::load(Some(&root.join("configs/prompts.toml")), &all) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

/// A server running in this process.
pub struct Running {
    pub addr: SocketAddr,
    pub url: String,
    pub db: String,
    pub db_path: PathBuf,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), mappo_serve::ServeError>>>,
    dir: Option<tempfile::TempDir>,
}

impl Running {
    /// Stops the server gracefully and returns its result, with the directory of its database
    /// (which lives as long as the caller keeps it).
    pub async fn stop(mut self) -> Result<tempfile::TempDir, mappo_serve::ServeError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task")?;
        }
        Ok(self.dir.take().expect("the directory"))
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.post_with(path, body, None).await
    }

    pub async fn post_with(&self, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
        let mut r = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text:?}"));
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self.client.get(format!("{}{path}", self.url)).send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }
}

/// Starts a server on a fresh SQLite database with a freshly initialised policy for `cfg`
/// (`mappo serve --config`), after `tweak` adjusts the options.
pub async fn start(cfg: Config, tweak: impl FnOnce(&mut ServeOptions)) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let db_path = dir.path().join("serve.db");
    let db = format!("sqlite:{}", db_path.display());
    let mut opts = ServeOptions::new(db.clone(), cfg);
    opts.publish_fresh = true;
    opts.replica = Some("test-replica".into());
    tweak(&mut opts);
    let server = Server::start(opts)
        .await
        .unwrap_or_else(|e| panic!("server start (if the model is missing: cargo xtask fetch-model): {e}"));
    let addr = server.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run_until(async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        url: format!("http://{addr}"),
        db,
        db_path,
        client: reqwest::Client::new(),
        stop: Some(tx),
        task: Some(task),
        dir: Some(dir),
    }
}

/// A decision's probabilities as floats.
pub fn probs(d: &Value) -> Vec<f64> {
    d["probabilities"].as_array().expect("probabilities").iter().map(|p| p.as_f64().expect("float")).collect()
}
