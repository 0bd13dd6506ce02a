# Fault scenarios under steady writes (chaos/, see docs/RELIABILITY.md). Include from the
# top-level Makefile:   include chaos/chaos.mk
# `make chaos` plays two stages, each on a stack of its own with the service on it, and
# writes their tables to docs/RELIABILITY.md; it exits non-zero if any scenario lost or
# doubled a payment. Not part of `make test`.
# - the everyday stack (.devstack-chaos/, its own ports): kills and restarts each dependency
#   and the service, starts it with each one down, rolls it;
# - a copy of the cluster stack (.devstack-chaos-cluster/, on 127.0.5.x): a Redis master, a
#   Kafka broker and a MariaDB shard killed, a logical shard moved, all under load.
# `make chaos-cluster` plays the second stage alone. CHAOS_SCENARIOS=kafka,shard-move plays
# some scenarios only; CHAOS_PORT_BASE moves the everyday stack's ports, CHAOS_CLUSTER_NET
# the cluster copy's addresses; CHAOS_DEVSTACK_DIR and CHAOS_CLUSTER_DEVSTACK_DIR their state.
VENV ?= .venv
PY ?= $(VENV)/bin/python

.PHONY: chaos chaos-cluster

chaos: install ## SIGKILL each dependency (and a node of each cluster), move a shard, ...; account for every payment
	$(PY) -m chaos

chaos-cluster: install ## The cluster stage of `make chaos` alone: a Redis master, a Kafka broker, a shard, a shard move
	$(PY) -m chaos --stage cluster
