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

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slurm" $(PYTEST_ARGS)

test-cluster: $(STAMP)
	$(BIN)/python -m pytest -q -m slurm tests/cluster $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
