# Benchmarks (bench/, see bench/README.md). Include from the top-level Makefile:
#   include bench/bench.mk
# `make bench` runs everything end to end (about 12-15 minutes) and writes docs/BENCHMARKS.md,
# docs/bench/results.json and the plots. Settings: BENCH_* variables, e.g.
#   make bench BENCH_STAGES=http BENCH_DURATION_S=5   (command-line variables reach the environment)
VENV ?= .venv
PY ?= $(VENV)/bin/python

.PHONY: bench bench-deps bench-report

bench-deps: install
	$(VENV)/bin/pip install --quiet -e '.[bench]'

bench: bench-deps services ## Every endpoint against a bare Tornado baseline, WebSocket fan-out, the analytics store
	@command -v wrk >/dev/null || bash devstack/services.sh tools
	$(PY) -m bench

bench-report: ## Rewrite docs/BENCHMARKS.md and the plots from docs/bench/results.json
	$(PY) -m bench.report
