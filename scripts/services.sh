#!/usr/bin/env bash
# The real services the tests talk to, on loopback, under a folder the caller gives (a fresh temp
# folder): PostgreSQL and an S3-protocol server.
#
#   eval "$(scripts/services.sh start DIR)"  # start both; prints `export` lines on stdout
#   scripts/services.sh stop DIR             # stop both (fine when stopped or never started)
#   scripts/services.sh pg-restart DIR       # PostgreSQL: immediate stop, then start on the same
#   scripts/services.sh pg-stop DIR          #   port, waiting until it accepts connections (the
#   scripts/services.sh pg-start DIR         #   fault test calls these in the middle of a job)
#   scripts/services.sh pg-bin               # print the PostgreSQL bin folder it uses
#
# `start` exports:
#   RFT_TEST_DATABASE_URL=postgres://rft@127.0.0.1:PORT/rft  (database rft, owned by role rft)
#   RFT_TEST_PG_DIR=DIR                      (what pg-restart/pg-stop/pg-start take)
#   RFT_TEST_S3_ENDPOINT=http://127.0.0.1:PORT2
#   RFT_SERVICES_SCRIPT=<absolute path of this script>
# Everything else it says goes to stderr. When `start` fails it stops what it started.
#
# PostgreSQL (the project's scale-out design notes, "Starting the real services in tests"): the highest
# version under /usr/lib/postgresql/*/bin (Debian's layout; $RFT_PG_BIN overrides; scripts/test.sh
# installs Debian's `postgresql` when there is none), `initdb --auth=trust -U rft` and a
# database `rft`. PostgreSQL refuses to run as root, so as root initdb and pg_ctl run as the
# `postgres` user (runuser) in folders that user owns; DIR is made traversable for it (o+x).
# fsync and full-page writes are off: test data, nothing to keep. Files in DIR:
#   pg/ (the cluster), pg-sock/ (its Unix socket), pg.log (its log), initdb.log, pg.port (its
#   port, which pg-restart and pg-start reuse).
#
# S3: moto (https://github.com/getmoto/moto) in server mode, from PyPI into .venv-services
# (scripts/services-requirements.txt; scripts/test.sh creates it). Why moto: it is a real
# S3-protocol HTTP server, so the tests go through the same HTTP client, signing and XML as
# against AWS: PUT/GET/HEAD/DELETE with ranges, multipart uploads (create, upload part, complete,
# abort, list), ListObjectsV2 with prefixes, delimiters and continuation tokens, conditional
# requests, and errors as S3 returns them (NoSuchKey, NoSuchBucket, 404/412 and so on). It is
# pip-installable without root, starts in a few seconds, and is what the scale-out design suggests.
# Its limits: everything lives in memory (a restart loses all buckets and objects; there is no
# durability to test); it is one Python process, so its speed says nothing about S3's; signatures
# and credentials are not checked (any access key works, and a bucket must still be created with
# CreateBucket before use); multipart parts other than the last must be at least 5 MiB, as on
# AWS (moto's S3_UPLOAD_PART_MIN_SIZE); consistency is immediate and there are no throttling
# (503 SlowDown) or partial failures unless a test injects them; some rarer features (object lock,
# replication, some checksum variants) are partial. Files in DIR: moto.pid, moto.port, moto.log.
set -euo pipefail

script=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
repo=$(cd "$(dirname "$script")/.." && pwd)

say() { echo "services.sh: $*" >&2; }
die() {
  say "$*"
  exit 1
}

usage() {
  sed -n '2,10p' "$script" >&2
  exit 2
}

is_root=0
[ "$(id -u)" = 0 ] && is_root=1

# A free TCP port on loopback (the kernel picks it; another process could take it before we bind
# it, so the starts below retry on a new port).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# True while process $1 runs (a zombie does not count: in a container whose PID 1 does not reap,
# a killed server stays one).
alive() {
  local pid=$1 stat
  [ -n "$pid" ] || return 1
  if [ -r "/proc/$pid/stat" ]; then
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
  else
    kill -0 "$pid" 2>/dev/null
  fi
}

log_tail() {
  local file=$1
  if [ -r "$file" ]; then
    say "last lines of $file:"
    tail -n 30 "$file" >&2 || true
  fi
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

pg_bin() {
  local dir dirs
  if [ -n "${RFT_PG_BIN:-}" ]; then
    [ -x "$RFT_PG_BIN/initdb" ] || die "RFT_PG_BIN=$RFT_PG_BIN has no initdb"
    echo "$RFT_PG_BIN"
    return
  fi
  dirs=(/usr/lib/postgresql/*/bin)
  dir=$(printf '%s\n' "${dirs[@]}" | sort -V | tail -n 1)
  if [ -x "$dir/initdb" ]; then
    echo "$dir"
  elif command -v initdb >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  else
    die "PostgreSQL is not installed (Debian: apt-get install postgresql; scripts/test.sh --setup-only does it as root)"
  fi
}

# Runs a PostgreSQL server program: as root, as the postgres user, from a folder it can enter.
as_pg() {
  if [ "$is_root" = 1 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

pg_port() {
  [ -s "$dir/pg.port" ] || die "$dir/pg.port is missing: run \`$script start $dir\` first"
  cat "$dir/pg.port"
}

pg_running() {
  [ -f "$dir/pg/PG_VERSION" ] || return 1
  as_pg "$bin/pg_ctl" -D "$dir/pg" status >/dev/null 2>&1
}

pg_ready() {
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$1" -U rft -d postgres -t 2 >/dev/null 2>&1
}

# The cluster, once.
pg_init() {
  [ -f "$dir/pg/PG_VERSION" ] && return
  if [ "$is_root" = 1 ]; then
    id postgres >/dev/null 2>&1 ||
      die "running as root, and there is no postgres user to run PostgreSQL as (Debian's postgresql package creates it)"
    # The postgres user must reach DIR's contents; it gets no listing of it, only traversal.
    chmod o+x "$dir"
    runuser -u postgres -- test -x "$dir" ||
      die "the postgres user cannot reach $dir (a parent folder closed to other users?): give a folder under /tmp"
  fi
  say "initdb $dir/pg"
  rm -rf "$dir/pg"
  mkdir -p "$dir/pg" "$dir/pg-sock"
  touch "$dir/pg.log"
  chmod 700 "$dir/pg"
  if [ "$is_root" = 1 ]; then
    chown postgres: "$dir/pg" "$dir/pg-sock" "$dir/pg.log"
  fi
  # C locale: no dependence on which locales the machine generated, and stable sort orders.
  as_pg "$bin/initdb" -D "$dir/pg" --auth=trust -U rft -E UTF8 --locale=C --no-sync \
    >"$dir/initdb.log" 2>&1 || {
    log_tail "$dir/initdb.log"
    die "initdb failed"
  }
}

# Starts the server on port $1 and waits until it accepts connections.
pg_start_on() {
  local port=$1 i
  # A path with spaces or quotes would not survive pg_ctl's -o (it goes through a shell).
  [[ $dir =~ ^[A-Za-z0-9/._+-]+$ ]] || die "$dir: use a folder whose path has no spaces or quotes"
  # max_connections: parallel tests each hold a pool.
  as_pg "$bin/pg_ctl" -D "$dir/pg" -l "$dir/pg.log" -w -t 60 \
    -o "-k $dir/pg-sock -h 127.0.0.1 -p $port -c fsync=off -c full_page_writes=off -c max_connections=200" \
    start >&2 || return 1
  # pg_ctl -w waited for the server's "ready" state; check it over TCP as the tests will connect.
  for ((i = 0; i < 60; i++)); do
    pg_ready "$port" && return 0
    sleep 0.5
  done
  say "PostgreSQL on port $port started but does not accept connections"
  return 1
}

pg_start_cmd() {
  local port
  port=$(pg_port)
  [ -f "$dir/pg/PG_VERSION" ] || die "no cluster in $dir/pg: run \`$script start $dir\` first"
  if pg_running; then
    say "PostgreSQL already runs on port $port"
  elif ! pg_start_on "$port"; then
    log_tail "$dir/pg.log"
    die "PostgreSQL did not start on port $port"
  fi
}

pg_stop_cmd() {
  if pg_running; then
    say "stopping PostgreSQL ($dir/pg)"
    as_pg "$bin/pg_ctl" -D "$dir/pg" -m immediate -w -t 60 stop >&2
  fi
}

# First start: cluster, port (a new one when the chosen one was taken meanwhile), database.
pg_start_first() {
  local port try
  pg_init
  if pg_running; then
    port=$(pg_port)
    say "PostgreSQL already runs on port $port"
  else
    for try in 1 2 3; do
      port=$(free_port)
      say "starting PostgreSQL on 127.0.0.1:$port"
      if pg_start_on "$port"; then
        break
      fi
      # A server that came up but did not answer must not stay behind.
      if pg_running; then
        as_pg "$bin/pg_ctl" -D "$dir/pg" -m immediate -w stop >&2 || true
      fi
      log_tail "$dir/pg.log"
      [ "$try" = 3 ] && die "PostgreSQL did not start"
      say "retrying on another port"
    done
    echo "$port" >"$dir/pg.port"
  fi
  if [ "$("$bin/psql" -h 127.0.0.1 -p "$port" -U rft -d postgres -XtAc \
    "select 1 from pg_database where datname = 'rft'")" != 1 ]; then
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U rft -O rft rft
  fi
}

# ---------------------------------------------------------------------------------------------
# S3 (moto)

moto_pid() { cat "$dir/moto.pid" 2>/dev/null || true; }

moto_answers() {
  python3 - "http://127.0.0.1:$1/" <<'EOF' >/dev/null 2>&1
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2).read()
except urllib.error.HTTPError:
    pass  # an S3 error is an answer
EOF
}

moto_start() {
  local server=$repo/.venv-services/bin/moto_server port pid try i
  pid=$(moto_pid)
  if alive "$pid" && [ -s "$dir/moto.port" ] && moto_answers "$(cat "$dir/moto.port")"; then
    say "moto already runs on port $(cat "$dir/moto.port")"
    return
  fi
  [ -x "$server" ] ||
    die "$server is missing: run scripts/test.sh --setup-only (it installs scripts/services-requirements.txt there)"
  # A server from an earlier start that no longer answers.
  moto_stop
  for try in 1 2 3; do
    port=$(free_port)
    say "starting moto (S3) on 127.0.0.1:$port"
    # Its own stdout and stderr go to the log: a caller's $(...) must not wait for them.
    "$server" -H 127.0.0.1 -p "$port" </dev/null >"$dir/moto.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/moto.pid"
    echo "$port" >"$dir/moto.port"
    for ((i = 0; i < 60; i++)); do
      moto_answers "$port" && return 0
      alive "$pid" || break
      sleep 0.5
    done
    log_tail "$dir/moto.log"
    if alive "$pid"; then
      moto_stop
      die "moto did not answer on port $port within 30 s"
    fi
    rm -f "$dir/moto.pid"
    # Only a port taken meanwhile is worth another try.
    if [ "$try" = 3 ] || ! grep -q "already in use" "$dir/moto.log"; then
      die "moto exited"
    fi
    say "retrying on another port"
  done
}

moto_stop() {
  local pid i
  pid=$(moto_pid)
  if alive "$pid"; then
    # Only the server we started: a recycled pid belongs to someone else.
    if [ ! -r "/proc/$pid/cmdline" ] || grep -qa moto_server "/proc/$pid/cmdline"; then
      say "stopping moto (pid $pid)"
      kill "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        alive "$pid" || break
        sleep 0.2
      done
      if alive "$pid"; then
        kill -9 "$pid" 2>/dev/null || true
      fi
    fi
  fi
  rm -f "$dir/moto.pid"
}

# ---------------------------------------------------------------------------------------------

start_failed() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    bash "$script" stop "$dir" || true
  fi
}

cmd=${1:-}
case $cmd in
  pg-bin)
    pg_bin
    exit 0
    ;;
  start | stop | pg-restart | pg-stop | pg-start) ;;
  *) usage ;;
esac
[ "$#" = 2 ] || usage
dir=$2

if [ "$cmd" = stop ]; then
  # Nothing there, nothing to stop.
  [ -d "$dir" ] || exit 0
fi
[ -d "$dir" ] || mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

case $cmd in
  start)
    bin=$(pg_bin)
    # A failed start leaves nothing running.
    trap start_failed EXIT
    pg_start_first
    moto_start
    printf 'export RFT_TEST_DATABASE_URL=%q\n' "postgres://rft@127.0.0.1:$(pg_port)/rft"
    printf 'export RFT_TEST_PG_DIR=%q\n' "$dir"
    printf 'export RFT_TEST_S3_ENDPOINT=%q\n' "http://127.0.0.1:$(cat "$dir/moto.port")"
    printf 'export RFT_SERVICES_SCRIPT=%q\n' "$script"
    say "PostgreSQL on 127.0.0.1:$(pg_port), moto on 127.0.0.1:$(cat "$dir/moto.port") (logs in $dir)"
    ;;
  stop)
    moto_stop
    if [ -f "$dir/pg/PG_VERSION" ]; then
      bin=$(pg_bin)
      pg_stop_cmd
    fi
    ;;
  pg-stop)
    bin=$(pg_bin)
    pg_stop_cmd
    ;;
  pg-start)
    bin=$(pg_bin)
    pg_start_cmd
    ;;
  pg-restart)
    bin=$(pg_bin)
    pg_stop_cmd
    pg_start_cmd
    say "PostgreSQL restarted on port $(pg_port)"
    ;;
esac
