# page4d-lightning: `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU test machines install this pair from the local wheel cache; GPU clusters may set their own,
# e.g. `make install TORCH_SPEC="torch==2.5.1 torchvision==0.20.1"`.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Every package make install puts in .venv is pinned here (pip -c); `CONSTRAINTS=` installs without the pins.
CONSTRAINTS ?= requirements/constraints.txt
PIP_PINS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# A wheel index for torch alone, e.g. your cluster's CUDA build of the pinned version: TORCH_INDEX=<index URL>
TORCH_INDEX ?=
DATASET ?= synthetic
EXPERIMENT := experiments/$(DATASET).yaml
DATA_ROOT ?=
CKPT ?= checkpoints/$(DATASET)/last.ckpt
ARGS ?=

.PHONY: help install venv lock test-latest check-experiment train validate eval ablation pretrain test lint format bench \
	tensorboard clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'
	@echo "  variables: DATASET=$(DATASET) DATA_ROOT=<dataset root> CKPT=<checkpoint> ARGS='<extra CLI flags>'"

$(VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet $(PIP_PINS) --upgrade pip
	$(PY) -m pip install --quiet $(PIP_PINS) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) $(TORCH_SPEC)
	$(PY) -m pip install --quiet $(PIP_PINS) -e '.[test]' $(TORCH_SPEC)
	touch $@

install: $(VENV)/.installed ## create .venv (if missing) from the pinned environment: the package and its test extra

lock: ## rewrite requirements/constraints.txt from a fresh venv with the newest versions setup.cfg allows
	rm -rf .venv-lock && python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet $(TORCH_SPEC)
	.venv-lock/bin/python -m pip install --quiet -e '.[test]' $(TORCH_SPEC)
	{ sed -n '/^#/p' requirements/constraints.txt; .venv-lock/bin/python -m pip freeze --all --exclude-editable; } \
		> requirements/constraints.txt.new
	mv requirements/constraints.txt.new requirements/constraints.txt
	rm -rf .venv-lock
	@echo "requirements/constraints.txt rewritten: review the diff, then make test-latest or a fresh make test"

test-latest: ## the suite in a fresh .venv-latest with the newest versions (no pins): upgrades happen on purpose
	rm -rf .venv-latest && python3 -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip
	.venv-latest/bin/python -m pip install --quiet $(TORCH_SPEC)
	.venv-latest/bin/python -m pip install --quiet -e '.[test]' $(TORCH_SPEC)
	.venv-latest/bin/python -m pip freeze --all --exclude-editable | diff <(grep -v '^#' requirements/constraints.txt) - \
		| grep '^[<>]' || echo "the newest versions equal the pins"
	.venv-latest/bin/python -m pytest -q $(ARGS)

venv: install

check-experiment:
	@if [ ! -f "$(EXPERIMENT)" ]; then \
		echo "unknown DATASET=$(DATASET): no $(EXPERIMENT). Available experiments:" >&2; \
		for f in experiments/*.yaml; do b=$${f##*/}; echo "  $${b%.yaml}" >&2; done; \
		exit 2; \
	fi

train: check-experiment install ## train: `make train [DATASET=synthetic] [DATA_ROOT=/data/x] [ARGS=...]`
	$(VENV)/bin/page4d fit --config $(EXPERIMENT) $(if $(DATA_ROOT),--data.init_args.root $(DATA_ROOT)) $(ARGS)

validate: check-experiment install ## validate a checkpoint: `make validate [DATASET=..] [CKPT=..]`
	$(VENV)/bin/page4d validate --config $(EXPERIMENT) --ckpt_path $(CKPT) $(if $(DATA_ROOT),--data.init_args.root $(DATA_ROOT)) $(ARGS)

BENCH ?=
PROTOCOL ?=
eval: install ## benchmarks: `make eval CKPT=X [BENCH=sintel,bonn] [PROTOCOL=official|standard] [DATA_ROOT=/data]`
	$(VENV)/bin/page4d eval --ckpt $(CKPT) $(if $(BENCH),--bench $(BENCH)) $(if $(PROTOCOL),--protocol $(PROTOCOL)) \
		$(if $(DATA_ROOT),--data-root $(DATA_ROOT)) $(ARGS)

ablation: install ## the miniature's ablation (4 variants x 3 seeds, ~1 h on 2 cores) -> results/ablation/
	$(VENV)/bin/page4d ablation $(ARGS)

pretrain: install ## retrain the shipped static start (hours on a CPU), then pack it: weights/static_start.*
	$(VENV)/bin/page4d fit --config experiments/pretrain_static.yaml $(ARGS)
	$(VENV)/bin/page4d ship checkpoints/pretrain_static/last.ckpt --config experiments/pretrain_static.yaml \
		--out weights/static_start

test: install ## run the test suite (CPU)
	$(PY) -m pytest -q $(ARGS)

lint: install ## ruff, and the architecture contracts of setup.cfg [importlinter] (lint-imports)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

format: install ## ruff format + import sorting
	$(VENV)/bin/ruff check --fix --select I .
	$(VENV)/bin/ruff format .

bench: install ## speed / memory benchmarks -> benchmarks/results/*.json
	$(PY) benchmarks/run_all.py $(ARGS)

tensorboard: install ## open TensorBoard on the run outputs under checkpoints/
	$(VENV)/bin/tensorboard --logdir checkpoints

clean: ## remove caches and build outputs (keeps .venv and checkpoints/)
	rm -rf build dist *.egg-info src/*.egg-info .pytest_cache .ruff_cache lightning_logs benchmarks/results
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
