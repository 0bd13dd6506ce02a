# Load test with locust (loadtests/, see loadtests/README.md). Include from the top-level Makefile:
#   include loadtests/load.mk
# `make load` drives an already running service; start one first (`make run`).
#   make load LOAD_TIME=120 LOAD_USERS=100 LOAD_HOST=http://127.0.0.1:9090
VENV ?= .venv
LOAD_HOST ?= http://127.0.0.1:8080
LOAD_TIME ?= 60
LOAD_USERS ?= 50
LOAD_SPAWN_RATE ?= 10
LOAD_REPORTS ?= reports/load

.PHONY: load

load: install ## Locust, headless, against LOAD_HOST; HTML + CSV in reports/load; fails on any failure
	$(VENV)/bin/pip install --quiet -e '.[bench]'
	@mkdir -p $(LOAD_REPORTS)
	$(VENV)/bin/locust -f loadtests/locustfile.py --headless --host $(LOAD_HOST) \
		--users $(LOAD_USERS) --spawn-rate $(LOAD_SPAWN_RATE) --run-time $(LOAD_TIME)s --stop-timeout 10 \
		--html $(LOAD_REPORTS)/locust.html --csv $(LOAD_REPORTS)/locust --only-summary
