# shellcheck shell=bash
# The cluster stack's topic, once its three brokers (services/kafka.sh) are up: created with
# the stack's partitions (12), replication factor (3) and min.insync.replicas (2); ready
# when described so, every partition with all three replicas in sync. No server of its
# own: `down` stops its brokers.

kafka_cluster_stop() { :; }

# Every broker listening (checked first: a CLI tool would wait for its deadline where
# none is), and the topic as the stack wants it.
kafka_cluster_ready() {
  local n
  for n in $(kafka_nodes); do
    port_open "$(address_of "$n")" "$KAFKA_PORT" || return 1
  done
  kafka_topic_ready
}

kafka_cluster_up() {
  mkdir -p "$LOG_DIR/$INSTANCE"
  if kafka_cluster_ready; then
    log "$INSTANCE: reusing topic $KAFKA_TOPIC on $(kafka_bootstrap)"
    return 0
  fi
  kafka_topic_up "" "$LOG_DIR/$INSTANCE/tools/server.log"
  log "$INSTANCE: ready (topic $KAFKA_TOPIC: $KAFKA_TOPIC_PARTITIONS partitions, each on $KAFKA_REPLICATION brokers, min.insync.replicas=$KAFKA_MIN_ISR)"
}
