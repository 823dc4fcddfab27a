# merchant-fl: `make run` runs the main job, `make test` the test suite; both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: install run test test-fast deploy-local bench bench-speed bench-privacy references sweep clean

# torch goes first and pinned: this takes the CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
# constraints.txt pins every other package to the versions the README's figures were measured with.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/merchant-fl $(ARGS)

# Two pytest workers (pytest-xdist), one test file each at a time (--dist loadfile: a file's module
# fixtures, such as the one deployment, run once). Most of the suite's time is spent waiting on
# processes to start, not computing, so two workers on 2 cores halve it (README, Tests).
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

# A real deployment on loopback: a TLS SuperLink with SuperNode auth, N SuperNodes (one merchant file
# each), flwr run; everything under .deploy/, every process stopped on exit. INSECURE=1: no TLS/auth.
N ?= 3
deploy-local: $(STAMP)
	$(PY) -m launch.deploy_local --nodes $(N) $(if $(INSECURE),--insecure) $(ARGS)

# Federated vs centralized vs local vs the simple references, 3 seeds, each mode at its best validation
# round of at most 20 (about 15 minutes on the default data). ARGS="data=table data.path=..." for yours.
bench: $(STAMP)
	$(PY) -m benchmarks.quality $(ARGS)

# The simple pooled references alone (mean, bias model, one-hot linear, MF) on any data: ARGS="data=table data.path=..."
references: $(STAMP)
	$(PY) -m benchmarks.references $(ARGS)

# Speed and memory as ratios measured in one run: federation vs local/centralized, aggregation vs training, models.
bench-speed: $(STAMP)
	$(PY) -m benchmarks.speed $(ARGS)

# Purchase/click AUC and rating RMSE against epsilon (privacy=dp at several noise multipliers), 3 seeds.
bench-privacy: $(STAMP)
	$(PY) -m benchmarks.privacy $(ARGS)

# Architectures x loss weightings, federated, on the default data; summary.md/.csv/.png in the sweep dir.
SWEEP ?= model=shared_bottom,mmoe,ple,esmm loss=equal,static,uncertainty,gradnorm,dwa,pcgrad
sweep: $(STAMP)
	$(VENV)/bin/merchant-fl -m $(SWEEP) $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache .deploy
