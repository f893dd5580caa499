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

echo; echo "== SFT step: fc-model (candle, mimalloc) vs PyTorch (+ PEFT for LoRA), same shapes, same run"
echo "   tiny preset (hidden 128, 4 layers, vocab 3000): full fine-tune and LoRA r64, seq 512, batch 8"
echo "   Qwen3-0.6B shape: LoRA r32, seq 512, batch 2 (FC_BENCH_SFT_ARGS overrides)"
if ! python3 -c "import torch, peft, transformers" 2>/dev/null; then
  python3 -m pip install -q torch transformers peft
fi
cargo build --release -q -p fc-model --features mimalloc --bin bench-sft-step
sft_args=${FC_BENCH_SFT_ARGS:---seq 512 --batch 2 --steps 3}
: > "$out/sft.txt"
echo "| impl | alloc | shape | train | layers | seq | batch | r | steps | s/step | tokens/s | first step s | peak RSS MiB | RSS after init MiB |" | tee -a "$out/sft.txt"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" | tee -a "$out/sft.txt"
for cfg in "--tiny --full --seq 512 --batch 8 --steps 12" "--tiny --rank 64 --seq 512 --batch 8 --steps 12" "$sft_args"; do
  ./target/release/bench-sft-step $cfg 2>/dev/null | tail -1 | tee -a "$out/sft.txt"
  python3 scripts/bench/sft_step_torch.py $cfg 2>/dev/null | tail -1 | tee -a "$out/sft.txt"
done
