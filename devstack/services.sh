#!/usr/bin/env bash
# Local backing services for development and tests, without Docker or systemd.
#
#   devstack/services.sh up     [SERVICE...]   install if missing, start, wait until ready
#   devstack/services.sh down   [SERVICE...]   stop what this script started
#   devstack/services.sh status [SERVICE...]   print each service up/down (exit 3 if any is down)
#   devstack/services.sh tools                 install promtool (prometheus), wrk and chromium
#   devstack/services.sh events [ARG...]       print the Kafka topic's events from the beginning
#
# SERVICE is one of the registry below (default: those marked "default"); a service
# brings the ones it needs with it (ferretdb its postgres): up starts them first, down
# stops them after, status lists them. All servers listen on 127.0.0.1 only. State lives
# under $DEVSTACK_DIR (default: <repo>/.devstack): data/, logs/, run/ (pid files),
# cache/ (Kafka's jars, the FerretDB build; $DEVSTACK_CACHE_DIR puts it elsewhere, e.g.
# shared by a second stack). See devstack/README.md.
#
# The pieces: lib/ holds what every service uses (lib/common.sh paths, logging, failing;
# lib/process.sh the supervisor; lib/jobs.sh steps side by side; lib/apt.sh, lib/maven.sh,
# lib/go.sh installing), services/NAME.sh each service (see "Adding a service" in
# devstack/README.md).
# shellcheck source-path=SCRIPTDIR # the sources below are named from this directory
set -euo pipefail

DEVSTACK_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib"
# shellcheck source=lib/common.sh
source "$DEVSTACK_LIB/common.sh"
# shellcheck source=lib/process.sh
source "$DEVSTACK_LIB/process.sh"
# shellcheck source=lib/jobs.sh
source "$DEVSTACK_LIB/jobs.sh"
# shellcheck source=lib/apt.sh
source "$DEVSTACK_LIB/apt.sh"
# shellcheck source=lib/maven.sh
source "$DEVSTACK_LIB/maven.sh"
# shellcheck source=lib/go.sh
source "$DEVSTACK_LIB/go.sh"

# ---------------------------------------------------------------- the registry
# One line per service, in start order: its name (services/NAME.sh), whether a bare
# `up`/`down`/`status` includes it, and the services it needs running first (which must
# come earlier here). A new server is a file in services/ and one line here.
REGISTRY=(
  "mariadb  default"
  "redis    default"
  "kafka    default"
  "postgres -"
  "ferretdb default postgres"
)

# Debian packages of `tools` (test tooling): promtool, wrk, and Chromium for the browser
# test (tests/e2e), which launches /usr/bin/chromium by that path.
TOOLS_PACKAGES=(promtool:prometheus wrk:wrk /usr/bin/chromium:chromium)

ALL_SERVICES=()
DEFAULT_SERVICES=()
declare -A NEEDS=()
registry_load() {
  local line name default needs
  for line in "${REGISTRY[@]}"; do
    read -r name default needs <<<"$line"
    ALL_SERVICES+=("$name")
    [[ "$default" != default ]] || DEFAULT_SERVICES+=("$name")
    NEEDS[$name]="$needs"
    # shellcheck source=/dev/null # one file per service, named by the registry
    source "$DEVSTACK_SRC/services/$name.sh"
  done
}

# closure SERVICE...: the services and, recursively, those they need, in registry order.
closure() {
  local -A want=()
  local s n changed=1
  for s in "$@"; do want[$s]=1; done
  while ((changed)); do
    changed=0
    for s in "${!want[@]}"; do
      for n in ${NEEDS[$s]}; do
        [[ -n "${want[$n]:-}" ]] || { want[$n]=1 && changed=1; }
      done
    done
  done
  for s in "${ALL_SERVICES[@]}"; do
    [[ -z "${want[$s]:-}" ]] || echo "$s"
  done
}

# ---------------------------------------------------------------- commands

# up: the slow steps side by side. From the start: one apt-get of every missing Debian
# package of the services, and the steps that need none (FerretDB's Go build); with
# DEVSTACK_WITH_TOOLS=1 (make test) a second apt-get, of the test tools' packages, once
# the first is done, while the servers start. Each service starts as soon as the packages,
# its own step (the Maven fetch waits for Java) and the services it needs are there.
cmd_up() {
  local s n start packages=()
  start=$(now)
  ensure_secrets
  for s in "$@"; do
    declare -F "${s}_packages" >/dev/null || continue
    read -r -a n <<<"$("${s}_packages")"
    packages+=("${n[@]}")
  done
  jobs_begin
  APT_UPDATED_MARK="$JOBS_DIR/apt-updated"
  job_start apt apt_after "" "${packages[@]}"
  if [[ "${DEVSTACK_WITH_TOOLS:-}" == 1 ]]; then
    job_start apt-tools apt_after apt "${TOOLS_PACKAGES[@]}"
  fi
  for s in "$@"; do
    if declare -F "${s}_prepare" >/dev/null; then job_start "$s-prepare" "${s}_prepare"; fi
  done
  for s in "$@"; do
    job_start "$s" service_up "$s"
  done
  jobs_end || exit 1
  log "up: $* ready in $(($(now) - start))s"
}

# service_up SERVICE: the job that starts SERVICE, once what it needs is there.
service_up() {
  local s=$1 n start
  job_wait apt || fail "$s" /dev/null "the Debian packages could not be installed (see above)"
  job_wait "$s-prepare" || fail "$s" /dev/null "its preparation failed (see above)"
  for n in ${NEEDS[$s]}; do
    job_wait "$n" || fail "$s" /dev/null "$n, which it needs, did not come up (see above)"
  done
  start=$(now)
  "${s}_up"
  log "$s: took $(($(now) - start))s"
}

cmd_down() {
  local i
  # Reverse order of start.
  for ((i = $#; i >= 1; i--)); do
    service_stop "${!i}"
  done
}

cmd_status() {
  local s pid owner rc=0
  for s in "$@"; do
    if pid="$(our_pid "$s")"; then owner="pid $pid, started by devstack"; else owner="not started by devstack"; fi
    if "${s}_ready" >/dev/null 2>&1; then
      printf '%-9s up    (%s)\n' "$s" "$owner"
    else
      printf '%-9s down  (%s)\n' "$s" "$owner"
      rc=3
    fi
  done
  return $rc
}

cmd_tools() {
  apt_ensure "${TOOLS_PACKAGES[@]}"
  log "tools: $(promtool --version 2>&1 | head -n 1); $(wrk --version 2>&1 | head -n 1)"
  # 2>/dev/null: Debian's launcher script may print a harmless /dev/shm warning.
  log "tools: $(/usr/bin/chromium --version 2>/dev/null | head -n 1)"
}

cmd_events() {
  local packages
  mkdir -p "$LOG_DIR"
  read -r -a packages <<<"$(kafka_packages)"
  apt_ensure "${packages[@]}" >&2
  kafka_events "$@"
}

usage() {
  echo "usage: $0 up|down|status [${ALL_SERVICES[*]}] | tools | events [CONSUMER-ARG...]" >&2
  exit 2
}

main() {
  registry_load
  [[ $# -ge 1 ]] || usage
  local cmd=$1
  shift
  case $cmd in
  tools)
    cmd_tools
    return
    ;;
  events)
    cmd_events "$@"
    return
    ;;
  up | down | status) ;;
  *) usage ;;
  esac
  local services=("$@") s
  [[ ${#services[@]} -gt 0 ]] || services=("${DEFAULT_SERVICES[@]}")
  for s in "${services[@]}"; do
    [[ " ${ALL_SERVICES[*]} " == *" $s "* ]] || { echo "unknown service: $s" >&2; usage; }
  done
  mapfile -t services < <(closure "${services[@]}")
  mkdir -p "$DATA_DIR" "$LOG_DIR" "$RUN_DIR" "$CACHE_DIR"
  "cmd_$cmd" "${services[@]}"
}

main "$@"
