#!/usr/bin/env bash
# Batch-1 decode of our engine and llama.cpp on the same files, alternating, N rounds:
# this VM's memory bandwidth drifts by tens of percent within minutes, so a ratio is only
# meaningful between runs taken back to back. Prints one line per run and the median
# tokens/s of each side.
#   scripts/bench/engine_decode_ab.sh MODEL_DIR [ROUNDS]
# MODEL_DIR is what `bench-engine --write` made, with model-q8_0.gguf beside it.
set -euo pipefail
m=${1:?model dir}
rounds=${2:-3}
here=$(cd "$(dirname "$0")" && pwd)
bin=${BENCH_ENGINE:-./target/release/bench-engine}
ours() { # weights -> b1 tok/s
  if [ "$1" = f32 ]; then "$bin" --bench "$m" --prompt 16 --ways 1 | awk -F'|' '/fcmesh engine \| f32/ {print $6}'
  else "$bin" --bench "$m" --prompt 16 --ways 1 --q8 "$m/model-q8_0.gguf" | awk -F'|' '/Q8_0 \(GGUF\) \|/ {print $6}'; fi
}
theirs() { # gguf -> b1 tok/s
  python3 - "$1" "$here" <<'PY' 2>/dev/null
import sys, argparse
sys.path.insert(0, sys.argv[2])
import engine_peers as e
a = argparse.Namespace(threads=2, prompt=16, decode=32, ways=1)
print(e.llama_row(sys.argv[1], "x", a).split("|")[5])
PY
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for w in f32 q8; do
  f=$m/model-f32.gguf; [ $w = q8 ] && f=$m/model-q8_0.gguf
  : > /tmp/ab_ours; : > /tmp/ab_theirs
  for i in $(seq "$rounds"); do
    o=$(ours $w | tr -d ' '); t=$(theirs "$f" | tr -d ' ')
    echo "$w round $i: fcmesh $o, llama.cpp $t tok/s"
    echo "$o" >> /tmp/ab_ours; echo "$t" >> /tmp/ab_theirs
  done
  mo=$(median < /tmp/ab_ours); mt=$(median < /tmp/ab_theirs)
  echo "$w median: fcmesh $mo, llama.cpp $mt tok/s ($(awk "BEGIN {printf \"%.2f\", $mo / $mt}")x)"
done
