#!/usr/bin/env bash
# `make bench`: every benchmark with its peer, in the same run, on the same machine.
# Sizes can be shrunk with FC_BENCH_SFT_ARGS (default: the Qwen3-0.6B shape, seq 512, batch 2).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${FC_BENCH_OUT:-bench-out}
mkdir -p "$out"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

echo; echo "== bus: publish -> consume -> ack (fcmesh embedded, fcmesh JetStream, raw async-nats)"
cargo build --release -q -p fc-integration-tests --bin bench-bus
./target/release/bench-bus | tee "$out/bus.txt"

echo; echo "== rewards: completions scored per second per core (Rust vs plain Python json + jsonschema)"
python3 -c "import jsonschema" 2>/dev/null || python3 -m pip install -q jsonschema
cargo run --release -q -p fc-rewards --example score_bench -- 500 "$out/reward_dump.jsonl" | tee "$out/rewards_rust.txt"
python3 scripts/bench_rewards.py "$out/reward_dump.jsonl" | tee "$out/rewards_python.txt"

echo; echo "== SFT step: LoRA r32 on the Qwen3-0.6B shape (fc-model vs PyTorch + PEFT)"
sft_args=${FC_BENCH_SFT_ARGS:---seq 512 --batch 2 --steps 3}
cargo run --release -q -p fc-model --bin bench-sft-step -- $sft_args | tee "$out/sft_rust.txt"
if ! python3 -c "import torch, peft, transformers" 2>/dev/null; then
  python3 -m pip install -q torch transformers peft
fi
python3 scripts/bench/sft_step_torch.py $sft_args | tee "$out/sft_torch.txt"
