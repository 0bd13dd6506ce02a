# Benchmarks (bench/README.md), included by the top-level Makefile. `make bench` measures everything
# (about 10 minutes) and writes docs/BENCHMARKS.md and docs/bench/results.json; settings
# are BENCH_* variables, on the command line too: make bench BENCH_STAGES=http BENCH_DURATION_S=5
VENV ?= .venv
PY ?= $(VENV)/bin/python

.PHONY: bench bench-deps bench-report

bench-deps: install
	$(VENV)/bin/pip install --quiet -e '.[bench]'

bench: bench-deps services ## Every endpoint against a bare Tornado baseline and its floor, a profile, WebSocket fan-out
	@command -v wrk >/dev/null || bash devstack/services.sh tools
	$(PY) -m bench

bench-report: ## Rewrite docs/BENCHMARKS.md from docs/bench/results.json
	$(PY) -m bench.report

