#!/usr/bin/env bash
# The CUDA build, apart from `make test` (which needs no GPU and no CUDA toolkit).
#
#   scripts/cuda.sh check   compile and lint every crate with the `cuda` feature, tests
#                           included. Needs nvcc but no GPU; as root on Debian it installs
#                           Debian's CUDA toolkit (non-free, CUDA 11.8) when nvcc is missing.
#   scripts/cuda.sh gpu     on a machine with an NVIDIA GPU: the engine's test suite with
#                           its model on the GPU (FC_DEVICE=cuda), then bench-engine's table
#                           there (f32, and Q8_0 when llama-cpp-python can quantize).
#
# Env: CUDA_COMPUTE_CAP (check: 80 by default, since CUDA 11.8 cannot build candle's sm_90a
# kernels; gpu: what nvidia-smi reports), FC_QWEN3_TOKENIZER (the bench model's tokenizer
# files, default ../shared/qwen3-tokenizer), OUT (where the gpu run writes, default
# target/cuda-bench).
set -euo pipefail
cd "$(dirname "$0")/.."

features="fc-model/cuda,fc-engine/cuda,fcmesh/cuda"
crates=(-p fc-model -p fc-engine -p evaluator -p sft-trainer -p fcmesh)

need_nvcc() {
  command -v nvcc >/dev/null 2>&1 && return
  for d in /usr/local/cuda/bin /opt/cuda/bin; do
    if [ -x "$d/nvcc" ]; then export PATH="$d:$PATH"; return; fi
  done
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && grep -qs bookworm /etc/os-release; then
    echo "nvcc missing: installing Debian's nvidia-cuda-toolkit (enables contrib non-free)"
    if ! grep -rqs "non-free" /etc/apt/sources.list /etc/apt/sources.list.d/; then
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        > /etc/apt/sources.list.d/fcmesh-cuda.sources
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit
    return
  fi
  echo "nvcc not found: install the CUDA toolkit (https://developer.nvidia.com/cuda-downloads)" >&2
  exit 1
}

case "${1:-check}" in
  check)
    need_nvcc
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-80}"
    # Its own target dir: the CUDA build of candle would otherwise replace the CPU one.
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"
    cargo clippy "${crates[@]}" --features "$features" --all-targets -- -D warnings
    # One test that opens the device: on a machine without a GPU it checks the error.
    cargo test -p fc-model --features fc-model/cuda --lib device
    echo "cuda check: ok (nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), compute cap $CUDA_COMPUTE_CAP)"
    ;;
  gpu)
    need_nvcc
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"
    out="${OUT:-target/cuda-bench}"
    mkdir -p "$out"
    FC_DEVICE=cuda cargo test --release -p fc-engine --features fc-engine/cuda 2>&1 | tee "$out/engine-tests.txt"
    cargo build --release -p fc-engine --features fc-engine/cuda --bin bench-engine
    m="$out/qwen3-0.6b-random"
    tok="${FC_QWEN3_TOKENIZER:-../shared/qwen3-tokenizer}"
    [ -f "$m/config.json" ] || "$CARGO_TARGET_DIR/release/bench-engine" --write "$m" --tokenizer "$tok"
    q8=()
    if [ -f "$m/model-q8_0.gguf" ] || python3 scripts/bench/engine_peers.py --quantize "$m/model-f32.gguf" "$m/model-q8_0.gguf" 2>/dev/null; then
      q8=(--q8 "$m/model-q8_0.gguf")
    fi
    "$CARGO_TARGET_DIR/release/bench-engine" --bench "$m" "${q8[@]}" --device cuda | tee "$out/engine.txt"
    ;;
  *)
    echo "usage: scripts/cuda.sh check|gpu" >&2
    exit 2
    ;;
esac
