#!/usr/bin/env bash
# The tests, on a fresh Debian/Ubuntu machine, in one command: sets up what the tests need, then
# runs `cargo test`. Every step checks first and does nothing when its result is already there,
# so a second run needs no network and spends its time in cargo alone.
#
#   scripts/test.sh                     # set up, then cargo test --workspace
#   scripts/test.sh -p rft-grade meteor # set up, then cargo test -p rft-grade meteor
#   scripts/test.sh --setup-only        # set up, run nothing
#
# What it sets up, and why:
# - WordNet 3.0 (Debian's wordnet-base and wordnet-sense-index): METEOR's synonym stage reads it,
#   and `rft setup python` copies it for nltk. As root the packages are installed with apt;
#   otherwise they are downloaded with `apt-get download` and unpacked with `dpkg-deb` into
#   $RFT_HOME/wordnet-3.0 (or into $RFT_WORDNET_DIR when that is set), and RFT_WORDNET_DIR points
#   the tests there.
# - A C toolchain and Python 3 with venv and pip (root only; otherwise they must be there).
# - Chromium (root only): a test renders the readiness report headless. Without root and without
#   Chromium that test says it skipped.
# - .venv-sdk: the OpenAI Python SDK that the `rft serve` compatibility test drives.
# - .venv-tinker: the Tinker Python SDK, which the Tinker compatibility test drives
#   (crates/rft-cli/tests/tinker.rs); its cookbook's RL loop is opt-in (scripts/tinker_env.sh).
# - `rft setup python`: the Python grader environment (OpenAI's packages) under $RFT_HOME.
# - The default models (`rft models pull`), which the parity tests on real weights read.
#   RFT_SLOW_TESTS=0 skips them and those tests.
# - PostgreSQL (Debian's postgresql, installed as root; otherwise it must be there) and
#   .venv-services (moto, an S3-protocol server: scripts/services-requirements.txt). Before
#   cargo test, scripts/services.sh starts both on loopback in a temp folder, exports
#   RFT_TEST_DATABASE_URL, RFT_TEST_PG_DIR, RFT_TEST_S3_ENDPOINT, RFT_SERVICES_SCRIPT and
#   RFT_REQUIRE_SERVICES=1, and stops them when the tests end, however they end. When the caller
#   already set RFT_TEST_DATABASE_URL and RFT_TEST_S3_ENDPOINT, those are used and nothing is
#   started. RFT_SERVICES=0 installs and starts nothing (the tests that need them skip).
#
# Environment: RFT_HOME (OpenRFT's cache, default ~/.cache/openrft), RFT_WORDNET_DIR,
# RFT_SLOW_TESTS (default 1), RFT_SERVICES (default 1), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

setup_only=0
if [ "${1:-}" = "--setup-only" ]; then
  setup_only=1
  shift
fi
started=$SECONDS
step() { echo "--- $*" >&2; }

# OpenRFT's data folder, as `rft_types::paths::rft_home` computes it.
rft_home=${RFT_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/openrft}

is_root=0
[ "$(id -u)" = 0 ] && is_root=1
have_apt=0
command -v apt-get >/dev/null 2>&1 && have_apt=1

# apt-get update at most once per run, and only when something is to be installed.
apt_updated=0
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# WordNet 3.0

# The files OpenRFT's reader opens (crates/rft-grade/src/metrics/wordnet.rs), plus index.sense,
# which nltk reads in the Python grader environment.
wordnet_files=(data.noun data.verb data.adj data.adv index.noun index.verb index.adj index.adv
  noun.exc verb.exc adj.exc adv.exc index.sense)

wordnet_complete() {
  local dir=$1 file
  for file in "${wordnet_files[@]}"; do
    [ -s "$dir/$file" ] || return 1
  done
  # Princeton's licence header names the version; another WordNet would change METEOR's scores.
  head -n 30 "$dir/data.noun" | grep -q "WordNet 3.0" || {
    echo "test.sh: $dir/data.noun is not WordNet 3.0" >&2
    return 1
  }
}

# Downloads Debian's WordNet packages and unpacks their dictionary into $1, without root.
wordnet_unpack_into() {
  local dest=$1 work
  work=$(mktemp -d)
  local pkgs=(wordnet-base wordnet-sense-index)
  if ! (cd "$work" && apt-get download -qq "${pkgs[@]}" 2>/dev/null); then
    # No package lists (a fresh container, or lists only root may refresh): fetch the index into
    # a private folder. apt's own locks and caches live under /var, which a user cannot write.
    local opts=(-o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
      -o "Debug::NoLocking=1")
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
    apt-get "${opts[@]}" update -qq
    (cd "$work" && apt-get "${opts[@]}" download -qq "${pkgs[@]}")
  fi
  local deb
  for deb in "$work"/*.deb; do
    dpkg-deb -x "$deb" "$work/root"
  done
  mkdir -p "$dest"
  local file
  for file in "${wordnet_files[@]}"; do
    cp "$work/root/usr/share/wordnet/$file" "$dest/$file"
  done
  rm -rf "$work"
}

step "WordNet 3.0"
if [ -n "${RFT_WORDNET_DIR:-}" ]; then
  # An explicit folder is filled in place, never replaced by the system's.
  if ! wordnet_complete "$RFT_WORDNET_DIR"; then
    [ "$have_apt" = 1 ] || { echo "test.sh: WordNet 3.0 is missing from $RFT_WORDNET_DIR and there is no apt-get to fetch it" >&2; exit 1; }
    wordnet_unpack_into "$RFT_WORDNET_DIR"
  fi
elif wordnet_complete /usr/share/wordnet; then
  :
elif wordnet_complete "$rft_home/wordnet-3.0"; then
  export RFT_WORDNET_DIR="$rft_home/wordnet-3.0"
elif [ "$have_apt" = 1 ] && [ "$is_root" = 1 ]; then
  apt_install wordnet-base wordnet-sense-index
elif [ "$have_apt" = 1 ]; then
  wordnet_unpack_into "$rft_home/wordnet-3.0"
  export RFT_WORDNET_DIR="$rft_home/wordnet-3.0"
else
  echo "test.sh: WordNet 3.0 is missing: install it (Debian: wordnet-base wordnet-sense-index) and set RFT_WORDNET_DIR to its dict folder" >&2
  exit 1
fi
wordnet_complete "${RFT_WORDNET_DIR:-/usr/share/wordnet}" || {
  echo "test.sh: WordNet 3.0 is still incomplete in ${RFT_WORDNET_DIR:-/usr/share/wordnet} (files removed from an installed package? apt-get install --reinstall wordnet-base wordnet-sense-index)" >&2
  exit 1
}
echo "WordNet 3.0 in ${RFT_WORDNET_DIR:-/usr/share/wordnet}" >&2

# ---------------------------------------------------------------------------------------------
# System tools: a C toolchain (bundled SQLite, ring), Python 3 with venv and pip, Chromium.

step "system tools"
missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# Debian splits venv's ensurepip and pip out of python3; both are needed (venvs, pip download).
python3 -c "import ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 ||
  missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$is_root" = 1 ] && [ "$have_apt" = 1 ]; then
    echo "installing ${missing[*]}" >&2
    apt_install "${missing[@]}"
  else
    for pkg in "${missing[@]}"; do
      # Only Chromium has a test that skips without it; everything else is required.
      if [ "$pkg" = chromium ]; then
        echo "test.sh: chromium is not installed (needs root: apt-get install chromium); the report render test will skip" >&2
      else
        echo "test.sh: not installed, and installing needs root: apt-get install ${missing[*]}" >&2
        exit 1
      fi
    done
  fi
fi
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  export RFT_REQUIRE_CHROMIUM=1
fi

# ---------------------------------------------------------------------------------------------
# Python environments

step "OpenAI Python SDK (.venv-sdk)"
# The requirements of a finished install are recorded, so an unchanged venv needs no pip (and no
# network) on the next run.
if ! cmp -s scripts/sdk-requirements.txt .venv-sdk/requirements.done 2>/dev/null; then
  [ -x .venv-sdk/bin/python ] || python3 -m venv .venv-sdk
  .venv-sdk/bin/python -m pip install -q --disable-pip-version-check -r scripts/sdk-requirements.txt
  cp scripts/sdk-requirements.txt .venv-sdk/requirements.done
fi
export RFT_REQUIRE_SDK=1

if [ "${RFT_SERVICES:-1}" != 0 ]; then
  step "PostgreSQL"
  if ! pg_bin=$(bash scripts/services.sh pg-bin 2>/dev/null); then
    if [ "$is_root" = 1 ] && [ "$have_apt" = 1 ]; then
      echo "installing postgresql" >&2
      # Without the cluster Debian would create and start on port 5432: the tests start their own
      # (the same steps as the postgres Docker image).
      apt_install postgresql-common
      sed -ri 's/^#? *(create_main_cluster) .*$/\1 = false/' /etc/postgresql-common/createcluster.conf
      apt_install postgresql
      pg_bin=$(bash scripts/services.sh pg-bin)
    else
      echo "test.sh: PostgreSQL is not installed, and installing needs root: apt-get install postgresql (or RFT_SERVICES=0 to test without it)" >&2
      exit 1
    fi
  fi
  echo "PostgreSQL in $pg_bin" >&2

  step "S3 test server (.venv-services)"
  if ! cmp -s scripts/services-requirements.txt .venv-services/requirements.done 2>/dev/null; then
    [ -x .venv-services/bin/python ] || python3 -m venv .venv-services
    .venv-services/bin/python -m pip install -q --disable-pip-version-check -r scripts/services-requirements.txt
    cp scripts/services-requirements.txt .venv-services/requirements.done
  fi
fi

step "Tinker Python SDK (.venv-tinker)"
# The SDK only; the cookbook's RL loop (torch, several GB) is opt-in: scripts/tinker_env.sh.
bash scripts/tinker_env.sh

rft() { cargo run --quiet --locked -p rft-cli --bin rft -- "$@"; }

step "Python grader environment (rft setup python)"
rft setup python

if [ "${RFT_SLOW_TESTS:-1}" = 1 ]; then
  export RFT_SLOW_TESTS=1
  step "default models (rft models pull)"
  rft models pull smollm2-135m-instruct
  rft models pull all-minilm-l6-v2
  # The Tinker SDK tests run on the default model.
  export RFT_REQUIRE_TINKER_SDK=1
else
  # Some tests read "set at all", others "set to 1": anything but 1 means off.
  unset RFT_SLOW_TESTS
fi

echo "set-up done in $((SECONDS - started)) s" >&2
[ "$setup_only" = 1 ] && exit 0

# ---------------------------------------------------------------------------------------------
step "services (PostgreSQL, S3)"
export RFT_SERVICES_SCRIPT=$PWD/scripts/services.sh
if [ "${RFT_SERVICES:-1}" = 0 ]; then
  echo "RFT_SERVICES=0: no services; the tests that need them skip" >&2
elif [ -n "${RFT_TEST_DATABASE_URL:-}" ] && [ -n "${RFT_TEST_S3_ENDPOINT:-}" ]; then
  echo "using the caller's RFT_TEST_DATABASE_URL and RFT_TEST_S3_ENDPOINT" >&2
  export RFT_REQUIRE_SERVICES=1
else
  if [ -n "${RFT_TEST_DATABASE_URL:-}${RFT_TEST_S3_ENDPOINT:-}" ]; then
    echo "only one of RFT_TEST_DATABASE_URL and RFT_TEST_S3_ENDPOINT is set: starting both here" >&2
  fi
  services_dir=$(mktemp -d "${TMPDIR:-/tmp}/rft-services.XXXXXX")
  # Set before the start, so a start that fails half-way leaves nothing behind either. INT and
  # TERM become exits, so the EXIT trap runs for them too (once cargo, run in the foreground,
  # has exited: Ctrl-C or a kill of the process group stops it first). The exit status is cargo's.
  trap 'bash "$RFT_SERVICES_SCRIPT" stop "$services_dir" || true; rm -rf "$services_dir"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  services_env=$(bash "$RFT_SERVICES_SCRIPT" start "$services_dir")
  eval "$services_env"
  export RFT_REQUIRE_SERVICES=1
fi

step "tests"
if [ "$#" = 0 ]; then
  set -- --workspace
fi
# Not exec: the EXIT trap above stops the services afterwards.
cargo test --locked "$@"
