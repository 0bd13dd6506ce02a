# shellcheck shell=bash
# MariaDB, the service's transactional store: Debian's mariadb-server, a datadir of its
# own, database singleton_db and two users, each with a generated password: singleton, the
# service's (no DDL; its table privileges come from the role singleton_app, which the
# migrations grant), and singleton_migrate, which owns the schema (the migrations, the
# shard moves). Each server (INSTANCE: mariadb, or the cluster stack's shards mariadb-a and
# mariadb-b) is its own mariadbd on its own address (HOST), with its own datadir, socket and log.

MYSQL_PORT="${MYSQL_PORT:-3306}"
MYSQL_DATABASE=singleton_db
MYSQL_USER=singleton
MYSQL_PASSWORD_FILE="$SECRETS_DIR/mysql.password"
MYSQL_MIGRATE_USER=singleton_migrate
MYSQL_MIGRATE_PASSWORD_FILE="$SECRETS_DIR/mysql-migrate.password"
MYSQL_ROLE=singleton_app # the migrations grant it its table privileges (migrations/0004_audit.sql)

mariadb_packages() { echo mariadb:mariadb-client mariadbd:mariadb-server; }

mariadb_stop() { stop_service "$INSTANCE" 60; }

# The server's Unix socket and pid file: run/mysqld.sock and run/mariadbd.pid for the
# everyday stack's mariadb, run/mysqld-a.sock ... for the shards.
mariadb_socket() { echo "$RUN_DIR/${INSTANCE/#mariadb/mysqld}.sock"; }

# Both users log in: the migration user on the database, the service's user on the
# server (it can reach the database only once the migrations have granted its role).
mariadb_ready() {
  [[ "$(MYSQL_PWD="$(cat "$MYSQL_MIGRATE_PASSWORD_FILE")" mariadb --no-defaults --protocol=TCP -h "$HOST" \
    -P "$MYSQL_PORT" --connect-timeout=3 -u "$MYSQL_MIGRATE_USER" -N -B -e 'SELECT 1' "$MYSQL_DATABASE" 2>/dev/null)" == 1 ]] &&
    [[ "$(MYSQL_PWD="$(cat "$MYSQL_PASSWORD_FILE")" mariadb --no-defaults --protocol=TCP -h "$HOST" \
      -P "$MYSQL_PORT" --connect-timeout=3 -u "$MYSQL_USER" -N -B -e 'SELECT 1' 2>/dev/null)" == 1 ]] &&
    mariadb_tls_ready
}

mariadb_root() {
  mariadb --no-defaults --protocol=SOCKET -S "$(mariadb_socket)" -u root "$@"
}

# The database, the role, and the two users with the passwords from the secrets files.
# Idempotent: run on every start, and on a reused server of ours, so a changed secret
# takes effect (and a server set up before the two users existed loses the service
# user's old ALL PRIVILEGES). singleton\_test% lets the test suite create its own
# databases, as the migration user; the service's user gets the role's grants there too.
mariadb_setup() {
  local password migrate_password
  password="$(cat "$MYSQL_PASSWORD_FILE")"
  migrate_password="$(cat "$MYSQL_MIGRATE_PASSWORD_FILE")"
  mariadb_root <<SQL
CREATE DATABASE IF NOT EXISTS \`$MYSQL_DATABASE\`;
CREATE ROLE IF NOT EXISTS $MYSQL_ROLE;
CREATE USER IF NOT EXISTS '$MYSQL_USER'@'%' IDENTIFIED BY '$password';
CREATE USER IF NOT EXISTS '$MYSQL_USER'@'localhost' IDENTIFIED BY '$password';
ALTER USER '$MYSQL_USER'@'%' IDENTIFIED BY '$password';
ALTER USER '$MYSQL_USER'@'localhost' IDENTIFIED BY '$password';
REVOKE ALL PRIVILEGES, GRANT OPTION FROM '$MYSQL_USER'@'%', '$MYSQL_USER'@'localhost';
GRANT $MYSQL_ROLE TO '$MYSQL_USER'@'%', '$MYSQL_USER'@'localhost';
SET DEFAULT ROLE $MYSQL_ROLE FOR '$MYSQL_USER'@'%';
SET DEFAULT ROLE $MYSQL_ROLE FOR '$MYSQL_USER'@'localhost';
CREATE USER IF NOT EXISTS '$MYSQL_MIGRATE_USER'@'%' IDENTIFIED BY '$migrate_password';
CREATE USER IF NOT EXISTS '$MYSQL_MIGRATE_USER'@'localhost' IDENTIFIED BY '$migrate_password';
ALTER USER '$MYSQL_MIGRATE_USER'@'%' IDENTIFIED BY '$migrate_password';
ALTER USER '$MYSQL_MIGRATE_USER'@'localhost' IDENTIFIED BY '$migrate_password';
GRANT ALL PRIVILEGES ON \`$MYSQL_DATABASE\`.* TO '$MYSQL_MIGRATE_USER'@'%', '$MYSQL_MIGRATE_USER'@'localhost' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON \`singleton\\_test%\`.* TO '$MYSQL_MIGRATE_USER'@'%', '$MYSQL_MIGRATE_USER'@'localhost' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
}

mariadb_up() {
  local logfile="$LOG_DIR/$INSTANCE.log" datadir="$DATA_DIR/$INSTANCE" tmpdir="$RUN_DIR/$INSTANCE.tmp"
  if ! mariadb_ready && our_pid "$INSTANCE" >/dev/null && mariadb_root -e 'SELECT 1' >/dev/null 2>&1; then
    mariadb_setup >>"$logfile" 2>&1 || fail "$INSTANCE" "$logfile" "setting the user's password failed"
    mariadb_tls_setup >>"$logfile" 2>&1 || fail "$INSTANCE" "$logfile" "setting the TLS user's password failed"
  fi
  if mariadb_ready; then
    log "$INSTANCE: reusing server on $HOST:$MYSQL_PORT"
    return 0
  fi
  free_ports "$INSTANCE" "$HOST" "$MYSQL_PORT"

  # A temporary directory of its own: a starting mariadbd deletes every #sql file in its
  # tmpdir, and in a shared /tmp those were the tables of another server's initialisation
  # (seen as "Unknown table 'mysql.tmp_proxies_priv'" with stacks starting side by side).
  mkdir -p "$tmpdir"
  # An initialisation cut short leaves a datadir the server starts on but root cannot use:
  # its mark says to start it over.
  if [[ -f "$datadir/.initialising" ]]; then
    log "$INSTANCE: $datadir was not initialised completely: initialising it again"
    rm -rf "$datadir"
  fi
  if [[ ! -d "$datadir/mysql" ]]; then
    log "$INSTANCE: initialising $datadir"
    mkdir -p "$datadir"
    : >"$datadir/.initialising"
    mariadb-install-db --no-defaults --datadir="$datadir" --tmpdir="$tmpdir" --user="$(id -un)" \
      --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve \
      >>"$logfile" 2>&1 || fail "$INSTANCE" "$logfile" "mariadb-install-db failed"
    rm -f "$datadir/.initialising"
  fi

  log "$INSTANCE: starting on $HOST:$MYSQL_PORT"
  local pid tls
  mapfile -t tls < <(mariadb_tls_options)
  # server-id: its address's last number, so that the shards tell themselves apart
  # (@@server_id; 1, the default, on 127.0.0.1).
  pid="$(spawn "$INSTANCE" "$logfile" mariadbd --no-defaults --datadir="$datadir" --tmpdir="$tmpdir" \
    --socket="$(mariadb_socket)" --pid-file="$RUN_DIR/${INSTANCE/#mariadb/mariadbd}.pid" --port="$MYSQL_PORT" \
    --bind-address="$HOST" --server-id="${HOST##*.}" --user="$(id -un)" --skip-name-resolve \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci "${tls[@]}")"
  wait_for "$INSTANCE" 60 "$pid" mariadb_root -e 'SELECT 1' || fail "$INSTANCE" "$logfile" "server did not come up"

  mariadb_setup >>"$logfile" 2>&1 || fail "$INSTANCE" "$logfile" "creating database/user failed"
  mariadb_tls_setup >>"$logfile" 2>&1 || fail "$INSTANCE" "$logfile" "creating the TLS user failed"
  wait_for "$INSTANCE" 60 "$pid" mariadb_ready || fail "$INSTANCE" "$logfile" "SELECT 1 as $MYSQL_USER and $MYSQL_MIGRATE_USER failed"
  log "$INSTANCE: ready (pid $pid)"
}

# ---------------------------------------------------------------- TLS (the everyday stack)
# The everyday stack's server also takes TLS on its port (lib/tls.sh's certificate, TLS 1.2
# or newer), and has a second user for it: singleton_tls, with the same password and
# rights as singleton (the role the migrations grant), and REQUIRE X509, so the server
# refuses it any connection that is not TLS with a client certificate of the stack's CA.
# config.tls.yaml logs in as it.
MYSQL_TLS_USER=singleton_tls

# mariadb_tls_options: the server's TLS options, one a line (none on the cluster stack).
mariadb_tls_options() {
  tls_enabled || return 0
  printf '%s\n' --ssl-ca="$TLS_CA" --ssl-cert="$TLS_SERVER_CERT" --ssl-key="$TLS_SERVER_KEY" \
    --tls-version=TLSv1.2,TLSv1.3
}

mariadb_tls_setup() {
  tls_enabled || return 0
  local password
  password="$(cat "$MYSQL_PASSWORD_FILE")"
  mariadb_root <<SQL
CREATE USER IF NOT EXISTS '$MYSQL_TLS_USER'@'%' IDENTIFIED BY '$password' REQUIRE X509;
ALTER USER '$MYSQL_TLS_USER'@'%' IDENTIFIED BY '$password' REQUIRE X509;
REVOKE ALL PRIVILEGES, GRANT OPTION FROM '$MYSQL_TLS_USER'@'%';
GRANT $MYSQL_ROLE TO '$MYSQL_TLS_USER'@'%';
SET DEFAULT ROLE $MYSQL_ROLE FOR '$MYSQL_TLS_USER'@'%';
FLUSH PRIVILEGES;
SQL
}

# mariadb_tls_ready: the TLS user gets in, over TLS, the server's certificate verified.
mariadb_tls_ready() {
  tls_enabled || return 0
  [[ "$(MYSQL_PWD="$(cat "$MYSQL_PASSWORD_FILE")" mariadb --no-defaults --protocol=TCP -h "$HOST" -P "$MYSQL_PORT" \
    --connect-timeout=3 --ssl-ca="$TLS_CA" --ssl-cert="$TLS_CLIENT_CERT" --ssl-key="$TLS_CLIENT_KEY" \
    --ssl-verify-server-cert -u "$MYSQL_TLS_USER" -N -B -e 'SELECT 1' 2>/dev/null)" == 1 ]]
}
