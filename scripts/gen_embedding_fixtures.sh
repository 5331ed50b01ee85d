#!/usr/bin/env bash
# Regenerates crates/rft-model/tests/fixtures/embeddings.jsonl with sentence-transformers, the
# reference for the local sentence-embedding model. Heavy (PyTorch from PyPI is a CUDA build,
# about 6 GB installed), so it has its own virtual environment and is run by hand, not by CI.
# Usage: bash scripts/gen_embedding_fixtures.sh   (RFT_EMBED_VENV overrides the venv folder)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RFT_EMBED_VENV:-$root/.venv-embed}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/scripts/embedding-requirements.txt"
"$venv/bin/python" "$root/scripts/embedding_reference.py" fixtures \
  "$root/crates/rft-model/tests/fixtures/embeddings.jsonl"
echo "embedding fixtures written"
