#!/usr/bin/env bash
# Regenerates crates/rft-model/tests/fixtures/tiny_{llama,qwen2,qwen3}/ (tiny random models,
# their transformers logits, PEFT LoRA adapters) with scripts/transformers_reference.py, the
# reference behind crates/rft-model/tests/transformers_parity.rs. Heavy (PyTorch from PyPI is a
# CUDA build, several GB installed), so it has its own virtual environment and is run by hand,
# not by CI; the fixtures are committed.
# Usage: bash scripts/gen_transformers_fixtures.sh   (RFT_TF_VENV overrides the venv folder)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RFT_TF_VENV:-$root/.venv-tf}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/scripts/transformers-requirements.txt"
"$venv/bin/python" "$root/scripts/transformers_reference.py" "$root/crates/rft-model/tests/fixtures"
echo "transformers fixtures written"
