# Quickstart: `make demo` then `make test`. Both install first and are idempotent.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.degl-installed

.PHONY: install data demo test lint clean

install: $(STAMP) data

# pyproject.toml declares the oldest torch/torchvision degl works with; constraints.txt pins the exact
# versions this project is tested with (pip takes them from local wheels where the machine has them).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

data: $(STAMP)
	@PYTHON=$(BIN)/python sh scripts/install-data.sh

# The pipeline at work (2 processes x 1 thread beside 1 process x 2 threads, with its timeline), then
# DGL and backprop on the same budget: the comparison table and their learning curves (runs/demo/curves.png).
demo: install
	$(BIN)/python scripts/demo_pipeline.py --out runs/demo/pipeline
	$(BIN)/degl compare --methods dgl,backprop --model cnn6 --width 0.125 --stages 4 --epochs 5 \
		--aux mlp --parallel 2 --no-augment --channels-last --out runs/demo
	$(BIN)/degl plot runs/demo/dgl-seed0 runs/demo/backprop-seed0 --out runs/demo/curves.png

test: install
	DEGL_REQUIRE_DATA=1 $(BIN)/pytest -q -n 2  # two workers: many tests wait on subprocesses

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

clean:
	rm -rf $(VENV) runs .pytest_cache
