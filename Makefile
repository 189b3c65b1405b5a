# Fresh-machine entry points: `make demo` runs the main job, `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup data clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) data

# Debian's Fashion-MNIST package; skipped silently where apt or root is missing.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "note: dataset-fashion-mnist could not be installed; the demo falls back to digits"; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test: setup lint
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/mwnet demo

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
