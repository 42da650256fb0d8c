# fedxrec: the two quick-start commands are `make run` (main job) and `make test` (test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The data directory: $FEDXREC_DATA_DIR, else ../shared/data where it exists, else ./data (downloaded).
FEDXREC_DATA_DIR ?= $(if $(wildcard ../shared/data/ml-100k/u.data),$(abspath ../shared/data),$(abspath data))
export FEDXREC_DATA_DIR
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export RAY_USAGE_STATS_ENABLED=0

.PHONY: install run test central bench audit download lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch first (a looser spec would pull a multi-GB CUDA build)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: install  ## the main job: the default local federated simulation on ml-100k
	$(BIN)/fedxrec run

test: install  ## the test suite
	$(BIN)/python -m pytest -q

central: install  ## the centralised reference run and the baselines
	$(BIN)/fedxrec central

bench: install  ## all benchmarks at their documented settings; figures go to results/
	$(BIN)/fedxrec bench core
	$(BIN)/fedxrec bench core --runs central-k0,central-k1,central-k2 --threads 2
	$(BIN)/fedxrec bench fed
	$(BIN)/fedxrec bench fed --presets fed-k1-base,fed-k1
	$(BIN)/fedxrec bench kg --checkpoint results/fed/fed/best
	$(BIN)/fedxrec bench kg --parts cold-k1 --threads 2
	$(BIN)/fedxrec bench fed --presets fed-cold
	$(BIN)/fedxrec bench kg --parts cold-fed
	$(BIN)/fedxrec bench dp --parts presets,curve,ablation
	$(BIN)/fedxrec bench api
	$(BIN)/fedxrec bench sim
	$(BIN)/fedxrec bench core --dataset ml-latest-small --runs mostpop,bprmf-central,central-fedmodel
	$(BIN)/fedxrec bench fed --presets fed --dataset ml-latest-small
	$(BIN)/fedxrec bench kg --dataset ml-latest-small --checkpoint results/fed/ml-latest-small-fed/best
	$(BIN)/fedxrec bench fed --presets fed-cold --dataset ml-latest-small
	$(BIN)/fedxrec bench kg --dataset ml-latest-small --parts cold-fed --threads 2

audit: install  ## the privacy audit of the presets' checkpoints and the fault cases
	$(BIN)/fedxrec audit

download: install  ## ml-100k and its DBpedia KG, checksums verified
	$(BIN)/fedxrec download

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy
