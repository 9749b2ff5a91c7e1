//! `cargo xtask`: project automation (fetch-model, fetch-data, test, bench, bench-serve, soak,
//! build-cuda).
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod bench_serve;
mod build_cuda;
mod fetch_data;
mod fetch_model;
mod postgres;
mod soak;
mod test;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "mappo's project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fetch all-MiniLM-L6-v2 (config.json, tokenizer.json, model.safetensors) and verify sha256.
    FetchModel(fetch_model::Args),
    /// Everything a fresh clone needs, then the whole test suite (what CI runs).
    Test(test::Args),
    /// Measure training speed (ms per update, release build), optionally side by side with the
    /// seed's Python program.
    Bench(bench::Args),
    /// Measure `mappo serve` (routed texts/s at concurrency 32, p50/p99 at concurrency 4) side by
    /// side with a Python FastAPI + sentence-transformers server, in one run.
    BenchServe(bench_serve::Args),
    /// Soak `mappo serve` (not part of `test`): 300,000 route + feedback requests at concurrency
    /// 32 against SQLite and PostgreSQL; RSS, p50/p99 and database size per 10,000, PASS/FAIL.
    Soak(soak::Args),
    /// Build the CUDA binary (and with --tests the GPU tests) on a machine without a GPU: the
    /// CUDA 13.0 toolchain from pinned PyPI wheels, CUDA_COMPUTE_CAP=90; output in target/cuda/dist.
    BuildCuda(build_cuda::Args),
    /// Convert a public data set into data/<name>/{train,val,test}.jsonl.
    FetchData(fetch_data::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::FetchModel(a) => fetch_model::run(a),
        Cmd::FetchData(a) => fetch_data::run(a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::BenchServe(a) => bench_serve::run(a),
        Cmd::Soak(a) => soak::run(a),
        Cmd::Test(a) => test::run(a),
        Cmd::BuildCuda(a) => build_cuda::run(a),
    }
}

/// The workspace root (xtask's parent directory).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}
