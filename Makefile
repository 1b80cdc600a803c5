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

test: install system-deps
	CI=$${CI:-true} $(PY) -m pytest -q $(PYTEST_ARGS)

# Retrain the shipped per-kind models (deterministic: fixed seeds, simulated data).
models: install
	$(PY) -c "from models.train import train, KINDS; [train(k, None) for k in KINDS]"

clean:
	rm -rf $(VENV) var .pytest_cache
