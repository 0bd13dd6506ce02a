# shellcheck shell=bash
# Redis, the service's cache and rate limiter: Debian's redis-server, no persistence. The
# everyday stack's is a lone server; in the cluster stack each server (redis-1 ...
# redis-6) is a node of Redis Cluster, which services/redis-cluster.sh joins.

REDIS_PORT="${REDIS_PORT:-6379}"
# How long a cluster node may not answer before the others fail it over: short, as
# PITFALLS.md advises locally (a failover takes at least this long).
REDIS_CLUSTER_NODE_TIMEOUT_MS=3000

redis_packages() { echo redis-cli:redis-tools redis-server:redis-server; }

redis_ready() {
  [[ "$(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

redis_up() {
  local logfile="$LOG_DIR/$INSTANCE.log" datadir="$DATA_DIR/$INSTANCE"
  if redis_ready; then
    log "$INSTANCE: reusing server on $HOST:$REDIS_PORT"
    return 0
  fi
  free_ports "$INSTANCE" "$HOST" "$REDIS_PORT"
  mkdir -p "$datadir"

  # A cluster node keeps the cluster's shape in nodes.conf (in its datadir), so that a
  # restarted cluster forms again. It announces its own address, and connects to the
  # others from it: every connection between addresses of 127/8 would otherwise come
  # from 127.0.0.1, and the nodes would take each other for that address. Protected mode
  # is off: it admits only 127.0.0.1 and ::1 without a password, so it refused every
  # replica's connection to its master (from the replica's own address), no replica ever
  # had the data, and none took over when a master died. The bind keeps the node on its
  # loopback address.
  local cluster=()
  if [[ $DEVSTACK_STACK == cluster ]]; then
    cluster=(--cluster-enabled yes --cluster-config-file nodes.conf
      --cluster-node-timeout "$REDIS_CLUSTER_NODE_TIMEOUT_MS"
      --cluster-announce-ip "$HOST" --bind-source-addr "$HOST" --protected-mode no)
  fi
  log "$INSTANCE: starting on $HOST:$REDIS_PORT"
  local pid
  # Runs in the foreground under spawn (same effect as --daemonize yes, but we
  # own the pid). No persistence: this is a throwaway cache for tests.
  pid="$(spawn "$INSTANCE" "$logfile" redis-server --port "$REDIS_PORT" --bind "$HOST" \
    --dir "$datadir" --daemonize no --save '' --appendonly no --logfile '' "${cluster[@]}")"
  wait_for "$INSTANCE" 60 "$pid" redis_ready || fail "$INSTANCE" "$logfile" "PING did not answer PONG"
  log "$INSTANCE: ready (pid $pid)"
}
