# Benchmarks (bench/, see bench/README.md). Include from the top-level Makefile:
#   include bench/bench.mk
# `make bench` runs everything end to end (about 5 minutes) and writes docs/BENCHMARKS.md,
# docs/bench/results.json and the plots. Settings: BENCH_* variables, e.g.
#   make bench BENCH_DURATION=5 BENCH_WS_CONNECTIONS=2000   (command-line variables reach the environment)
VENV ?= .venv
PY ?= $(VENV)/bin/python

.PHONY: bench bench-deps bench-report bench-analytics

bench-deps: install
	$(VENV)/bin/pip install --quiet -e '.[bench]'

bench: bench-deps ## Benchmark every endpoint against a bare Tornado baseline, plus WebSocket fan-out
	$(PY) -m bench

bench-analytics: install services ## The analytics store on this FerretDB backend (FERRETDB_BACKEND), 1,000,000 payments
	$(PY) -m bench.analytics

bench-report: ## Rewrite docs/BENCHMARKS.md and the plots from docs/bench/*.json
	$(PY) -m bench.report
