# shellcheck shell=bash
# Jars from Maven: a pom.xml that lists dependencies only, copied into a cache directory
# once and again only when the pom changes. Sourced by devstack/services.sh.

# maven_fetch NAME POM OUTDIR LOGFILE: copy POM's dependencies into OUTDIR, unless OUTDIR
# already holds them for this very POM. Fails (fail NAME LOGFILE) if Maven does.
maven_fetch() {
  local name=$1 pom=$2 out=$3 logfile=$4 want
  want="$(sha256sum "$pom" | cut -d' ' -f1)"
  [[ "$(cat "$out/.pom.sha256" 2>/dev/null)" == "$want" ]] && return 0
  mkdir -p "$(dirname "$out")"
  with_lock "$out.lock" maven_fetch_locked "$@" "$want"
}

maven_fetch_locked() {
  local name=$1 pom=$2 out=$3 logfile=$4 want=$5 start tmp
  # Another stack sharing the cache may have fetched them while we waited for the lock.
  [[ "$(cat "$out/.pom.sha256" 2>/dev/null)" == "$want" ]] && return 0
  log "$name: fetching jars with Maven (once)"
  start=$(now)
  tmp="$out.tmp"
  rm -rf "$tmp"
  # A short-lived JVM: the quick JIT only (a third less CPU, beside the Go build).
  MAVEN_OPTS="${MAVEN_OPTS:-} -XX:TieredStopAtLevel=1 -XX:+UseSerialGC" \
    mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$tmp" >"$logfile" 2>&1 ||
    fail "$name" "$logfile" "mvn dependency:copy-dependencies failed"
  echo "$want" >"$tmp/.pom.sha256"
  rm -rf "$out"
  mv "$tmp" "$out"
  log "$name: jars fetched in $(($(now) - start))s"
}
