# shellcheck shell=bash
# Binaries built with Go, once: each build goes to a directory named after the hash of
# everything it depends on, so a change builds anew and an unchanged build is never
# redone (nor raced: two stacks sharing DEVSTACK_CACHE_DIR take turns). Sourced by
# devstack/services.sh.

# Static, stripped, path-independent binaries: no C compiler involved, no debug info to
# make (a tenth less CPU) or link, and Go's build cache is reused whatever directory a
# build runs in.
export CGO_ENABLED=0
GO_BUILD=(go build -buildvcs=false -trimpath -gcflags=all=-dwarf=false -ldflags='-s -w')

# go_hash FILE... [-- WORD...]: a short hash of the files' contents, the Go build flags and
# the WORDs: the name of a build directory.
go_hash() {
  local files=() words=()
  while (($# > 0)) && [[ "$1" != -- ]]; do files+=("$1") && shift; done
  (($# == 0)) || shift
  words=("$@")
  { cat "${files[@]}" && echo "${GO_BUILD[*]} CGO_ENABLED=$CGO_ENABLED ${words[*]}"; } | sha256sum | cut -c1-16
}

# go_build NAME OUTDIR LOGFILE STEP: run the function STEP OUTDIR.tmp (in a subshell,
# output to LOGFILE) unless OUTDIR is already complete, then move it to OUTDIR.
# STEP must check its own errors: `set -e` does not apply inside `... || fail`.
go_build() {
  local name=$1 out=$2
  [[ -f "$out/.complete" ]] && return 0
  have go || fail "$name" /dev/null "Go 1.24+ is needed to build $name (looked in PATH and /usr/local/go/bin)"
  mkdir -p "$(dirname "$out")"
  with_lock "$out.lock" go_build_locked "$@"
}

go_build_locked() {
  local name=$1 out=$2 logfile=$3 step=$4 start
  [[ -f "$out/.complete" ]] && return 0 # built by another stack while we waited
  log "$name: building with Go (once)"
  start=$(now)
  rm -rf "$out.tmp"
  mkdir -p "$out.tmp"
  ("$step" "$out.tmp") >>"$logfile" 2>&1 || fail "$name" "$logfile" "go build failed"
  touch "$out.tmp/.complete"
  rm -rf "$out"
  mv "$out.tmp" "$out"
  log "$name: built in $(($(now) - start))s"
}
