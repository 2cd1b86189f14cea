# Two commands on a fresh machine with python3 (>= 3.10) and pip:
#   make run    trains the default experiment (extra Hydra overrides: make run ARGS="weighting=ew trainer.epochs=1")
#   make test   runs the test suite
# and, as root on a Debian machine, the SLURM integration tests:
#   make test-cluster   starts a one-node SLURM cluster (tests/cluster/slurm_cluster.sh) and runs tests/cluster
# Both create (or reuse) the virtual environment .venv and install okd with its dependencies.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.okd-installed

.PHONY: run test test-cluster install clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python run.py $(ARGS)

# the suite in PYTEST_WORKERS processes (pytest-xdist; every test runs on one torch thread, so 2
# workers use both cores of the 2-core CI machine: 406 s instead of 681 s there); PYTEST_WORKERS=0: one process
PYTEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m "not slurm" $(PYTEST_ARGS)

test-cluster: $(STAMP)
	$(BIN)/python -m pytest -q -m slurm tests/cluster $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
