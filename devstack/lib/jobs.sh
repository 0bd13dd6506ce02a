# shellcheck shell=bash
# Steps side by side: `up` runs the slow steps (fetching jars, building binaries) and each
# service's start as background jobs, each waiting for the jobs it needs. A job is a shell
# function run in a subshell in a process group of its own; its exit status lands in
# $JOBS_DIR/NAME.rc, where any other job can wait for it. A job that fails has printed
# its own report (fail: the message and its log's tail). Sourced by devstack/services.sh.

JOBS_DIR=""
JOB_NAMES=()
declare -A JOB_PIDS=()

# jobs_begin: before the first job_start. Job control gives each job its own process
# group, so that Ctrl-C (or a TERM to this script) stops every job with its children
# (apt, mvn, go, a readiness probe); the servers already started run on, as always.
jobs_begin() {
  JOBS_DIR="$(mktemp -d "$RUN_DIR/jobs.XXXXXX")"
  trap jobs_interrupted INT TERM
  trap 'rm -rf "$JOBS_DIR"' EXIT
  set -m
}

jobs_interrupted() {
  local name
  disown -a # no "Terminated" line per job
  for name in "${JOB_NAMES[@]}"; do
    kill -TERM -- "-${JOB_PIDS[$name]}" 2>/dev/null || true
  done
  log "interrupted"
  exit 130
}

# job_start NAME FUNCTION ARGS...: run FUNCTION ARGS in the background as job NAME.
job_start() {
  local name=$1
  shift
  : >"$JOBS_DIR/$name.started"
  (
    trap 'job_exit "$?" "$name"' EXIT
    "$@"
  ) </dev/null &
  JOB_PIDS[$name]=$!
  JOB_NAMES+=("$name")
  echo "$!" >"$JOBS_DIR/$name.pid"
}

# job_exit STATUS NAME: a job's last act, its status where job_wait finds it (quietly:
# after an interrupt, JOBS_DIR may be gone already).
job_exit() {
  { echo "$1" >"$JOBS_DIR/$2.rc.tmp" && mv "$JOBS_DIR/$2.rc.tmp" "$JOBS_DIR/$2.rc"; } 2>/dev/null || true
}

# job_wait NAME: wait until job NAME has ended (at once if no such job was started);
# return its exit status. Callable from another job.
job_wait() {
  local f="$JOBS_DIR/$1" pid
  [[ -e "$f.started" ]] || return 0
  until [[ -e "$f.rc" ]]; do
    pid="$(cat "$f.pid" 2>/dev/null)" || pid=""
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null && [[ ! -e "$f.rc" ]]; then
      sleep 0.5 # it may be writing its status right now
      [[ -e "$f.rc" ]] || return 1
    fi
    sleep 0.2
  done
  return "$(cat "$f.rc")"
}

# jobs_end: wait for every job; print the names of those that failed and return 1 if any.
jobs_end() {
  local name failed=()
  for name in "${JOB_NAMES[@]}"; do
    wait "${JOB_PIDS[$name]}" || failed+=("$name")
  done
  set +m
  trap - INT TERM
  if ((${#failed[@]} > 0)); then
    printf '[devstack] FAILED: %s (see above)\n' "${failed[*]}" >&2
    return 1
  fi
}
