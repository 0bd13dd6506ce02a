# shellcheck shell=bash
# MariaDB, the service's transactional store: Debian's mariadb-server, a datadir of its
# own, database singleton_db and user singleton (the generated password).

MYSQL_PORT="${MYSQL_PORT:-3306}"
MYSQL_DATABASE=singleton_db
MYSQL_USER=singleton
MYSQL_PASSWORD_FILE="$SECRETS_DIR/mysql.password"
MYSQL_SOCKET="$RUN_DIR/mysqld.sock"

mariadb_packages() { echo mariadb:mariadb-client mariadbd:mariadb-server; }

mariadb_stop() { stop_service mariadb 60; }

mariadb_ready() {
  [[ "$(MYSQL_PWD="$(cat "$MYSQL_PASSWORD_FILE")" mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P "$MYSQL_PORT" \
    -u "$MYSQL_USER" -N -B -e 'SELECT 1' "$MYSQL_DATABASE" 2>/dev/null)" == 1 ]]
}

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
  if ! mariadb_ready && our_pid mariadb >/dev/null && mariadb_root -e 'SELECT 1' >/dev/null 2>&1; then
    mariadb_setup >>"$logfile" 2>&1 || fail mariadb "$logfile" "setting the user's password failed"
  fi
  if mariadb_ready; then
    log "mariadb: reusing server on 127.0.0.1:$MYSQL_PORT"
    return 0
  fi
  free_ports mariadb "$MYSQL_PORT"

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
