# shellcheck shell=bash
# Kafka, the service's event bus: Apache Kafka's jars from Maven (kafka/pom.xml), KRaft
# nodes that are each broker and controller. The everyday stack runs one (topic
# singleton-events with 3 partitions, created here); the cluster stack three (kafka-1 ...
# kafka-3: one cluster, every topic replicated on all three, at least two in sync for a
# write), whose topic services/kafka-cluster.sh creates once they are all up.

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
# The everyday stack's broker also has an SSL listener (lib/tls.sh's certificates; clients
# must present one of the stack's CA), on a port of its own.
KAFKA_SSL_PORT="${KAFKA_SSL_PORT:-$((KAFKA_PORT + 1000))}"
KAFKA_TOPIC=singleton-events
KAFKA_LIBS="$CACHE_DIR/kafka-libs"
# A JVM with Kafka's jars (its kafka.logs.dir to add), and the flags of the short-lived CLI
# tools' (quick start-up).
KAFKA_JAVA=(java -Dlog4j2.configurationFile="$DEVSTACK_SRC/kafka/log4j2.properties" -cp "$KAFKA_LIBS/*")
KAFKA_CLI_JVM=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1)
# Class data sharing: a JVM of Kafka maps the classes an earlier one of its kind (a broker,
# or a CLI tool) loaded, archived once, instead of loading and verifying them again. Here a
# broker then started on 4-5 s of CPU instead of 6-7, a CLI tool on half of its 1.2 s, which
# counts when three brokers start side by side on two cores. Until there is an archive, the
# brokers write one each as they exit (the last of a cluster, killed, does not), and one CLI
# tool at a time does (writing it costs a few seconds at exit); the JVM checks it before
# devstack keeps one in the cache (per jar set and JVM build). A JVM with none starts as
# before.
KAFKA_CDS_DIR="$CACHE_DIR/kafka-cds"
if [[ $DEVSTACK_STACK == cluster ]]; then
  KAFKA_TOPIC_PARTITIONS=12
  KAFKA_REPLICATION=3 # every partition on the three brokers ...
  KAFKA_MIN_ISR=2     # ... and a write (acks=all) on two of them at least
else
  KAFKA_TOPIC_PARTITIONS=3
  KAFKA_REPLICATION=1
  KAFKA_MIN_ISR=1
fi

kafka_packages() { echo java:openjdk-17-jre-headless mvn:maven; }

# A broker stops in a controlled way: the controllers first move the leadership of its
# partitions to the other brokers. When a whole cluster stops, the last broker cannot: no
# quorum of controllers is left to approve it, and it would wait 5 minutes for one. One
# that still takes clients once the others have stopped is killed 5 s later (its logs
# recover in a moment at the next start); one past that point (writing its class archive
# as it exits) gets its time.
kafka_stop() { stop_service "$INSTANCE" 60 TERM kafka_waits_for_quorum; }

# kafka_waits_for_quorum: this broker still takes clients, and the stack's other brokers
# (it has some) have all stopped.
kafka_waits_for_quorum() {
  local n others=0
  port_open "$HOST" "$KAFKA_PORT" || return 1
  for n in $(kafka_nodes); do
    [[ "$n" != "$INSTANCE" ]] || continue
    others=$((others + 1))
    ! our_pid "$n" >/dev/null || return 1
    ! port_open "$(address_of "$n")" "$KAFKA_CONTROLLER_PORT" || return 1
  done
  ((others > 0))
}

# The broker's jars (and the CLI tools'), fetched with Maven once: refetched only when
# devstack/kafka/pom.xml changes. Needs Java and Maven, from apt.
kafka_prepare() {
  job_wait apt || fail kafka /dev/null "the Debian packages could not be installed (see above)"
  maven_fetch kafka "$DEVSTACK_SRC/kafka/pom.xml" "$KAFKA_LIBS" "$LOG_DIR/kafka-fetch.log"
}

# kafka_cds_archive KIND: the archive of KIND (broker or cli) for these jars and this JVM.
kafka_cds_archive() {
  local jvm key
  jvm="$(readlink -f "$(command -v java)")" || true
  key="$({
    cat "$KAFKA_LIBS/.pom.sha256"
    echo "$jvm"
    stat -c '%s %Y' "$jvm" "${jvm%/bin/java}"/lib/server/libjvm.so
  } 2>/dev/null | sha256sum | cut -c1-16)" || true
  echo "$KAFKA_CDS_DIR/$1-$key.jsa"
}

# kafka_cds_flags KIND [DUMP]: the flags of a JVM of KIND, one a line: map its archive; if
# there is none, write one to DUMP as the JVM exits (nothing if no DUMP). Quietly: the JVM
# would warn on stdout of every class it cannot archive.
kafka_cds_flags() {
  local archive
  archive="$(kafka_cds_archive "$1")"
  if [[ -s "$archive" ]]; then
    printf '%s\n' "-XX:SharedArchiveFile=$archive" -Xlog:cds=off -Xlog:cds+dynamic=off
  elif [[ -n "${2:-}" ]]; then
    printf '%s\n' "-XX:ArchiveClassesAtExit=$2" -Xlog:cds=off -Xlog:cds+dynamic=off
  fi
}

# kafka_cds_keep KIND DUMP: keep the archive a JVM of KIND wrote to DUMP as KIND's, if there
# is none yet and a JVM maps it (one killed while writing it leaves a broken file, which a
# JVM could crash on); then remove DUMP. A kept archive is never written again (a copy
# renamed into place): a JVM that maps a file being rewritten crashes.
kafka_cds_keep() {
  local archive tmp
  archive="$(kafka_cds_archive "$1")"
  tmp="$archive.$BASHPID.tmp"
  if [[ -s "$2" && ! -e "$archive" ]] &&
    (cd "$KAFKA_CDS_DIR" && java -Xshare:on -XX:SharedArchiveFile="$2" -XX:ErrorFile=/dev/null \
      -cp "$KAFKA_LIBS/*" -version) >/dev/null 2>&1; then
    { cp "$2" "$tmp" && mv "$tmp" "$archive"; } || true
  fi
  rm -f "$2" "$tmp"
}

# kafka_cli SECONDS CLASS ARGS...: one of Kafka's CLI tools, with a deadline, logging into
# logs/INSTANCE/tools (never into a broker's log file).
kafka_cli() {
  local seconds=$1 lock dump="" cds rc=0
  shift
  mkdir -p "$KAFKA_CDS_DIR"
  exec {lock}>"$KAFKA_CDS_DIR/cli.lock"
  if flock -n "$lock"; then dump="$(mktemp -u "$KAFKA_CDS_DIR/cli.XXXXXX.dump")"; fi
  mapfile -t cds < <(kafka_cds_flags cli "$dump")
  timeout "$seconds" "${KAFKA_JAVA[@]}" -Dkafka.logs.dir="$LOG_DIR/$INSTANCE/tools" "${KAFKA_CLI_JVM[@]}" \
    -XX:ErrorFile="$LOG_DIR/$INSTANCE/tools/hs_err_pid%p.log" "${cds[@]}" "$@" || rc=$?
  [[ -z "$dump" ]] || kafka_cds_keep cli "$dump"
  exec {lock}>&-
  return "$rc"
}

# The stack's brokers: their names, and HOST:PORT each for clients.
kafka_nodes() { servers_of kafka; }
kafka_bootstrap() {
  local n
  for n in $(kafka_nodes); do echo "$(address_of "$n"):$KAFKA_PORT"; done | paste -sd ,
}

# kafka_topics ARGS...: org.apache.kafka.tools.TopicCommand (kafka-topics.sh) against the brokers.
kafka_topics() {
  kafka_cli 30 org.apache.kafka.tools.TopicCommand --bootstrap-server "$(kafka_bootstrap)" "$@"
}

# The topic as the stack wants it: its partitions, each on KAFKA_REPLICATION brokers and
# all of them in sync, and (replicated) its min.insync.replicas.
kafka_topic_ready() {
  local want_config=""
  ((KAFKA_REPLICATION == 1)) || want_config="min.insync.replicas=$KAFKA_MIN_ISR"
  kafka_topics --describe --topic "$KAFKA_TOPIC" 2>/dev/null | awk -v partitions="$KAFKA_TOPIC_PARTITIONS" \
    -v replication="$KAFKA_REPLICATION" -v config="$want_config" '
    $0 ~ "PartitionCount: " partitions "\t" && $0 ~ "ReplicationFactor: " replication "\t" &&
      (config == "" || $0 ~ "Configs: (.*,)?" config "(,|$)") { described = 1 }
    /Partition: [0-9]/ && match($0, /Isr: [0-9,]+/) {
      if (split(substr($0, RSTART + 5, RLENGTH - 5), isr, ",") == replication) in_sync++
    }
    END { exit !(described && in_sync == partitions) }'
}

# kafka_topic_up PID LOGFILE: create the topic (if missing) and wait until it is as the
# stack wants it; PID, if given, the broker that must stay up meanwhile; LOGFILE the log
# to show if it fails.
kafka_topic_up() {
  local pid=$1 logfile=$2 deadline=$(($(now) + 120)) config=()
  ((KAFKA_REPLICATION == 1)) || config=(--config "min.insync.replicas=$KAFKA_MIN_ISR")
  wait_for "$INSTANCE" 120 "$pid" kafka_topics --create --if-not-exists --topic "$KAFKA_TOPIC" \
    --partitions "$KAFKA_TOPIC_PARTITIONS" --replication-factor "$KAFKA_REPLICATION" "${config[@]}" ||
    fail "$INSTANCE" "$logfile" "could not create topic $KAFKA_TOPIC"
  wait_for "$INSTANCE" $((deadline - $(now))) "$pid" kafka_topic_ready ||
    fail "$INSTANCE" "$logfile" "topic $KAFKA_TOPIC not described with $KAFKA_TOPIC_PARTITIONS partitions, each on $KAFKA_REPLICATION brokers in sync"
}

# A lone node is ready with its topic; a node of the cluster stack once it takes clients
# (its listener opens once it has caught up with the cluster's metadata, which needs a
# quorum of controllers).
kafka_ready() {
  port_open "$HOST" "$KAFKA_PORT" || return 1
  ! tls_enabled || port_open "$HOST" "$KAFKA_SSL_PORT" || return 1
  [[ $DEVSTACK_STACK == cluster ]] || kafka_topic_ready
}

# The node's id: its place among the stack's brokers, from 1.
kafka_node_id() {
  local n id=0
  for n in $(kafka_nodes); do
    id=$((id + 1))
    [[ "$n" != "$INSTANCE" ]] || echo "$id"
  done
}

# kafka_controllers [WITH-DIRECTORY-IDS]: the controllers, HOST:PORT each (the quorum's
# bootstrap servers), or ID@HOST:PORT:DIRECTORY-ID each (--initial-controllers).
kafka_controllers() {
  local n id=0 dirs=() out=()
  [[ -z "${1:-}" ]] || read -r -a dirs <<<"$(kafka_quorum_ids | cut -d' ' -f2-)"
  for n in $(kafka_nodes); do
    id=$((id + 1))
    if [[ -n "${1:-}" ]]; then
      out+=("$id@$(address_of "$n"):$KAFKA_CONTROLLER_PORT:${dirs[id - 1]}")
    else
      out+=("$(address_of "$n"):$KAFKA_CONTROLLER_PORT")
    fi
  done
  (
    IFS=,
    echo "${out[*]}"
  )
}

kafka_write_config() {
  local dir=$1 auto_create=false ssl_listener="" ssl_protocol=""
  [[ $DEVSTACK_STACK == cluster ]] || auto_create=true
  if tls_enabled; then
    ssl_listener=",SSL://$HOST:$KAFKA_SSL_PORT"
    ssl_protocol=",SSL:SSL"
  fi
  mkdir -p "$dir/logs"
  (umask 077 && kafka_properties "$dir" "$auto_create" "$ssl_listener" "$ssl_protocol" >"$dir/server.properties")
}

# kafka_properties DIR AUTO-CREATE SSL-LISTENER SSL-PROTOCOL: the broker's server.properties
# (mode 0600: with TLS it holds the keystore's password).
kafka_properties() {
  local dir=$1 auto_create=$2 ssl_listener=$3 ssl_protocol=$4
  cat <<CONF
# Generated by devstack/services/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=$(kafka_node_id)
controller.quorum.bootstrap.servers=$(kafka_controllers)
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT$ssl_listener
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT$ssl_listener
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT$ssl_protocol
log.dirs=$dir/logs
num.partitions=$KAFKA_TOPIC_PARTITIONS
auto.create.topics.enable=$auto_create
default.replication.factor=$KAFKA_REPLICATION
min.insync.replicas=$KAFKA_MIN_ISR
offsets.topic.replication.factor=$KAFKA_REPLICATION
transaction.state.log.replication.factor=$KAFKA_REPLICATION
transaction.state.log.min.isr=$KAFKA_MIN_ISR
share.coordinator.state.topic.replication.factor=$KAFKA_REPLICATION
share.coordinator.state.topic.min.isr=$KAFKA_MIN_ISR
group.initial.rebalance.delay.ms=0
CONF
  [[ -n "$ssl_listener" ]] || return 0
  cat <<CONF
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_KAFKA_KEYSTORE
ssl.keystore.password=$(cat "$TLS_KAFKA_PASSWORD_FILE")
ssl.key.password=$(cat "$TLS_KAFKA_PASSWORD_FILE")
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_CA
ssl.client.auth=required
ssl.enabled.protocols=TLSv1.2,TLSv1.3
CONF
}

# kafka_config_stale DIR: the broker in DIR was started without the SSL listener this stack
# now has (by an older devstack): restarted rather than waited for.
kafka_config_stale() {
  tls_enabled && ! grep -q '^listeners=.*SSL://' "$1/server.properties" 2>/dev/null
}

# A Kafka id as kafka-storage random-uuid makes one (16 random bytes, URL-safe base64
# without padding, not starting with "-"), without starting a JVM for it.
kafka_random_id() {
  local id=-
  while [[ "$id" == -* ]]; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)"
  done
  echo "$id"
}

# kafka_quorum_ids: the cluster id and each controller's metadata directory id, on one
# line: made once (under a lock: the brokers start side by side) and kept in
# data/kafka-quorum, so that every node is formatted with the same ones.
kafka_quorum_ids() {
  local file="$DATA_DIR/kafka-quorum"
  [[ -s "$file" ]] || with_lock "$file.lock" kafka_quorum_ids_make "$file"
  cat "$file"
}

kafka_quorum_ids_make() {
  local file=$1 ids _
  [[ -s "$file" ]] && return 0
  ids="$(kafka_random_id)"
  for _ in $(kafka_nodes); do ids+=" $(kafka_random_id)"; done
  echo "$ids" >"$file.tmp" && mv "$file.tmp" "$file"
}

# Format the node's log directory: a lone node as its own quorum (--standalone); a node of
# the cluster with the same cluster id and --initial-controllers as the others
# (PITFALLS.md: with controller.quorum.bootstrap.servers, the same on every node).
kafka_format() {
  local dir=$1 stdout=$2 quorum=()
  if [[ $DEVSTACK_STACK == cluster ]]; then
    quorum=(-t "$(kafka_quorum_ids | cut -d' ' -f1)" --initial-controllers "$(kafka_controllers with-directory-ids)")
  else
    quorum=(-t "$(kafka_random_id)" --standalone)
  fi
  log "$INSTANCE: formatting log dir (cluster id ${quorum[1]})"
  kafka_cli 120 kafka.tools.StorageTool format "${quorum[@]}" -c "$dir/server.properties" >>"$stdout" 2>&1 ||
    fail "$INSTANCE" "$stdout" "kafka-storage format failed"
}

kafka_up() {
  local dir="$DATA_DIR/$INSTANCE" logfile="$LOG_DIR/$INSTANCE/server.log" stdout="$LOG_DIR/$INSTANCE/stdout.log"
  mkdir -p "$LOG_DIR/$INSTANCE"
  if kafka_ready; then
    log "$INSTANCE: reusing broker on $HOST:$KAFKA_PORT"
    return 0
  fi
  local pid
  if pid="$(our_pid "$INSTANCE")" && ! kafka_config_stale "$dir"; then
    # Our broker, still starting or without the topic yet: wait for it below
    # rather than restarting it.
    log "$INSTANCE: broker pid $pid already running, waiting for it"
  else
    local ports=("$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT")
    ! tls_enabled || ports+=("$KAFKA_SSL_PORT")
    free_ports "$INSTANCE" "$HOST" "${ports[@]}"
    kafka_write_config "$dir"
    [[ -f "$dir/logs/meta.properties" ]] || kafka_format "$dir" "$stdout"
    # The archive of classes the broker that ran here last wrote as it exited, if any; this
    # one writes one if there is none yet.
    mkdir -p "$KAFKA_CDS_DIR"
    kafka_cds_keep broker "$dir/classes.jsa"
    local cds
    mapfile -t cds < <(kafka_cds_flags broker "$dir/classes.jsa")
    log "$INSTANCE: starting on $HOST:$KAFKA_PORT (controller $KAFKA_CONTROLLER_PORT${ports[2]:+, SSL ${ports[2]}})"
    pid="$(spawn "$INSTANCE" "$stdout" "${KAFKA_JAVA[@]}" -Dkafka.logs.dir="$LOG_DIR/$INSTANCE" \
      -XX:ErrorFile="$LOG_DIR/$INSTANCE/hs_err_pid%p.log" -Xmx512m -Xms512m "${cds[@]}" \
      kafka.Kafka "$dir/server.properties")"
  fi

  wait_for "$INSTANCE" 120 "$pid" port_open "$HOST" "$KAFKA_PORT" || fail "$INSTANCE" "$logfile" "broker port did not open"
  [[ $DEVSTACK_STACK == cluster ]] || kafka_topic_up "$pid" "$logfile"
  log "$INSTANCE: ready (pid $pid)"
}

# kafka_events ARGS...: the topic from its beginning with Kafka's console consumer, one
# event's JSON a line, until Ctrl-C; ARGS go to the consumer (e.g. --property print.key=true).
kafka_events() {
  port_open "$HOST" "$KAFKA_PORT" ||
    fail kafka /dev/null "no broker on $HOST:$KAFKA_PORT: start the stack first (make services or make services-cluster)"
  maven_fetch kafka "$DEVSTACK_SRC/kafka/pom.xml" "$KAFKA_LIBS" "$LOG_DIR/kafka-fetch.log" >&2
  local cds
  mapfile -t cds < <(kafka_cds_flags cli)
  exec "${KAFKA_JAVA[@]}" -Dkafka.logs.dir="$LOG_DIR/$INSTANCE/tools" "${KAFKA_CLI_JVM[@]}" "${cds[@]}" \
    org.apache.kafka.tools.consumer.ConsoleConsumer \
    --bootstrap-server "$(kafka_bootstrap)" --topic "$KAFKA_TOPIC" --from-beginning "$@"
}
