//! A throwaway PostgreSQL cluster for the test run: `initdb` into `target/pg-test/data`,
//! `pg_ctl start` on a free port on 127.0.0.1 (no unix socket, trust authentication: it is
//! reachable only from this machine and lives only as long as the test run), stopped and deleted
//! when dropped. As root, the server runs as the `postgres` user (PostgreSQL refuses root).
//! The system cluster (`15 main`) is never touched.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The PostgreSQL server binaries directory: `MAPPO_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout), else the directory of `initdb` on PATH.
pub fn find_bindir() -> Option<PathBuf> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("MAPPO_PG_BINDIR").map(PathBuf::from) {
        return has(&d).then_some(d);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has(&bin).then_some((v, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).find(|d| has(d)))
}

/// A running throwaway cluster; stopped and removed on drop.
pub struct Cluster {
    bindir: PathBuf,
    base: PathBuf,
    as_postgres: bool,
    /// The server's options (`pg_ctl start -o`): the same port on a restart.
    opts: String,
    /// `postgres://mappo@127.0.0.1:PORT/postgres`
    pub url: String,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Cluster {
    /// Starts a fresh cluster under `base` (deleted first, stopping a cluster a killed run may
    /// have left there).
    pub fn start(bindir: &Path, base: &Path) -> Result<Cluster> {
        let as_postgres = is_root();
        // The postgres user must reach the data directory: when a parent of `base` is closed to
        // it (a clone under /root, say), use a directory in the system's temporary directory.
        let fallback;
        let base = if as_postgres && !reachable_by_postgres(base) {
            fallback = std::env::temp_dir().join(format!("mappo-pg-test-{}", std::process::id()));
            fallback.as_path()
        } else {
            base
        };
        let data = base.join("data");
        if data.join("postmaster.pid").exists() {
            let _ = run(
                bindir,
                as_postgres,
                "pg_ctl",
                &["-D", path_str(&data)?, "stop", "-m", "immediate", "-w"],
            );
        }
        if base.exists() {
            std::fs::remove_dir_all(base).with_context(|| format!("removing {}", base.display()))?;
        }
        std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
        if as_postgres {
            let status = Command::new("chown")
                .args(["postgres:postgres", path_str(base)?])
                .status()
                .context("chown")?;
            if !status.success() {
                bail!("chown postgres {} failed", base.display());
            }
        }
        // Built before initdb so that a failure below still stops and removes what was made.
        let mut cluster = Cluster {
            bindir: bindir.to_path_buf(),
            base: base.to_path_buf(),
            as_postgres,
            opts: String::new(),
            url: String::new(),
        };
        run(
            bindir,
            as_postgres,
            "initdb",
            &["-D", path_str(&data)?, "-U", "mappo", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"],
        )?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        // Throwaway: no fsync (the tests kill clients, never the server).
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' \
             -c max_connections=300 -c fsync=off -c full_page_writes=off"
        );
        cluster.opts = opts;
        cluster.pg_start()?;
        cluster.url = format!("postgres://mappo@127.0.0.1:{port}/postgres");
        Ok(cluster)
    }

    /// `pg_ctl start` (waits until it accepts connections).
    fn pg_start(&self) -> Result<()> {
        let (data, log) = (self.base.join("data"), self.base.join("server.log"));
        run(
            &self.bindir,
            self.as_postgres,
            "pg_ctl",
            &["-D", path_str(&data)?, "-l", path_str(&log)?, "-o", &self.opts, "-w", "-t", "60", "start"],
        )
        .with_context(|| {
            format!("starting PostgreSQL; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default())
        })
    }

    /// Stops the server (`pg_ctl stop -m fast`: clients are disconnected), keeping its data —
    /// a database outage, for `crates/mappo-cli/tests/outage.rs` (which includes this file).
    #[allow(dead_code)]
    pub fn stop(&self) -> Result<()> {
        let data = self.base.join("data");
        run(&self.bindir, self.as_postgres, "pg_ctl", &["-D", path_str(&data)?, "stop", "-m", "fast", "-w"])
    }

    /// Starts the server again after [`Cluster::stop`], on the same port.
    #[allow(dead_code)]
    pub fn restart(&self) -> Result<()> {
        self.pg_start()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.base.join("data");
        if let Some(d) = data.to_str() {
            let _ =
                run(&self.bindir, self.as_postgres, "pg_ctl", &["-D", d, "stop", "-m", "immediate", "-w"]);
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Whether every existing ancestor of `p` lets the `postgres` user through.
fn reachable_by_postgres(p: &Path) -> bool {
    let Some(existing) = p.ancestors().find(|a| a.exists()) else {
        return false;
    };
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(existing)
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Runs a server binary (as `postgres` when we are root), quietly; its output on failure.
fn run(bindir: &Path, as_postgres: bool, tool: &str, args: &[&str]) -> Result<()> {
    let exe = bindir.join(tool);
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let out =
        cmd.args(args).stdin(Stdio::null()).output().with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "{tool} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
