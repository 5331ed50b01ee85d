#!/usr/bin/env bash
# Builds .venv-bench, the Python environment behind `rft bench decode --reference`
# (scripts/decode_reference.py) and `rft bench grpo --reference` (scripts/grpo_reference.py):
# transformers + PyTorch (pinned in decode-requirements.txt), TRL + PEFT (grpo-requirements.txt), then
# llama-cpp-python (decode-requirements-llama.txt), which compiles llama.cpp from source: it gets
# a CPU-only build and a time limit (RFT_LLAMA_BUILD_TIMEOUT seconds, default 900), and a failed
# or timed-out build leaves the environment usable without it (the benchmark then skips llama.cpp).
# Idempotent. Usage: bash scripts/bench_env.sh   (RFT_BENCH_VENV overrides the venv folder)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RFT_BENCH_VENV:-$root/.venv-bench}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" -r "$root/scripts/decode-requirements.txt" -r "$root/scripts/grpo-requirements.txt"
if "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "llama-cpp-python already installed"
else
  # CPU only, no BLAS (llama.cpp's own kernels, as its default CPU build), native ISA, no tools.
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF}"
  export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
  timeout="${RFT_LLAMA_BUILD_TIMEOUT:-900}"
  echo "building llama-cpp-python from source (limit ${timeout}s) ..."
  start=$(date +%s)
  if timeout "$timeout" "${pip[@]}" --no-cache-dir -r "$root/scripts/decode-requirements-llama.txt"; then
    echo "llama-cpp-python built in $(( $(date +%s) - start ))s"
  else
    echo "llama-cpp-python did not install (failed or over ${timeout}s after $(( $(date +%s) - start ))s); the benchmark will skip llama.cpp" >&2
  fi
fi
echo "ready: $venv"
