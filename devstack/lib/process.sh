# shellcheck shell=bash
# The process supervisor: start a server detached with its pid recorded, tell whether
# the recorded process still runs (and is ours, not a reused pid), stop it, and check
# ports before starting anything. Sourced by devstack/services.sh.

# port_open HOST PORT: true if something accepts TCP connections on HOST:PORT.
port_open() {
  (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# port_owner HOST PORT: which process listens on HOST:PORT, or on PORT of every address
# (for error messages).
port_owner() {
  ss -Hltnp "sport = :$2" 2>/dev/null | grep -F -e " $1:$2 " -e " *:$2 " -e " 0.0.0.0:$2 " |
    grep -o 'users:.*' | head -n 1 || true
}

pid_file() { echo "$RUN_DIR/$1.pid"; }

# proc_field PID N: field N of /proc/PID/stat (3 = state, 22 = start time in clock ticks).
proc_field() {
  local stat fields
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }" # drop "pid (comm) ", comm may contain spaces
  read -r -a fields <<<"$stat"
  echo "${fields[$(($2 - 3))]}"
}

proc_start() { proc_field "$1" 22; }

# alive PID: the process exists and is not a zombie (an exited server can stay a
# zombie for a moment until init reaps it).
alive() {
  local state
  state="$(proc_field "$1" 3)" && [[ "$state" != Z && "$state" != X ]]
}

# our_pid SERVICE: print the pid we recorded for SERVICE if that process still
# runs. run/SERVICE.pid holds the pid, run/SERVICE.start its start time, so a
# pid reused by another process (e.g. after a reboot) is never taken for ours.
our_pid() {
  local f pid
  f="$(pid_file "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ -n "$pid" ]] && alive "$pid" || return 1
  [[ "$(proc_start "$pid")" == "$(cat "$RUN_DIR/$1.start" 2>/dev/null)" ]] || return 1
  echo "$pid"
}

# spawn SERVICE LOGFILE CMD...: start CMD detached (own session, survives this
# script and the caller's terminal), output appended to LOGFILE, pid recorded in
# run/SERVICE.pid. Prints the pid.
spawn() {
  local service=$1 logfile=$2
  shift 2
  local pf
  pf="$(pid_file "$service")"
  rm -f "$pf" "$RUN_DIR/$service.start"
  echo "=== devstack: starting $service at $(date '+%F %T')" >>"$logfile"
  # The inner bash writes its own pid and then execs CMD, so the pid file holds
  # the server's pid whether or not setsid had to fork.
  # shellcheck disable=SC2016 # $$ and $@ belong to the inner bash
  nohup setsid bash -c 'echo $$ > "$0"; exec "$@"' "$pf" "$@" >>"$logfile" 2>&1 </dev/null &
  local _
  for _ in $(seq 50); do
    [[ -s "$pf" ]] && break
    sleep 0.1
  done
  [[ -s "$pf" ]] || fail "$service" "$logfile" "could not start: $*"
  proc_start "$(cat "$pf")" >"$RUN_DIR/$service.start" || true
  cat "$pf"
}

# stop_service SERVICE [GRACE [SIGNAL [HOPELESS...]]]: stop the process we started (SIGNAL,
# TERM by default; wait up to GRACE seconds, 15 by default; then KILL). HOPELESS, a
# command, says the process waits for something that will not come (a broker for a quorum
# that has stopped): once it succeeds, the process gets 5 s more.
stop_service() {
  local service=$1 grace=${2:-15} signal=${3:-TERM} pid
  shift $(($# < 3 ? $# : 3))
  if ! pid="$(our_pid "$service")"; then
    rm -f "$(pid_file "$service")" "$RUN_DIR/$service.start"
    log "$service: not running (not started by devstack)"
    return 0
  fi
  log "$service: stopping pid $pid"
  kill "-$signal" "$pid" 2>/dev/null || true
  local deadline=$(($(now) + grace)) why="after ${grace}s"
  while alive "$pid" && (($(now) < deadline)); do
    if (($# > 0)) && "$@"; then
      deadline=$(($(now) + 5)) why="5s after $*"
      set --
    fi
    sleep 0.3
  done
  if alive "$pid"; then
    log "$service: still running $why, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$(pid_file "$service")" "$RUN_DIR/$service.start"
}

# free_ports SERVICE HOST PORT...: called before starting SERVICE on HOST, once its
# readiness check failed. A process of ours that runs but is not ready is restarted
# (service_stop, services.sh); a
# port held by anything else is an error (we never start a second server).
free_ports() {
  local service=$1 host=$2 port
  shift 2
  if our_pid "$service" >/dev/null; then
    log "$service: our process is still there but not ready (or shutting down): restarting it"
    service_stop "$service"
  fi
  for port in "$@"; do
    if port_open "$host" "$port"; then
      fail "$service" /dev/null "$host:$port is taken by a process that fails the readiness check: $(port_owner "$host" "$port")"
    fi
  done
}
