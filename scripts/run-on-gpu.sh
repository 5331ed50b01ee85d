#!/usr/bin/env bash
# Run a binary built with `--features cuda` against CUDA 13 on a GPU machine that has no CUDA toolkit of its
# own: finds the CUDA 13 libraries that the machine's PyTorch installed (site-packages/nvidia/cu13/lib) and the
# driver's libcuda.so.1, then runs it.
# usage (on the GPU machine): bash run-on-gpu.sh ./path/to/binary [args...]
set -uo pipefail
bin=$1; shift
cu13=$(python3 - <<'PY' 2>/dev/null
import os, nvidia
for p in nvidia.__path__:
    d = os.path.join(p, "cu13", "lib")
    if os.path.exists(os.path.join(d, "libcublas.so.13")):
        print(d); break
PY
)
[ -n "$cu13" ] || { echo "run-on-gpu.sh: no nvidia/cu13/lib with libcublas.so.13 found through python3" >&2; exit 3; }
libs=$cu13
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
  for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
    [ -e "$d/libcuda.so.1" ] && { libs="$libs:$d"; break; }
  done
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>/dev/null
ldd "$bin" | grep -E 'not found' && { echo "run-on-gpu.sh: unresolved libraries" >&2; exit 3; }
exec "$bin" "$@"
