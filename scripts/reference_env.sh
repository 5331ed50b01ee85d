#!/usr/bin/env bash
# Prepares the Python reference implementations that OpenRFT's metrics are checked against:
# a virtual environment with pinned packages, and an nltk_data folder holding Debian's WordNet 3.0
# (the same files `rft` reads from /usr/share/wordnet), so both sides use identical data.
# Usage: source scripts/reference_env.sh   (sets RFT_REF_PYTHON and NLTK_DATA)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RFT_REF_VENV:-$root/.venv-ref}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/scripts/reference-requirements.txt"
wn_src="${RFT_WORDNET_DIR:-/usr/share/wordnet}"
# Without root, scripts/test.sh unpacks WordNet into OpenRFT's cache instead.
wn_cache="${RFT_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/openrft}/wordnet-3.0"
if [ ! -f "$wn_src/data.noun" ] && [ -f "$wn_cache/data.noun" ]; then
  wn_src=$wn_cache
fi
wn_dst="$root/nltk_data/corpora/wordnet"
if [ ! -f "$wn_dst/lexnames" ]; then
  if [ ! -f "$wn_src/data.noun" ]; then
    echo "WordNet not found in $wn_src: scripts/test.sh --setup-only installs it" >&2
    exit 1
  fi
  mkdir -p "$wn_dst"
  # nltk refuses corpus paths outside its data folders, so copy rather than point.
  cp "$wn_src"/{data,index}.{noun,verb,adj,adv} "$wn_src"/{noun,verb,adj,adv}.exc "$wn_dst"/
  [ -f "$wn_src/index.sense" ] && cp "$wn_src/index.sense" "$wn_dst"/
  "$venv/bin/python" - "$wn_dst/lexnames" <<'PY'
import sys
names = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute
noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group
noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession
noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time
verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption
verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession
verb.social verb.stative verb.weather adj.ppl""".split()
pos = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
with open(sys.argv[1], "w") as f:
    for i, n in enumerate(names):
        f.write(f"{i:02d}\t{n}\t{pos[n.split('.')[0]]}\n")
PY
fi
export RFT_REF_PYTHON="$venv/bin/python"
export NLTK_DATA="$root/nltk_data"
