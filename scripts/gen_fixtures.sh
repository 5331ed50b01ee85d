#!/usr/bin/env bash
# Regenerates every parity fixture from the Python reference implementations.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/reference_env.sh
source "$root/scripts/reference_env.sh"
"$RFT_REF_PYTHON" "$root/scripts/text_similarity_reference.py" fixtures \
  "$root/crates/rft-grade/tests/fixtures/text_similarity.jsonl"
echo "fixtures written"
