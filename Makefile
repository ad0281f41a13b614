# cvkit developer commands. `make test` and `make train` set everything up from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cvkit-installed
BENCHES := $(sort $(wildcard benchmarks/bench_*.py))

.PHONY: setup train test test-fast bench lint

setup: $(STAMP)

# Reinstall only when the dependency list changes; a second `make test` starts pytest at once.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing cvkit and its dependencies into $(VENV) (first time: ~2 min)"
	$(PY) -m pip install -qq --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

train: setup
	$(PY) scripts/train_detector.py --cfg configs/ssd.yaml

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	@for script in $(BENCHES); do echo "== $$script"; $(PY) $$script || exit 1; done

lint: setup
	$(VENV)/bin/ruff check .
