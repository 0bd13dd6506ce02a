# shellcheck shell=bash
# Redis, the service's cache and rate limiter: Debian's redis-server, no persistence.

REDIS_PORT="${REDIS_PORT:-6379}"

redis_packages() { echo redis-cli:redis-tools redis-server:redis-server; }

redis_ready() {
  [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

redis_up() {
  local logfile="$LOG_DIR/redis.log" datadir="$DATA_DIR/redis"
  if redis_ready; then
    log "redis: reusing server on 127.0.0.1:$REDIS_PORT"
    return 0
  fi
  free_ports redis "$REDIS_PORT"
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
