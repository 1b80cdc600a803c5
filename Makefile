# UrbanSense. Quick start on a fresh clone: `make demo`, then `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DURATION ?= 60
SENSORS ?= 200
PYTEST_ARGS ?=

.PHONY: demo test lint system-deps install clean models

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# Debian packages the tests start (Mosquitto, InfluxDB 1.x); installed only when missing.
system-deps:
	@bash .ci/system-deps

demo: install
	$(PY) -m streams demo --duration $(DURATION) --sensors $(SENSORS)

lint: install
	$(PY) -m ruff check streams connectors models alerting simulators tests benchmarks

# With no PYTEST_ARGS, two pytest processes at once: the integration tests (one at a time, as they
# must: each starts its own broker and workers) and, beside them, the CPU-bound unit tests, whose
# report follows. With PYTEST_ARGS (a subset, e.g. -m faults), one serial pytest run.
test: install system-deps
ifeq ($(strip $(PYTEST_ARGS)),)
	@rm -f .unit-tests.log; \
	CI=$${CI:-true} $(PY) -m pytest -q -m 'not integration' >.unit-tests.log 2>&1 & unit=$$!; \
	CI=$${CI:-true} $(PY) -m pytest -q -m integration; irc=$$?; \
	wait $$unit; urc=$$?; \
	echo "== unit tests (ran beside the integration tests) =="; cat .unit-tests.log; rm -f .unit-tests.log; \
	echo "integration rc=$$irc unit rc=$$urc"; test $$irc -eq 0 -a $$urc -eq 0
else
	CI=$${CI:-true} $(PY) -m pytest -q $(PYTEST_ARGS)
endif

# Retrain the shipped per-kind models (deterministic: fixed seeds, simulated data).
models: install
	$(PY) -c "from models.train import train, KINDS; [train(k, None) for k in KINDS]"

clean:
	rm -rf $(VENV) var .pytest_cache
