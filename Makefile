# natgw: `make demo` and `make test` are the two commands a newcomer runs.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint demo bench demo-down clean

setup:
	bash scripts/setup.sh

test: setup
	$(VENV)/bin/ruff check src lab bench tests scripts
	NATGW_BPF_BTF=0 $(VENV)/bin/pytest -q -n 2 --dist loadfile

lint: setup
	$(VENV)/bin/ruff check src lab bench tests scripts

demo: setup
	bash scripts/netns/demo.sh

bench: setup
	PYTHONPATH=$(CURDIR) $(PY) -m bench --json bench-results/latest.json --markdown BENCHMARKS.md
	PYTHONPATH=$(CURDIR) $(PY) -m bench.pipes --json bench-results/pipes.json --markdown BENCHMARKS.md

demo-down:
	bash scripts/netns/down.sh

clean:
	rm -rf $(VENV) src/*.egg-info

# The dataplane fuzz (BPF_PROG_TEST_RUN): every seed cut at every length, then
# FUZZ_CASES random mutations; prints the count, the rate and each failure as
# a replayable case. Not a test: pytest runs a bounded sample.
FUZZ_CASES ?= 100000
.PHONY: fuzz
fuzz: setup
	cd tests && $(CURDIR)/$(PY) fuzz_dataplane.py --cases $(FUZZ_CASES) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

# The soak (a benchmark, not a test): three gateways under traffic and constant
# faults for SOAK_MINUTES (10); figures in BENCHMARKS.md between the soak markers.
SOAK_MINUTES ?= 10
.PHONY: soak
soak: setup
	PYTHONPATH=$(CURDIR) $(PY) -m bench.soak --minutes $(SOAK_MINUTES)

# Failover of active/active replicas (a benchmark, not a test): replica 2a killed
# three ways under TCP and numbered UDP, FAILOVER_REPS trials each; figures in
# BENCHMARKS.md between the failover markers. `python -m bench.scaleout` measures
# 1, 2 and 4 replicas per cluster (its own markers).
FAILOVER_REPS ?= 3
.PHONY: failover scaleout
failover: setup
	PYTHONPATH=$(CURDIR) $(PY) -m bench.failover --reps $(FAILOVER_REPS) --markdown BENCHMARKS.md

scaleout: setup
	PYTHONPATH=$(CURDIR) $(PY) -m bench.scaleout --markdown BENCHMARKS.md
