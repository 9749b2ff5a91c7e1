//! `mappo`: train a PPO prompt router, evaluate it, route prompts.
//!
//! This file only sets up logging and dispatches; the arguments are in
//! `args.rs`, the commands in `train.rs`, `commands.rs`, `curves.rs` (`plot`) and the
//! others, progress display in `progress.rs`, signal handling in `signals.rs`.

mod args;
mod commands;
mod curves;
mod db;
mod learn;
mod ope;
mod plot;
mod progress;
mod signals;
mod simulate;
mod train;

use std::io::{ErrorKind, IsTerminal};

use anyhow::{Result, bail};
use clap::Parser;

use args::{Cli, Cmd};
use progress::Mode;

/// `println!` that returns the write error (a closed pipe) instead of panicking.
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => { { use std::io::Write as _; writeln!(std::io::stdout(), $($t)*)? } };
}

fn main() {
    let cli = Cli::parse();
    let code = match init_logging(&cli.log, cli.quiet).and_then(|()| dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Output piped into `head` and the like: stop quietly, as Unix tools do.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
            }) {
                0
            } else {
                eprintln!("error: {}", error_text(&e));
                1
            }
        }
    };
    std::process::exit(code);
}

fn dispatch(cli: Cli) -> Result<i32> {
    let mode = Mode::detect(cli.quiet);
    match cli.cmd {
        Cmd::Train(a) => Ok(train::train(a, mode)?.unwrap_or(0)),
        Cmd::Eval(a) => commands::eval(a, mode).map(|()| 0),
        Cmd::Plot(a) => curves::plot(a).map(|()| 0),
        Cmd::Route(a) => commands::route(a).map(|()| 0),
        Cmd::Calibrate(a) => commands::calibrate(a, mode).map(|()| 0),
        Cmd::Embed(a) => commands::embed(a, mode).map(|()| 0),
        Cmd::Config(a) => commands::config(a).map(|()| 0),
        Cmd::Serve(a) => db::serve(a).map(|()| 0),
        Cmd::Log { cmd } => db::log(cmd).map(|()| 0),
        Cmd::Policy { cmd } => db::policy(cmd).map(|()| 0),
        Cmd::Ope(a) => ope::ope(a).map(|()| 0),
        Cmd::Learn(a) => learn::learn(a),
        Cmd::Simulate(a) => simulate::simulate(a).map(|()| 0),
    }
}

/// The error and its causes, each said once (a cause already quoted by the
/// message above it is not repeated).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a `--log` filter: levels or TARGET=LEVEL pairs.
fn check_filter(filter: &str) -> Result<()> {
    for part in filter.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let level = part.rsplit_once('=').map_or(part, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            bail!(
                "--log: `{part}` is not a level ({}) nor TARGET=LEVEL (e.g. info,mappo_train=debug)",
                LEVELS.join(", ")
            );
        }
    }
    Ok(())
}

fn init_logging(log: &str, quiet: bool) -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => f,
        _ => {
            check_filter(log)?;
            if quiet { "warn".to_string() } else { log.to_string() }
        }
    };
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .init();
    Ok(())
}

/// Applies `train.threads` by setting `RAYON_NUM_THREADS`, which candle reads
/// on every matrix product, unless the user set it already.
pub(crate) fn limit_threads(threads: usize) {
    if threads == 0 || std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    // SAFETY: called from `main`'s thread before this process starts any
    // other thread (no progress-bar ticker, signal handler or thread pool
    // exists yet), so nothing can read the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}
