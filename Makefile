# tinytrain — set-up, tests and demo. Every target installs what it needs and is idempotent.
SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tinytrain-installed
APT_PACKAGES := gcc libc6-dev gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm dataset-fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR := build/demo

.PHONY: all venv apt test lint typecheck pytest demo clean bench

all: test

# The virtual environment is (re)built when missing or older than pyproject.toml.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[tf,dev,ray]"
	@touch $(STAMP)

venv: $(STAMP)

# System packages: installed only when one is missing.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null; then \
	    echo "error: apt-get is not available; install these packages by hand:$$missing" >&2; exit 1; fi; \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy tinytrain

pytest: $(STAMP) apt
	$(VENV)/bin/pytest -q -p no:cacheprovider -n 2 --dist loadfile --durations=25 tests

test: apt $(STAMP) lint typecheck pytest

demo: apt $(STAMP)
	$(PY) -m tinytrain.demo --out $(DEMO_DIR)

bench: apt $(STAMP)
	$(PY) benchmarks/forward.py

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
