#!/usr/bin/env bash
# Builds .venv-tinker: the Tinker SDK (scripts/tinker-requirements.txt) that the Tinker
# compatibility test drives; with --cookbook also tinker-cookbook 0.6.1 and what its RL loop
# imports (scripts/tinker-cookbook-requirements.txt, torch included), for
# `RFT_TINKER_RL_LOOP=1 cargo test --release -p rft-cli --test tinker -- cookbook`.
# Idempotent. RFT_TINKER_VENV overrides the folder.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RFT_TINKER_VENV:-$root/.venv-tinker}"
cookbook=0
[ "${1:-}" = "--cookbook" ] && cookbook=1
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
if ! cmp -s "$root/scripts/tinker-requirements.txt" "$venv/sdk.done" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "${pip[@]}" -r "$root/scripts/tinker-requirements.txt"
  cp "$root/scripts/tinker-requirements.txt" "$venv/sdk.done"
fi
if [ "$cookbook" = 1 ] && ! cmp -s "$root/scripts/tinker-cookbook-requirements.txt" "$venv/cookbook.done" 2>/dev/null; then
  "${pip[@]}" -r "$root/scripts/tinker-cookbook-requirements.txt"
  "${pip[@]}" --no-deps tinker-cookbook==0.6.1
  cp "$root/scripts/tinker-cookbook-requirements.txt" "$venv/cookbook.done"
fi
