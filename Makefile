# natgw: `make demo` and `make test` are the two commands a newcomer runs.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint demo demo-down clean

setup:
	bash scripts/setup.sh

test: setup
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests scripts

demo: setup
	bash scripts/netns/demo.sh

bench: setup
	$(PY) -m natgw.bench --json bench-results/latest.json --markdown BENCHMARKS.md
	$(PY) -m bench.pipes --json bench-results/pipes.json --markdown BENCHMARKS.md

demo-down:
	bash scripts/netns/down.sh

clean:
	rm -rf $(VENV) src/*.egg-info
