#!/usr/bin/env bash
# The GPU check as one script: build here, run there, one JSON result.
#
#   scripts/gpu-check.sh prepare    # here (no GPU): the CUDA build and what travels, into .gpu/
#   scripts/gpu-check.sh run OUT    # on the GPU machine, from the repository root with .gpu/ carried
#
# `prepare` builds `rft` with the `cuda` feature (README.md, section CUDA: the toolkit through
# CUDA_HOME, CUDA_COMPUTE_CAP=90 and CUDARC_CUDA_VERSION set, or a script that sets them named by
# RFT_CUDA_ENV, which is sourced first), and puts into .gpu/ (git-ignored) the stripped binary,
# scripts/run-on-gpu.sh, and the wheels TRL needs there (trl, peft, datasets, dill, multiprocess; the
# machine has torch and transformers but no network). It fails when the folder passes 64 MiB, the
# most a device call carries.
#
# `run` (budget: under 8 minutes) installs the wheels, then writes OUT/gpu-check.json with:
# - the card (nvidia-smi) and the build (`rft --version`, the commit);
# - `rft check-device --device cuda`: logits, log-probs, a LoRA gradient and greedy samples of
#   tiny random models against the CPU's f32, with the GPU in f32 and in bf16 (each within its
#   tolerance), and a 135M-shaped timing in both precisions;
# - `rft bench grpo --device cuda --shape S --reference --reference-bf16` for the SmolLM2-135M
#   and Qwen2.5-0.5B shapes (random weights built on the machine: no weights travel), 8 prompts
#   x 8 samples x 128 tokens, 3 steps: our step in bf16 (the GPU's default precision; token
#   choices made on the device) against TRL's GRPOTrainer (float32 and bf16) on the same card in
#   the same run.
# Each part has its own time limit and its output is kept whatever happens to the others.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=${1:-}
case "$mode" in
prepare)
  set -e
  if [ -n "${RFT_CUDA_ENV:-}" ]; then
    # shellcheck disable=SC1090
    source "$RFT_CUDA_ENV"
  fi
  if [ -z "${CUDA_HOME:-}" ] || [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
    echo "gpu-check: set CUDA_HOME and CUDA_COMPUTE_CAP (README.md, section CUDA), or RFT_CUDA_ENV to a script that does" >&2
    exit 2
  fi
  cargo fetch --locked >/dev/null
  cargo build --release --locked -p rft-cli --features cuda
  rm -rf .gpu && mkdir -p .gpu/wheels
  cp target/release/rft .gpu/rft
  cp scripts/run-on-gpu.sh .gpu/run-on-gpu.sh
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/wheels \
    trl==1.16.0 peft==0.21.2 datasets dill multiprocess
  size=$(du -sm .gpu | cut -f1)
  echo "gpu-check: .gpu/ holds ${size} MiB (a device call carries at most 64)" >&2
  [ "$size" -le 64 ] || { echo "gpu-check: .gpu/ is over 64 MiB" >&2; exit 1; }
  echo "gpu-check: run it there with: scripts/gpu-check.sh run \$OUT   (carry: .gpu)" >&2
  ;;
run)
  out=${2:?usage: scripts/gpu-check.sh run OUT}
  mkdir -p "$out"
  [ -x .gpu/rft ] || { echo "gpu-check: .gpu/rft is missing: run 'scripts/gpu-check.sh prepare' here and carry .gpu" >&2; exit 2; }
  export RFT_HOME=${RFT_HOME:-$PWD/.gpu/home}
  python3 -m pip install -q --no-deps .gpu/wheels/*.whl >"$out/pip.log" 2>&1 || echo "gpu-check: TRL wheels did not install (see pip.log)" >&2
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$out/card.txt" 2>&1
  .gpu/rft --version >"$out/build.txt" 2>&1
  timeout 120 bash .gpu/run-on-gpu.sh .gpu/rft check-device --device cuda >"$out/check-device.txt" 2>&1
  echo "check-device exit $?" >>"$out/check-device.txt"
  for shape in smollm2-135m qwen2.5-0.5b; do
    # shellcheck disable=SC2016 # $0 is the shape, expanded by the inner shell
    timeout 150 bash -c 'bash .gpu/run-on-gpu.sh .gpu/rft bench grpo --device cuda --shape "$0" \
        --prompts 8 --group 8 --tokens 128 --steps 3 --reference --reference-bf16 \
        --python python3 --micro-batches 64' "$shape" >"$out/grpo-$shape.txt" 2>&1
    echo "bench exit $?" >>"$out/grpo-$shape.txt"
  done
  python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
def read(name):
    path = os.path.join(out, name)
    return open(path, encoding="utf-8", errors="replace").read() if os.path.exists(path) else None
result = {
    "card": (read("card.txt") or "").strip(),
    "build": (read("build.txt") or "").strip(),
    "check_device": read("check-device.txt"),
    "grpo": {shape: read(f"grpo-{shape}.txt") for shape in ["smollm2-135m", "qwen2.5-0.5b"]},
}
with open(os.path.join(out, "gpu-check.json"), "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps({k: (v if k != "grpo" else list(v)) for k, v in result.items() if k in ("card", "build")}))
PY
  ;;
*)
  echo "usage: scripts/gpu-check.sh prepare | run OUT" >&2
  exit 2
  ;;
esac
