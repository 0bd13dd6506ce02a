# shellcheck shell=bash
# Redis Cluster: the cluster stack's Redis servers (services/redis.sh, cluster nodes there)
# joined by `redis-cli --cluster create ... --cluster-replicas 1`: 3 masters sharing the
# 16384 slots, each with 1 replica. No server of its own: `down` stops its nodes.

REDIS_CLUSTER_REPLICAS=1

redis_cluster_stop() { :; }

# The nodes, HOST:PORT each: the stack's Redis servers.
redis_cluster_nodes() {
  local n
  for n in $(servers_of redis); do echo "$(address_of "$n"):$REDIS_PORT"; done
}

# redis_node HOST:PORT ARGS...: redis-cli against one node, with a deadline.
redis_node() {
  local node=$1
  shift
  timeout 5 redis-cli -h "${node%:*}" -p "${node##*:}" "$@"
}

# redis_cluster_info HOST:PORT: the node's CLUSTER INFO on one line, FIELD=VALUE words
# between spaces (nothing if the node does not answer).
redis_cluster_info() {
  echo " $(redis_node "$1" cluster info 2>/dev/null | tr -d '\r' | tr ':\n' '= ')"
}

# redis_replication HOST:PORT: the node's INFO replication on one line, as above.
redis_replication() {
  echo " $(redis_node "$1" info replication 2>/dev/null | tr -d '\r' | tr ':\n' '= ')"
}

# Ready: every node sees the cluster ok, knows every other node and every slot served, and
# a replica has its link to its master up (it holds the master's data: a replica listed
# but refused by its master takes over nothing); and in the first node's view there are as
# many masters as the nodes allow, each serving slots with its replicas, and no node
# failing or disconnected.
redis_cluster_ready() {
  local nodes node info
  mapfile -t nodes < <(redis_cluster_nodes)
  for node in "${nodes[@]}"; do
    info="$(redis_cluster_info "$node")"
    [[ $info == *" cluster_state=ok "* && $info == *" cluster_known_nodes=${#nodes[@]} "* &&
      $info == *" cluster_slots_ok=16384 "* ]] || return 1
    info="$(redis_replication "$node")"
    [[ $info == *" role=master "* || $info == *" master_link_status=up "* ]] || return 1
  done
  redis_node "${nodes[0]}" cluster nodes 2>/dev/null | awk -v replicas="$REDIS_CLUSTER_REPLICAS" \
    -v masters="$((${#nodes[@]} / (REDIS_CLUSTER_REPLICAS + 1)))" '
    $3 ~ /fail|handshake|noaddr/ || $8 != "connected" { bad = 1 }
    $3 ~ /master/ && NF >= 9 { serving[$1] = 1 }
    $3 ~ /slave/ { replicas_of[$4]++ }
    END {
      for (id in serving) { n++; if (replicas_of[id] != replicas) bad = 1 }
      exit (bad || n != masters)
    }'
}

# Fresh nodes: each knows only itself and serves no slot (never joined, or reset).
redis_cluster_fresh() {
  local node info
  for node in $(redis_cluster_nodes); do
    info="$(redis_cluster_info "$node")"
    [[ $info == *" cluster_known_nodes=1 "* && $info == *" cluster_slots_assigned=0 "* ]] || return 1
  done
}

redis_cluster_create() {
  local logfile=$1 nodes
  mapfile -t nodes < <(redis_cluster_nodes)
  log "$INSTANCE: creating the cluster of ${nodes[*]}"
  timeout 60 redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$REDIS_CLUSTER_REPLICAS" \
    --cluster-yes >>"$logfile" 2>&1 || fail "$INSTANCE" "$logfile" "redis-cli --cluster create failed"
}

redis_cluster_up() {
  local logfile="$LOG_DIR/$INSTANCE.log" node
  if redis_cluster_ready; then
    log "$INSTANCE: reusing the cluster of $(redis_cluster_nodes | paste -sd ' ')"
    return 0
  fi
  if redis_cluster_fresh; then
    redis_cluster_create "$logfile"
  elif ! wait_for "$INSTANCE" 20 "" redis_cluster_ready; then
    # Nodes that were a cluster (their nodes.conf) form it again as they meet, within
    # a few node timeouts. If they do not (a node's datadir deleted, a create cut
    # short), start over: the nodes keep no data.
    log "$INSTANCE: the nodes did not form a cluster again: resetting them and creating it anew"
    for node in $(redis_cluster_nodes); do
      redis_node "$node" flushall >>"$logfile" 2>&1 || true # a replica refuses: reset empties it
      redis_node "$node" cluster reset hard >>"$logfile" 2>&1 || fail "$INSTANCE" "$logfile" "CLUSTER RESET on $node failed"
    done
    redis_cluster_create "$logfile"
  fi
  wait_for "$INSTANCE" 60 "" redis_cluster_ready || fail "$INSTANCE" "$logfile" "the cluster is not ok on every node"
  log "$INSTANCE: ready ($(redis_node "$(redis_cluster_nodes | head -n 1)" cluster nodes | grep -c master) masters)"
}
