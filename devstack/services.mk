# Local backing services (MariaDB, Redis, Kafka, FerretDB on PostgreSQL) for development and tests.
# Include from the top-level Makefile:   include devstack/services.mk
# Pass SERVICES="redis kafka" to act on some of them only.
DEVSTACK_SERVICES_SH := $(dir $(lastword $(MAKEFILE_LIST)))services.sh
SERVICES ?=

.PHONY: services services-stop services-status services-tools tools

services: ## Install if needed, start and wait for mariadb, redis, kafka, ferretdb (and its postgres)
	@bash $(DEVSTACK_SERVICES_SH) up $(SERVICES)

services-stop: ## Stop the services that devstack started
	@bash $(DEVSTACK_SERVICES_SH) down $(SERVICES)

services-status: ## Show which services answer their readiness check
	@bash $(DEVSTACK_SERVICES_SH) status $(SERVICES)

services-tools: ## Install promtool (prometheus), wrk and chromium if missing
	@bash $(DEVSTACK_SERVICES_SH) tools

tools: services-tools ## Same as services-tools (`make test` depends on it)
