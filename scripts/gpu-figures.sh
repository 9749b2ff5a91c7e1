#!/usr/bin/env bash
# On a GPU machine, after scripts/gpu-kit.sh's two parts arrived in .gpu/ (see there): the GPU
# checks and figures of issue 4, side by side with the CPU of the same machine.
#   1. embedding parity on the GPU against the sentence-transformers fixture (>= 0.9999)
#   2. tests/cuda.rs: GPU training learns like CPU training, checkpoints cross devices
#   3. training speed (ms/update, summary.json) on CPU and GPU: default config and CLINC150
#   4. embedding throughput on CPU and GPU (embed_bench) and sentence-transformers on both
# Writes everything to ${OUT:-.gpu/out}/log.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.gpu/out}"; mkdir -p "$out"
exec > >(tee -a "$out/log") 2>&1
k=.gpu
if [ ! -f $k/model/model.safetensors ]; then
  cat $k/model/weights.1 $k/b/weights.2 > $k/model/model.safetensors || exit 1
fi
echo "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  $k/model/model.safetensors" | sha256sum -c || exit 1
export MAPPO_MODEL_DIR=$PWD/$k/model
run=$k/dist/run-gpu.sh
nvidia-smi -L; nproc
mkdir -p data/clinc150 && cp $k/train.jsonl $k/val.jsonl data/clinc150/

echo "== 1. parity on the GPU"; $run $k/dist/test-embed_parity --nocapture --test-threads 1
echo "== 2. GPU vs CPU tests"; $run $k/dist/test-cuda --nocapture --test-threads 1

echo "== 3. training speed"
for dev in cpu cuda; do
  for cfg in configs/default.toml configs/clinc150.toml; do
    d=$k/runs/$dev-$(basename $cfg .toml)
    rm -rf $d
    $run $k/dist/mappo --log warn train --quiet --config $cfg --device $dev --out $d \
      --set train.eval_interval=0 --set env.cache_dir=\"$PWD/$k/cache-$dev\" > /dev/null || echo "FAILED $dev $cfg"
    echo "$dev $cfg $(cat $d/summary.json)"
  done
done
for dev in cpu cuda; do
  c=$(ls $k/runs/$dev-clinc150/checkpoints/*.safetensors 2>/dev/null | tail -1)
  [ -n "$c" ] || { echo "$dev clinc150: no checkpoint"; continue; }
  echo "$dev clinc150 val: $($run $k/dist/mappo eval --checkpoint $c --corpus data/clinc150/val.jsonl --json --quiet --device cpu | head -c 300)"
done

echo "== 4. embedding throughput (3,000 CLINC150 val texts, batch 64)"
data=data/clinc150/val.jsonl
for r in 1 2; do
  $run $k/dist/embed_bench --device cpu --repeat 2 --data $data --model-dir $MAPPO_MODEL_DIR
  $run $k/dist/embed_bench --device cuda --repeat 3 --data $data --model-dir $MAPPO_MODEL_DIR
  PYTHONUNBUFFERED=1 python3 scripts/st_embed_bench.py --device cuda --repeat 3 --data $data --model-dir $MAPPO_MODEL_DIR
  PYTHONUNBUFFERED=1 python3 scripts/st_embed_bench.py --device cpu --repeat 2 --data $data --model-dir $MAPPO_MODEL_DIR
done
