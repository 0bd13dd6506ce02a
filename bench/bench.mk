# Benchmarks (bench/README.md), included by the top-level Makefile. `make bench` measures everything
# (about 12-15 minutes) and writes docs/BENCHMARKS.md, docs/bench/results.json and the plots; settings
# are BENCH_* variables, on the command line too: make bench BENCH_STAGES=http BENCH_DURATION_S=5
VENV ?= .venv
PY ?= $(VENV)/bin/python

.PHONY: bench bench-deps bench-report bench-cluster

# The cluster stack (make services-cluster) with config.cluster.yaml, or SINGLETON_CLUSTER_CONFIG's file:
# the same stages, shorter (fewer users and sockets, 5 s runs, no most-sockets hold, 100,000 analytics
# payments: about 12 minutes), plus POST payments on 1 shard against 2; docs/BENCHMARKS-cluster.md.
BENCH_CLUSTER_ENV = BENCH_CONFIG=$(or $(SINGLETON_CLUSTER_CONFIG),config.cluster.yaml) BENCH_OUT=cluster \
	DEVSTACK_DIR=$(or $(DEVSTACK_DIR),$(CURDIR)/.devstack-cluster)
BENCH_CLUSTER_SHORT = BENCH_DURATION_S=$(or $(BENCH_DURATION_S),5) BENCH_USERS=$(or $(BENCH_USERS),2000) \
	BENCH_WS_SOCKETS=$(or $(BENCH_WS_SOCKETS),2000) BENCH_WS_SHARED_USERS=$(or $(BENCH_WS_SHARED_USERS),20) \
	BENCH_WS_STEP_S=$(or $(BENCH_WS_STEP_S),3) BENCH_WS_MOST=$(or $(BENCH_WS_MOST),0) \
	BENCH_ANALYTICS_PAYMENTS=$(or $(BENCH_ANALYTICS_PAYMENTS),100000)

bench-deps: install
	$(VENV)/bin/pip install --quiet -e '.[bench]'

bench: bench-deps services ## Every endpoint against a bare Tornado baseline and its floor, a profile, WebSocket fan-out, analytics
	@command -v wrk >/dev/null || bash devstack/services.sh tools
	$(PY) -m bench

bench-report: ## Rewrite docs/BENCHMARKS.md and the plots from docs/bench/results.json
	$(PY) -m bench.report

bench-cluster: bench-deps services-cluster ## make bench on the cluster stack, shorter, plus 1 shard against 2
	@command -v wrk >/dev/null || bash devstack/services.sh tools
	$(BENCH_CLUSTER_ENV) $(BENCH_CLUSTER_SHORT) $(PY) -m bench

