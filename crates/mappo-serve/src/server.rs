//! The server's life: [`Server::start`] checks the options, opens the decision log, publishes
//! what it is asked to, loads the embedder and the policy, starts the model thread and the
//! policy watcher and binds the address; [`Server::run_until`] answers until shut down.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mappo_config::{Config, Rng};
use mappo_log::{DecisionLog, GroupCommitOptions, GroupCommitter, PublishMeta};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::ApiKeys;
use crate::engine::{Engine, EngineOptions, LoadedPolicy};
use crate::error::ServeError;
use crate::metrics::Metrics;
use crate::model::{CandleLoader, ModelError, ModelLoader};
use crate::router::{openapi_json_for, router};
use crate::state::AppState;
use crate::upstream::Upstreams;

/// Everything `mappo serve` needs.
pub struct ServeOptions {
    /// `sqlite:PATH` or `postgres://…`.
    pub db: String,
    /// Publish this checkpoint (if not already published) and serve its version, even when a
    /// newer one exists; versions published after the start are still followed.
    pub checkpoint: Option<PathBuf>,
    /// The resolved config: its `[serve]` section (and, with [`ServeOptions::publish_fresh`],
    /// the policy to initialise).
    pub config: Config,
    /// When nothing is published yet (and no checkpoint is given), publish a freshly
    /// initialised policy for [`ServeOptions::config`] (`mappo serve --config FILE`).
    pub publish_fresh: bool,
    /// Allow a non-loopback address without API keys (`--insecure`).
    pub insecure: bool,
    /// The embedding model's directory (default: the one the policy's config names).
    pub model_dir: Option<PathBuf>,
    /// This replica's name, logged with each decision and mixed into the sampling seed
    /// (default `HOSTNAME-PID`).
    pub replica: Option<String>,
    /// How often the newest published policy version is polled. Default 500 ms.
    pub policy_poll: Duration,
    /// Route jobs that may wait for the model thread before requests get 503. Default 4096.
    pub queue: usize,
    /// The model code (default [`CandleLoader`]).
    pub loader: Option<Arc<dyn ModelLoader>>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("db", &mappo_log::redact(&self.db))
            .field("checkpoint", &self.checkpoint)
            .field("publish_fresh", &self.publish_fresh)
            .field("insecure", &self.insecure)
            .field("addr", &self.config.serve.addr)
            .finish_non_exhaustive()
    }
}

impl ServeOptions {
    /// Options with defaults: serve the newest version in `db`.
    pub fn new(db: impl Into<String>, config: Config) -> Self {
        Self {
            db: db.into(),
            checkpoint: None,
            config,
            publish_fresh: false,
            insecure: false,
            model_dir: None,
            replica: None,
            policy_poll: Duration::from_millis(500),
            queue: 4096,
            loader: None,
        }
    }
}

/// A started server: bound, model loaded, not yet answering until [`Server::run_until`].
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
    log: DecisionLog,
    watcher: JoinHandle<()>,
    stop_watcher: watch::Sender<bool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish_non_exhaustive()
    }
}

fn default_replica() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".into());
    format!("{host}-{}", std::process::id())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ServeError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))
}

fn check_min_prob(min_prob: f64, agents: usize) -> Result<(), ModelError> {
    if min_prob * agents as f64 >= 1.0 {
        return Err(ModelError(format!(
            "serve.min_prob = {min_prob} is too large for {agents} agents (must be below 1/{agents})"
        )));
    }
    Ok(())
}

impl Server {
    /// Checks the address and keys, opens the decision log, publishes what the options ask for,
    /// loads the embedder and the newest policy, starts the model thread and the policy watcher,
    /// and binds the address. Errors name what failed (the database, the checkpoint, the model).
    pub async fn start(opts: ServeOptions) -> Result<Self, ServeError> {
        opts.config.validate()?;
        let scfg = opts.config.serve.clone();
        let addr: SocketAddr = scfg.addr.parse().map_err(|_| {
            ServeError::Config(mappo_config::ConfigError::Invalid {
                key: "serve.addr".into(),
                message: format!("{:?} is not IP:PORT", scfg.addr),
            })
        })?;
        let keys = if scfg.api_keys_file.is_empty() {
            ApiKeys::default()
        } else {
            ApiKeys::from_file(std::path::Path::new(&scfg.api_keys_file)).map_err(ServeError::ApiKeys)?
        };
        if keys.is_empty() && !addr.ip().is_loopback() && !opts.insecure {
            return Err(ServeError::Insecure { addr });
        }
        // The proxy's upstreams (their API keys are read now: a missing one stops the start).
        let upstreams = Upstreams::from_config(&scfg.upstreams)?;
        // A pooled connection is waited for no longer than a request waits for the log.
        let log = DecisionLog::open_with(
            &opts.db,
            mappo_log::OpenOptions {
                connect_timeout: Duration::from_millis(scfg.db_timeout_ms),
                ..mappo_log::OpenOptions::default()
            },
        )
        .await?;
        let loader: Arc<dyn ModelLoader> =
            opts.loader.clone().unwrap_or_else(|| Arc::new(CandleLoader::new(opts.model_dir.clone())));

        // What to publish before serving.
        let mut to_publish: Option<(Vec<u8>, PublishMeta)> = None;
        if let Some(path) = &opts.checkpoint {
            let bytes = std::fs::read(path).map_err(|e| ServeError::Checkpoint {
                path: path.clone(),
                message: format!("cannot read: {e}"),
            })?;
            to_publish = Some((
                bytes,
                PublishMeta {
                    source: "mappo serve --checkpoint".into(),
                    note: Some(path.display().to_string()),
                    meta: serde_json::Value::Null,
                },
            ));
        } else if opts.publish_fresh && log.latest_policy_version().await?.is_none() {
            let l = loader.clone();
            let cfg = opts.config.clone();
            let bytes = blocking(move || l.fresh_checkpoint(&cfg))
                .await?
                .map_err(|source| ServeError::Model { version: 0, source })?;
            to_publish = Some((
                bytes,
                PublishMeta {
                    source: "mappo serve --config".into(),
                    note: Some(format!("freshly initialised (train.seed = {})", opts.config.train.seed)),
                    meta: serde_json::Value::Null,
                },
            ));
        }

        // The embedder comes from the policy to serve (a checkpoint given is checked before it is
        // published, so a bad file never becomes a version).
        let first_bytes = match &to_publish {
            Some((b, _)) => b.clone(),
            None => {
                log.latest_policy()
                    .await?
                    .ok_or_else(|| ServeError::NoPolicy { db: log.db().to_string() })?
                    .checkpoint
            }
        };
        let min_prob = scfg.min_prob;
        let l = loader.clone();
        let (embedder, first_policy) = blocking(move || -> Result<_, ModelError> {
            let e = l.embedder(&first_bytes)?;
            let p = l.policy(&first_bytes, e.dim())?;
            check_min_prob(min_prob, p.agents().len())?;
            Ok((e, p))
        })
        .await?
        .map_err(|source| match &opts.checkpoint {
            Some(path) => ServeError::Checkpoint { path: path.clone(), message: source.to_string() },
            None => ServeError::Model { version: 0, source },
        })?;
        let dim = embedder.dim();
        let mut first_version = None;
        if let Some((bytes, meta)) = &to_publish {
            let p = log.publish_policy(bytes, meta).await?;
            tracing::info!(version = p.version, created = p.created, source = %meta.source, "published a policy");
            first_version = Some(p.version);
        }
        let latest = log
            .latest_policy_version()
            .await?
            .ok_or_else(|| ServeError::NoPolicy { db: log.db().to_string() })?;
        if let Some(v) = first_version.filter(|&v| v != latest) {
            tracing::info!(
                serving = v,
                newest = latest,
                "serving the checkpoint given, not the newest version"
            );
        }
        let policy = match first_version {
            // A checkpoint given is served as given (even when a newer version exists: a team
            // pinning a known-good checkpoint, or going back to it); a freshly published one
            // is the newest anyway.
            Some(v) => LoadedPolicy { version: v, agents: first_policy.agents().into(), model: first_policy },
            _ => {
                // Nothing given: serve the newest version.
                let p = log
                    .policy(latest)
                    .await?
                    .ok_or_else(|| ServeError::NoPolicy { db: log.db().to_string() })?;
                let l = loader.clone();
                let model = blocking(move || l.policy(&p.checkpoint, dim))
                    .await?
                    .map_err(|source| ServeError::Model { version: latest, source })?;
                check_min_prob(min_prob, model.agents().len())
                    .map_err(|source| ServeError::Model { version: latest, source })?;
                LoadedPolicy { version: latest, agents: model.agents().into(), model }
            }
        };

        // Shadow mode: a published candidate scored beside the served policy, never acted on.
        let shadow = match scfg.shadow {
            0 => None,
            v => {
                let p = log.policy(v).await?.ok_or_else(|| ServeError::Model {
                    version: v,
                    source: ModelError(format!("serve.shadow = {v}: no such policy version is published")),
                })?;
                let l = loader.clone();
                let model = blocking(move || l.policy(&p.checkpoint, dim))
                    .await?
                    .map_err(|source| ServeError::Model { version: v, source })?;
                if model.agents() != &policy.agents[..] {
                    return Err(ServeError::Model {
                        version: v,
                        source: ModelError(format!(
                            "serve.shadow = {v}: its agents {:?} are not the served policy's {:?}",
                            model.agents(),
                            &policy.agents[..]
                        )),
                    });
                }
                tracing::info!(
                    shadow = v,
                    serving = policy.version,
                    "shadow mode: scoring every request with a candidate"
                );
                Some(LoadedPolicy { version: v, agents: model.agents().into(), model })
            }
        };
        upstreams.check_agents(&policy.agents, policy.version)?;

        let replica = opts.replica.clone().unwrap_or_else(default_replica);
        let metrics = Arc::new(Metrics::new());
        let rng = Rng::derived(opts.config.train.seed, &format!("serve/{replica}"));
        let engine = Engine::start(
            embedder,
            policy,
            shadow,
            rng,
            EngineOptions {
                min_prob,
                max_batch_texts: scfg.max_batch_texts,
                batch_wait: Duration::from_millis(scfg.batch_wait_ms),
                queue: opts.queue,
            },
            metrics.clone(),
        )?;
        let db_timeout = Duration::from_millis(scfg.db_timeout_ms);
        let committer = GroupCommitter::new(log.clone(), GroupCommitOptions::default());
        // The OpenAPI document says what this server does: its limits, and security only with keys.
        let openapi = openapi_json_for(&scfg, !keys.is_empty());
        let state = Arc::new(AppState {
            engine,
            committer,
            log: log.clone(),
            metrics,
            keys,
            cfg: scfg,
            replica,
            db_ok: AtomicBool::new(true),
            db_error: std::sync::Mutex::new(String::new()),
            db_timeout,
            openapi,
            upstreams,
        });
        let (stop_watcher, stop_rx) = watch::channel(false);
        let watcher = tokio::spawn(watch_policies(
            state.clone(),
            log.clone(),
            loader,
            dim,
            latest,
            opts.policy_poll,
            stop_rx,
        ));
        let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr, state, log, watcher, stop_watcher })
    }

    /// The address it listens on (with the real port when `serve.addr` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The policy version being served.
    pub fn policy_version(&self) -> i64 {
        self.state.engine.version()
    }

    /// Answers requests until `shutdown` completes, then stops taking connections, lets
    /// in-flight requests finish (their decisions and rewards are committed before they
    /// answer), stops the model thread and closes the log.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server { listener, state, log, watcher, stop_watcher, .. } = self;
        let app = router(state.clone());
        let served = crate::limits::serve_connections(listener, app, state.clone(), shutdown).await;
        let _ = stop_watcher.send(true);
        let _ = watcher.await;
        // The last handle: dropping it joins the model thread and ends the group committer.
        drop(state);
        log.close().await;
        served.map_err(ServeError::Io)
    }
}

/// Starts the service and answers until Ctrl-C or SIGTERM; prints `listening on http://ADDR`
/// on stderr once it accepts connections.
pub async fn serve(opts: ServeOptions) -> Result<(), ServeError> {
    let server = Server::start(opts).await?;
    eprintln!("listening on http://{}", server.local_addr());
    server.run_until(shutdown_signal()).await
}

/// Completes on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Polls the newest published version and hands each new one to the model thread (which
/// switches between batches: no request fails). A version that cannot be loaded is skipped
/// (and counted) until a newer one appears.
async fn watch_policies(
    state: Arc<AppState>,
    log: DecisionLog,
    loader: Arc<dyn ModelLoader>,
    dim: usize,
    newest_at_start: i64,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // Only versions published after the start switch the policy (a pinned checkpoint stays
    // until then).
    let mut handled = newest_at_start;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        // While the log is marked unreachable, only a write probe (within serve.db_timeout_ms)
        // marks it reachable again: a read can succeed while writes cannot (a locked SQLite file).
        if !state.db_ok.load(Ordering::Relaxed) {
            match tokio::time::timeout(state.db_timeout, log.check_writable()).await {
                Ok(Ok(())) => state.log_ok(),
                Ok(Err(e)) => state.mark_unavailable(&e.to_string()),
                Err(_) => state.mark_unavailable(&format!(
                    "no answer within serve.db_timeout_ms = {} ms",
                    state.db_timeout.as_millis()
                )),
            }
        }
        let v = match log.latest_policy_version().await {
            Ok(Some(v)) => v,
            Ok(None) => continue,
            Err(e) => {
                if e.is_unavailable() {
                    state.mark_unavailable(&e.to_string());
                } else {
                    state.metrics.database_errors.inc();
                    tracing::warn!(error = %e, "polling the policy version failed");
                }
                continue;
            }
        };
        if v == handled {
            continue;
        }
        let bytes = match log.policy(v).await {
            Ok(Some(p)) => p.checkpoint,
            Ok(None) => continue,
            Err(e) => {
                state.metrics.database_errors.inc();
                tracing::warn!(error = %e, version = v, "reading a policy version failed");
                continue;
            }
        };
        let l = loader.clone();
        let min_prob = state.cfg.min_prob;
        let loaded = tokio::task::spawn_blocking(move || -> Result<_, ModelError> {
            let m = l.policy(&bytes, dim)?;
            check_min_prob(min_prob, m.agents().len())?;
            Ok(m)
        })
        .await;
        handled = v;
        match loaded {
            Ok(Ok(model)) => {
                let agents: Arc<[String]> = model.agents().into();
                state.engine.swap(LoadedPolicy { version: v, model, agents });
            }
            Ok(Err(e)) => {
                state.metrics.policy_load_failures.inc();
                tracing::error!(version = v, error = %e, "cannot load the newly published policy; still serving the previous one");
            }
            Err(e) => {
                state.metrics.policy_load_failures.inc();
                tracing::error!(version = v, error = %e, "loading the policy panicked");
            }
        }
    }
}
