# Two commands do all the set-up on a fresh machine:
#   make demo   the main job: the headless labeling loop on the hippocampus data, report in docs/demo/
#   make test   the test suite (what CI runs)
# Both create .venv and install everything (torch pinned to the CPU wheel) the first time.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: setup test lint demo bench bench-latency clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH)"
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/pytest

demo: setup
	$(BIN)/synergypl demo --out docs/demo

bench: setup
	$(BIN)/synergypl bench --labeled 7 --methods supervised,mean_teacher,sgrs,synergypl,full \
		--seeds 0,1,2 --profile cpu --workers 2 --out docs/benchmarks

bench-latency: setup
	$(BIN)/synergypl bench-latency --shape 256 256 128 --out docs/benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
