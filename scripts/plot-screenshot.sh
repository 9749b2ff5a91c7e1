#!/usr/bin/env bash
# The training-curve images of the docs (docs/images/training-curves.{svg,png}), from a real run:
# trains configs/clinc150.toml (its full 351 updates, a log line every 3 updates instead of 39
# so that the curves have points to show) and draws the run with `mappo plot`.
#
# Usage: scripts/plot-screenshot.sh [RUN_DIR]
#   RUN_DIR  an existing run to draw instead of training one (any config)
# Environment:
#   MAPPO          the binary to use (default: cargo build --release -p mappo-cli, then
#                  target/release/mappo)
#   CLINC150_FROM  a local copy of the CLINC150 files for `cargo xtask fetch-data clinc150 --from`
#                  (default: download them), when data/clinc150 is missing
# Needs the model (`cargo xtask fetch-model`); the first run embeds CLINC150 (about 18,000 texts,
# a minute or two on a few cores) into the embedding cache.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/images
mkdir -p "$out"
if [ -z "${MAPPO:-}" ]; then
  cargo build --release -p mappo-cli
  MAPPO="${CARGO_TARGET_DIR:-target}/release/mappo"
fi
run="${1:-}"
if [ -z "$run" ]; then
  if [ ! -f data/clinc150/train.jsonl ]; then
    cargo xtask fetch-data clinc150 ${CLINC150_FROM:+--from "$CLINC150_FROM"}
  fi
  run=runs/clinc150-curves
  "$MAPPO" train --config configs/clinc150.toml --out "$run" --force \
    --set train.log_interval=3 --set train.eval_interval=27
fi
"$MAPPO" plot "$run" --output "$out/training-curves.svg" --output "$out/training-curves.png"
ls -l "$out"/training-curves.*
