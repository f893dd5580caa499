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

echo; echo "== engine: Qwen3-0.6B-shaped random model through the engine (prefill 512, decode batch 1 and 8-way), f32 and Q8_0,"
echo "   side by side with PyTorch transformers (same safetensors) and llama.cpp (same weights as GGUF), same thread count"
# Built for this CPU, except AMX: on an AMX Xeon VM the PyPI build's native Q8_0 path
# stopped on an illegal instruction (`tileloadd` in ggml_backend_amx_mul_mat), so there
# llama.cpp gets AVX-512 with VNNI, what our Q8_0 kernel uses.
if ! python3 -c "import llama_cpp" 2>/dev/null; then
  if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON" \
      python3 -m pip install -q llama-cpp-python
  else
    python3 -m pip install -q llama-cpp-python
  fi
fi
cargo build --release -q -p fc-engine --features mimalloc --bin bench-engine
m="$out/qwen3-0.6b-random"
tok=${FC_QWEN3_TOKENIZER:-../shared/qwen3-tokenizer}
[ -f "$m/model-f32.gguf" ] || ./target/release/bench-engine --write "$m" --tokenizer "$tok"
# llama.cpp's own quantizer makes the Q8_0 file both engines load.
[ -f "$m/model-q8_0.gguf" ] || python3 scripts/bench/engine_peers.py --quantize "$m/model-f32.gguf" "$m/model-q8_0.gguf" 2>/dev/null
./target/release/bench-engine --bench "$m" --q8 "$m/model-q8_0.gguf" | tee "$out/engine.txt"
python3 scripts/bench/engine_peers.py --hf "$m" --gguf "$m/model-f32.gguf" --q8 "$m/model-q8_0.gguf" 2>/dev/null | tee -a "$out/engine.txt"
# Batch-1 decode again, ours and llama.cpp's alternating (the bandwidth drifts between runs).
scripts/bench/engine_decode_ab.sh "$m" 3 | tee -a "$out/engine.txt"
