#!/usr/bin/env bash
# Same figures before and after a change: short trainings and evaluations whose results must not
# move when code is only reorganised. Run it on two checkouts (or two binaries) and compare the
# fingerprints:
#
#   scripts/same-figures.sh OUT_DIR [MAPPO_BIN]      # default binary: target/debug/mappo
#   diff OLD_OUT/fingerprint.txt NEW_OUT/fingerprint.txt && echo same figures
#
# It trains the synthetic default (300 updates), configs/prompts.toml (40 updates, input dropout
# 0.1) and, when data/routellm/ exists (`cargo xtask fetch-data routellm`), the cost-aware
# configs/routellm-mmlu.toml (30 updates, input dropout 0.2); then eval (with the ridge
# baseline), eval at a cost weight, calibrate and route. The fingerprint holds the sha256 of
# every checkpoint's tensors and of its metadata without the config (whose corpus paths are
# absolute, so they differ between checkouts), every metrics.jsonl line without its wall-clock
# fields, and the sha256 of every JSON answer. Needs the model (`cargo xtask fetch-model`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/same-figures.sh OUT_DIR [MAPPO_BIN]}
bin=${2:-target/debug/mappo}
[ -x "$bin" ] || { echo "no binary $bin: cargo build -p mappo-cli" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out"
m() { "$bin" -q "$@"; }

m train --set train.total_updates=300 --out "$out/syn" > /dev/null
m eval --checkpoint "$out/syn" --json > "$out/syn-eval.json"
m train --config configs/prompts.toml --set train.total_updates=40 --set ppo.input_dropout=0.1 \
  --out "$out/prompts" > /dev/null
m eval --checkpoint "$out/prompts" --corpus data/prompts.jsonl --json > "$out/prompts-eval.json"
m route --checkpoint "$out/prompts" --json "my parcel never arrived" \
  "prove that sqrt(2) is irrational" > "$out/prompts-route.json"
if [ -f data/routellm/mmlu_train.jsonl ]; then
  m train --config configs/routellm-mmlu.toml --set train.total_updates=30 \
    --set train.save_interval=30 --out "$out/mmlu" > /dev/null
  val=data/routellm/mmlu_val.jsonl
  m eval --checkpoint "$out/mmlu" --corpus $val --baseline-train data/routellm/mmlu_train.jsonl \
    --json > "$out/mmlu-eval.json"
  m eval --checkpoint "$out/mmlu" --corpus $val --cost-weight 0.1 --json > "$out/mmlu-eval-at.json"
  m calibrate --checkpoint "$out/mmlu" --corpus $val --max-share gpt-4-1106=0.3 \
    --json > "$out/mmlu-calibrate.json"
  m route --checkpoint "$out/mmlu" --cost-weight 0.05 --json "What is 2+2?" \
    "Explain the Krebs cycle in detail" > "$out/mmlu-route.json"
else
  echo "data/routellm/ missing: the cost-aware run is left out (cargo xtask fetch-data routellm)" >&2
fi

python3 - "$out" > "$out/fingerprint.txt" <<'EOF'
import hashlib, json, pathlib, struct, sys
out = pathlib.Path(sys.argv[1])
for ckpt in sorted(out.glob("*/checkpoints/*.safetensors")):
    b = ckpt.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    meta = header.pop("__metadata__", {})
    meta.pop("config", None)
    rel = ckpt.relative_to(out)
    print(rel, "tensors", hashlib.sha256(json.dumps(header, sort_keys=True).encode() + b[8 + n:]).hexdigest())
    print(rel, "metadata", hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest())
for metrics in sorted(out.glob("*/metrics.jsonl")):
    for line in metrics.read_text().splitlines():
        d = {k: v for k, v in json.loads(line).items() if not any(w in k for w in ("second", "time", "_per_s"))}
        print(metrics.relative_to(out), json.dumps(d, sort_keys=True))
for answer in sorted(out.glob("*.json")):
    print(answer.name, hashlib.sha256(answer.read_bytes()).hexdigest())
EOF
wc -l < "$out/fingerprint.txt" | xargs echo "fingerprint lines:"
