# Local backing services (MariaDB, Redis, Kafka, FerretDB on PostgreSQL) for development and tests.
# Include from the top-level Makefile:   include devstack/services.mk
# Pass SERVICES="redis kafka" to act on some of them only.
DEVSTACK_SERVICES_SH := $(dir $(lastword $(MAKEFILE_LIST)))services.sh
SERVICES ?=
# `make test` needs the test tools too: it sets DEVSTACK_WITH_TOOLS=1, and `services` then
# installs their Debian packages in the same apt-get as the servers' (`tools` finds them there).
DEVSTACK_WITH_TOOLS ?=

.PHONY: services services-stop services-status services-tools tools events
.PHONY: services-cluster services-cluster-stop services-cluster-status

services: ## Install if needed, start and wait for mariadb, redis, kafka, ferretdb (and its postgres)
	@DEVSTACK_WITH_TOOLS=$(DEVSTACK_WITH_TOOLS) bash $(DEVSTACK_SERVICES_SH) up $(SERVICES)

services-stop: ## Stop the services that devstack started
	@bash $(DEVSTACK_SERVICES_SH) down $(SERVICES)

services-status: ## Show which services answer their readiness check
	@bash $(DEVSTACK_SERVICES_SH) status $(SERVICES)

# The cluster stack (devstack/README.md): 2 MariaDB shards, Redis Cluster, 3 Kafka brokers,
# FerretDB on PostgreSQL, each server on its own address under CLUSTER_NET (default 127.0.0),
# state in .devstack-cluster/. SERVICES names some of its servers (e.g. redis-cluster).
services-cluster: ## Install if needed, start and wait for the cluster stack, beside the everyday one
	@bash $(DEVSTACK_SERVICES_SH) --cluster up $(SERVICES)

services-cluster-stop: ## Stop the cluster stack's servers that devstack started
	@bash $(DEVSTACK_SERVICES_SH) --cluster down $(SERVICES)

services-cluster-status: ## Show which of the cluster stack's servers answer their readiness check
	@bash $(DEVSTACK_SERVICES_SH) --cluster status $(SERVICES)

services-tools: ## Install promtool (prometheus), wrk and chromium if missing
	@bash $(DEVSTACK_SERVICES_SH) tools

tools: services-tools ## Same as services-tools (`make test` depends on it)

events: ## Print the events on Kafka's singleton-events topic from the beginning, then follow it (Ctrl-C ends)
	@bash $(DEVSTACK_SERVICES_SH) events $(EVENTS_ARGS)
