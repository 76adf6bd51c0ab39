# The two commands of the README: `make run` and `make test`. Both create the venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench faults clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# DEV_ARGS: options of `jobstatus dev` (e.g. --port 3001).
run: $(STAMP)
	$(BIN)/jobstatus dev $(DEV_ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

# The fault suite (faults/README.md): kills, concurrency, out-of-order commits, restarts, hostile
# input, API fuzzing; prints the table. FAULTS_ARGS="--scale 125" for the 100k-event version.
faults: $(STAMP)
	$(BIN)/python -m faults.run $(FAULTS_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The benchmarks of bench/README.md (by hand, not part of `make test`; about 40 minutes).
# BENCH_LARGE=0 skips the 1,000,000-event memory run and the 500,000-event history.
BENCH_LARGE ?= 1
bench: $(STAMP)
	$(BIN)/python -m bench.throughput --scale 250
	$(BIN)/python -m bench.overhead --repeat 5
	$(BIN)/python -m bench.history --explain --history 100000 $(if $(filter 1,$(BENCH_LARGE)),500000,200000)
	$(BIN)/python -m bench.memory --events 100000 $(if $(filter 1,$(BENCH_LARGE)),1000000,300000)
	$(BIN)/python -m bench.latency --duration 300

clean:
	rm -rf $(VENV) .jobstatus
