# synpref: `make demo` sets everything up and runs the main job; `make test` sets up and tests.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# torch is pinned to its CPU build. Where pip does not already find that wheel locally, use e.g.
#   make TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" install
TORCH_PIP_ARGS ?=
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export RAY_USAGE_STATS_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install demo flow-ingest flow-train-rm flow-retrieve flow-annotate flow-stage1 flow-stage2 flow-evaluate test test-fast bench bench-gpu lint format server worker ui chromium annotate-ui clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	# DeepSpeed's CPU shared-memory op is JIT-compiled on first use (~25 s): build it now, not
	# inside the first training run.
	DS_ACCELERATOR=cpu $(BIN)/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load(verbose=False)" \
	  || echo "warning: DeepSpeed's CPU comm op did not build now; training will build it"
	touch $(STAMP)

install: $(STAMP)

demo: install  ## the whole pipeline on the bundled data: ingest, Stage 1 (2 rounds), Stage 2, report
	$(BIN)/python -m flows.demo $(if $(CONFIG),--config $(CONFIG))

flow-ingest: install  ## ingest the bundled real datasets (Prefect flow on local Ray, MLflow on SQLite)
	$(BIN)/python -m flows.ingest

flow-train-rm: install  ## train MiniLM on 80% of bundled hh-rlhf harmless, register, evaluate
	$(BIN)/python -m flows.train_rm

flow-retrieve: install  ## one retrieval round with the latest registered RM: make flow-retrieve ROUND=2
	$(BIN)/python -m flows.retrieve $(if $(ROUND),--round $(ROUND))

flow-annotate: install  ## judge round 1's candidates (local judge server on the latest RM), calibrate
	$(BIN)/python -m flows.annotate $(if $(CONFIG),--config $(CONFIG))

flow-stage1: install  ## Stage 1 rounds on embedded defaults (resumes after the last done): make flow-stage1 [ROUNDS=3] [CONFIG=...]
	$(BIN)/python -m flows.stage1 $(if $(CONFIG),--config $(CONFIG)) $(if $(ROUNDS),--rounds $(ROUNDS))

flow-stage2: install  ## Stage 2 now on embedded defaults (bundled hh-rlhf as D_wild, registered RMs)
	$(BIN)/python -m flows.stage2 $(if $(CONFIG),--config $(CONFIG))

flow-evaluate: install  ## score a model on the bundled benchmarks: make flow-evaluate MODEL=dir
	$(BIN)/python -m flows.evaluate $(if $(MODEL),--model $(MODEL))

test: install  ## the whole suite (unit, Ray, Prefect flow end to end)
	$(BIN)/pytest -q

test-fast: install  ## unit tests only
	$(BIN)/pytest -q -m "not slow"

bench: install  ## benchmarks/ (ratios against an in-run baseline; see benchmarks/README.md)
	$(BIN)/python -m benchmarks.bench_ingest
	$(BIN)/python -m benchmarks.bench_scoring
	$(BIN)/python -m benchmarks.bench_training
	$(BIN)/python -m benchmarks.bench_retrieval
	$(BIN)/python -m benchmarks.bench_quality
	$(BIN)/python -m benchmarks.bench_dtype
	$(BIN)/python -m benchmarks.bench_annotate
	$(BIN)/python -m benchmarks.bench_human
	$(BIN)/python -m benchmarks.bench_stage2
	$(BIN)/python -m benchmarks.bench_demo
	$(BIN)/python -m benchmarks.bench_gpu

bench-gpu: install  ## GPU scoring and DeepSpeed training at the bound (tiny CPU smoke without a GPU)
	$(BIN)/python -m benchmarks.bench_gpu

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

server: install  ## Prefect server with the UI on http://127.0.0.1:4200
	bash infra/prefect/server.sh

worker: install  ## a Prefect worker on the `synpref` process work pool
	bash infra/prefect/worker.sh

ui: install  ## server + worker + all deployments in one terminal; UI on http://127.0.0.1:4200, Ctrl-C stops
	bash infra/prefect/ui.sh

annotate-ui: install  ## the human verification app on http://127.0.0.1:8765: make annotate-ui [DB=sqlite:///...]
	$(BIN)/synpref annotate-ui $(if $(DB),--db $(DB))

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
chromium:  ## Debian's chromium + chromedriver for the browser tests (tests/browser.py also installs them)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium chromium-driver; }

clean:
	rm -rf .synpref .pytest_cache .ruff_cache
