# edgewatch — two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.10 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TRAIN  := $(VENV)/.installed-train
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test bench lint typecheck unit venv system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# TensorFlow (edgewatch train) only for the test suite's training smoke test, not `make run`
$(TRAIN): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,train]'
	touch $(TRAIN)

venv: $(STAMP)

run: $(STAMP)  ## run the default air-quality flow on the built-in simulator
	$(BIN)/edgewatch run

bench: $(STAMP)  ## throughput of the air-quality flow vs the River + stateful_map baseline
	$(BIN)/edgewatch bench --events 200000 --sensors 100 --baseline

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

system-deps:  ## binaries the integration tests run for real (Debian packages)
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || { \
	  echo "installing mosquitto (Debian package) for the broker tests"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq mosquitto mosquitto-clients; }
	@{ command -v prometheus && command -v promtool && command -v docker-compose; } >/dev/null 2>&1 || { \
	  echo "installing prometheus (promtool) and docker-compose (Debian packages) for the deploy tests"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends prometheus docker-compose; }

unit: $(TRAIN) system-deps
	$(BIN)/python -m pytest -q

test: lint typecheck unit  ## lint, type check and the whole test suite

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
