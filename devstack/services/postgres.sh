# shellcheck shell=bash
# PostgreSQL, where FerretDB keeps its data: Debian's postgresql (the newest
# /usr/lib/postgresql/*/bin), a cluster of its own on its address (HOST), run as the
# `postgres` user when we are root. Nothing run as that user reads a file of the checkout:
# SQL goes in on stdin.

POSTGRES_PORT="${POSTGRES_PORT:-5433}" # not 5432: never collide with a system cluster
POSTGRES_DATABASE=ferretdb
POSTGRES_USER=ferretdb
POSTGRES_PASSWORD=ferretdb

postgres_packages() { echo psql:postgresql-client '/usr/lib/postgresql/*/bin/postgres:postgresql'; }

# PostgreSQL's TERM waits for every client to leave; INT is its fast shutdown.
postgres_stop() { stop_service "$INSTANCE" 60 INT; }

# Debian's cluster tools live in /usr/lib/postgresql/<major>/bin, off PATH: take the newest.
pg_bin() {
  local dir
  dir="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  [[ -x "$dir/postgres" ]] || return 1
  echo "$dir"
}

# initdb and postgres refuse to run as root: as root, run them as the `postgres`
# user (which Debian's package creates); run by another user, they run as that user.
# From /, so that a working directory closed to that user is never in the way.
PG_OWNER=""
[[ "$(id -u)" != 0 ]] || PG_OWNER=postgres
as_pg() {
  if [[ -n "$PG_OWNER" ]]; then (cd / && runuser -u "$PG_OWNER" -- "$@"); else "$@"; fi
}

# The data directory and the socket directory, where the cluster's owner can reach
# them: under $DATA_DIR and $RUN_DIR, unless a parent of the checkout is closed to
# that user (e.g. a home directory of mode 700); then in /var/tmp, linked from
# $DATA_DIR/postgres so the README's "delete data/<service>" still holds.
pg_paths() {
  PG_DATA="$DATA_DIR/$INSTANCE"
  PG_SOCKET_DIR="$RUN_DIR/$INSTANCE"
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
  [[ "$(PGPASSWORD="$POSTGRES_PASSWORD" PGCONNECT_TIMEOUT=3 psql -X -h "$HOST" -p "$POSTGRES_PORT" \
    -U "$POSTGRES_USER" -d "$POSTGRES_DATABASE" -A -t -c 'SELECT 1' 2>/dev/null)" == 1 ]]
}

# pg_super ARGS...: psql as the superuser over the cluster's own socket (peer auth).
pg_super() {
  as_pg psql -X -h "$PG_SOCKET_DIR" -p "$POSTGRES_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"
}

postgres_up() {
  local logfile="$LOG_DIR/$INSTANCE.log" bin
  if postgres_ready; then
    log "$INSTANCE: reusing server on $HOST:$POSTGRES_PORT"
    return 0
  fi
  free_ports "$INSTANCE" "$HOST" "$POSTGRES_PORT"
  bin="$(pg_bin)" || fail "$INSTANCE" /dev/null "no PostgreSQL server in /usr/lib/postgresql/*/bin (Debian package postgresql)"
  pg_paths
  mkdir -p "$PG_SOCKET_DIR"
  [[ -z "$PG_OWNER" ]] || chown "$PG_OWNER:" "$PG_SOCKET_DIR"
  touch "$logfile"

  if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    log "$INSTANCE: initialising $PG_DATA"
    mkdir -p "$PG_DATA"
    [[ -z "$PG_OWNER" ]] || chown "$PG_OWNER:" "$PG_DATA"
    chmod 700 "$PG_DATA"
    # UTF8 with the C locale (what FerretDB needs); TCP clients need a password,
    # the socket admits only the OS user that owns the cluster.
    as_pg "$bin/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C \
      --auth-local=peer --auth-host=scram-sha-256 >>"$logfile" 2>&1 ||
      fail "$INSTANCE" "$logfile" "initdb failed"
  fi

  log "$INSTANCE: starting on $HOST:$POSTGRES_PORT"
  local pid owner=()
  # setpriv execs the server in place (runuser would stay as its parent and not pass
  # SIGINT on), so the recorded pid is the postmaster's and `down` can signal it.
  [[ -z "$PG_OWNER" ]] || owner=(setpriv --reuid="$PG_OWNER" --regid="$PG_OWNER" --init-groups --)
  pid="$(cd / && spawn "$INSTANCE" "$logfile" "${owner[@]}" "$bin/postgres" -D "$PG_DATA" \
    -h "$HOST" -p "$POSTGRES_PORT" -k "$PG_SOCKET_DIR")"
  wait_for "$INSTANCE" 60 "$pid" pg_super -A -t -c 'SELECT 1' || fail "$INSTANCE" "$logfile" "server did not come up"

  # Idempotent: FerretDB's role and its database, created before FerretDB first connects.
  pg_super >>"$logfile" 2>&1 <<SQL || fail "$INSTANCE" "$logfile" "creating role/database failed"
SELECT 'CREATE ROLE $POSTGRES_USER LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$POSTGRES_USER')\gexec
ALTER ROLE $POSTGRES_USER PASSWORD '$POSTGRES_PASSWORD';
SELECT 'CREATE DATABASE $POSTGRES_DATABASE OWNER $POSTGRES_USER' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$POSTGRES_DATABASE')\gexec
SQL
  # On stdin, read by this (root's) shell: the checkout may be closed to PG_OWNER.
  pg_super -d "$POSTGRES_DATABASE" -v dbname="$POSTGRES_DATABASE" \
    <"$DEVSTACK_SRC/postgres/ferretdb-id-index.sql" >>"$logfile" 2>&1 ||
    fail "$INSTANCE" "$logfile" "installing the _id index trigger failed"
  wait_for "$INSTANCE" 60 "$pid" postgres_ready || fail "$INSTANCE" "$logfile" "SELECT 1 as $POSTGRES_USER failed"
  log "$INSTANCE: ready (pid $pid)"
}
