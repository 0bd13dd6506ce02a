# shellcheck shell=bash
# Redis, the service's cache and rate limiter: Debian's redis-server, no persistence. The
# everyday stack's is a lone server; in the cluster stack each server (redis-1 ...
# redis-6) is a node of Redis Cluster, which services/redis-cluster.sh joins.

REDIS_PORT="${REDIS_PORT:-6379}"
# The everyday stack's Redis also serves TLS, on a port of its own (lib/tls.sh).
REDIS_TLS_PORT="${REDIS_TLS_PORT:-$((REDIS_PORT + 1000))}"
# How long a cluster node may not answer before the others fail it over: short, as
# PITFALLS.md advises locally (a failover takes at least this long).
REDIS_CLUSTER_NODE_TIMEOUT_MS=3000

redis_packages() { echo redis-cli:redis-tools redis-server:redis-server; }

redis_ready() {
  [[ "$(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]] || return 1
  tls_enabled || return 0
  [[ "$(timeout 3 redis-cli -h "$HOST" -p "$REDIS_TLS_PORT" --tls --cacert "$TLS_CA" --cert "$TLS_CLIENT_CERT" \
    --key "$TLS_CLIENT_KEY" ping 2>/dev/null)" == PONG ]]
}

redis_up() {
  local logfile="$LOG_DIR/$INSTANCE.log" datadir="$DATA_DIR/$INSTANCE"
  if redis_ready; then
    log "$INSTANCE: reusing server on $HOST:$REDIS_PORT"
    return 0
  fi
  # The everyday stack's: TLS too, on its own port, for clients with a certificate of its CA.
  local tls=() ports=("$REDIS_PORT") where="$HOST:$REDIS_PORT"
  if tls_enabled; then
    tls=(--tls-port "$REDIS_TLS_PORT" --tls-cert-file "$TLS_SERVER_CERT" --tls-key-file "$TLS_SERVER_KEY"
      --tls-ca-cert-file "$TLS_CA" --tls-auth-clients yes)
    ports+=("$REDIS_TLS_PORT")
    where+=", TLS on $REDIS_TLS_PORT"
  fi
  free_ports "$INSTANCE" "$HOST" "${ports[@]}"
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
  log "$INSTANCE: starting on $where"
  local pid
  # Runs in the foreground under spawn (same effect as --daemonize yes, but we
  # own the pid). No persistence: this is a throwaway cache for tests.
  pid="$(spawn "$INSTANCE" "$logfile" redis-server --port "$REDIS_PORT" --bind "$HOST" \
    --dir "$datadir" --daemonize no --save '' --appendonly no --logfile '' "${cluster[@]}" "${tls[@]}")"
  wait_for "$INSTANCE" 60 "$pid" redis_ready || fail "$INSTANCE" "$logfile" "PING did not answer PONG"
  log "$INSTANCE: ready (pid $pid)"
}
