#!/usr/bin/env bash
# Local backing services for development and tests, without Docker or systemd.
#
#   devstack/services.sh up     [SERVICE...]   install if missing, start, wait until ready
#   devstack/services.sh down   [SERVICE...]   stop what this script started
#   devstack/services.sh status [SERVICE...]   print each service up/down
#   devstack/services.sh tools                 install promtool (prometheus), wrk and chromium
#
# SERVICE is one of: mariadb redis kafka ferretdb postgres (default: the first
# four). FerretDB stores its data in PostgreSQL (FERRETDB_BACKEND=postgresql, the
# default) or SQLite (FERRETDB_BACKEND=sqlite); with PostgreSQL, `ferretdb` also
# means its `postgres`: up starts it first, down stops it after, status shows it.
# All servers listen on 127.0.0.1 only. State lives under $DEVSTACK_DIR
# (default: <repo>/.devstack): data/, logs/, run/ (pid files), cache/ (kafka jars,
# ferretdb binary; $DEVSTACK_CACHE_DIR puts it elsewhere, e.g. shared by a second
# stack). See devstack/README.md.
set -euo pipefail

DEVSTACK_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$DEVSTACK_SRC/.." && pwd)"
DEVSTACK_DIR="${DEVSTACK_DIR:-$REPO_ROOT/.devstack}"
mkdir -p "$DEVSTACK_DIR"
DEVSTACK_DIR="$(cd "$DEVSTACK_DIR" && pwd)"

DATA_DIR="$DEVSTACK_DIR/data"
SECRETS_DIR="$DEVSTACK_DIR/secrets"
LOG_DIR="$DEVSTACK_DIR/logs"
RUN_DIR="$DEVSTACK_DIR/run"
CACHE_DIR="${DEVSTACK_CACHE_DIR:-$DEVSTACK_DIR/cache}" # another stack may share its downloads and builds

MYSQL_PORT="${MYSQL_PORT:-3306}"
REDIS_PORT="${REDIS_PORT:-6379}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
MONGO_PORT="${MONGO_PORT:-27017}"
POSTGRES_PORT="${POSTGRES_PORT:-5433}" # not 5432: never collide with a system cluster
FERRETDB_BACKEND="${FERRETDB_BACKEND:-postgresql}"
FERRETDB_DEBUG_ADDR="${FERRETDB_DEBUG_ADDR:--}" # "-" disables FerretDB's debug HTTP handler

MYSQL_DATABASE=singleton_db
MYSQL_USER=singleton
MYSQL_PASSWORD_FILE="$SECRETS_DIR/mysql.password"
MYSQL_SOCKET="$RUN_DIR/mysqld.sock"
KAFKA_TOPIC=singleton-events
KAFKA_TOPIC_PARTITIONS=3
POSTGRES_DATABASE=ferretdb
POSTGRES_USER=ferretdb
POSTGRES_PASSWORD=ferretdb

ALL_SERVICES=(mariadb redis kafka ferretdb)

export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"

# ---------------------------------------------------------------- helpers

log() { printf '[devstack] %s\n' "$*"; }

now() { date +%s; }

# fail SERVICE LOGFILE MESSAGE: report a failed service with the end of its log, then exit.
fail() {
  local service=$1 logfile=$2
  shift 2
  printf '[devstack] FAILED: %s: %s\n' "$service" "$*" >&2
  if [[ -f "$logfile" ]]; then
    printf '[devstack] last 40 lines of %s:\n' "$logfile" >&2
    tail -n 40 "$logfile" >&2
  fi
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

# port_open PORT: true if something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# port_owner PORT: which process listens on PORT (for error messages).
port_owner() {
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:.*' | head -n 1 || true
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
  local i
  for i in $(seq 50); do
    [[ -s "$pf" ]] && break
    sleep 0.1
  done
  [[ -s "$pf" ]] || fail "$service" "$logfile" "could not start: $*"
  proc_start "$(cat "$pf")" >"$RUN_DIR/$service.start" || true
  cat "$pf"
}

# stop_service SERVICE: stop the process we started (TERM, wait, then KILL).
stop_service() {
  local service=$1 grace=${2:-30} pid
  if ! pid="$(our_pid "$service")"; then
    rm -f "$(pid_file "$service")" "$RUN_DIR/$service.start"
    log "$service: not running (not started by devstack)"
    return 0
  fi
  log "$service: stopping pid $pid"
  kill "-$(stop_signal "$service")" "$pid" 2>/dev/null || true
  local deadline=$(($(now) + grace))
  while alive "$pid" && (($(now) < deadline)); do
    sleep 0.3
  done
  if alive "$pid"; then
    log "$service: still running after ${grace}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$(pid_file "$service")" "$RUN_DIR/$service.start"
}

# free_ports SERVICE PORT...: called before starting SERVICE, once its readiness
# check failed. A process of ours that runs but is not ready is restarted; a
# port held by anything else is an error (we never start a second server).
free_ports() {
  local service=$1 port
  shift
  if our_pid "$service" >/dev/null; then
    log "$service: our process is still there but not ready (or shutting down): restarting it"
    stop_service "$service" "$(stop_grace "$service")"
  fi
  for port in "$@"; do
    if port_open "$port"; then
      fail "$service" /dev/null "port $port is taken by a process that fails the readiness check: $(port_owner "$port")"
    fi
  done
}

APT_UPDATED=""
# apt_install PACKAGE...: install Debian packages (apt-get update once per run).
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
  local aptlog="$LOG_DIR/apt.log" rc=0
  if [[ -z "$APT_UPDATED" ]]; then
    log "apt-get update"
    $sudo apt-get update >>"$aptlog" 2>&1 || rc=$?
    APT_UPDATED=1
  fi
  if ((rc == 0)); then
    log "apt-get install $*"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
      >>"$aptlog" 2>&1 || rc=$?
  fi
  [[ -z "$added_policy" ]] || $sudo rm -f "$policy"
  ((rc == 0)) || fail apt "$aptlog" "apt-get failed installing $*"
}

# need_cmd COMMAND PACKAGE...: install PACKAGE(s) if COMMAND is missing.
need_cmd() {
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null 2>&1 || apt_install "$@"
}

# ---------------------------------------------------------------- secrets

# The dev secrets: generated once, kept in git-ignored state, read by config.yaml's
# *_file keys. Nothing secret is ever committed or printed.
ensure_secret() {
  local file=$1
  [[ -s "$file" ]] && return 0
  (umask 077 && mkdir -p "$(dirname "$file")" && head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$file")
  log "secrets: generated $file"
}

ensure_secrets() {
  ensure_secret "$MYSQL_PASSWORD_FILE"
  ensure_secret "$SECRETS_DIR/ws_token.secret"
}

# ---------------------------------------------------------------- mariadb

mariadb_ready() {
  [[ "$(MYSQL_PWD="$(cat "$MYSQL_PASSWORD_FILE")" mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P "$MYSQL_PORT" \
    -u "$MYSQL_USER" -N -B -e 'SELECT 1' "$MYSQL_DATABASE" 2>/dev/null)" == 1 ]]
}

# shellcheck disable=SC2120 # called with arguments through wait_for
mariadb_root() {
  mariadb --no-defaults --protocol=SOCKET -S "$MYSQL_SOCKET" -u root "$@"
}

# The database and the service's user, with the password from the secrets file.
# Idempotent: run on every start, and on a reused server of ours, so a changed
# secret takes effect. singleton\_test% lets the test suite create its own databases.
mariadb_setup() {
  local password
  password="$(cat "$MYSQL_PASSWORD_FILE")"
  mariadb_root <<SQL
CREATE DATABASE IF NOT EXISTS \`$MYSQL_DATABASE\`;
CREATE USER IF NOT EXISTS '$MYSQL_USER'@'%' IDENTIFIED BY '$password';
CREATE USER IF NOT EXISTS '$MYSQL_USER'@'localhost' IDENTIFIED BY '$password';
ALTER USER '$MYSQL_USER'@'%' IDENTIFIED BY '$password';
ALTER USER '$MYSQL_USER'@'localhost' IDENTIFIED BY '$password';
GRANT ALL PRIVILEGES ON \`$MYSQL_DATABASE\`.* TO '$MYSQL_USER'@'%', '$MYSQL_USER'@'localhost';
GRANT ALL PRIVILEGES ON \`singleton\\_test%\`.* TO '$MYSQL_USER'@'%', '$MYSQL_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
}

mariadb_up() {
  local logfile="$LOG_DIR/mariadb.log" datadir="$DATA_DIR/mariadb"
  need_cmd mariadb mariadb-client
  if ! mariadb_ready && our_pid mariadb >/dev/null && mariadb_root -e 'SELECT 1' >/dev/null 2>&1; then
    mariadb_setup >>"$logfile" 2>&1 || fail mariadb "$logfile" "setting the user's password failed"
  fi
  if mariadb_ready; then
    log "mariadb: reusing server on 127.0.0.1:$MYSQL_PORT"
    return 0
  fi
  free_ports mariadb "$MYSQL_PORT"
  need_cmd mariadbd mariadb-server

  if [[ ! -d "$datadir/mysql" ]]; then
    log "mariadb: initialising $datadir"
    mkdir -p "$datadir"
    mariadb-install-db --no-defaults --datadir="$datadir" --user="$(id -un)" \
      --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve \
      >>"$logfile" 2>&1 || fail mariadb "$logfile" "mariadb-install-db failed"
  fi

  log "mariadb: starting on 127.0.0.1:$MYSQL_PORT"
  local pid
  pid="$(spawn mariadb "$logfile" mariadbd --no-defaults --datadir="$datadir" \
    --socket="$MYSQL_SOCKET" --pid-file="$RUN_DIR/mariadbd.pid" --port="$MYSQL_PORT" \
    --bind-address=127.0.0.1 --user="$(id -un)" --skip-name-resolve \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci)"
  wait_for mariadb 60 "$pid" mariadb_root -e 'SELECT 1' || fail mariadb "$logfile" "server did not come up"

  mariadb_setup >>"$logfile" 2>&1 || fail mariadb "$logfile" "creating database/user failed"
  wait_for mariadb 60 "$pid" mariadb_ready || fail mariadb "$logfile" "SELECT 1 as $MYSQL_USER failed"
  log "mariadb: ready (pid $pid)"
}

# ---------------------------------------------------------------- redis

redis_ready() {
  [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

redis_up() {
  local logfile="$LOG_DIR/redis.log" datadir="$DATA_DIR/redis"
  need_cmd redis-cli redis-tools
  if redis_ready; then
    log "redis: reusing server on 127.0.0.1:$REDIS_PORT"
    return 0
  fi
  free_ports redis "$REDIS_PORT"
  need_cmd redis-server redis-server
  mkdir -p "$datadir"

  log "redis: starting on 127.0.0.1:$REDIS_PORT"
  local pid
  # Runs in the foreground under spawn (same effect as --daemonize yes, but we
  # own the pid). No persistence: this is a throwaway cache for tests.
  pid="$(spawn redis "$logfile" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
    --dir "$datadir" --daemonize no --save '' --appendonly no --logfile '')"
  wait_for redis 60 "$pid" redis_ready || fail redis "$logfile" "PING did not answer PONG"
  log "redis: ready (pid $pid)"
}

# ---------------------------------------------------------------- kafka

KAFKA_LIBS="$CACHE_DIR/kafka-libs"
KAFKA_CONFIG="$DATA_DIR/kafka/server.properties"

# JVM for the broker, and for the short-lived CLI tools (quick start-up flags).
KAFKA_JAVA=(java -Dkafka.logs.dir="$LOG_DIR/kafka"
  -Dlog4j2.configurationFile="$DEVSTACK_SRC/kafka/log4j2.properties" -cp "$KAFKA_LIBS/*")
KAFKA_CLI=("${KAFKA_JAVA[@]}" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1)

# kafka_topics ARGS...: org.apache.kafka.tools.TopicCommand (kafka-topics.sh) against our broker.
kafka_topics() {
  timeout 30 "${KAFKA_CLI[@]}" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "127.0.0.1:$KAFKA_PORT" "$@"
}

kafka_ready() {
  port_open "$KAFKA_PORT" || return 1
  kafka_topics --describe --topic "$KAFKA_TOPIC" 2>/dev/null |
    grep -q "PartitionCount: $KAFKA_TOPIC_PARTITIONS"
}

# Fetch the broker jars with Maven once; refetch only when devstack/kafka/pom.xml changes.
kafka_install() {
  need_cmd java openjdk-17-jre-headless
  need_cmd mvn maven
  local want
  want="$(sha256sum "$DEVSTACK_SRC/kafka/pom.xml" | cut -d' ' -f1)"
  [[ "$(cat "$KAFKA_LIBS/.pom.sha256" 2>/dev/null)" == "$want" ]] && return 0
  log "kafka: fetching jars with Maven (once)"
  local tmp="$KAFKA_LIBS.tmp"
  rm -rf "$tmp"
  mvn -q -B -f "$DEVSTACK_SRC/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$tmp" >"$LOG_DIR/kafka-fetch.log" 2>&1 ||
    fail kafka "$LOG_DIR/kafka-fetch.log" "mvn dependency:copy-dependencies failed"
  echo "$want" >"$tmp/.pom.sha256"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
}

kafka_write_config() {
  mkdir -p "$DATA_DIR/kafka/logs"
  cat >"$KAFKA_CONFIG" <<EOF
# Generated by devstack/services.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA_DIR/kafka/logs
num.partitions=3
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
}

kafka_up() {
  local logfile="$LOG_DIR/kafka/server.log" stdout="$LOG_DIR/kafka/stdout.log"
  mkdir -p "$LOG_DIR/kafka"
  kafka_install # the readiness check needs the CLI jars
  if kafka_ready; then
    log "kafka: reusing broker on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  local pid
  if pid="$(our_pid kafka)"; then
    # Our broker, still starting or without the topic yet: wait for it below
    # rather than restarting it.
    log "kafka: broker pid $pid already running, waiting for it"
  else
    free_ports kafka "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"
    kafka_write_config
    if [[ ! -f "$DATA_DIR/kafka/logs/meta.properties" ]]; then
      local cluster_id
      cluster_id="$("${KAFKA_CLI[@]}" kafka.tools.StorageTool random-uuid 2>>"$stdout")" ||
        fail kafka "$stdout" "kafka-storage random-uuid failed"
      log "kafka: formatting log dir (cluster id $cluster_id)"
      "${KAFKA_CLI[@]}" kafka.tools.StorageTool format --standalone -t "$cluster_id" \
        -c "$KAFKA_CONFIG" >>"$stdout" 2>&1 || fail kafka "$stdout" "kafka-storage format failed"
    fi
    log "kafka: starting on 127.0.0.1:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT)"
    pid="$(spawn kafka "$stdout" "${KAFKA_JAVA[@]}" -Xmx512m -Xms512m kafka.Kafka "$KAFKA_CONFIG")"
  fi

  local deadline=$(($(now) + 120))
  wait_for kafka 120 "$pid" port_open "$KAFKA_PORT" || fail kafka "$logfile" "broker port did not open"
  wait_for kafka $((deadline - $(now))) "$pid" kafka_topics --create --if-not-exists \
    --topic "$KAFKA_TOPIC" --partitions "$KAFKA_TOPIC_PARTITIONS" --replication-factor 1 ||
    fail kafka "$logfile" "could not create topic $KAFKA_TOPIC"
  wait_for kafka $((deadline - $(now))) "$pid" kafka_ready ||
    fail kafka "$logfile" "topic $KAFKA_TOPIC not described with $KAFKA_TOPIC_PARTITIONS partitions"
  log "kafka: ready (pid $pid, topic $KAFKA_TOPIC)"
}

# ---------------------------------------------------------------- postgres (FerretDB's backend)

# Debian's cluster tools live in /usr/lib/postgresql/<major>/bin, off PATH: take the newest.
pg_bin() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [[ -n "$dir" && -x "$dir/postgres" ]] || return 1
  echo "$dir"
}

# initdb and postgres refuse to run as root: as root, run them as the `postgres`
# user (which Debian's package creates); run by another user, they run as that user.
PG_OWNER=""
[[ "$(id -u)" == 0 ]] && PG_OWNER=postgres
as_pg() {
  if [[ -n "$PG_OWNER" ]]; then runuser -u "$PG_OWNER" -- "$@"; else "$@"; fi
}

# The data directory and the socket directory, where the cluster's owner can reach
# them: under $DATA_DIR and $RUN_DIR, unless a parent of the checkout is closed to
# that user (e.g. a home directory of mode 700); then in /var/tmp, linked from
# $DATA_DIR/postgres so the README's "delete data/<service>" still holds.
PG_DATA="$DATA_DIR/postgres"
PG_SOCKET_DIR="$RUN_DIR/postgres"
pg_paths() {
  [[ -n "$PG_OWNER" ]] || return 0
  if runuser -u "$PG_OWNER" -- test -x "$DATA_DIR" -a -x "$RUN_DIR" 2>/dev/null; then
    [[ ! -L "$PG_DATA" ]] || PG_DATA="$(readlink -f "$PG_DATA")"
    return 0
  fi
  local base
  base="/var/tmp/devstack-postgres-$(echo "$DEVSTACK_DIR" | sha256sum | cut -c1-12)"
  log "postgres: $DEVSTACK_DIR is not reachable by user $PG_OWNER: keeping its data in $base"
  mkdir -p "$base/data" "$base/run"
  chown "$PG_OWNER:" "$base" "$base/data" "$base/run"
  [[ -e "$PG_DATA" ]] || ln -s "$base/data" "$PG_DATA"
  PG_DATA="$base/data"
  PG_SOCKET_DIR="$base/run"
}

postgres_ready() {
  [[ "$(PGPASSWORD="$POSTGRES_PASSWORD" PGCONNECT_TIMEOUT=3 psql -X -h 127.0.0.1 -p "$POSTGRES_PORT" \
    -U "$POSTGRES_USER" -d "$POSTGRES_DATABASE" -A -t -c 'SELECT 1' 2>/dev/null)" == 1 ]]
}

# pg_super ARGS...: psql as the superuser over the cluster's own socket (peer auth).
# shellcheck disable=SC2120 # called with arguments through wait_for
pg_super() {
  as_pg psql -X -h "$PG_SOCKET_DIR" -p "$POSTGRES_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"
}

postgres_up() {
  local logfile="$LOG_DIR/postgres.log" bin
  need_cmd psql postgresql-client
  if postgres_ready; then
    log "postgres: reusing server on 127.0.0.1:$POSTGRES_PORT"
    return 0
  fi
  free_ports postgres "$POSTGRES_PORT"
  bin="$(pg_bin)" || { apt_install postgresql && bin="$(pg_bin)"; } ||
    fail postgres "$LOG_DIR/apt.log" "no PostgreSQL server in /usr/lib/postgresql/*/bin after installing"
  pg_paths
  mkdir -p "$PG_SOCKET_DIR"
  [[ -z "$PG_OWNER" ]] || chown "$PG_OWNER:" "$PG_SOCKET_DIR"
  touch "$logfile"

  if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    log "postgres: initialising $PG_DATA"
    mkdir -p "$PG_DATA"
    [[ -z "$PG_OWNER" ]] || chown "$PG_OWNER:" "$PG_DATA"
    chmod 700 "$PG_DATA"
    # UTF8 with the C locale (what FerretDB needs); TCP clients need a password,
    # the socket admits only the OS user that owns the cluster.
    as_pg "$bin/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C \
      --auth-local=peer --auth-host=scram-sha-256 >>"$logfile" 2>&1 ||
      fail postgres "$logfile" "initdb failed"
  fi

  log "postgres: starting on 127.0.0.1:$POSTGRES_PORT"
  local pid owner=()
  # setpriv execs the server in place (runuser would stay as its parent and not pass
  # SIGINT on), so the recorded pid is the postmaster's and `down` can signal it.
  [[ -z "$PG_OWNER" ]] || owner=(setpriv --reuid="$PG_OWNER" --regid="$PG_OWNER" --init-groups --)
  pid="$(spawn postgres "$logfile" "${owner[@]}" "$bin/postgres" -D "$PG_DATA" \
    -h 127.0.0.1 -p "$POSTGRES_PORT" -k "$PG_SOCKET_DIR")"
  wait_for postgres 60 "$pid" pg_super -A -t -c 'SELECT 1' || fail postgres "$logfile" "server did not come up"

  # Idempotent: FerretDB's role and its database, created before FerretDB first connects.
  pg_super >>"$logfile" 2>&1 <<SQL || fail postgres "$logfile" "creating role/database failed"
SELECT 'CREATE ROLE $POSTGRES_USER LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$POSTGRES_USER')\gexec
ALTER ROLE $POSTGRES_USER PASSWORD '$POSTGRES_PASSWORD';
SELECT 'CREATE DATABASE $POSTGRES_DATABASE OWNER $POSTGRES_USER' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$POSTGRES_DATABASE')\gexec
SQL
  pg_super -d "$POSTGRES_DATABASE" -v dbname="$POSTGRES_DATABASE" -f "$DEVSTACK_SRC/postgres/ferretdb-id-index.sql" >>"$logfile" 2>&1 ||
    fail postgres "$logfile" "installing the _id index trigger failed"
  wait_for postgres 60 "$pid" postgres_ready || fail postgres "$logfile" "SELECT 1 as $POSTGRES_USER failed"
  log "postgres: ready (pid $pid)"
}

# ---------------------------------------------------------------- ferretdb

FERRETDB_BIN="$CACHE_DIR/ferretdb/ferretdb"
MONGOPING_BIN="$CACHE_DIR/ferretdb/mongoping"

ferretdb_ready() {
  [[ -x "$MONGOPING_BIN" ]] && port_open "$MONGO_PORT" || return 1
  "$MONGOPING_BIN" -uri "mongodb://127.0.0.1:$MONGO_PORT/" -timeout 3s >/dev/null 2>&1
}

FERRETDB_MOD="$DEVSTACK_SRC/ferretdb"

# go_build NAME BINARY STEP STAMP_INPUT...: helper for the two builds below.
# Runs the function STEP (in a subshell) only when the binary is missing or the
# sha256 of the STAMP_INPUT files changed since the last successful build.
# STEP must check its own errors: `set -e` does not apply inside `... || fail`.
go_build() {
  local name=$1 bin=$2 step=$3
  shift 3
  local stamp="$bin.stamp" want
  want="$(cat "$@" | sha256sum | cut -d' ' -f1)"
  [[ -x "$bin" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]] && return 0
  command -v go >/dev/null 2>&1 ||
    fail ferretdb /dev/null "Go 1.24+ is needed to build $name (looked in PATH and /usr/local/go/bin)"
  log "ferretdb: building $name with Go (once)"
  local buildlog="$LOG_DIR/ferretdb-build.log"
  mkdir -p "$(dirname "$bin")"
  ("$step") >>"$buildlog" 2>&1 || fail ferretdb "$buildlog" "go build of $name failed"
  echo "$want" >"$stamp"
}

# The readiness probe: devstack/ferretdb/mongoping (official MongoDB Go driver).
build_mongoping() {
  cd "$FERRETDB_MOD" || return
  go build -buildvcs=false -o "$MONGOPING_BIN" ./mongoping
}

# FerretDB itself, at the version pinned in devstack/ferretdb/go.mod (checked against go.sum).
build_ferretdb() {
  local src version out="$CACHE_DIR/ferretdb/src"
  cd "$FERRETDB_MOD" || return
  go mod download github.com/FerretDB/FerretDB || return
  src="$(go list -m -f '{{.Dir}}' github.com/FerretDB/FerretDB)" || return
  version="$(go list -m -f '{{.Version}}' github.com/FerretDB/FerretDB)" || return
  # FerretDB's main panics unless build/version/version.txt (generated by its
  # release tooling, absent from the module) holds the version, and Go refuses
  # to overlay files inside the module cache. So build from a writable copy.
  rm -rf "$out" && cp -R "$src" "$out" && chmod -R u+w "$out" || return
  echo "$version" >"$out/build/version/version.txt" || return
  cd "$out" || return
  go build -buildvcs=false -o "$FERRETDB_BIN" ./cmd/ferretdb
}

ferretdb_up() {
  local logfile="$LOG_DIR/ferretdb.log"
  go_build mongoping "$MONGOPING_BIN" build_mongoping \
    "$FERRETDB_MOD/go.mod" "$FERRETDB_MOD/go.sum" "$FERRETDB_MOD"/mongoping/*.go
  local running
  running="$(cat "$RUN_DIR/ferretdb.backend" 2>/dev/null || echo sqlite)"
  if our_pid ferretdb >/dev/null && [[ "$running" != "$FERRETDB_BACKEND" ]]; then
    log "ferretdb: ours runs on $running, $FERRETDB_BACKEND wanted: restarting it"
    stop_service ferretdb "$(stop_grace ferretdb)"
  fi
  [[ "$FERRETDB_BACKEND" != postgresql ]] || postgres_up
  if ferretdb_ready; then
    log "ferretdb: reusing server on 127.0.0.1:$MONGO_PORT"
    return 0
  fi
  go_build ferretdb "$FERRETDB_BIN" build_ferretdb "$FERRETDB_MOD/go.mod" "$FERRETDB_MOD/go.sum"
  free_ports ferretdb "$MONGO_PORT"
  mkdir -p "$DATA_DIR/ferretdb-state"

  local backend
  case $FERRETDB_BACKEND in
  postgresql)
    backend=(--handler=postgresql
      --postgresql-url="postgres://$POSTGRES_USER:$POSTGRES_PASSWORD@127.0.0.1:$POSTGRES_PORT/$POSTGRES_DATABASE")
    ;;
  sqlite)
    mkdir -p "$DATA_DIR/ferretdb"
    backend=(--handler=sqlite --sqlite-url="file:$DATA_DIR/ferretdb/")
    ;;
  esac
  log "ferretdb: starting on 127.0.0.1:$MONGO_PORT ($FERRETDB_BACKEND backend)"
  local pid
  pid="$(DO_NOT_TRACK=1 spawn ferretdb "$logfile" "$FERRETDB_BIN" "${backend[@]}" \
    --state-dir="$DATA_DIR/ferretdb-state" \
    --listen-addr="127.0.0.1:$MONGO_PORT" --debug-addr="$FERRETDB_DEBUG_ADDR" \
    --telemetry=disable --log-level=warn)"
  echo "$FERRETDB_BACKEND" >"$RUN_DIR/ferretdb.backend"
  wait_for ferretdb 60 "$pid" ferretdb_ready || fail ferretdb "$logfile" "MongoDB ping failed"
  log "ferretdb: ready (pid $pid)"
}

# ---------------------------------------------------------------- commands

service_ready() { "${1}_ready"; }

stop_grace() {
  case $1 in
  mariadb | kafka | postgres) echo 60 ;;
  *) echo 15 ;;
  esac
}

# PostgreSQL's TERM waits for every client to leave; INT is its fast shutdown.
stop_signal() {
  case $1 in
  postgres) echo INT ;;
  *) echo TERM ;;
  esac
}

# with_backend CMD SERVICE...: the list with `postgres` put before `ferretdb` when
# FerretDB runs on PostgreSQL, and always for down (a cluster left from an earlier
# run on PostgreSQL stops too). up walks the list forwards, down backwards.
with_backend() {
  local cmd=$1 s
  shift
  for s in "$@"; do
    if [[ "$s" == ferretdb && " $* " != *" postgres "* ]] &&
      [[ "$FERRETDB_BACKEND" == postgresql || "$cmd" == down ]]; then
      echo postgres
    fi
    echo "$s"
  done
}

cmd_up() {
  local s start
  for s in "$@"; do
    start=$(now)
    "${s}_up"
    log "$s: took $(($(now) - start))s"
  done
}

cmd_down() {
  local i
  # Reverse order of start.
  for ((i = $# ; i >= 1; i--)); do
    stop_service "${!i}" "$(stop_grace "${!i}")"
  done
}

cmd_status() {
  local s pid owner rc=0
  for s in "$@"; do
    if pid="$(our_pid "$s")"; then owner="pid $pid, started by devstack"; else owner="not started by devstack"; fi
    if service_ready "$s" >/dev/null 2>&1; then
      printf '%-9s up    (%s)\n' "$s" "$owner"
    else
      printf '%-9s down  (%s)\n' "$s" "$owner"
      rc=3
    fi
  done
  return $rc
}

# Test tooling: promtool (Debian package prometheus), wrk, and Chromium for the
# browser test (tests/e2e), which launches /usr/bin/chromium by that path.
cmd_tools() {
  need_cmd promtool prometheus
  need_cmd wrk wrk
  [[ -x /usr/bin/chromium ]] || apt_install chromium
  log "tools: $(promtool --version 2>&1 | head -n 1); $(wrk --version 2>&1 | head -n 1)"
  # 2>/dev/null: Debian's launcher script may print a harmless /dev/shm warning.
  log "tools: $(/usr/bin/chromium --version 2>/dev/null | head -n 1)"
}

usage() {
  echo "usage: $0 up|down|status [${ALL_SERVICES[*]} postgres] | tools" >&2
  exit 2
}

main() {
  [[ $# -ge 1 ]] || usage
  local cmd=$1
  shift
  local services=("$@")
  [[ ${#services[@]} -gt 0 ]] || services=("${ALL_SERVICES[@]}")
  local s
  for s in "${services[@]}"; do
    [[ " ${ALL_SERVICES[*]} postgres " == *" $s "* ]] || { echo "unknown service: $s" >&2; usage; }
  done
  [[ "$FERRETDB_BACKEND" == postgresql || "$FERRETDB_BACKEND" == sqlite ]] ||
    { echo "FERRETDB_BACKEND must be postgresql or sqlite, not '$FERRETDB_BACKEND'" >&2; exit 2; }
  mapfile -t services < <(with_backend "$cmd" "${services[@]}")
  mkdir -p "$DATA_DIR" "$LOG_DIR" "$RUN_DIR" "$CACHE_DIR"
  case $cmd in
  up) ensure_secrets && cmd_up "${services[@]}" ;;
  down) cmd_down "${services[@]}" ;;
  status) cmd_status "${services[@]}" ;;
  tools) cmd_tools ;;
  *) usage ;;
  esac
}

main "$@"
