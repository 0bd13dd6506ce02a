# The two commands a newcomer needs: `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-unit lint clean run-cluster test-cluster test-cluster-heavy

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $@

include devstack/services.mk
include bench/bench.mk
include loadtests/load.mk
include chaos/chaos.mk

# The virtualenv and the backing services need nothing of each other, so a cold start
# makes them side by side (pip's downloads overlap FerretDB's Go build); `make test`
# installs the test tools' Debian packages in the same apt-get as the servers'.
# The dev stack alone gets an admin key made on first start (config.yaml mints none).
run:
	@$(MAKE) --no-print-directory -j2 install services
	SINGLETON_AUTH__BOOTSTRAP_ADMIN_KEY_FILE=$(CURDIR)/.devstack/admin.key $(PY) -m service

test:
	@$(MAKE) --no-print-directory -j2 install services DEVSTACK_WITH_TOOLS=1
	@$(MAKE) --no-print-directory tools
	$(PY) -m pytest $(PYTEST_ARGS)

# The fast tier: every test that needs no backing service and no external tool, in
# seconds, with nothing but the virtualenv (tests/conftest.py says how tests are told apart).
test-unit: install
	$(PY) -m pytest --unit $(PYTEST_ARGS)

# The cluster stack (devstack/README.md: 2 MariaDB shards, Redis Cluster, 3 Kafka brokers,
# FerretDB), and the service on it, or the cluster suite (tests/cluster/, which `make test`
# never runs). SINGLETON_CLUSTER_CONFIG names another configuration than config.cluster.yaml,
# e.g. for a copy of the stack on other addresses (CLUSTER_NET).
CLUSTER_CONFIG := $(or $(SINGLETON_CLUSTER_CONFIG),config.cluster.yaml)

run-cluster:
	@$(MAKE) --no-print-directory -j2 install services-cluster
	SINGLETON_AUTH__BOOTSTRAP_ADMIN_KEY_FILE=$(CURDIR)/.devstack-cluster/admin.key $(PY) -m service --config $(CLUSTER_CONFIG)

test-cluster:
	@$(MAKE) --no-print-directory -j2 install services-cluster
	SINGLETON_CLUSTER_CONFIG=$(CLUSTER_CONFIG) $(PY) -m pytest --cluster -m "not heavy" tests/cluster $(PYTEST_ARGS)

# The cluster faults under sustained load (a Kafka broker killed at 200 payments/s): minutes,
# and timing-bound on a shared machine, so not part of test-cluster (nor of CI).
test-cluster-heavy:
	@$(MAKE) --no-print-directory -j2 install services-cluster
	SINGLETON_CLUSTER_CONFIG=$(CLUSTER_CONFIG) $(PY) -m pytest --cluster -m heavy tests/cluster $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	bash devstack/shellcheck.sh

clean:
	rm -rf $(VENV) logs reports .pytest_cache
