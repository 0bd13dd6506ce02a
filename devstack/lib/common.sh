# shellcheck shell=bash
# shellcheck disable=SC2034 # the paths below are read by the other devstack files
# devstack's shared state and helpers: where things live, logging, failing with a log's
# tail, waiting for a condition, the dev secrets. Sourced by devstack/services.sh.

DEVSTACK_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "$DEVSTACK_SRC/.." && pwd)"
# Which stack: `everyday` (make services) or `cluster` (make services-cluster; services.sh
# --cluster sets it). Each has its own state directory; the cluster stack shares the
# everyday stack's downloads and builds.
DEVSTACK_STACK="${DEVSTACK_STACK:-everyday}"
case $DEVSTACK_STACK in
everyday)
  DEVSTACK_DIR="${DEVSTACK_DIR:-$REPO_ROOT/.devstack}"
  CACHE_DIR="${DEVSTACK_CACHE_DIR:-$DEVSTACK_DIR/cache}" # another stack may share its downloads and builds
  ;;
cluster)
  DEVSTACK_DIR="${DEVSTACK_DIR:-$REPO_ROOT/.devstack-cluster}"
  CACHE_DIR="${DEVSTACK_CACHE_DIR:-$REPO_ROOT/.devstack/cache}"
  ;;
*)
  echo "[devstack] unknown stack: $DEVSTACK_STACK (everyday or cluster)" >&2
  exit 2
  ;;
esac
mkdir -p "$DEVSTACK_DIR"
DEVSTACK_DIR="$(cd "$DEVSTACK_DIR" && pwd)"

DATA_DIR="$DEVSTACK_DIR/data"
SECRETS_DIR="$DEVSTACK_DIR/secrets"
LOG_DIR="$DEVSTACK_DIR/logs"
RUN_DIR="$DEVSTACK_DIR/run"

export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"

# stack_claim: a state directory holds one stack. Refuse to run the other stack in it
# (both have a `postgres`, whose pid file and data would be taken for the other's). A
# directory of an older devstack, which had no cluster stack, holds the everyday one.
stack_claim() {
  local mark="$DEVSTACK_DIR/stack" holds
  if [[ -f "$mark" ]]; then
    holds="$(cat "$mark")"
  elif [[ -d "$DEVSTACK_DIR/data" || -d "$DEVSTACK_DIR/run" ]]; then
    holds=everyday
  else
    holds=$DEVSTACK_STACK
  fi
  if [[ "$holds" != "$DEVSTACK_STACK" ]]; then
    printf '[devstack] %s holds the %s stack, not the %s stack: give this one another DEVSTACK_DIR\n' \
      "$DEVSTACK_DIR" "$holds" "$DEVSTACK_STACK" >&2
    exit 2
  fi
  [[ -f "$mark" ]] || echo "$holds" >"$mark"
}

log() { printf '[devstack] %s\n' "$*"; }

now() { date +%s; }

# fail SERVICE LOGFILE MESSAGE: report a failed service with the end of its log, then exit
# (the whole script, or the background step it runs in). One write, so that steps failing
# side by side do not interleave their reports.
fail() {
  local service=$1 logfile=$2
  shift 2
  local report
  report="[devstack] FAILED: $service: $*"
  if [[ -s "$logfile" ]]; then
    report+=$'\n'"[devstack] last 40 lines of $logfile:"$'\n'"$(tail -n 40 "$logfile")"
  fi
  printf '%s\n' "$report" >&2
  exit 1
}

# wait_for NAME SECONDS PID CMD...: run CMD until it succeeds. Gives up after
# SECONDS, or as soon as process PID (if given) has exited.
wait_for() {
  local name=$1 seconds=$2 pid=$3
  shift 3
  local deadline=$(($(now) + seconds))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$pid" ]] && ! alive "$pid"; then
      log "$name: process $pid exited while waiting for readiness"
      return 1
    fi
    if (($(now) >= deadline)); then
      log "$name: not ready after ${seconds}s"
      return 1
    fi
    sleep 0.5
  done
}

# with_lock FILE CMD...: run CMD holding an exclusive lock on FILE, so that two stacks
# sharing DEVSTACK_CACHE_DIR never fetch or build the same thing at once.
with_lock() {
  local lockfile=$1 fd rc
  shift
  exec {fd}>"$lockfile"
  flock "$fd"
  "$@"
  rc=$?
  exec {fd}>&-
  return "$rc"
}

# The dev secrets: generated once, kept in git-ignored state, read by config.yaml's
# *_file keys. Nothing secret is ever committed or printed.
ensure_secret() {
  local file=$1
  [[ -s "$file" ]] && return 0
  (umask 077 && mkdir -p "$(dirname "$file")" && head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$file")
  log "secrets: generated $file"
}

ensure_secrets() {
  ensure_secret "$SECRETS_DIR/mysql.password"
  ensure_secret "$SECRETS_DIR/mysql-migrate.password"
  ensure_secret "$SECRETS_DIR/ws_token.secret"
}
