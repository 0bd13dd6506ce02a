# shellcheck shell=bash
# Debian packages: every missing one in a single apt-get install. Sourced by
# devstack/services.sh and devstack/shellcheck.sh.

# have CHECK: CHECK is a command in PATH, or an absolute path (a glob allowed) that exists.
have() {
  if [[ "$1" == /* ]]; then
    compgen -G "$1" >/dev/null
  else
    command -v "$1" >/dev/null 2>&1
  fi
}

APT_UPDATED=""
APT_UPDATED_MARK="" # a file: apt-get update ran (shared by the background steps of one run)
# apt_install PACKAGE...: install Debian packages (apt-get update once per run). Waits for
# an apt run that holds the lock instead of failing.
apt_install() {
  local sudo=""
  [[ "$(id -u)" == 0 ]] || sudo="sudo"
  # Never let a package's postinst start its own copy of the server (it would
  # take our port with the system datadir): deny service starts while installing.
  local policy=/usr/sbin/policy-rc.d added_policy=""
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    added_policy=1
  fi
  local aptlog="$LOG_DIR/apt.log" rc=0 lock=(-o DPkg::Lock::Timeout=600)
  mkdir -p "$LOG_DIR"
  if [[ -z "$APT_UPDATED" && ! -e "${APT_UPDATED_MARK:-/nonexistent}" ]]; then
    log "apt-get update"
    $sudo apt-get "${lock[@]}" update >>"$aptlog" 2>&1 || rc=$?
    APT_UPDATED=1
    [[ -z "$APT_UPDATED_MARK" ]] || : >"$APT_UPDATED_MARK"
  fi
  if ((rc == 0)); then
    log "apt-get install $*"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get "${lock[@]}" install -y --no-install-recommends "$@" \
      >>"$aptlog" 2>&1 || rc=$?
  fi
  [[ -z "$added_policy" ]] || $sudo rm -f "$policy"
  ((rc == 0)) || fail apt "$aptlog" "apt-get failed installing $*"
}

# apt_ensure CHECK:PACKAGE...: install, in one apt-get, every PACKAGE whose CHECK (see
# have) fails.
apt_ensure() {
  local pair missing=()
  for pair in "$@"; do
    have "${pair%%:*}" || missing+=("${pair#*:}")
  done
  ((${#missing[@]} > 0)) || return 0
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  apt_install "${missing[@]}"
}

# need_cmd COMMAND PACKAGE...: install PACKAGE(s) if COMMAND is missing.
need_cmd() {
  local cmd=$1
  shift
  have "$cmd" || apt_install "$@"
}

# apt_after JOB CHECK:PACKAGE...: apt_ensure, once background job JOB (an earlier
# apt_after; none if empty) has ended, whether it failed or not: `up` installs the test
# tools' packages after the servers', so that the servers need not wait for them.
apt_after() {
  [[ -z "$1" ]] || job_wait "$1" || true
  shift
  apt_ensure "$@"
}
