# Benchmarks, included by the top-level Makefile; settings are BENCH_* variables (bench/README.md).
.PHONY: bench bench-report

bench: install services ## Every endpoint against a bare Tornado baseline and its floor, a profile, WebSocket fan-out
	$(VENV)/bin/pip install --quiet -e '.[bench]'
	@command -v wrk >/dev/null || bash devstack/services.sh tools
	$(PY) -m bench

bench-report: ## Rewrite docs/BENCHMARKS.md from docs/bench/results.json
	$(PY) -m bench.report
