//! `cargo xtask test`: the set-up a fresh clone needs (the embedding model,
//! via `cargo xtask fetch-model`), then `cargo test --workspace`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo test` (after `--`).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

pub fn run(a: Args) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
    let status = Command::new(env!("CARGO"))
        .args(["test", "--workspace"])
        .args(&a.cargo_args)
        .current_dir(root)
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("tests failed");
    }
    Ok(())
}
