# Fault scenarios under steady writes (chaos/, see docs/RELIABILITY.md). Include from the
# top-level Makefile:   include chaos/chaos.mk
# `make chaos` starts a stack of its own (.devstack-chaos/, its own ports), the service on
# it, kills and restarts each dependency and the service, and writes the tables to
# docs/RELIABILITY.md; it exits non-zero if any scenario lost a payment. Not part of `make test`.
# CHAOS_SCENARIOS=kafka,rolling plays some scenarios only; CHAOS_PORT_BASE moves the ports,
# CHAOS_DEVSTACK_DIR the stack's state.
VENV ?= .venv
PY ?= $(VENV)/bin/python

.PHONY: chaos

chaos: install ## SIGKILL each dependency, SIGTERM the service, start it with each one down, roll it; account for every payment
	$(PY) -m chaos
