#!/usr/bin/env bash
# Packs what the GPU figures need (scripts/gpu-figures.sh) for a GPU machine that has no Rust,
# no registry and no model hub, in parts that each fit a 64 MiB transfer:
#   .gpu/a/kit.tar.xz  the CUDA binaries (cargo xtask build-cuda --tests; the parity fixture is
#                      compiled into test-embed_parity), the CLINC150 data (data/clinc150), the
#                      model's small files and the first part of its weights
#   .gpu/b/weights.2   the rest of model.safetensors
# Send .gpu/a, unpack it there (tar -xJf .gpu/a/kit.tar.xz -C .gpu), then .gpu/b, then run
#   bash scripts/gpu-figures.sh           (it joins the weights and checks their sha256).
# Usage: scripts/gpu-kit.sh   (from the repository root, after `cargo xtask fetch-data clinc150`)
set -euo pipefail
cd "$(dirname "$0")/.."
dist=target/cuda/dist
model="${MAPPO_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mappo/all-MiniLM-L6-v2}"
for f in "$dist/mappo" "$dist/embed_bench" "$dist/test-embed_parity" "$dist/test-cuda" "$dist/run-gpu.sh"; do
  [ -e "$f" ] || { echo "missing $f: run cargo xtask build-cuda --tests" >&2; exit 1; }
done
[ -f "$model/model.safetensors" ] || { echo "missing $model: run cargo xtask fetch-model" >&2; exit 1; }
[ -f data/clinc150/val.jsonl ] || cargo xtask fetch-data clinc150
rm -rf .gpu && mkdir -p .gpu/stage/dist .gpu/stage/model .gpu/a .gpu/b
cp "$dist"/mappo "$dist"/embed_bench "$dist"/test-embed_parity "$dist"/test-cuda "$dist"/run-gpu.sh .gpu/stage/dist/
cp "$model"/config.json "$model"/tokenizer.json .gpu/stage/model/
cp data/clinc150/train.jsonl data/clinc150/val.jsonl .gpu/stage/
split -b 44M -d -a 1 "$model/model.safetensors" .gpu/weights.
mv .gpu/weights.0 .gpu/stage/model/weights.1
mv .gpu/weights.1 .gpu/b/weights.2
[ ! -e .gpu/weights.2 ] || { echo "model.safetensors split into more than two parts" >&2; exit 1; }
# The binaries share the kernels: a dictionary larger than one binary stores them once.
tar -C .gpu/stage -cf - . | xz -T1 --lzma2=preset=6,dict=256MiB > .gpu/a/kit.tar.xz
rm -rf .gpu/stage
du -sh .gpu/a .gpu/b
