#!/bin/bash
# usage: scripts/ui-latency.sh DB PORT
# Serves the decision log DB (e.g. the one `MAPPO_DASHBOARD_BENCH_DB=... cargo test -p mappo-log
# --release --lib dashboard_over_a_log` leaves) with configs/prompts.toml and a release build of
# mappo, and times GET /ui: 20 calls per range after one warm-up, p50 and p95
# (docs/results/dashboard.md).
set -u
DB=$1; PORT=$2
T=$(mktemp -d)
cd "$(dirname "$0")/.."
./target/release/mappo serve --config configs/prompts.toml --db "$DB" --addr 127.0.0.1:$PORT --log warn > "$T/serve.log" 2>&1 &
SP=$!
for i in $(seq 1 300); do curl -sf http://127.0.0.1:$PORT/healthz >/dev/null && break; sleep 1; done
for q in "minutes=60" "minutes=5" "minutes=60&bucket=7"; do
  curl -s -o "$T/page.html" "http://127.0.0.1:$PORT/ui?$q"   # warm
  for i in $(seq 1 20); do curl -s -o /dev/null -w "%{time_total}\n" "http://127.0.0.1:$PORT/ui?$q"; done | sort -n > "$T/times.txt"
  python3 - "$q" "$T/times.txt" <<'PY'
import math, sys
t = sorted(float(x) * 1000 for x in open(sys.argv[2]))
n = len(t)
p = lambda q: t[max(1, math.ceil(n * q)) - 1]
print(f"{sys.argv[1]:22s} n={n} p50={p(0.5):.1f} ms p95={p(0.95):.1f} ms")
PY
  grep -o 'data-requests="[0-9]*"\|id="cut"' "$T/page.html" | head -2
done
kill $SP; wait
rm -rf "$T"
