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
    // The install step a fresh machine needs: the model the embedding tests load. A no-op
    // (after checking the sha256 of each file) when it is already there.
    crate::fetch_model::run(crate::fetch_model::Args::default()).context("fetching the model")?;
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
