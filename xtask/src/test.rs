//! `cargo xtask test`: the set-up a fresh clone needs (the embedding model, via
//! `cargo xtask fetch-model`; a PostgreSQL database for the decision log's tests; a headless
//! Chromium for the dashboard's browser test), then `cargo test --workspace`.
//!
//! PostgreSQL: the tests use `MAPPO_TEST_DATABASE_URL` when it is set; otherwise, when the
//! server binaries are installed (Debian's `postgresql` package), a throwaway cluster is started
//! in `target/pg-test` for the run (see `postgres.rs`) and the variable set for the tests;
//! otherwise the PostgreSQL tests are skipped with a message — and with `CI=true` that is a
//! failure.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::postgres;

/// The variable the PostgreSQL tests read.
const PG_VAR: &str = "MAPPO_TEST_DATABASE_URL";

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo test` (after `--`).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    // The install step a fresh machine needs: the model the embedding tests load. A no-op
    // (after checking the sha256 of each file) when it is already there.
    crate::fetch_model::run(crate::fetch_model::Args::default()).context("fetching the model")?;
    let root = crate::workspace_root();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["test", "--workspace"]).args(&a.cargo_args).current_dir(&root);
    // Kept alive (the cluster runs) until the tests have finished.
    let _cluster = postgres_for_tests(&root, &mut cmd)?;
    chromium_for_tests(&mut cmd)?;
    let status = cmd.status().context("running cargo test")?;
    if !status.success() {
        bail!("tests failed");
    }
    Ok(())
}

/// Sets `MAPPO_TEST_DATABASE_URL` for `cmd`: as given, or a throwaway cluster's. Without
/// either, says that the PostgreSQL tests are skipped and why (an error under `CI=true`).
fn postgres_for_tests(root: &Path, cmd: &mut Command) -> Result<Option<postgres::Cluster>> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if std::env::var(PG_VAR).is_ok_and(|v| !v.is_empty()) {
        eprintln!("PostgreSQL tests: using {PG_VAR} from the environment");
        return Ok(None);
    }
    let why = match postgres::find_bindir() {
        Some(bindir) => {
            let base = target_dir(root).join("pg-test");
            match postgres::Cluster::start(&bindir, &base) {
                Ok(cluster) => {
                    eprintln!(
                        "PostgreSQL tests: throwaway cluster ({}) at {}",
                        bindir.display(),
                        cluster.url
                    );
                    cmd.env(PG_VAR, &cluster.url);
                    return Ok(Some(cluster));
                }
                Err(e) => format!("starting a throwaway cluster from {} failed: {e:#}", bindir.display()),
            }
        }
        None => format!(
            "{PG_VAR} is not set and no PostgreSQL server binaries (initdb, pg_ctl) were found \
             (install Debian's `postgresql` package, or set MAPPO_PG_BINDIR)"
        ),
    };
    if ci {
        bail!("CI=true and the PostgreSQL tests cannot run: {why}");
    }
    eprintln!("PostgreSQL tests SKIPPED: {why}");
    Ok(None)
}

/// The variable the dashboard's browser test reads: a headless Chromium.
const CHROMIUM_VAR: &str = "MAPPO_CHROMIUM";

/// Sets `MAPPO_CHROMIUM` for `cmd`: as given, `chromium` on the PATH, or — on a Debian machine
/// where this runs as root — Debian's `chromium` package installed now (as PostgreSQL is). Without
/// one, says the browser test is skipped and why (an error under `CI=true`).
fn chromium_for_tests(cmd: &mut Command) -> Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if std::env::var(CHROMIUM_VAR).is_ok_and(|v| !v.is_empty()) {
        eprintln!("browser test: using {CHROMIUM_VAR} from the environment");
        return Ok(());
    }
    let found = || ["chromium", "chromium-browser"].into_iter().find_map(which);
    let mut chromium = found();
    if chromium.is_none() && is_root() && which("apt-get").is_some() {
        eprintln!("browser test: installing Debian's chromium package (apt-get)");
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends", "chromium"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        // A fresh machine may have no package lists yet.
        if !install() {
            let _ = Command::new("apt-get").args(["update", "-q"]).status();
            install();
        }
        chromium = found();
    }
    match chromium {
        Some(path) => {
            eprintln!("browser test: {}", path.display());
            cmd.env(CHROMIUM_VAR, path);
            Ok(())
        }
        None if ci => bail!(
            "CI=true and the dashboard's browser test cannot run: no chromium (install Debian's \
             `chromium` package, or set {CHROMIUM_VAR})"
        ),
        None => {
            eprintln!(
                "browser test SKIPPED: no chromium (install Debian's `chromium` package, or set {CHROMIUM_VAR})"
            );
            Ok(())
        }
    }
}

/// `name`'s path on the PATH.
fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Whether this process runs as root (`id -u` is 0).
fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `CARGO_TARGET_DIR` or `<workspace>/target`.
fn target_dir(root: &Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}
