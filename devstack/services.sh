#!/usr/bin/env bash
# Local backing services for development and tests, without Docker or systemd.
#
#   devstack/services.sh [--cluster] up     [NAME...]   install if missing, start, wait until ready
#   devstack/services.sh [--cluster] down   [NAME...]   stop what this script started
#   devstack/services.sh [--cluster] status [NAME...]   print each one up/down (exit 3 if any is down)
#   devstack/services.sh tools                          install promtool (prometheus), wrk and chromium
#   devstack/services.sh [--cluster] events [ARG...]    print the Kafka topic's events from the beginning
#
# Two stacks, each a registry below: the everyday one (make services), every server on
# 127.0.0.1, and with --cluster the production-shaped one (make services-cluster): two
# MariaDB shards, Redis Cluster, three Kafka brokers, FerretDB, each server on a loopback
# address of its own. NAME is one of the stack's registry (default: those marked
# "default"); a name brings the ones it needs with it (ferretdb its postgres): up starts
# them first, down stops them after, status lists them. State lives under $DEVSTACK_DIR
# (default: <repo>/.devstack, or <repo>/.devstack-cluster for the cluster stack): data/,
# logs/, run/ (pid files), and cache/ (Kafka's jars, the FerretDB build; $DEVSTACK_CACHE_DIR
# puts it elsewhere, e.g. shared by a second stack; the cluster stack uses the everyday
# stack's). See devstack/README.md.
#
# The pieces: lib/ holds what every service uses (lib/common.sh paths, logging, failing;
# lib/process.sh the supervisor; lib/jobs.sh steps side by side; lib/apt.sh, lib/maven.sh,
# lib/go.sh installing; lib/tls.sh the everyday stack's CA and certificates),
# services/SERVICE.sh each service (see "Adding a service" in
# devstack/README.md).
# shellcheck source-path=SCRIPTDIR # the sources below are named from this directory
set -euo pipefail

DEVSTACK_STACK=everyday
if [[ "${1:-}" == --cluster ]]; then
  DEVSTACK_STACK=cluster
  shift
fi

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
# shellcheck source=lib/tls.sh
source "$DEVSTACK_LIB/tls.sh"

# ---------------------------------------------------------------- the registries
# One line per server, in start order: its name (its pid file, data directory and log),
# its service (services/SERVICE.sh, which runs it; several servers may share one), the
# address it listens on, whether a bare `up`/`down`/`status` includes it, and the names it
# needs running first (which must come earlier here). A line whose address is "-" starts
# no server of its own: it joins the servers it needs into a cluster. A new server is a
# file in services/ (or an existing one) and one line here.
EVERYDAY_REGISTRY=(
  # name    service   address    default  needs
  "mariadb  mariadb   127.0.0.1  default"
  "redis    redis     127.0.0.1  default"
  "kafka    kafka     127.0.0.1  default"
  "postgres postgres  127.0.0.1  -"
  "ferretdb ferretdb  127.0.0.1  default  postgres"
)

# The cluster stack: every server on its service's usual port, on an address of its own
# under CLUSTER_NET (default 127.0.0, so 127.0.0.2 ...; another copy can run on 127.0.1.x).
# Its ports are fixed: the everyday stack's *_PORT variables do not move them.
CLUSTER_NET="${CLUSTER_NET:-127.0.0}"
N=$CLUSTER_NET
CLUSTER_REGISTRY=(
  # name         service        address  default  needs
  "mariadb-a     mariadb        $N.2     default" # the shards
  "mariadb-b     mariadb        $N.3     default"
  "redis-1       redis          $N.11    -" # Redis Cluster's nodes, and the step that joins them
  "redis-2       redis          $N.12    -"
  "redis-3       redis          $N.13    -"
  "redis-4       redis          $N.14    -"
  "redis-5       redis          $N.15    -"
  "redis-6       redis          $N.16    -"
  "redis-cluster redis-cluster  -        default  redis-1 redis-2 redis-3 redis-4 redis-5 redis-6"
  "kafka-1       kafka          $N.21    -" # Kafka's brokers (each a KRaft controller too), and the topic
  "kafka-2       kafka          $N.22    -"
  "kafka-3       kafka          $N.23    -"
  "kafka-cluster kafka-cluster  -        default  kafka-1 kafka-2 kafka-3"
  "postgres      postgres       $N.31    -"
  "ferretdb      ferretdb       $N.31    default  postgres"
)
unset N
if [[ $DEVSTACK_STACK == cluster ]]; then
  unset MYSQL_PORT REDIS_PORT KAFKA_PORT KAFKA_CONTROLLER_PORT POSTGRES_PORT MONGO_PORT
  REGISTRY=("${CLUSTER_REGISTRY[@]}")
else
  REGISTRY=("${EVERYDAY_REGISTRY[@]}")
fi

# Debian packages of `tools` (test tooling): promtool, wrk, and Chromium for the browser
# test (tests/e2e), which launches /usr/bin/chromium by that path.
TOOLS_PACKAGES=(promtool:prometheus wrk:wrk /usr/bin/chromium:chromium)

ALL_SERVICES=()
DEFAULT_SERVICES=()
declare -A NEEDS=() SERVICE_OF=() ADDRESS=()
registry_load() {
  local line name service address default needs
  local -A sourced=()
  for line in "${REGISTRY[@]}"; do
    read -r name service address default needs <<<"$line"
    ALL_SERVICES+=("$name")
    [[ "$default" != default ]] || DEFAULT_SERVICES+=("$name")
    NEEDS[$name]="$needs"
    SERVICE_OF[$name]="$service"
    ADDRESS[$name]="${address#-}"
    [[ -z "${sourced[$service]:-}" ]] || continue
    sourced[$service]=1
    # shellcheck source=/dev/null # one file per service, named by the registry
    source "$DEVSTACK_SRC/services/$service.sh"
  done
}

# The functions of service SERVICE are SERVICE_up, SERVICE_ready, ... ("-" read as "_":
# redis-cluster's are redis_cluster_up, ...).
# has NAME FUNCTION: NAME's service defines FUNCTION.
has() {
  declare -F "${SERVICE_OF[$1]//-/_}_$2" >/dev/null
}

# on NAME FUNCTION ARGS...: run the FUNCTION of NAME's service (`on redis-3 up` runs
# redis_up) for server NAME: INSTANCE is its name, HOST its address.
on() {
  local INSTANCE=$1 fn=$2
  shift 2
  # shellcheck disable=SC2034 # read by the service's functions
  local HOST=${ADDRESS[$INSTANCE]}
  "${SERVICE_OF[$INSTANCE]//-/_}_$fn" "$@"
}

# servers_of SERVICE: the names of the stack's servers that SERVICE runs, in registry order.
servers_of() {
  local s
  for s in "${ALL_SERVICES[@]}"; do
    [[ "${SERVICE_OF[$s]}" != "$1" ]] || echo "$s"
  done
}

# address_of NAME: the address server NAME listens on.
address_of() { echo "${ADDRESS[$1]}"; }

# service_stop NAME: its service's own SERVICE_stop if its file defines one (a longer
# grace, another signal, nothing for a line without a server), else stop_service with the
# defaults.
service_stop() {
  if has "$1" stop; then on "$1" stop; else stop_service "$1"; fi
}

# closure NAME...: the names and, recursively, those they need, in registry order.
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
# the first is done, while the servers start. Each server starts as soon as the packages,
# its service's own step (the Maven fetch waits for Java) and the servers it needs are
# there: the cluster stack's servers of one service start side by side.
cmd_up() {
  local s n start packages=() services=()
  start=$(now)
  ensure_secrets
  ensure_tls
  mapfile -t services < <(for s in "$@"; do echo "${SERVICE_OF[$s]}"; done | sort -u)
  for s in "${services[@]}"; do
    declare -F "${s//-/_}_packages" >/dev/null || continue
    read -r -a n <<<"$("${s//-/_}_packages")"
    packages+=("${n[@]}")
  done
  jobs_begin
  APT_UPDATED_MARK="$JOBS_DIR/apt-updated"
  job_start apt apt_after "" "${packages[@]}"
  if [[ "${DEVSTACK_WITH_TOOLS:-}" == 1 ]]; then
    job_start apt-tools apt_after apt "${TOOLS_PACKAGES[@]}"
  fi
  for s in "${services[@]}"; do
    if declare -F "${s//-/_}_prepare" >/dev/null; then job_start "$s-prepare" "${s//-/_}_prepare"; fi
  done
  for s in "$@"; do
    job_start "$s" service_up "$s"
  done
  jobs_end || exit 1
  log "up: $* ready in $(($(now) - start))s"
}

# service_up NAME: the job that starts server NAME, once what it needs is there.
service_up() {
  local s=$1 n start
  job_wait apt || fail "$s" /dev/null "the Debian packages could not be installed (see above)"
  job_wait "${SERVICE_OF[$s]}-prepare" || fail "$s" /dev/null "its preparation failed (see above)"
  for n in ${NEEDS[$s]}; do
    job_wait "$n" || fail "$s" /dev/null "$n, which it needs, did not come up (see above)"
  done
  start=$(now)
  on "$s" up
  log "$s: took $(($(now) - start))s"
}

# down: every server side by side, each once those that need it have stopped (ferretdb
# before its postgres): a Kafka cluster's brokers stop together, none waiting for a quorum
# that the others have already left.
cmd_down() {
  local s start
  start=$(now)
  jobs_begin
  for s in "$@"; do
    job_start "$s" stop_after "$s" "$@"
  done
  jobs_end || exit 1
  log "down: $* in $(($(now) - start))s"
}

# stop_after NAME NAME...: the job that stops NAME, once each of the others that needs it
# has stopped.
stop_after() {
  local s=$1 n
  shift
  for n in "$@"; do
    [[ " ${NEEDS[$n]} " != *" $s "* ]] || job_wait "$n" || true
  done
  service_stop "$s"
}

cmd_status() {
  local s pid owner rc=0
  for s in "$@"; do
    if [[ -z "${ADDRESS[$s]}" ]]; then
      owner="joins ${NEEDS[$s]// /, }"
    elif pid="$(our_pid "$s")"; then
      owner="${ADDRESS[$s]}, pid $pid, started by devstack"
    else
      owner="${ADDRESS[$s]}, not started by devstack"
    fi
    if on "$s" ready >/dev/null 2>&1; then
      printf '%-13s up    (%s)\n' "$s" "$owner"
    else
      printf '%-13s down  (%s)\n' "$s" "$owner"
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
  local packages kafka
  mkdir -p "$LOG_DIR"
  read -r -a packages <<<"$(kafka_packages)"
  apt_ensure "${packages[@]}" >&2
  kafka="$(servers_of kafka | head -n 1)"
  on "$kafka" events "$@"
}

usage() {
  echo "usage: $0 [--cluster] up|down|status [${ALL_SERVICES[*]}] | tools | [--cluster] events [CONSUMER-ARG...]" >&2
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
    stack_claim
    cmd_events "$@"
    return
    ;;
  up | down | status) ;;
  *) usage ;;
  esac
  local services=("$@") s
  [[ ${#services[@]} -gt 0 ]] || services=("${DEFAULT_SERVICES[@]}")
  for s in "${services[@]}"; do
    [[ " ${ALL_SERVICES[*]} " == *" $s "* ]] || { echo "unknown name: $s" >&2; usage; }
  done
  mapfile -t services < <(closure "${services[@]}")
  stack_claim
  mkdir -p "$DATA_DIR" "$LOG_DIR" "$RUN_DIR" "$CACHE_DIR"
  "cmd_$cmd" "${services[@]}"
}

main "$@"
